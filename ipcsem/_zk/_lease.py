"""What a grant on ZooKeeper gives this process: the lease the caller sees,
the hold node behind it, and the book of every hold of one semaphore in
this process (units belong to the process, as on one machine)."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .._records import Lease
from ._session import Session

log = logging.getLogger("ipcsem.zk")

#: ``on_lost(lease, reason)``: told once per lease whose session was lost.
OnLost = Callable[[Lease, str], None]


class ZkLease(Lease):
    """``ipcsem.Lease`` on ZooKeeper: ``valid`` and ``deadline`` are read
    from the session that carries the hold, at each access."""

    __slots__ = ("_hold", "previous_owner_died", "slots", "token", "units")

    units: int
    slots: tuple[int, ...]
    token: int
    previous_owner_died: bool

    def __init__(self, units: int, slots: tuple[int, ...], token: int,
                 previous_owner_died: bool, hold: Hold) -> None:
        self.units = units
        self.slots = slots
        self.token = token
        self.previous_owner_died = previous_owner_died
        self._hold = hold

    @property
    def valid(self) -> bool:
        """False once the session carrying it can no longer be proven alive
        (for good: a late reply never makes it valid again)."""
        return self._hold.valid()

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` until which the lease is guaranteed."""
        return self._hold.deadline()

    def __repr__(self) -> str:
        died = ", previous_owner_died=True" if self.previous_owner_died else ""
        slots = f", slots={self.slots}" if self.slots else ""
        return (f"ZkLease(units={self.units}{slots}, token={self.token}{died}, "
                f"valid={self.valid})")


class Hold:
    """A grant this process holds (one h_ node)."""

    __slots__ = ("_told", "deadline_at_loss", "depth", "lease", "name", "on_lost", "owner",
                 "path", "released", "releasing", "session", "slots", "token", "units")

    def __init__(self, path: str, name: str, units: int, slots: tuple[int, ...], owner: int,
                 token: int, session: Session, on_lost: OnLost | None) -> None:
        self.path, self.name, self.units, self.slots = path, name, units, slots
        self.owner, self.token, self.session = owner, token, session
        self.lease: ZkLease | None = None
        self.depth = 1
        self.released = False
        self.releasing = False    # a release of this process is returning it now
        self.on_lost = on_lost
        self.deadline_at_loss: float | None = None
        self._told = threading.Lock()

    def tell_lost(self, reason: str) -> None:
        """Run the on_lost callback, once, whoever notices first (the
        connection's loss hook, or a release that found the lease lost)."""
        if self.on_lost is None or self.lease is None or not self._told.acquire(False):
            return
        try:
            self.on_lost(self.lease, reason)
        except Exception:  # a user's callback: log it, never break the loss handling
            log.exception("ipcsem: on_lost callback failed")

    def valid(self) -> bool:
        # Released or not, a lease is valid while its session is proven alive:
        # valid == False means "lost", never "given back".
        return self.session.valid()

    def deadline(self) -> float | None:
        d = self.session.deadline()
        if d == float("-inf"):
            lost = self.session.lost_at or time.monotonic()
            return min(lost, self.deadline_at_loss or lost)
        self.deadline_at_loss = d
        return d


class Book:
    """The holds of one semaphore generation in this process (shared by
    every handle of it: units belong to the process)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.holds: list[Hold] = []
        self.by_lease: dict[int, Hold] = {}

    def fresh(self) -> Book:
        """Self, emptied first in a forked child: the child holds nothing
        (hazard 13), its parent's holds are its parent's."""
        if self.pid != os.getpid():
            self._reset()
        return self

    def add(self, h: Hold) -> None:
        # A forked child's first grant goes into a book of its own, not
        # into the one inherited from its parent (which its next look
        # would empty, grant and all).
        self.fresh()
        with self.lock:
            self.holds.append(h)
            if h.lease is not None:
                self.by_lease[id(h.lease)] = h

    def drop(self, h: Hold) -> None:
        with self.lock:
            h.released = True
            if h in self.holds:
                self.holds.remove(h)
            if h.lease is not None:
                self.by_lease.pop(id(h.lease), None)

    def of_session(self, session: Session) -> list[Hold]:
        with self.lock:
            return [h for h in self.holds if h.session is session]


__all__ = ["Book", "Hold", "OnLost", "ZkLease"]
