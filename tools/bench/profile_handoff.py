"""Where a contended handoff's time goes: per op, how many system calls,
futex waits and wakes (by object: the ledger lock, a doorbell, the
process's own GIL), context switches (per thread: a library's helper
threads show up by name), CPU time, and -- for ipcsem -- how many ledger
transactions of each kind.

    .venv/bin/python -m tools.bench.profile_handoff \\
        [--contenders sysv,ipcsem,ipcsem-unfair,posix] [--cells 8:1:0,8:2:0,8:1:50] \\
        [--duration 2] [--no-probes] [--json PATH]

Each cell (P processes : capacity : hold us) runs figure 2's loop
(figures/contended.run_contended, same workers) up to three times per
contender, without figure 2's warm-up (the perf session counts from the
start instant, so every counted op must be one the workers report; at
P > cores the first milliseconds' uncontended bursts are then in the
counts and in Jain: docs/perf.md, "The latest full run"):

1. clean: perf stat counting tracepoints (syscalls, futex calls, semop
   calls, context switches, migrations) on the P workers; counting costs
   ~nothing, so ops/s is figure 2's.  Per-thread context switches from
   /proc/PID/task/*/status and CPU per op from the workers' getrusage.
2. futex split (--duration/4): perf record of futex enter/exit; each call
   is classed by its word: op without FUTEX_PRIVATE_FLAG at page offset
   0x200 is the ledger lock (the robust mutex at MUTEX_OFF 512 of the
   page-aligned mapping), other shared words are doorbells, private ones
   are the process's own (the GIL); a wait that returned 0 slept, -EAGAIN
   did not.  Recording slows the loop: read the ratios, not the rate.
3. probed (ipcsem only, unless --no-probes): uprobes on the ledger's
   transaction bodies (body_take, body_enqueue, body_settle, body_release,
   body_cancel) and glibc's pthread_mutex_clocklock (a lock attempt that
   found the lock busy and had to wait): lock round trips per op.  A
   uprobe costs ~1-3 us per hit, so this run's rate is not a measurement.

The probes are created under the group "ipcsembench" and deleted at exit.
Needs perf with tracepoint access (root, or perf_event_paranoid <= 1);
without it only the /proc and getrusage columns are filled.  Not part of
``make bench``; docs/perf.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from . import contenders as C
from . import procs
from .figures.common import destroy_all
from .figures.contended import _drain_pool, run_contended

PROBE_GROUP = "ipcsembench"
LEDGER_BODIES = ["body_take", "body_enqueue", "body_settle", "body_release", "body_cancel"]
COUNT_EVENTS = ["context-switches", "cpu-migrations", "raw_syscalls:sys_enter",
                "syscalls:sys_enter_futex", "syscalls:sys_enter_semtimedop",
                "syscalls:sys_enter_semop", "syscalls:sys_enter_sched_yield"]
FUTEX_PRIVATE_FLAG = 128
FUTEX_CMD = {0: "WAIT", 1: "WAKE", 9: "WAIT_BITSET", 10: "WAKE_BITSET", 6: "LOCK_PI",
             7: "UNLOCK_PI", 5: "WAKE_OP"}


def perf_ok() -> str | None:
    """None if perf can count tracepoints here, else why not."""
    try:
        p = subprocess.run(["perf", "stat", "-e", "syscalls:sys_enter_futex", "true"],
                           capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"perf: {e}"
    return None if p.returncode == 0 else f"perf stat failed: {p.stderr.strip()[-200:]}"


# ---------------------------------------------------------------- probes

def _ledger_so() -> str:
    from ipcsem._shm import _ledger
    return _ledger.__file__


def _libc() -> str:
    out = subprocess.run(["ldd", sys.executable], capture_output=True, text=True,
                         check=False).stdout
    m = re.search(r"libc\.so\.6 => (\S+)", out)
    return m.group(1) if m else "/lib/x86_64-linux-gnu/libc.so.6"


def add_probes() -> list[str]:
    """Create the uprobes; the event names that exist afterwards."""
    made = []
    specs = [(_ledger_so(), b) for b in LEDGER_BODIES]
    specs.append((_libc(), "pthread_mutex_clocklock"))
    for obj, fn in specs:
        ev = f"{PROBE_GROUP}:{fn}"
        p = subprocess.run(["perf", "probe", "-q", "-x", obj, "-a", f"{ev}={fn}"],
                           capture_output=True, text=True, check=False)
        if p.returncode == 0:
            made.append(ev)
        else:
            print(f"  probe {fn}: {p.stderr.strip()[-200:]}", file=sys.stderr)
    return made


def delete_probes() -> None:
    subprocess.run(["perf", "probe", "-q", "-d", f"{PROBE_GROUP}:*"], capture_output=True,
                   check=False)


# --------------------------------------------------------------- observers

def _thread_switches(pids) -> dict:
    """{(pid, tid): (comm, voluntary, nonvoluntary)} from /proc."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    st = dict(ln.split(":", 1) for ln in f if ":" in ln)
                out[(pid, int(tid))] = (st["Name"].strip(),
                                        int(st["voluntary_ctxt_switches"]),
                                        int(st["nonvoluntary_ctxt_switches"]))
            except (OSError, KeyError, ValueError):
                continue
    return out


