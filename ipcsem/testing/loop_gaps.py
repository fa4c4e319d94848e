"""Proving an event loop was never held: a ticker task and the gaps between
its ticks (watch_loop_gaps, LoopGaps, run_checked, new_event_loop), and a
process's threads and descriptors (resources)."""
from __future__ import annotations

import asyncio as _asyncio
import gc as _gc
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True)
class Resources:
    """What a process uses (``resources()``): its threads' names (as
    ``/proc/PID/task/*/comm`` says) and how many descriptors it has open."""

    threads: tuple[str, ...]
    fds: int

    @property
    def ipcsem_threads(self) -> tuple[str, ...]:
        """The threads ipcsem started (named ``ipcsem-*``)."""
        return tuple(t for t in self.threads if t.startswith("ipcsem-"))


def resources(pid: int | None = None) -> Resources:
    """The threads and open file descriptors of ``pid`` (default: this
    process), counted from ``/proc``.  ProcessLookupError if it is gone."""
    base = "/proc/self" if pid is None else f"/proc/{pid}"
    try:
        tids = os.listdir(f"{base}/task")
        fds = os.listdir(f"{base}/fd")
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    names = []
    for t in sorted(tids, key=int):
        try:
            with open(f"{base}/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue               # the thread ended meanwhile
    # listdir of /proc/self/fd holds one descriptor of its own while it runs
    return Resources(tuple(names), len(fds) - (1 if pid is None else 0))


def _runqueue_ns() -> int | None:
    """Nanoseconds this thread has spent runnable but not running (the
    kernel's schedstat), or None where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


class LoopGaps:
    """What a ticker task saw (``watch_loop_gaps``): the gap between each
    of its ticks, how much of each gap the kernel kept the loop's thread
    runnable but off a CPU (run-queue delay: the machine was busy, not the
    loop), and how much of it the interpreter's garbage collector ran (a
    collection stops every thread of the process, whatever code allocated
    last).  Seconds throughout."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.samples: list[float] = []      # wall time between ticks
        self.queued: list[float] = []       # run-queue delay within each gap (0 if unknown)
        self.collected: list[float] = []    # garbage-collector time within each gap
        self.queued_others: list[float] = []  # the process's other threads' run-queue delay
        self.cpu: list[float] = []          # CPU time the loop's thread used within each gap
        self.schedstat = _runqueue_ns() is not None

    @property
    def max(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def blocked(self) -> list[float]:
        """Each gap less its run-queue delay: the time the loop's thread was
        running something else, or sleeping, instead of the loop (a call
        that blocks, a lock, the GIL held by another thread, a collection)."""
        return [max(g - q, 0.0) for g, q in zip(self.samples, self.queued, strict=True)]

    @property
    def max_blocked(self) -> float:
        return max(self.blocked, default=0.0)

    @property
    def held(self) -> list[float]:
        """Each gap less what the machine and the interpreter took: the
        run-queue delay of the loop's thread and of the process's other
        threads (one of them waiting for a CPU while it holds the GIL keeps
        the loop waiting too) and the garbage collector's runs.  What is
        left is code keeping the loop from running: a call that blocks or
        burns CPU, a lock, the GIL held by a thread that is running."""
        return [max(g - q - o - c, 0.0)
                for g, q, o, c in zip(self.samples, self.queued, self.queued_others,
                                      self.collected, strict=True)]

    @property
    def max_held(self) -> float:
        return max(self.held, default=0.0)

    def quantile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        s = sorted(self.samples)
        return s[min(int(q * len(s)), len(s) - 1)]

    def reset(self) -> None:
        """Forget what was seen so far (e.g. a set-up phase)."""
        self.samples.clear()
        self.queued.clear()
        self.collected.clear()
        self.queued_others.clear()
        self.cpu.clear()

    def over(self, limit: float) -> list[tuple[float, float]]:
        """(gap, run-queue delay) of every gap above ``limit``."""
        return [(g, q) for g, q in zip(self.samples, self.queued, strict=True) if g > limit]

    def summary(self) -> str:
        ms = 1e3
        worst = sorted(zip(self.samples, self.queued, self.queued_others, self.collected,
                           strict=True), reverse=True)[:5]
        rows = zip(self.held, self.samples, self.cpu, strict=True)
        most_held = sorted(rows, reverse=True)[:3]
        return (f"{len(self.samples)} ticks of {self.tick * ms:g} ms: p50 "
                f"{self.quantile(0.5) * ms:.2f} ms, p99 {self.quantile(0.99) * ms:.2f} ms, "
                f"p99.9 {self.quantile(0.999) * ms:.2f} ms, max {self.max * ms:.2f} ms "
                f"(less run-queue delay {self.max_blocked * ms:.2f} ms"
                f"{'' if self.schedstat else ': no schedstat here'}; also less the other threads' "
                f"and garbage collection {self.max_held * ms:.2f} ms); worst (gap, queued, "
                "others queued, collecting): "
                + ", ".join(f"({g * ms:.1f}, {q * ms:.1f}, {o * ms:.1f}, {c * ms:.1f})"
                            for g, q, o, c in worst)
                + "; most held (held, gap, the loop thread's CPU): "
                + ", ".join(f"({h * ms:.1f}, {g * ms:.1f}, {c * ms:.1f})"
                            for h, g, c in most_held))

    def check(self, limit: float, *, allow_runqueue: bool = False,
              allow_machine: bool = False) -> None:
        """AssertionError (with the distribution) if a gap exceeded
        ``limit`` seconds.  ``allow_runqueue=True`` forgives the part of a
        gap the kernel says the loop's thread spent waiting for a CPU (use
        it on a loaded machine: it still fails whenever the loop itself was
        held); ``allow_machine=True`` forgives all of ``held``'s exclusions
        (the other threads' run-queue delay, garbage collection) too."""
        worst = self.max_held if allow_machine else \
            self.max_blocked if allow_runqueue else self.max
        if worst > limit:
            raise AssertionError(f"the event loop was held {worst * 1e3:.2f} ms > "
                                 f"{limit * 1e3:g} ms: {self.summary()}")

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A summary that JSON can carry; with ``samples``, every gap too
        (``LoopGaps.from_dict`` rebuilds the whole)."""
        d: dict[str, Any] = {
            "ticks": len(self.samples), "p50_ms": self.quantile(0.5) * 1e3,
            "p99_ms": self.quantile(0.99) * 1e3, "max_ms": self.max * 1e3,
            "max_blocked_ms": self.max_blocked * 1e3, "max_held_ms": self.max_held * 1e3,
            "over_10ms": [(g * 1e3, q * 1e3) for g, q in self.over(0.010)]}
        if samples:
            d.update(tick=self.tick, schedstat=self.schedstat, samples=self.samples,
                     queued=self.queued, queued_others=self.queued_others,
                     collected=self.collected, cpu=self.cpu)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoopGaps:
        """The LoopGaps another process measured (``to_dict(samples=True)``)."""
        gaps = cls(float(d["tick"]))
        gaps.schedstat = bool(d["schedstat"])
        for field in ("samples", "queued", "queued_others", "collected", "cpu"):
            getattr(gaps, field).extend(float(x) for x in d[field])
        return gaps


class Ticker:
    def __init__(self, tick: float) -> None:
        self.gaps = LoopGaps(tick)
        self._task: _asyncio.Task[None] | None = None
        self._paused = False
        self._gc_runs: list[tuple[float, float]] = []    # (start, end), monotonic
        self._gc_start = 0.0
        self._others: dict[str, int] = {}                 # tid -> its run-queue ns so far
        self._fds: dict[str, int] = {}                    # tid -> its schedstat, open
        self._calls = 0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Called by the collector in whichever thread it runs, GIL held.
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self._gc_runs.append((self._gc_start, time.monotonic()))

    def _collecting(self, start: float, end: float) -> float:
        """Garbage-collector time within [start, end]; forgets runs before."""
        runs = self._gc_runs
        total = sum(min(e, end) - max(s, start) for s, e in runs if e > start and s < end)
        runs[:] = [r for r in runs if r[1] > end]
        return total

    def _others_queued(self) -> float:
        """Run-queue delay of this process's other threads since the last
        call (seconds; a thread new since then counts from its start).
        Descriptors stay open and the thread list is re-read every 64th
        call: each system call lets go of the GIL, and taking it back can
        cost the loop a switch interval while another thread computes."""
        self._calls += 1
        if self._calls % 64 == 1:
            me = str(threading.get_native_id())
            try:
                tids = [t for t in os.listdir("/proc/self/task") if t != me]
            except OSError:
                tids = []
            for tid in tids:
                if tid not in self._fds:
                    try:
                        self._fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
                    except OSError:
                        continue
        total = 0
        for tid, fd in list(self._fds.items()):
            try:
                ns = int(os.pread(fd, 64, 0).split()[1])
            except (OSError, ValueError, IndexError):
                ns = None              # it ended
            if ns is None:
                os.close(fd)
                del self._fds[tid]
                self._others.pop(tid, None)
                continue
            total += ns - self._others.get(tid, 0)
            self._others[tid] = ns
        return total / 1e9

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    async def _run(self) -> None:
        loop = _asyncio.get_running_loop()
        try:       # this thread's schedstat, kept open (see _others_queued)
            own = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            own = -1

        def queued() -> int:
            try:
                return int(os.pread(own, 64, 0).split()[1])
            except (OSError, ValueError, IndexError):
                return 0

        try:
            await self._tick(loop, queued)
        finally:
            if own >= 0:
                os.close(own)

    async def _tick(self, loop: _asyncio.AbstractEventLoop,
                    queued: Callable[[], int]) -> None:
        last, last_q = loop.time(), queued()
        last_cpu = time.thread_time()
        self._others_queued()
        while True:
            await _asyncio.sleep(self.gaps.tick)
            now, q, cpu = loop.time(), queued(), time.thread_time()
            collecting = self._collecting(last, now)
            others = self._others_queued()
            if not self._paused:
                self.gaps.samples.append(now - last)
                self.gaps.queued.append((q - last_q) / 1e9)
                self.gaps.queued_others.append(others)
                self.gaps.collected.append(collecting)
                self.gaps.cpu.append(cpu - last_cpu)
            last, last_q, last_cpu = now, q, cpu

    def start(self) -> None:
        _gc.callbacks.append(self._on_gc)
        self._task = _asyncio.get_running_loop().create_task(self._run(), name="ipcsem-ticker")

    async def stop(self) -> LoopGaps:
        if self._on_gc in _gc.callbacks:
            _gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except _asyncio.CancelledError:
                pass
            self._task = None
        self._close_fds()
        return self.gaps


class watch_loop_gaps:
    """``async with watch_loop_gaps(tick=0.001) as gaps:`` runs a ticker
    task for the block; afterwards ``gaps`` (a LoopGaps) holds every gap
    between its ticks: ``gaps.check(0.010)``, ``gaps.summary()``.
    ``gaps.reset()`` inside the block forgets a set-up phase."""

    def __init__(self, tick: float = 0.001) -> None:
        self._ticker = Ticker(tick)

    async def __aenter__(self) -> LoopGaps:
        self._ticker.start()
        return self._ticker.gaps

    async def __aexit__(self, *exc: object) -> None:
        await self._ticker.stop()


def new_event_loop(loop: str = "asyncio") -> _asyncio.AbstractEventLoop:
    """A fresh event loop: ``"asyncio"`` (the default policy's) or
    ``"uvloop"`` (ImportError if uvloop is not installed)."""
    if loop == "asyncio":
        return _asyncio.new_event_loop()
    if loop == "uvloop":
        import uvloop

        ev: _asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return ev
    raise ValueError(f"unknown loop {loop!r}: 'asyncio' or 'uvloop'")


def run_checked(coro: Coroutine[Any, Any, _T], *, max_gap: float | None = None,
                loop: str = "asyncio", tick: float = 0.001,
                allow_runqueue: bool = True) -> tuple[_T, LoopGaps]:
    """Run ``coro`` to completion on a fresh ``loop`` under a ticker and
    return ``(result, gaps)``; with ``max_gap``, AssertionError if the loop
    was held longer than that (see ``LoopGaps.check``; on a loaded machine
    run-queue delay is forgiven unless ``allow_runqueue=False``).  Tasks
    the coroutine left running are cancelled and reported (AssertionError):
    a task still waiting on a semaphore after the test is a leak."""
    ev = new_event_loop(loop)

    async def main() -> tuple[_T, LoopGaps]:
        async with watch_loop_gaps(tick) as gaps:
            result = await coro
        return result, gaps

    try:
        result, gaps = ev.run_until_complete(main())
        left = [t for t in _asyncio.all_tasks(ev) if not t.done()]
        for t in left:
            t.cancel()
        if left:
            ev.run_until_complete(_asyncio.gather(*left, return_exceptions=True))
            raise AssertionError(f"{len(left)} task(s) still running after the coroutine "
                                 f"returned: {sorted(t.get_name() for t in left)}")
    finally:
        ev.run_until_complete(ev.shutdown_asyncgens())
        ev.close()
    if max_gap is not None:
        gaps.check(max_gap, allow_runqueue=allow_runqueue)
    return result, gaps
