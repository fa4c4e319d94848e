"""The public Semaphore: a named counting semaphore shared by unrelated
processes, strict FIFO, multi-unit, owned by processes, recovered on death.

The protocol lives in the C ledger (_ledger.c); this module adds what needs
the kernel: parking on a doorbell, deadlines, Ctrl-C, and healing (waiters
recover dead holders themselves, so no daemon is required).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import final

from . import _identity, _ledger, _names, _recovery, _segment
from ._errors import IpcsemError, LedgerFull, Timeout, Unlinked

ME = _identity.ME
GRANTED = _ledger.GRANTED          # take()/enqueue(): units are ours
BUSY = _ledger.BUSY                # take(): not now
STATE_GRANTED = _ledger.STATE_GRANTED

# A blocked waiter wakes at least this often to look for dead holders (one
# waiter per semaphore actually scans, elected through the ledger), so units
# of a dead holder come back within about a second with no supervisor.
HEAL_INTERVAL = 0.5


@dataclass(frozen=True)
class Holder:
    """A process holding units.  (pid, start) is its identity; ``start`` is
    its start time in clock ticks since boot."""

    pid: int
    start: int
    units: int
    since: float          # epoch seconds when its holding went from 0 to > 0
    acquisitions: int     # grants it received since it registered


@dataclass(frozen=True)
class Waiter:
    """A blocked acquire, in queue order."""

    pid: int
    start: int
    tid: int              # native thread id of the waiting thread
    units: int
    priority: int
    since: float          # epoch seconds when it started waiting
    ticket: int           # FIFO order within a priority


@dataclass(frozen=True)
class Stats:
    """Counters of one semaphore, read together under its lock."""

    name: str
    capacity: int
    available: int
    unowned: int          # units out without an owner (signalled pattern, disown)
    held: int
    holders: int
    waiting: int
    acquisitions: int
    recovered_units: int  # units returned from dead processes, ever
    recoveries: int       # dead processes recovered, ever
    lock_repairs: int     # times a dead ledger-lock owner's update was rolled back
    created: float
    creator_pid: int


def _split(result):
    """C calls return a plain value, or (value, wakes) after a lock repair."""
    if result.__class__ is tuple:
        return result
    return result, None


@final
class Semaphore:
    """A named counting semaphore shared by any process that knows the name.

    ``Semaphore(name, capacity=N)`` opens NAME or creates it with N units;
    ``Semaphore(name)`` opens an existing one (NotFound if absent).
    Units belong to the acquiring *process* until it releases them; if it
    dies they come back, exactly once.
    """

    __slots__ = ("_name", "_seg", "_ledger", "_capacity", "__weakref__")

    def __init__(
        self,
        name: str,
        capacity: int | None = None,
        *,
        initial: int | None = None,
        mode: int = 0o600,
        max_holders: int = _segment.DEFAULT_SLOTS,
        max_waiters: int = _segment.DEFAULT_SLOTS,
    ) -> None:
        _names.validate(name)
        if capacity is not None:
            _check_int("capacity", capacity, 1, _ledger.MAX_CAPACITY)
        if initial is not None:
            if capacity is None:
                raise ValueError("initial= needs capacity= (it only applies when creating)")
            _check_int("initial", initial, 0, capacity)
        _check_int("mode", mode, 0, 0o777)
        _check_int("max_holders", max_holders, 1, _ledger.MAX_SLOTS)
        _check_int("max_waiters", max_waiters, 1, _ledger.MAX_SLOTS)
        self._name = name
        self._seg = _segment.open_segment(name, capacity, initial, mode, max_holders, max_waiters)
        self._ledger = self._seg.ledger
        self._capacity = self._ledger.capacity

    # ------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def available(self) -> int:
        """Units free right now, read from the ledger."""
        return self._ledger.available

    # --------------------------------------------------------------- acquire
    def acquire(self, units: int = 1, *, blocking: bool = True, timeout: float | None = None,
                priority: int = 0) -> bool:
        """Take ``units`` units, all or none.  Returns False on timeout or,
        with ``blocking=False``, when they are not free now.  Waiters are
        served strictly in order: higher ``priority`` first, FIFO within one.
        """
        if timeout is not None:
            _check_timeout(timeout, blocking)
        try:
            result = self._ledger.take(ME.pid, ME.start, units, priority)
        except LedgerFull:
            result = self._after_heal(self._ledger.take, ME.pid, ME.start, units, priority)
        if result == GRANTED:
            return True
        code, wakes = _split(result)
        self._seg.ring(wakes)
        if code == GRANTED:
            return True
        if not blocking or timeout == 0:
            return False
        return self._wait(units, timeout, priority)

    def try_acquire(self, units: int = 1) -> bool:
        """Take ``units`` now if that overtakes nobody; never blocks."""
        return self.acquire(units, blocking=False)

    def _wait(self, units: int, timeout: float | None, priority: int) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        ledger, pid, start = self._ledger, ME.pid, ME.start
        try:
            entry = ledger.enqueue(pid, start, _identity.native_tid(), units, priority)
        except LedgerFull:
            entry = self._after_heal(ledger.enqueue, pid, start, _identity.native_tid(), units,
                                     priority)
        entry, wakes = _split(entry)
        self._seg.ring(wakes)
        if entry == GRANTED:
            return True
        try:
            bell = self._seg.doorbell(entry)
            bell.drain()  # rings meant for this entry's previous user
            while True:
                if ledger.state(entry) == STATE_GRANTED or ledger.unlinked:
                    if self._settle(entry, cancel=False):
                        return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return self._settle(entry, cancel=True)
                if ledger.claim_heal(time.time_ns(), int(HEAL_INTERVAL * 1e9)):
                    _recovery.heal(self._seg)
                    continue
                nap = HEAL_INTERVAL if deadline is None else min(HEAL_INTERVAL, deadline - now)
                bell.wait(nap)  # a signal handler's exception propagates from here
        except BaseException:
            # Ctrl-C, SystemExit, anything: leave nothing behind.  If the grant
            # raced in, give the units back: the caller never learns of them.
            if self._settle(entry, cancel=True):
                self.release(units)
            raise

    def _after_heal(self, op, *args):
        # A full table may be full of the dead: recover them and try once more;
        # if it is still full, the LedgerFull stands.
        _recovery.heal(self._seg)
        return op(*args)

    def _settle(self, entry: int, cancel: bool) -> bool:
        outcome, wakes = self._ledger.settle(entry, ME.pid, ME.start, 1 if cancel else 0)
        self._seg.ring(wakes)
        if outcome == 1:
            return True
        if outcome == -1 and not cancel:
            if self._ledger.unlinked:
                raise Unlinked(f"semaphore {self._name!r} was unlinked while waiting", self._name)
            raise IpcsemError(
                f"queue entry of this process vanished from {self._name!r}: was it "
                "recovered as dead? (identity confusion; please report)", self._name)
        return False

    # --------------------------------------------------------------- release
    def release(self, units: int = 1) -> None:
        """Give back ``units``: owned units first; beyond that an unowned post
        (producer/consumer signalling), allowed only up to the capacity:
        otherwise ValueError and nothing changes."""
        wakes = self._ledger.release(ME.pid, ME.start, units)
        if wakes is not None:
            self._seg.ring(wakes)

    def disown(self, units: int = 1) -> None:
        """Hand owned units off without returning them: they stay taken but
        belong to nobody, so this process's death no longer returns them
        (a consumer's item, a producer's filled slot).  An unowned post by
        anyone (``release`` beyond what it owns) returns them later."""
        self._seg.ring(_split(self._ledger.disown(ME.pid, ME.start, units))[1])

    # ------------------------------------------------------ context managers
    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def hold(self, units: int = 1, *, timeout: float | None = None, priority: int = 0) -> _Hold:
        """``with sem.hold(2, timeout=5):`` hold 2 units for the block;
        raises ipcsem.Timeout if they cannot be had in time."""
        if timeout is not None:
            _check_timeout(timeout, True)
        return _Hold(self, units, timeout, priority)

    # ----------------------------------------------------------- observation
    def _snapshot(self):
        header, holders, waiters, wakes = self._ledger.snapshot()
        self._seg.ring(wakes)
        return header, holders, waiters

    def holders(self) -> list[Holder]:
        """Processes holding units now."""
        _, holders, _ = self._snapshot()
        return [
            Holder(pid, start, units, since / 1e9, acquired)
            for _slot, pid, start, units, since, acquired, _pending, _reg in holders
            if units > 0
        ]

    def waiters(self) -> list[Waiter]:
        """Blocked acquires in the order they will be served."""
        _, _, waiters = self._snapshot()
        queued = [w for w in waiters if w[1] == _ledger.WAITING]
        queued.sort(key=lambda w: (-w[6], w[7]))
        return [
            Waiter(pid, start, tid, units, prio, since / 1e9, ticket)
            for _e, _s, pid, start, tid, units, prio, ticket, since, _h in queued
        ]

    def stats(self) -> Stats:
        h, holders, _ = self._snapshot()
        held = sum(x[3] for x in holders)
        return Stats(self._name, h["capacity"], h["available"], h["unowned"], held,
                     sum(1 for x in holders if x[3] > 0), h["waiting"], h["acquisitions"],
                     h["recovered_units"], h["recoveries"], h["lock_repairs"],
                     h["created_ns"] / 1e9, h["creator_pid"])

    def recover(self) -> int:
        """Return the units of dead holders now; the number of units recovered."""
        return _recovery.heal(self._seg)

    def check(self) -> None:
        """Verify the ledger invariant (see docs/design.md); raise Corrupt if broken."""
        self._seg.ring(self._ledger.check())

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Unmap.  Units this process holds stay held (and recoverable)."""
        if self._seg is not None:
            self._seg.ring(_split(self._ledger.unregister(ME.pid, ME.start))[1])
            self._seg.close()
            self._seg = None

    def unlink(self) -> None:
        """Remove the name (see ipcsem.unlink)."""
        _segment.unlink(self._name)

    def __repr__(self) -> str:
        if self._seg is None:
            return f"<ipcsem.Semaphore {self._name!r} closed>"
        return f"<ipcsem.Semaphore {self._name!r} {self.available}/{self._capacity} available>"


class _Hold:
    __slots__ = ("_sem", "_units", "_timeout", "_priority")

    def __init__(self, sem: Semaphore, units: int, timeout, priority: int) -> None:
        self._sem, self._units, self._timeout, self._priority = sem, units, timeout, priority

    def __enter__(self) -> Semaphore:
        if not self._sem.acquire(self._units, timeout=self._timeout, priority=self._priority):
            raise Timeout(
                f"could not acquire {self._units} unit(s) of {self._sem.name!r} "
                f"within {self._timeout} s", self._sem.name)
        return self._sem

    def __exit__(self, *exc) -> None:
        self._sem.release(self._units)


def _check_int(what: str, value, low: int, high: int) -> None:
    if value.__class__ is not int:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, got {value}")


def _check_timeout(timeout, blocking: bool) -> None:
    if not blocking:
        raise ValueError("a timeout makes no sense with blocking=False")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not (0 <= timeout < math.inf):
        raise ValueError(f"timeout must be finite and >= 0, got {timeout}")