def _switch_delta(before, after) -> dict:
    """Context switches during the run, summed by thread name (the main
    threads are all "python"; helper threads carry their own names)."""
    by = {}
    for key, (comm, v1, n1) in after.items():
        _, v0, n0 = before.get(key, (comm, 0, 0))
        d = by.setdefault(comm, {"threads": 0, "voluntary": 0, "nonvoluntary": 0})
        d["threads"] += 1
        d["voluntary"] += v1 - v0
        d["nonvoluntary"] += n1 - n0
    return by


def _start_perf(args, pids):
    out = tempfile.NamedTemporaryFile(prefix="ipcsem-perf-", delete=False)  # noqa: SIM115
    out.close()
    cmd = ["perf", *args(out.name), "-p", ",".join(map(str, pids))]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, preexec_fn=procs.preexec_term)
    time.sleep(0.3)  # attach before the start instant (run_contended leaves >= 30 ms)
    return p, out.name


def _stop_perf(p) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode(errors="replace")


def stat_observer(events, result):
    def observe(pids):
        before = _thread_switches(pids)
        p, path = _start_perf(lambda o: ["stat", "-x", ",", "-o", o,
                                         "-e", ",".join(events)], pids)

        def finish():
            after = _thread_switches(pids)
            err = _stop_perf(p)
            counts = {}
            with open(path) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) >= 3 and parts[2] and not line.startswith("#"):
                        try:
                            counts[parts[2]] = float(parts[0])
                        except ValueError:
                            counts[parts[2]] = None  # <not counted> / <not supported>
            os.unlink(path)
            result["perf_stderr"] = err[-300:] if not counts else ""
            result["threads"] = _switch_delta(before, after)
            return counts
        return finish
    return observe


_ENTER = re.compile(r"^\s*\S+\s+(\d+)\s.*sys_enter_futex: uaddr: (0x[0-9a-f]+), op: (0x[0-9a-f]+)")
_EXIT = re.compile(r"^\s*\S+\s+(\d+)\s.*sys_exit_futex: (0x[0-9a-f]+)")


def record_observer(result):
    def observe(pids):
        p, path = _start_perf(lambda o: ["record", "-q", "-o", o,
                                         "-e", "syscalls:sys_enter_futex",
                                         "-e", "syscalls:sys_exit_futex"], pids)

        def finish():
            _stop_perf(p)
            txt = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,event,trace"],
                                 capture_output=True, text=True, check=False).stdout
            os.unlink(path)
            calls, pending = {}, {}
            for line in txt.splitlines():
                m = _ENTER.match(line)
                if m:
                    tid, uaddr, op = int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16)
                    cmd = FUTEX_CMD.get(op & 127, str(op & 127))
                    if op & FUTEX_PRIVATE_FLAG:
                        obj = "private (GIL etc.)"
                    elif uaddr & 0xFFF == 0x200:
                        obj = "ledger lock"
                    else:
                        obj = "doorbell"
                    pending[tid] = f"{obj} {cmd}"
                    continue
                m = _EXIT.match(line)
                if m:
                    tid = int(m.group(1))
                    what = pending.pop(tid, None)
                    if what is None:
                        continue
                    ret = int(m.group(2), 16)
                    ret = ret - (1 << 64) if ret >= 1 << 63 else ret
                    d = calls.setdefault(what, {"calls": 0, "ret0": 0, "eagain": 0,
                                                "woke": 0, "other": 0})
                    d["calls"] += 1
                    if "WAKE" in what:
                        d["woke"] += max(ret, 0)
                    elif ret == 0:
                        d["ret0"] += 1
                    elif ret == -11:
                        d["eagain"] += 1
                    else:
                        d["other"] += 1
            return calls
        return finish
    return observe


# ------------------------------------------------------------------ runs

