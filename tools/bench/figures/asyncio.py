"""Figure 7: asyncio -- the async uncontended pair and the async handoff,
next to the sync ones and to in-process ``asyncio.Semaphore`` (issue 10).

Rows (ns per operation, best of cfg.reps runs, gc off):

* pair: one acquire + release of a capacity-1 semaphore nobody else
  wants -- ``ipcsem.Semaphore`` (C fast path), ``await
  ipcsem.AsyncSemaphore.acquire()`` + ``release()`` in a coroutine, and
  ``asyncio.Semaphore`` the same way;
* handoff: two waiters ping-pong one unit of a capacity-1 semaphore (each
  releases while the other is queued, so every grant is a handoff through
  the queue): two threads on ``ipcsem.Semaphore``, two tasks of one loop
  on ``AsyncSemaphore`` (through the ledger, the process bell, the
  notifier thread and ``call_soon_threadsafe``), two tasks on
  ``asyncio.Semaphore``; and across processes: this process's task and a
  sync process (``ipcsem.Semaphore``) handing one unit back and forth.

No target is pinned in the issue for these rows; the figure shows what an
async waiter pays for cross-process safety over the in-process semaphore.

Then the loop gaps with 1,000 waiting tasks (issue 10's 10 ms bound),
ipcsem.AsyncSemaphore next to asyncio.Semaphore: tools/bench/loopgaps.py.

Returns {"rows": {key: {"ns", "runs_ns", "n", "reps", "status"}}}; only the
ipcsem contender applies (the others have no event-loop API).
"""

from __future__ import annotations

import asyncio as _asyncio
import contextlib
import gc
import subprocess
import sys
import threading
import time

from .common import Unavailable, fmt_status, guarded, log, semaphore

HANDOFFS = 2_000        # round trips per run (quick: 500)

_PARTNER = r"""
import sys, ipcsem
s = ipcsem.Semaphore(sys.argv[1])
n = int(sys.argv[2])
print("ready", flush=True)
for _ in range(n):
    s.acquire()
    s.release()
"""


