"""The thread that steps event-loop waiters' ZooKeeper requests (one per
backend): network I/O off the loop's thread, steps coalesced, retries
scheduled for later.  What it steps is anything with ``work()``: the
queued request of ``_handle`` (``_Queued``)."""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from typing import Protocol

from .. import _proc

log = logging.getLogger("ipcsem.zk")


class Step(Protocol):
    """One unit of stepping: ``work()`` does the next step (never raises
    for the server's troubles; it schedules itself again instead)."""

    def work(self) -> None: ...


class Stepper:
    """One thread per backend that steps event-loop waiters' requests: it
    queues, decides and grants for them (network I/O) so the loop's thread
    never waits for a server.  Steps are coalesced (a request scheduled
    twice runs once) and retried later when the server does not answer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[Step] = []
        self._scheduled: set[Step] = set()
        self._later: list[tuple[float, int, Step]] = []
        self._seq = itertools.count()
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None

    def schedule(self, w: Step, after: float = 0.0) -> None:
        with self._cond:
            if after > 0:
                heapq.heappush(self._later, (time.monotonic() + after, next(self._seq), w))
            elif w not in self._scheduled:
                self._scheduled.add(w)
                self._ready.append(w)
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = _proc.start_named_thread("ipcsem-zk-steps", self._run)
            self._cond.notify()

    def _next(self) -> Step:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    _, _, w = heapq.heappop(self._later)
                    if w not in self._scheduled:
                        self._scheduled.add(w)
                        self._ready.append(w)
                if self._ready:
                    w = self._ready.pop(0)
                    self._scheduled.discard(w)
                    return w
                self._cond.wait(None if not self._later else max(0.0, self._later[0][0] - now))

    def _run(self) -> None:
        while True:
            w = self._next()
            try:
                w.work()
            except BaseException:  # a bug of ours: never let the thread die with it
                log.exception("ipcsem: stepping a queued request failed")
