"""Figure 7: priority inversion, with and without priority inheritance.

Measures how long a high-priority waiter waits for a mutex held by a
low-priority owner while a medium-priority process hogs the CPU -- the
classic inversion -- for ``ipcsem.Mutex(name, priority_inheritance=False)``
and ``=True`` (issue 14), with a nice -10 waiter and with a SCHED_FIFO 10
waiter.

How: three processes pinned to one core (the highest this process may use):
the owner (nice 19) takes the mutex; the hog (nice 0) starts spinning; the
owner starts INVERSION_WORK_S of CPU work (its critical section) and, 20 ms
later, the waiter arrives and blocks in acquire().  The wait is the
waiter's CLOCK_MONOTONIC from calling acquire() to holding the mutex.  The
owner also reports the share of the core it got during its work (CPU time
/ elapsed) and its priority once it released (``restored``: back at nice
19, SCHED_OTHER).  cfg.trials // 3 runs per cell (at least 3), median wait
reported; "ratio" is the median wait without inheritance over the median
wait with it.

Needs root (a nice -10 or SCHED_FIFO waiter); otherwise every cell is
"unavailable".  Without inheritance the owner gets about 1/70 of the core
next to the hog, so a cell takes ~2.5 s per run.

Target (issue 14): "without inheritance the waiter's wait is long; with it,
the owner finishes promptly": ratio >> 1, and restored in every run.

Returns {"status", "core", "work_s", "runs", "cells": {id: {"waiter",
"inheritance", "status", "waits_s", "median_wait_s", "median_owner_share",
"restored", "runs"}}, "ratios": {waiter: ratio}}.  report.py has no table
for it yet: results.json carries it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from .. import contenders as C
from .. import procs
from .common import log, watchdog

INVERSION_WORK_S = 0.03          # CPU seconds of the owner's critical section
WAITERS = {"nice-10": (os.SCHED_OTHER, 0, -10), "fifo-10": (os.SCHED_FIFO, 10, 0)}
OWNER_PRIO = (os.SCHED_OTHER, 0, 19)
ARRIVE_AFTER_S = 0.02            # the waiter arrives while the owner works


class _Role:
    """One process of the scenario: ``python -m tools.bench.figures.inversion
    ROLE JSON``; one JSON line per event on its stdout; "go" lines in."""

    def __init__(self, role: str, params: dict) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = procs.ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.figures.inversion", role, json.dumps(params)],
            cwd=procs.ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, bufsize=0, preexec_fn=procs.die_with_parent)
        self.pid = self.proc.pid
        self.desc = f"inversion {role}"
        procs.LIVE.add(self)

    def say(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())

    def hear(self, timeout: float) -> dict:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.kill()
            err = self.proc.stderr.read().decode(errors="replace")[-800:] if not ready else ""
            raise RuntimeError(f"{self.desc}: nothing within {timeout} s {err}".strip())
        return json.loads(line)

    def kill(self, sig=9) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self, timeout: float = 2.0) -> None:
        self.kill()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        procs.LIVE.discard(self)


def _one_run(name: str, core: int, waiter_prio: tuple[int, int, int]) -> dict:
    roles = []
    try:
        owner = _Role("owner", {"name": name, "core": core, "prio": OWNER_PRIO,
                                "work": INVERSION_WORK_S})
        roles.append(owner)
        owner.hear(30)                                    # holding it
        hog = _Role("hog", {"core": core})
        roles.append(hog)
        hog.hear(30)                                      # spinning
        waiter = _Role("waiter", {"name": name, "core": core, "prio": waiter_prio})
        roles.append(waiter)
        waiter.hear(30)                                   # ready, not queued yet
        owner.say("go")
        time.sleep(ARRIVE_AFTER_S)
        waiter.say("go")
        got = waiter.hear(300)
        done = owner.hear(60)
        return {"wait_s": got["waited"], "owner_share": done["cpu"] / done["elapsed"],
                "restored": tuple(done["after"]) == OWNER_PRIO}
    finally:
        for r in roles:
            r.finish()


def fig_inversion(cfg, cs):
    if not any(c.key == "ipcsem" for c in cs):
        return {"status": "n/a"}
    reason = C.get("ipcsem").unavailable()
    if reason:
        return {"status": f"unavailable: {reason}"}
    if os.geteuid() != 0:
        return {"status": "unavailable: needs root (a nice -10 or SCHED_FIFO waiter)"}
    import ipcsem

    core = max(os.sched_getaffinity(0))
    runs = max(3, cfg.trials // 3)
    out = {"status": "ok", "core": core, "work_s": INVERSION_WORK_S, "runs": runs,
           "cells": {}, "ratios": {}}
    for wkey, wprio in WAITERS.items():
        for pi in (False, True):
            cell = {"waiter": wkey, "inheritance": pi}
            cid = f"{wkey}/{'pi' if pi else 'no-pi'}"
            name = f"{C.RUN_TAG}-inversion-{wkey}-{int(pi)}"
            results = []
            with watchdog():
                try:
                    mutex = ipcsem.Mutex(name, priority_inheritance=pi)
                    try:
                        for _ in range(runs):
                            results.append(_one_run(name, core, wprio))
                    finally:
                        mutex.close()
                        ipcsem.unlink(name)
                    cell["status"] = "ok"
                except Exception as e:
                    procs.kill_all()
                    cell.update(status="error", error=f"{type(e).__name__}: {e}")
            if results:
                waits = [r["wait_s"] for r in results]
                cell.update(waits_s=waits, median_wait_s=statistics.median(waits),
                            median_owner_share=statistics.median(r["owner_share"]
                                                                 for r in results),
                            restored=sum(r["restored"] for r in results), runs=len(results))
                log(f"  inversion {cid}: median wait {cell['median_wait_s'] * 1e3:.0f} ms, "
                    f"owner share {cell['median_owner_share']:.2f}, "
                    f"restored {cell['restored']}/{len(results)}")
            out["cells"][cid] = cell
        a, b = out["cells"][f"{wkey}/no-pi"], out["cells"][f"{wkey}/pi"]
        if a.get("median_wait_s") and b.get("median_wait_s"):
            out["ratios"][wkey] = a["median_wait_s"] / b["median_wait_s"]
    return out


# --------------------------------------------------------------- the roles
def _pin_and_prio(core: int, prio) -> None:
    os.sched_setaffinity(0, {core})
    policy, rtprio, nice = prio
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    os.sched_setscheduler(0, policy, os.sched_param(rtprio))


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _spin(cpu_seconds: float) -> None:
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


def _main(role: str, params: dict) -> None:
    import ipcsem

    if role == "hog":
        _pin_and_prio(params["core"], (os.SCHED_OTHER, 0, 0))
        _emit({"spinning": True})
        _spin(300)                      # killed long before
        return
    _pin_and_prio(params["core"], params["prio"])
    m = ipcsem.Mutex(params["name"], create=False)
    if role == "owner":
        m.acquire()
        _emit({"holding": True})
        sys.stdin.readline()
        c0, w0 = time.thread_time(), time.monotonic()
        _spin(params["work"])
        cpu, elapsed = time.thread_time() - c0, time.monotonic() - w0
        m.release()
        tid = threading_tid()
        after = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority,
                 os.getpriority(os.PRIO_PROCESS, tid))
        _emit({"cpu": cpu, "elapsed": elapsed, "after": after})
    elif role == "waiter":
        _emit({"ready": True})
        sys.stdin.readline()
        t0 = time.monotonic()
        m.acquire()
        waited = time.monotonic() - t0
        m.release()
        _emit({"waited": waited})
    sys.stdin.readline()                # stay until finished


def threading_tid() -> int:
    import threading

    return threading.get_native_id()


if __name__ == "__main__":
    _main(sys.argv[1], json.loads(sys.argv[2]))