def _best(fn, reps: int, n: int) -> dict:
    fn(max(1, n // 10))             # warm-up
    gc_was = gc.isenabled()
    gc.disable()
    try:
        runs = [fn(n) / n for _ in range(reps)]
    finally:
        if gc_was:
            gc.enable()
    return {"ns": min(runs), "runs_ns": runs, "n": n, "reps": reps}


def _run(coro):
    return _asyncio.new_event_loop().run_until_complete(coro)


# ------------------------------------------------------------------ pairs
def _sync_pair(name):
    import ipcsem

    s = ipcsem.Semaphore(name)

    def run(n):
        acq, rel = s.acquire, s.release
        t = time.perf_counter_ns()
        for _ in range(n):
            acq()
            rel()
        return time.perf_counter_ns() - t
    return run, s.close


def _async_pair(make):
    def run(n):
        async def body():
            s = make()
            t = time.perf_counter_ns()
            for _ in range(n):
                await s.acquire()
                s.release()
            return time.perf_counter_ns() - t
        return _run(body())
    return run


# --------------------------------------------------------------- handoffs
# Ping-pong over two empty semaphores X and Y: one side posts X and waits
# on Y, the other waits on X and posts Y.  Every grant goes to a waiter
# that is (in the steady state) already queued: a handoff.  ns per handoff
# = round trip / 2.  Across processes each taker disowns what it took (a
# unit is its taker's process's), so the other side's release posts it.

_PARTNER = r"""
import asyncio, sys, ipcsem
x, y, n, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "sync":
    X, Y = ipcsem.Semaphore(x), ipcsem.Semaphore(y)
    print("ready", flush=True)
    for _ in range(n):
        X.acquire()
        X.disown()
        Y.release()
else:
    Xd = ipcsem.Semaphore(x)       # AsyncSemaphore has no disown() (bug B9)
    async def main():
        X, Y = ipcsem.AsyncSemaphore(x), ipcsem.AsyncSemaphore(y)
        print("ready", flush=True)
        for _ in range(n):
            await X.acquire()
            Xd.disown()
            Y.release()
    asyncio.run(main())
"""


def _emptied(names):
    """Take the one unit of each and disown it: the semaphores start empty
    and every release is an unowned post."""
    import ipcsem

    for n in names:
        s = ipcsem.Semaphore(n)
        s.acquire()
        s.disown()
        s.close()


def _handoff_threads(x, y):
    import ipcsem

    X, Y = ipcsem.Semaphore(x), ipcsem.Semaphore(y)

    def run(n):
        def other():
            for _ in range(n):
                X.acquire()
                Y.release()

        th = threading.Thread(target=other)
        th.start()
        t = time.perf_counter_ns()
        for _ in range(n):
            X.release()
            Y.acquire()
        dt = time.perf_counter_ns() - t
        th.join()
        return dt / 2
    return run, lambda: (X.close(), Y.close())


def _handoff_tasks(make):
    def run(n):
        async def body():
            X, Y = make()

            async def other():
                for _ in range(n):
                    await X.acquire()
                    Y.release()

            o = _asyncio.ensure_future(other())
            t = time.perf_counter_ns()
            for _ in range(n):
                X.release()
                await Y.acquire()
            dt = time.perf_counter_ns() - t
            await o
            return dt / 2
        return _run(body())
    return run


def _handoff_process(x, y, here: str, there: str):
    import ipcsem

    def run(n):
        p = subprocess.Popen([sys.executable, "-c", _PARTNER, x, y, str(n), there],
                             stdout=subprocess.PIPE, text=True)
        try:
            if p.stdout.readline().strip() != "ready":
                raise Unavailable("the partner process did not start")
            Yd = ipcsem.Semaphore(y)
            if here == "sync":
                X, Y = ipcsem.Semaphore(x), ipcsem.Semaphore(y)
                t = time.perf_counter_ns()
                for _ in range(n):
                    X.release()
                    Y.acquire()
                    Yd.disown()
                dt = time.perf_counter_ns() - t
            else:
                async def body():
                    X, Y = ipcsem.AsyncSemaphore(x), ipcsem.AsyncSemaphore(y)
                    t = time.perf_counter_ns()
                    for _ in range(n):
                        X.release()
                        await Y.acquire()
                        Yd.disown()        # AsyncSemaphore has no disown() (bug B9)
                    return time.perf_counter_ns() - t
                dt = _run(body())
            p.wait(60)
            return dt / 2
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return run


def fig_asyncio(cfg, cs):
    out = {"rows": {}}
    ipc = next((c for c in cs if c.key == "ipcsem"), None)
    if ipc is None:
        return {"status": "n/a", "why": "the ipcsem contender is not selected", "rows": {}}
    handoffs = 500 if cfg.quick else HANDOFFS

    def row(key, make_run, n, sems=1):
        def run():
            with contextlib.ExitStack() as stack:
                names = [stack.enter_context(semaphore(ipc, 1))["name"] for _ in range(sems)]
                if sems == 2:
                    _emptied(names)
                got = make_run(*names)
                fn, close = got if isinstance(got, tuple) else (got, None)
                try:
                    return _best(fn, cfg.reps, n)
                finally:
                    if close is not None:
                        close()
        out["rows"][key] = r = guarded(ipc, run)
        log(f"  fig7 {key:34s} {fmt_status(r, 'ns', 'ns')}")

    import ipcsem

    row("pair sync ipcsem.Semaphore", _sync_pair, cfg.pairs)
    row("pair async AsyncSemaphore",
        lambda name: _async_pair(lambda: ipcsem.AsyncSemaphore(name)), cfg.pairs // 4)
    row("pair asyncio.Semaphore", lambda name: _async_pair(lambda: _asyncio.Semaphore(1)),
        cfg.pairs)
    row("handoff sync thread-thread", _handoff_threads, handoffs, 2)
    row("handoff sync process-process",
        lambda x, y: _handoff_process(x, y, "sync", "sync"), handoffs, 2)
    row("handoff async task-task", lambda x, y: _handoff_tasks(
        lambda: (ipcsem.AsyncSemaphore(x), ipcsem.AsyncSemaphore(y))), handoffs, 2)
    row("handoff async task-sync process",
        lambda x, y: _handoff_process(x, y, "async", "sync"), handoffs, 2)
    row("handoff async task-async process",
        lambda x, y: _handoff_process(x, y, "async", "async"), handoffs, 2)
    row("handoff asyncio.Semaphore task-task", lambda *_: _handoff_tasks(
        lambda: (_asyncio.Semaphore(0), _asyncio.Semaphore(0))), handoffs)
    # The loop gaps with 1,000 waiting tasks, next to asyncio.Semaphore's
    # (tools/bench/loopgaps.py): fresh processes, interleaved runs.
    from .. import loopgaps

    try:
        out["loop_gaps"] = loopgaps.measure(runs=1 if cfg.quick else 3)
        out["loop_gaps_table"] = loopgaps.table(out["loop_gaps"])
        log("  fig7 loop gaps:\n    " + "\n    ".join(out["loop_gaps_table"]))
    except Exception as e:
        out["loop_gaps_error"] = f"{type(e).__name__}: {e}"
        log(f"  fig7 loop gaps: {out['loop_gaps_error']}")
    return out
