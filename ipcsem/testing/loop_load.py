"""The loop-gap workload: 1,000 tasks of one fresh process waiting on busy
semaphores while other processes take and release them, and a 1 ms ticker
(``watch_loop_gaps``) recording every gap of the loop -- issue 10's proof
that the loop never blocks on a wait.  One home for the test
(tests/test_aio_loop.py) and the benchmark (``python -m tools.bench.loopgaps``),
so that both measure the same program.

``start_churners(names, per_name, seconds, hold, backend=None, units=1)``
    ``per_name`` processes per semaphore (``python -m ipcsem.testing churn``)
    that take ``units``, hold them ``hold`` s, give them back and pause as
    long, for ``seconds``; returned once each is running.
``run_loop_load(kind, names, *, tasks, hold, seconds, samples=False)``
    the measured program in a fresh process (``python -m ipcsem.testing
    loop-load``: nothing but asyncio, ipcsem and the ticker in its heap --
    no pytest, no harness, whose objects every garbage collection would
    walk too), its report as a dict.  ``kind`` "ipcsem": the tasks use
    ``ipcsem.AsyncSemaphore`` over ``names`` (capacity 2; the churners are
    the other processes); "asyncio": ``asyncio.Semaphore(2)`` each, with
    in-loop churner tasks in the other processes' place (the anchor: an
    asyncio.Semaphore cannot be shared by processes).

Each task loops ``acquire(timeout=2)`` / hold 1 ms / ``release``.  The
report: ``gaps`` (``LoopGaps.to_dict``), ``summary``, ``grants``,
``grants_per_s``, ``max_queued`` (most requests queued at once, ipcsem
only), ``objects_per_task`` (tracked objects per waiting task: what each
collection walks), ``gc_max_ms`` and ``gc_runs`` (per generation) over the
measured window.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ._child import MODULE

CAPACITY = 2            # of each semaphore of the workload


def start_churners(names: list[str], per_name: int, seconds: float, hold: float,
                   backend: str | None = None, units: int = 1) -> list[subprocess.Popen[str]]:
    """The other processes of the workload (each taking ``units`` at a
    time), each running once this returns.  The caller kills them (they end
    by themselves after ``seconds``)."""
    cmd = [sys.executable, "-m", MODULE, "churn"]
    extra = (["--units", str(units)] if units != 1 else []) + \
        ([] if backend is None else ["--backend", backend])
    procs = [subprocess.Popen([*cmd, n, str(seconds), str(hold), *extra],
                              stdout=subprocess.PIPE, text=True)
             for n in names for _ in range(per_name)]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            for q in procs:
                q.kill()
            raise RuntimeError(f"a churner did not start (said {line!r})")
    return procs


def run_loop_load(kind: str, names: list[str], *, tasks: int = 1000, hold: float = 0.002,
                  seconds: float = 3.0, samples: bool = False,
                  timeout: float | None = None) -> dict[str, Any]:
    """The measured program's report (see the module docstring).  Raises
    RuntimeError with its stderr if it fails."""
    cmd = [sys.executable, "-m", MODULE, "loop-load", kind, ",".join(names), str(tasks),
           str(hold), str(seconds)] + (["--samples"] if samples else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         timeout=seconds + 120 if timeout is None else timeout)
    if out.returncode != 0:
        raise RuntimeError(f"the loop-load program failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


# ------------------------------------------------- the processes' side
def churn(name: str, seconds: float, hold: float, backend: str | None = None,
          units: int = 1) -> None:
    import time

    from .._semaphore import Semaphore

    s = Semaphore(name, backend=backend)
    end = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < end:
        if s.acquire(units, timeout=0.5):
            time.sleep(hold)
            s.release(units)
        time.sleep(hold)


def loop_load(kind: str, names: list[str], tasks: int, hold: float, seconds: float,
              samples: bool) -> dict[str, Any]:
    import asyncio
    import gc
    import time

    from .loop_gaps import watch_loop_gaps

    gc_runs: list[tuple[int, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_runs.append((info["generation"], time.perf_counter() - started[0]))

    async def main() -> dict[str, Any]:
        if kind == "ipcsem":
            from .._aio import AsyncSemaphore

            sems: list[Any] = [AsyncSemaphore(n) for n in names]

            async def acquire(s: Any) -> bool:
                return bool(await s.acquire(timeout=2.0))
        else:
            sems = [asyncio.Semaphore(CAPACITY) for _ in names]

            async def acquire(s: Any) -> bool:
                try:
                    await asyncio.wait_for(s.acquire(), 2.0)
                    return True
                except asyncio.TimeoutError:
                    return False
        stop = asyncio.Event()
        grants = [0]

        async def worker(i: int) -> None:
            s = sems[i % len(sems)]
            while not stop.is_set():
                if await acquire(s):
                    grants[0] += 1
                    await asyncio.sleep(0.001)
                    s.release()

        async def churner(s: asyncio.Semaphore) -> None:     # the anchor's "others"
            while not stop.is_set():
                async with s:
                    await asyncio.sleep(hold)
                await asyncio.sleep(hold)

        loop = asyncio.get_running_loop()
        before = len(gc.get_objects())
        ts = [] if kind == "ipcsem" else [loop.create_task(churner(s))
                                          for s in sems for _ in range(2)]
        max_queued = None
        async with watch_loop_gaps(0.001) as gaps:
            # Queue them in batches (1,000 first steps in one loop iteration
            # is a burst of work the bound is not about).
            for i in range(tasks):
                ts.append(loop.create_task(worker(i)))
                if i % 50 == 49:
                    await asyncio.sleep(0)
            await asyncio.sleep(1.0)
            per_task = (len(gc.get_objects()) - before) / tasks
            gaps.reset()                     # measure the waiting, not the set-up
            gc_runs.clear()
            g0, t0 = grants[0], time.monotonic()
            while time.monotonic() - t0 < seconds:
                await asyncio.sleep(0.1)
                if kind == "ipcsem":
                    queued = sum(s.stats().waiting for s in sems)
                    max_queued = max(max_queued or 0, queued)
            took = time.monotonic() - t0
            measured = grants[0] - g0
            stop.set()
            await asyncio.gather(*ts)
        if kind == "ipcsem":
            for s in sems:
                s.close()
        return {"gaps": gaps.to_dict(samples=samples), "summary": gaps.summary(),
                "grants": measured, "grants_per_s": measured / took, "max_queued": max_queued,
                "objects_per_task": per_task,
                "gc_max_ms": max((t for _, t in gc_runs), default=0.0) * 1e3,
                "gc_runs": [sum(1 for g, _ in gc_runs if g == k) for k in range(3)]}

    gc.callbacks.append(on_gc)
    try:
        return asyncio.run(main())
    finally:
        gc.callbacks.remove(on_gc)
