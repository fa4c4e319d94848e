"""One process's open shared-memory semaphore: the shm backend's Handle.

The protocol is the C ledger's (``_ledger.c``); this module adds what needs
the kernel or Python: who we are, deadlines in monotonic time, healing dead
holders while we wait or when a non-blocking attempt is refused, and the
typed errors' names.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .. import _identity, _pi
from .._backend import Handle, Pending
from .._errors import IpcsemError, LedgerFull, Wedged
from .._records import Holder, Lease, Params, Picture, Stats, Waiter
from . import _ledger, bells, recovery, watch
from .segment import Segment

ME = _identity.ME
LOCK_FOREVER = _ledger.LOCK_FOREVER
WAITING = _ledger.WAITING

# A blocked waiter looks at the ledger at least this often, and one waiter
# per semaphore (elected through the ledger) then looks for dead holders, so
# their units come back within about a second without a supervisor.  A
# refused non-blocking attempt takes part in the same election.
HEAL_INTERVAL = 0.5
SLICE_NS = int(HEAL_INTERVAL * 1e9)
# How long a call that must not wait (take, try_acquire) may wait for the
# ledger lock itself: transactions hold it for ~100 ns, so this only ever
# runs out when the lock's holder is stopped or hung.
TRY_LOCK_NS = 5_000_000
# The same for the event-loop protocol (enqueue, settle, cancel, park): the
# loop's thread runs every task, so it waits for a lock whose holder is off
# a CPU at most 1 ms per call (the asyncio side then backs off, settles
# again later and a cancel is finished by the notifier thread).
LOOP_LOCK_NS = 1_000_000


_log = logging.getLogger("ipcsem")
_seq = itertools.count()        # enqueue order of this process's async entries


class ShmPending(Pending):
    __slots__ = ("entry", "order", "units")

    def __init__(self, entry: int, units: int, priority: int = 0) -> None:
        self.entry = entry
        self.units = units
        # serving order among this process's entries (grants come in it)
        self.order: tuple[int, int] = (-priority, next(_seq))


class FastLedger(NamedTuple):
    """What the facade's C fast path may use (``ShmHandle.fast_ledger``,
    given to ``_ledger.Primitive._fast_attach``, which unpacks it by
    position: keep the order)."""

    ledger: _ledger.Ledger
    on_slice: Callable[[], None]             # our healing slice, called by C's contended wait
    on_watch: Callable[[bool | None], None]  # our pidfd-watcher switch, likewise
    name: str                                # the semaphore's name, for C's errors


class ShmHandle(Handle):
    """A Handle on a ledger in POSIX shared memory."""

    __slots__ = ("_deferred", "_deferring", "_flushing", "_ledger", "created", "name", "params",
                 "segment")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self.params: Params = segment.params
        self.created = segment.created
        self._ledger = segment.ledger
        # An event loop's releases the ledger lock did not allow at once
        # (release_soon), oldest first: (units, owner).
        self._deferred: list[tuple[int, int]] = []
        self._deferring = threading.Lock()     # guards _deferred and _flushing
        self._flushing = False                 # a thread is doing them now

    # ------------------------------------------------------------- reading
    @property
    def available(self) -> int:
        return self._ledger.available

    @property
    def ledger(self) -> _ledger.Ledger:
        return self._ledger

    @property
    def fast_ledger(self) -> FastLedger:
        """What the facade's C fast path may use (see FastLedger)."""
        return FastLedger(self._ledger, self._heal_slice, self._watch, self.name)

    def owner_died(self, owner: int) -> bool:
        key, _tid, _depth, died = self._ledger.mutex
        return key == owner and bool(died)

    def snapshot(self) -> _ledger.Snapshot:
        """The ledger now (``_ledger.Snapshot``), read without the lock."""
        try:
            return self._ledger.snapshot()
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    def holders(self) -> list[Holder]:
        return self._holders(self.snapshot())

    def waiters(self) -> list[Waiter]:
        return self._waiters(self.snapshot())

    def stats(self) -> Stats:
        return self._stats(self.snapshot())

    def picture(self) -> Picture:
        snap = self.snapshot()
        return Picture(self._stats(snap), self._holders(snap), self._waiters(snap))

    def _holders(self, snap: _ledger.Snapshot) -> list[Holder]:
        owner_tid = snap.header.mx_owner_tid if self.params.kind == "mutex" else None
        return [Holder(h.pid, h.start, h.units, h.since_ns / 1e9, h.acquisitions, h.slots,
                       owner_tid or None)
                for h in snap.holders if h.units > 0]

    @staticmethod
    def _waiters(snap: _ledger.Snapshot) -> list[Waiter]:
        return [Waiter(w.pid, w.start, w.tid, w.units, w.priority, w.since_ns / 1e9, w.ticket)
                for w in snap.waiters if w.state == WAITING]

    def _stats(self, snap: _ledger.Snapshot) -> Stats:
        h, p = snap.header, self.params
        return Stats(self.name, h.capacity, h.available, h.unowned,
                     sum(x.units for x in snap.holders),
                     sum(1 for x in snap.holders if x.units > 0), h.waiting, h.acquisitions,
                     h.recovered_units, h.recoveries, h.lock_repairs, h.created_ns / 1e9,
                     h.creator_pid, p.kind, p.slots, p.fair, p.reentrant, p.priority_inheritance)

    # ----------------------------------------------------------- acquiring
    def take(self, units: int, priority: int, owner: int, tid: int) -> Lease | None:
        ledger = self._ledger
        if not self._releases_done(time.monotonic_ns() + TRY_LOCK_NS):
            return None      # an earlier release of ours comes first: not now
        pi = self.params.priority_inheritance
        if pi:
            _pi.about_to_acquire(tid)     # its own priority, before anything of ours raises it
        try:
            try:
                g = ledger.take(ME.pid, ME.start, tid, owner, units, priority,
                                time.monotonic_ns() + TRY_LOCK_NS)
            except LedgerFull:
                self._heal(time.monotonic_ns() + TRY_LOCK_NS)   # full of the dead?
                g = ledger.take(ME.pid, ME.start, tid, owner, units, priority,
                                time.monotonic_ns() + TRY_LOCK_NS)
            if g is None and ledger.claim_heal(time.time_ns(), SLICE_NS) \
                    and self._heal(time.monotonic_ns() + TRY_LOCK_NS):
                # Refused, and it is our turn to look for the dead: a dead
                # holder must not lock out callers that never block.
                g = ledger.take(ME.pid, ME.start, tid, owner, units, priority,
                                time.monotonic_ns() + TRY_LOCK_NS)
        except IpcsemError as e:
            raise e.with_name(self.name) from None
        if pi and g is not None:
            _pi.acquired(self, owner, tid)
        return g

    def take_now(self, units: int, priority: int, owner: int, tid: int) -> Lease | None:
        """As the seam says: one take with the loop's lock bound; no heal, no
        retry (enqueue does those); priority-inheritance mutexes always
        queue (their bookkeeping is enqueue's)."""
        if self.params.priority_inheritance or \
                (self._deferred and not self._releases_done(time.monotonic_ns() + LOOP_LOCK_NS)):
            return None
        try:
            return self._ledger.take(ME.pid, ME.start, tid, owner, units, priority,
                                     time.monotonic_ns() + LOOP_LOCK_NS)
        except (LedgerFull, Wedged):
            return None             # enqueue() heals or says so
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    def _enqueue(self, units: int, priority: int, owner: int, tid: int, flags: int,
                 lock: int) -> _ledger.Grant | int | None:
        ledger = self._ledger
        args = (ME.pid, ME.start, tid, owner, units, priority, flags, lock)
        try:
            return ledger.enqueue(*args)
        except LedgerFull:
            self._heal(lock if lock > 0 else LOCK_FOREVER)
            return ledger.enqueue(*args)

    def wait(self, units: int, priority: int, owner: int, tid: int, deadline: float | None,
             deadlock_raise: bool = False,
             on_slice: Callable[[], None] | None = None) -> Lease | None:
        ledger = self._ledger
        deadline_ns = 0 if deadline is None else max(int(deadline * 1e9), 1)
        flags = _ledger.WF_DEADLOCK_RAISE if deadlock_raise else 0

        pi = self.params.priority_inheritance

        def each_slice() -> None:
            if pi:
                _pi.update(self, ME.pid)     # our owner runs at least as well as we do
            self._heal_slice(deadline_ns)
            if on_slice is not None:
                on_slice()

        slice_ns = int(_pi.SLICE * 1e9) if pi else SLICE_NS
        # Queueing and waiting are one C call: no Python code, where a signal
        # handler could raise, runs between them.  The C wait engages the
        # pidfd watcher itself once it has lasted a moment (_watch).
        args = (ME.pid, ME.start, tid, owner, units, priority, flags, deadline_ns, slice_ns,
                each_slice, self._watch)
        watch.prepare()
        try:
            try:
                g = ledger.wait(*args)
            except LedgerFull:
                self._heal(deadline_ns or LOCK_FOREVER)   # a full table may be full of the dead
                g = ledger.wait(*args)
            if pi and g is not None:
                _pi.acquired(self, owner, tid)
            return g
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    def _heal_slice(self, deadline_ns: int = 0) -> None:
        """A blocked waiter's slice: if it is our turn (one waiter per
        semaphore, elected through the ledger, every HEAL_INTERVAL), look
        for dead holders -- never longer than a slice, never past our
        deadline (monotonic ns, 0: none)."""
        if self._ledger.claim_heal(time.time_ns(), SLICE_NS):
            bound = time.monotonic_ns() + SLICE_NS
            self._heal(min(bound, deadline_ns) if deadline_ns else bound)

    def _watch(self, engaged: bool | None) -> None:
        """A blocked wait of ours has lasted long enough to watch the
        holders' pidfds (True), or that wait ended (False); None: this
        process is about to wait for the first time (since a fork)."""
        if engaged is None:
            watch.prepare()
        elif engaged:
            watch.watching(self.segment)
        else:
            watch.done(self.segment)

    def enqueue(self, units: int, priority: int, owner: int, tid: int, deadlock_raise: bool,
                notify: Callable[[], None]) -> Lease | ShmPending | None:
        """As the seam says; None when the ledger lock was busy for
        LOOP_LOCK_NS (an event loop must not wait for it): try again later."""
        flags = _ledger.WF_ASYNC | (_ledger.WF_DEADLOCK_RAISE if deadlock_raise else 0)
        if not self._releases_done(time.monotonic_ns() + LOOP_LOCK_NS):
            return None      # an earlier release of ours comes first: busy
        try:
            got = self._enqueue(units, priority, owner, tid, flags,
                                time.monotonic_ns() + LOOP_LOCK_NS)
        except IpcsemError as e:
            raise e.with_name(self.name) from None
        if got is None or not isinstance(got, int):
            if got is not None and self.params.priority_inheritance:
                _pi.acquired(self, owner, tid)
            return got
        pending = ShmPending(got, units, priority)
        if self.params.priority_inheritance:
            _pi.queued(self, pending, owner, tid)     # granted from now on, at any moment
        bells.watch(self, pending, notify)
        watch.watching(self.segment)
        return pending

    def settle(self, pending: Pending) -> Lease | None:
        """The Lease once granted, else None (also when the ledger lock was
        busy: the caller looks again at its next notification or slice)."""
        assert isinstance(pending, ShmPending)
        try:
            g = self._ledger.settle(pending.entry, ME.pid, ME.start,
                                    time.monotonic_ns() + LOOP_LOCK_NS)
        except Wedged:
            return None
        except IpcsemError as e:
            self._forget(pending)
            raise e.with_name(self.name) from None
        if g is not None:
            if self.params.priority_inheritance:
                _pi.settled(pending)
            self._forget(pending)
        return g

    def cancel(self, pending: Pending) -> None:
        """Leave the queue, giving back a grant that raced in.  If the ledger
        lock is busy (its holder stopped), the notifier thread finishes it
        as soon as it can: the caller never waits."""
        assert isinstance(pending, ShmPending)
        self._forget(pending)
        try:
            self._ledger.cancel(pending.entry, ME.pid, ME.start,
                                time.monotonic_ns() + LOOP_LOCK_NS)
        except Wedged:
            # uninterrupted, on the notifier thread: it completes
            bells.later(lambda: self._cancel_uninterrupted(pending))

    def _cancel_uninterrupted(self, pending: ShmPending) -> None:
        try:
            self._ledger.cancel(pending.entry, ME.pid, ME.start, _ledger.LOCK_UNINTERRUPTED)
        except Exception:  # noqa: BLE001 - closed or corrupt: nothing left to give back
            pass

    def park(self, pending: Pending, parked: bool) -> None:
        """Tell deadlock detectors whether this entry's event loop has
        nothing else to run (every task waits on ipcsem)."""
        assert isinstance(pending, ShmPending)
        p = _ledger.WF_PARKED
        try:
            self._ledger.set_flags(pending.entry, ME.pid, ME.start, p if parked else 0,
                                   0 if parked else p, time.monotonic_ns() + LOOP_LOCK_NS)
        except Wedged:
            pass

    def _forget(self, pending: ShmPending) -> None:
        # Once per entry: settle() forgets it before raising, and the
        # caller's cancel() then forgets it again.
        if bells.unwatch(self, pending):
            watch.done(self.segment)
        if self.params.priority_inheritance:
            _pi.unqueued(pending)

    # ----------------------------------------------------------- returning
    def release(self, units: int, owner: int, lease: Lease | None = None) -> None:
        token = 0 if lease is None else lease.token
        self._releases_done(LOCK_FOREVER)       # in order: an event loop's deferred ones first
        try:
            if self.params.priority_inheritance:
                # our own priority back in the call that ends our ownership
                _pi.release(self, ME.pid, ME.start, owner, units, token)
            else:
                self._ledger.release(ME.pid, ME.start, owner, units, token)
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    def release_soon(self, units: int, owner: int) -> None:
        """As the seam says: now if the ledger lock is had within
        LOOP_LOCK_NS, else the notifier thread does it as soon as the lock
        is free, before any later acquire or release of this handle (which
        report "busy" meanwhile).  The errors of a release done later (more
        units than this process holds, a mutex it does not own) are logged
        on the "ipcsem" logger: the call that made it has returned."""
        if self.params.priority_inheritance:
            # its owner's own priority comes back in the releasing call
            self.release(units, owner)
            return
        if not self._deferred or self._releases_done(time.monotonic_ns() + LOOP_LOCK_NS):
            try:
                self._ledger.release(ME.pid, ME.start, owner, units, 0,
                                            time.monotonic_ns() + LOOP_LOCK_NS)
                return
            except Wedged:
                pass
            except IpcsemError as e:
                raise e.with_name(self.name) from None
        with self._deferring:
            self._deferred.append((units, owner))
        bells.later(self._finish_releases)

    def _releases_done(self, lock: int) -> bool:
        """True once no deferred release of this handle is left, doing them
        in order, each waiting for the ledger lock until ``lock`` at most;
        False if one is left (the lock stayed busy, or another thread is
        doing them now)."""
        if not self._deferred:          # the common case: no lock taken
            return True
        with self._deferring:
            if self._flushing:
                return False
            self._flushing = True
        try:
            while True:
                with self._deferring:
                    if not self._deferred:
                        return True
                    units, owner = self._deferred[0]
                try:
                    self._ledger.release(ME.pid, ME.start, owner, units, 0, lock)
                except Wedged:
                    return False
                except Exception as e:  # noqa: BLE001 - its caller has returned: log it
                    _log.error("ipcsem: %r: a release of %d unit(s) that had to wait for "
                               "the ledger lock failed: %s", self.name, units, e)
                with self._deferring:
                    del self._deferred[0]
        finally:
            with self._deferring:
                self._flushing = False

    def _finish_releases(self) -> None:
        # the notifier thread: may wait for the lock as long as it takes
        self._releases_done(_ledger.LOCK_UNINTERRUPTED)

    def disown(self, units: int) -> None:
        self._releases_done(LOCK_FOREVER)
        try:
            self._ledger.disown(ME.pid, ME.start, units, 0, 0)
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    # -------------------------------------------------------------- upkeep
    def _heal(self, lock: int) -> int:
        """Heal within a lock bound; 0 if the lock stays wedged (next time)."""
        try:
            return recovery.heal(self.segment, lock=lock)
        except Wedged:
            return 0

    def recover_if_due(self) -> None:
        if self.params.priority_inheritance:
            _pi.update(self, ME.pid)     # an event-loop waiter boosts the owner as a thread does
        if self._ledger.claim_heal(time.time_ns(), SLICE_NS):
            try:
                self._heal(time.monotonic_ns() + TRY_LOCK_NS)
            except IpcsemError:
                pass      # a corrupt ledger: the waiter's own calls say so

    @staticmethod
    def _bound(timeout: float | None) -> int:
        return LOCK_FOREVER if timeout is None else time.monotonic_ns() + int(timeout * 1e9)

    def recover(self, timeout: float | None = None) -> int:
        try:
            return recovery.heal(self.segment, lock=self._bound(timeout))
        except Wedged as e:
            e.waited = timeout
            raise e.with_name(self.name) from None
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    def check(self, timeout: float | None = None) -> None:
        try:
            self._ledger.check(self._bound(timeout))
        except Wedged as e:
            e.waited = timeout
            raise e.with_name(self.name) from None
        except IpcsemError as e:
            raise e.with_name(self.name) from None

    def close(self) -> None:
        """Drop our idle registration (within a bound: the lock's holder may
        be stopped) and let go of the mapping once no call of ours uses it."""
        if self._ledger.closed:
            return
        # An event loop's deferred releases: done before we let go (the
        # mapping must outlive them), waiting for the lock if need be.
        self._releases_done(LOCK_FOREVER)
        try:
            self._ledger.unregister(ME.pid, ME.start, time.monotonic_ns() + 100_000_000)
        except IpcsemError:
            pass  # a corrupt ledger: the mapping goes anyway
        if not self.segment.close():
            from .._errors import Closed

            raise Closed("other threads are still inside calls on this semaphore",
                         name=self.name)

    @property
    def closed(self) -> bool:
        return self._ledger.closed
