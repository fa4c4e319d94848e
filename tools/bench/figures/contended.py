"""Figure 2: contended handoff.

Measures throughput, fairness and time spent waiting when P processes loop
acquire -> hold (busy, hold_us) -> release on one semaphore of capacity cap.

How: the cells are procs_list x caps x holds_us (plus any extra_cells).
Each cell runs P "loop"
workers (tools.bench.worker: unrelated processes opening the semaphore by
name; forked children for multiprocessing, which cannot be opened by name).
Name-opening workers are pooled across one contender's cells, so Python
start-up is paid once. All start at one CLOCK_MONOTONIC instant, run the
loop WARMUP_S uncounted, then cfg.duration_s counted, timing every acquire.
ops/s = total ops / (last op - end of the warm-up);
Jain's index over the per-process op counts; wait percentiles from at most
cfg.sample_cap samples, decimated with one stride for every worker. Each
worker also reports its loop's getrusage (every thread of it): CPU time and
context switches per op.

Targets (issue #12, CONTENDED_TARGETS; report.py checks every cell): fair
ipcsem >= 1.0x sysv_ipc SEM_UNDO's throughput with Jain >= 0.99;
fair=False ipcsem >= 0.5x raw posix_ipc's.  Where the time goes in the
P > cores cells: python -m tools.bench.profile_handoff (docs/perf.md).

Returns {"duration_s", "cells": [{"procs", "capacity", "hold_us",
"contenders": {key: {"ops_per_s", "jain", "wait_p50_ns", ...}}}]};
rendered by report._md_contended/_plot_contended.
"""

from __future__ import annotations

import time

from .. import procs
from ..stats import jain, percentile
from .common import fmt_status, guarded, log, semaphore

# (contender, reference, min throughput ratio, min Jain or None, what)
CONTENDED_TARGETS = [
    ("ipcsem", "sysv", 1.0, 0.99, "fair (strict FIFO) handoff vs SysV SEM_UNDO, Jain >= 0.99"),
    ("ipcsem-unfair", "posix", 0.5, None, "fair=False handoff vs raw posix_ipc"),
]


def fig_contended(cfg, cs):
    cells = [(p, cap, h) for h in cfg.holds_us for p in cfg.procs_list for cap in cfg.caps]
    cells += [tuple(x) for x in cfg.extra_cells if tuple(x) not in cells]
    out = {"duration_s": cfg.duration_s, "warmup_s": WARMUP_S,
           "cells": [{"procs": p, "capacity": cap, "hold_us": hold, "contenders": {}}
                     for p, cap, hold in cells]}
    for c in cs:
        if c.pair_only:
            continue
        pool = []  # subprocess workers reused across this contender's cells
        try:
            for cell in out["cells"]:
                p, cap, hold = cell["procs"], cell["capacity"], cell["hold_us"]
                r = guarded(c, lambda c=c, p=p, cap=cap, hold=hold, pool=pool: run_contended(
                    c, p, cap, hold, cfg.duration_s, cfg.sample_cap, pool), capacity=cap)
                cell["contenders"][c.key] = r
                log(f"  fig2 P={p} cap={cap} hold={hold}us {c.key:12s} "
                    f"{fmt_status(r, 'ops_per_s', 'ops/s')}"
                    + (f" jain={r['jain']:.3f}" if r.get("jain") else ""))
        finally:
            _drain_pool(pool)
    return out


def _drain_pool(pool):
    for w in pool:
        try:
            w.send({"quit": True})
        except OSError:
            pass
    for w in pool:
        w.finish(2.0)
    pool.clear()


def per_op_costs(res, total):
    """CPU time and context switches per op, summed over the P workers
    (each measured its own loop with getrusage: every thread counts)."""
    rus = [r.get("rusage") for r in res]
    if not total or not all(rus):
        return {}
    cpu = sum(r["utime_s"] + r["stime_s"] for r in rus)
    return {"cpu_us_per_op": cpu / total * 1e6,
            "sys_share": sum(r["stime_s"] for r in rus) / cpu if cpu else None,
            "vcsw_per_op": sum(r["nvcsw"] for r in rus) / total,
            "ivcsw_per_op": sum(r["nivcsw"] for r in rus) / total}


# Every cell's loop runs this long before its counted duration (see
# worker._loop_job: with P > cores not every process leaves the start
# barrier at once).
WARMUP_S = 0.25


def run_contended(c, nprocs, cap, hold_us, duration_s, sample_cap=200_000, pool=None,
                  observe=None, warmup_s=WARMUP_S):
    """One cell: warmup_s of the loop uncounted, then duration_s counted.
    observe(pids) -> finish, if given, is called just before the start
    instant is sent (finish() after every result is in; what it returns
    lands under "observed"): profile_handoff's perf session, which passes
    warmup_s=0 so that its counts cover the counted ops only."""
    job = {"duration_s": duration_s, "hold_us": hold_us, "warmup_s": warmup_s}
    pool = [] if pool is None else pool
    with semaphore(c, cap) as spec:
        if c.inherit_only:
            # Forked children must inherit this very semaphore object.
            ws = [procs.spawn(c, "loop", spec) for _ in range(nprocs)]
            owned = ws
        else:
            while len(pool) < nprocs:
                pool.append(procs.spawn(c, "loop", None))
            ws = pool[:nprocs]
            owned = []
            job["spec"] = spec
        finish = None
        try:
            for w in ws:
                if w in owned or not getattr(w, "started", False):
                    w.recv(30, "ready")
                    w.started = True
            for w in ws:
                w.send(job)
            for w in ws:
                w.recv(30, "opened")
            # Barrier: everyone starts at the same CLOCK_MONOTONIC instant,
            # far enough ahead that all "go" lines are delivered first.
            finish = observe([w.pid for w in ws]) if observe else None
            t0 = time.monotonic_ns() + 20_000_000 + 5_000_000 * nprocs
            for w in ws:
                w.send({"t0": t0})
            res = [w.recv(warmup_s + duration_s + 60, "result") for w in ws]
            observed, finish = (finish() if finish else None), None
            total = sum(r["n"] for r in res)
            # Same decimation stride for every worker (see worker._loop_job).
            stride = max(1, -(-total // sample_cap))
            waits = []
            for w in ws:
                w.send({"stride": stride})
                waits += w.recv(30, "samples")["waits"]
        except BaseException:
            if finish:
                finish()  # stop the observer (perf) too
            for w in pool:  # may be mid-job: start afresh next cell
                w.kill()
                w.finish(1.0)
            pool.clear()
            raise
        finally:
            for w in owned:
                try:
                    w.send({"quit": True})
                except OSError:
                    pass
                w.finish(5.0)
    waits.sort()
    counts = [r["n"] for r in res]
    elapsed = (max(r["t_last"] for r in res) - t0 - int(warmup_s * 1e9)) / 1e9
    p50, p99 = percentile(waits, 50), percentile(waits, 99)
    extra = {"observed": observed} if observed is not None else {}
    return {**per_op_costs(res, total), **extra,
        "ops_per_s": total / elapsed if elapsed > 0 else None,
        "total_ops": total, "elapsed_s": elapsed, "per_process": counts,
        "jain": jain(counts),
        "wait_p50_ns": p50, "wait_p99_ns": p99, "wait_samples": len(waits),
        "wait_max_ns": max(r["max_wait_ns"] for r in res),
        "wait_mean_ns": sum(r["sum_wait_ns"] for r in res) / total if total else None,
    }