def run_cell(c, p, cap, hold, duration, pool, probes, use_perf):
    out = {}
    extra = {}
    events = COUNT_EVENTS if use_perf else []
    obs = stat_observer(events, extra) if use_perf else None
    r = run_contended(c, p, cap, hold, duration, 20_000, pool, observe=obs, warmup_s=0)
    out["clean"] = _summary(r, extra)
    if use_perf:
        rec = {}
        r2 = run_contended(c, p, cap, hold, max(0.3, duration / 4), 20_000, pool,
                           observe=record_observer(rec), warmup_s=0)
        ops = r2["total_ops"]
        out["futex_split"] = {
            "ops_per_s": r2["ops_per_s"], "total_ops": ops,
            "per_op": {k: {f: v / ops for f, v in d.items()} for k, d in
                       sorted(r2["observed"].items())}}
        if probes and c.key.startswith("ipcsem"):
            extra3 = {}
            r3 = run_contended(c, p, cap, hold, max(0.3, duration / 2), 20_000, pool,
                               observe=stat_observer([*probes, "context-switches"], extra3),
                               warmup_s=0)
            ops = r3["total_ops"]
            out["probed"] = {"ops_per_s": r3["ops_per_s"], "total_ops": ops,
                             "per_op": {k.split(":", 1)[-1]: (v or 0) / ops
                                        for k, v in r3["observed"].items()}}
    return out


def _summary(r, extra):
    ops = r["total_ops"]
    counts = r.get("observed") or {}
    s = {k: r.get(k) for k in ("ops_per_s", "total_ops", "jain", "cpu_us_per_op", "sys_share",
                               "vcsw_per_op", "ivcsw_per_op", "wait_p50_ns", "wait_p99_ns")}
    s["per_op"] = {k: (v / ops if v is not None else None) for k, v in counts.items()}
    s["threads_per_op"] = {name: {"threads": d["threads"],
                                  "voluntary": d["voluntary"] / ops,
                                  "nonvoluntary": d["nonvoluntary"] / ops}
                           for name, d in extra.get("threads", {}).items()}
    if extra.get("perf_stderr"):
        s["perf_stderr"] = extra["perf_stderr"]
    return s


def _print_cell(key, cell, out):
    cl = out["clean"]
    print(f"\n## {key}  P={cell[0]} cap={cell[1]} hold={cell[2]}us: "
          f"{cl['ops_per_s'] / 1e3:,.1f}k ops/s, Jain {cl['jain']:.3f}, "
          f"CPU {cl['cpu_us_per_op']:.2f} us/op ({100 * (cl['sys_share'] or 0):.0f}% sys), "
          f"wait p50 {cl['wait_p50_ns'] / 1e3:.1f} us")
    if cl["per_op"]:
        print("  per op: " + ", ".join(f"{k.split(':')[-1]} {v:.2f}" for k, v in
                                       cl["per_op"].items() if v))
    for name, d in cl["threads_per_op"].items():
        print(f"  thread {name!r} x{d['threads']}: voluntary {d['voluntary']:.2f}/op, "
              f"nonvoluntary {d['nonvoluntary']:.2f}/op")
    fs = out.get("futex_split")
    if fs:
        print(f"  futex calls per op (recorded run, {fs['ops_per_s'] / 1e3:,.1f}k ops/s):")
        for k, d in fs["per_op"].items():
            desc = (f"woke {d['woke']:.2f}" if "WAKE" in k else
                    f"slept/rung {d['ret0']:.2f}, EAGAIN {d['eagain']:.2f}")
            print(f"    {k:28s} {d['calls']:.2f}  ({desc})")
    pr = out.get("probed")
    if pr:
        print(f"  ledger transactions per op (probed run, {pr['ops_per_s'] / 1e3:,.1f}k ops/s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in pr["per_op"].items()))
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.profile_handoff")
    ap.add_argument("--contenders", default="sysv,ipcsem,ipcsem-unfair,posix")
    ap.add_argument("--cells", default="8:1:0,8:2:0,8:1:50")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--no-probes", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    cells = [tuple(int(x) for x in c.split(":")) for c in args.cells.split(",")]
    why = perf_ok()
    if why:
        print(f"perf unavailable ({why}): /proc and getrusage columns only", file=sys.stderr)
    probes = [] if (why or args.no_probes) else add_probes()
    results = {"meta": {"loadavg_start": os.getloadavg()[0], "ncpu": os.cpu_count(),
                        "cells": cells, "duration_s": args.duration}, "runs": {}}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
          + (" (busy: numbers are inflated)" if os.getloadavg()[0] > 1 else ""))
    try:
        for key in args.contenders.split(","):
            c = C.get(key.strip())
            if c.unavailable():
                print(f"{key}: {c.unavailable()}", file=sys.stderr)
                continue
            pool = []
            try:
                for cell in cells:
                    out = run_cell(c, *cell, args.duration, pool, probes, not why)
                    results["runs"][f"{key} {cell[0]}:{cell[1]}:{cell[2]}"] = out
                    _print_cell(key, cell, out)
            finally:
                _drain_pool(pool)
    finally:
        procs.kill_all()
        destroy_all()
        if probes:
            delete_probes()
        results["meta"]["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
