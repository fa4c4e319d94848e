"""asyncio: the same semaphores for event-loop programs, without blocking the loop.

``AsyncSemaphore`` and ``AsyncMutex`` open the same ledgers as the sync
classes (they interoperate: a unit is a unit) and wait without parking the
loop's thread: a request is queued with the backend's event-loop protocol
(``Handle.enqueue``/``settle``/``cancel``), the backend notifies from its own
thread when the entry may have been granted, and the task settles it.  On
the shared-memory backend that is one notifier thread and one pidfd watcher
thread per process, whatever the number of waiting tasks (docs/design.md).

Ownership: units belong to the process, as for threads; each task has its
own owner key, so an ``AsyncMutex`` is owned by the *task* that acquired it
and a bare ``release()`` on a slotted semaphore frees the calling task's
latest grant first.

Cancellation (``task.cancel()``, ``asyncio.timeout()``, ``wait_for()``) at
any moment leaves no queue entry and no units: the entry is cancelled and a
grant that raced in is given back, then CancelledError propagates.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, final

from . import _args, _pi, _proc
from ._backend import Handle, Pending
from ._base import Opened, make_params
from ._errors import Timeout
from ._identity import ME, native_tid
from ._records import Lease, Params

SLICE = 0.5          # a loop's upkeep (parked flags, deadlock scans) runs this often
RETRY = 0.002        # the backend was momentarily busy: try again after this long
CHUNK = 64           # ledger transactions per loop callback in the upkeep (others run between)
# A loop-side ledger call that took longer than BUSY waited for a ledger
# lock (its holder, another process, is off a CPU): the loop's other tasks
# then leave every ledger alone for RETRY instead of each waiting up to the
# backend's bound (5 ms) in the same loop iteration -- the loop waits for at
# most one lock per RETRY.
BUSY = 0.001

_T = TypeVar("_T")
_keys = itertools.count(1)
_task_keys: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()


def task_key() -> int:
    """This task's owner key: a negative number, unique in the process
    (thread owner keys are native thread ids, which are positive)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("ipcsem's async classes must be used from a task")
    key = _task_keys.get(task)
    if key is None:
        key = _task_keys[task] = -next(_keys)
    return key


def owner_key() -> int:
    """The owner key of a semaphore call: this task's, or outside a task (a
    loop callback, a worker thread) this thread's, as for the sync class
    (semaphore units are the process's either way)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:           # no running loop in this thread
        task = None
    return native_tid() if task is None else task_key()


class _Wait:
    """One task's queued entry, as its loop's upkeep and close() see it."""

    __slots__ = ("entry_gone", "error", "flagged", "handle", "name", "owner", "pending",
                 "raise_", "task", "woken")

    def __init__(self, handle: Handle, pending: Pending, name: str, owner: int, raise_: bool,
                 task: asyncio.Task[Any], woken: asyncio.Event) -> None:
        self.handle, self.pending, self.name, self.owner = handle, pending, name, owner
        self.raise_, self.task, self.woken = raise_, task, woken
        self.flagged = False                   # the entry says "parked"
        self.error: BaseException | None = None
        self.entry_gone = False

    def fail(self, exc: BaseException, entry_gone: bool) -> None:
        """End the wait with ``exc`` (on the loop's thread); ``entry_gone``:
        the entry has already left the queue."""
        if self.error is None:
            self.error, self.entry_gone = exc, entry_gone
            self.woken.set()


class _LoopWaits:
    """The ipcsem waits of one event loop and their upkeep.  A waiting task
    wakes only when the backend says its entry may have been granted (or at
    its deadline): the periodic work -- the entries' "parked" flags for
    deadlock detectors, the deadlock scans of ``deadlock="raise"`` waits --
    is one timer per loop, its ledger transactions CHUNK per callback and
    its scans in a thread of their own, so 1,000 waiting tasks cost the loop
    no burst of 1,000 wake-ups every slice."""

    __slots__ = ("__weakref__", "_loop", "_posted", "_posting", "busy_until", "parked", "tasks",
                 "timer", "waits")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: _loops maps the loop to us, and must not keep it alive
        self._loop = weakref.ref(loop)
        self.waits: dict[_Wait, None] = {}            # in queueing order
        self.tasks: dict[asyncio.Task[Any], int] = {}  # task -> its waits now
        self.timer: asyncio.TimerHandle | None = None
        self.parked = False
        self.busy_until = 0.0       # loop.time() until which tasks leave the ledgers alone
        self._posted: collections.deque[asyncio.Event] = collections.deque()
        self._posting = threading.Lock()   # _posted has a drain scheduled: held

    def post(self, woken: asyncio.Event) -> None:
        """Set ``woken`` on the loop's thread (called from the backend's
        thread): one call_soon_threadsafe, one write to the loop's self-pipe
        and one loop wake-up per batch, however many grants a ring made."""
        self._posted.append(woken)
        if self._posting.acquire(blocking=False):
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except BaseException:
                self._posting.release()
                raise

    def _drain(self) -> None:
        self._posting.release()        # posts from now on schedule another drain
        posted = self._posted
        while posted:
            posted.popleft().set()

    def timed(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` on the loop's thread; if it took longer than BUSY
        (it waited for a ledger lock), the loop's tasks back off."""
        t0 = time.monotonic()
        try:
            return call(*args)
        finally:
            if time.monotonic() - t0 > BUSY:
                self.busy_until = self.loop.time() + RETRY

    def busy(self) -> bool:
        return self.loop.time() < self.busy_until

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:         # only our own callbacks could ask, and they die with it
            raise RuntimeError("the event loop is gone")
        return loop

    def add(self, w: _Wait) -> None:
        self.waits[w] = None
        self.tasks[w.task] = self.tasks.get(w.task, 0) + 1
        if self.timer is None:
            self.timer = self.loop.call_later(SLICE, self._tick)

    def remove(self, w: _Wait) -> None:
        if self.waits.pop(w, False) is None:
            n = self.tasks.pop(w.task, 1) - 1
            if n:
                self.tasks[w.task] = n
        if not self.waits and self.timer is not None:
            # nothing waits: no timer (it would keep the loop, our key, alive)
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        self.timer = None
        if not self.waits:
            return
        self.timer = self.loop.call_later(SLICE, self._tick)
        # Every task of the loop waits on ipcsem: the loop's thread can do
        # nothing but wait, and deadlock detectors may count it as parked.
        self.parked = all(t in self.tasks for t in asyncio.all_tasks(self.loop))
        todo = [w for w in self.waits if w.flagged != self.parked]
        if todo:
            self._flag(todo, 0)
        raisers = [(w.name, w.owner, w) for w in self.waits if w.raise_]
        if raisers:
            _scans.ask(self, raisers)

    def _flag(self, todo: list[_Wait], start: int) -> None:
        for w in todo[start:start + CHUNK]:
            if w in self.waits and w.error is None and w.flagged != self.parked:
                try:
                    w.handle.park(w.pending, self.parked)
                except Exception:  # noqa: BLE001 - closed or corrupt: the task's own calls say so
                    continue
                w.flagged = self.parked
        if start + CHUNK < len(todo):
            self.loop.call_soon(self._flag, todo, start + CHUNK)

    def victim(self, w: _Wait, exc: BaseException) -> None:
        """A deadlock scan chose ``w`` to give up (on the loop's thread)."""
        if w in self.waits:
            w.fail(exc, entry_gone=False)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaits] = \
    weakref.WeakKeyDictionary()


def _loop_waits(loop: asyncio.AbstractEventLoop) -> _LoopWaits:
    lw = _loops.get(loop)
    if lw is None:
        lw = _loops[loop] = _LoopWaits(loop)
    return lw


Raiser = tuple[str, int, _Wait]      # (semaphore name, owner key, its wait)


class _DeadlockScans:
    """The deadlock scans of ``deadlock="raise"`` waits, off every loop's
    thread: a scan reads every ledger of the machine (milliseconds), so it
    runs in one thread of ours ("ipcsem-deadlock", started on the first
    such wait), once per loop per slice whatever the number of its tasks."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asks: dict[_LoopWaits, list[Raiser]] = {}
        self._thread: threading.Thread | None = None

    def ask(self, lw: _LoopWaits, raisers: list[Raiser]) -> None:
        with self._cond:
            self._asks[lw] = raisers
            if self._thread is None or not self._thread.is_alive():
                self._thread = _proc.start_named_thread("ipcsem-deadlock", self._run)
            self._cond.notify()

    def after_fork_in_child(self) -> None:
        self._cond = threading.Condition()
        self._asks = {}
        self._thread = None

    def _run(self) -> None:
        from . import _deadlock
        from ._errors import DeadlockDetected

        while True:
            with self._cond:
                while not self._asks:
                    self._cond.wait()
                asks, self._asks = self._asks, {}
            try:
                mine = [dl for dl in _deadlock.find_deadlocks() if ME.pid in dl.processes]
            except Exception:  # noqa: BLE001 - a ledger vanished mid-read: next slice
                continue
            # Rare: a deadlock we take part in.  Which of our waits is its
            # victim (at most one per deadlock) is raise_if_victim's to say.
            for dl in mine:
                found = False
                for lw, raisers in asks.items():
                    for name, owner, w in raisers:
                        if name not in dl.semaphores:
                            continue
                        try:
                            _deadlock.raise_if_victim(name, owner)
                        except DeadlockDetected as e:
                            found = True
                            loop = lw._loop()
                            try:
                                if loop is not None:
                                    loop.call_soon_threadsafe(lw.victim, w, e)
                            except RuntimeError:
                                pass         # that loop is closed: its tasks are gone
                            break
                        except Exception:  # noqa: BLE001 - as above: next slice
                            pass
                    if found:
                        break


_scans = _DeadlockScans()
os.register_at_fork(after_in_child=_scans.after_fork_in_child)


class _AsyncPrimitive(Opened):
    __slots__ = ("__weakref__", "_capacity", "_handle", "_name", "_pending")

    def __init__(self, name: str, params: Params | None, backend: str | None,
                 group: str | int | None, policy: dict[str, object],
                 options: dict[str, Any]) -> None:
        # each waiting task's entry -> its wait (close() ends them)
        self._pending: dict[Pending, _Wait] = {}
        self._open(name, params, backend, group, policy, options)

    def close(self) -> None:
        """Let go of the semaphore.  Units this process holds stay held (and
        recoverable).  Tasks waiting on this handle give up with
        ipcsem.Closed first (their entries leave the queue)."""
        from ._errors import Closed

        for pending, w in list(self._pending.items()):
            self._handle.cancel(pending)
            w.fail(Closed("closed while waiting", name=self._name), entry_gone=True)
        self._pending.clear()
        self._handle.close()

    def try_acquire(self, units: int = 1) -> bool:
        """Take ``units`` now if that overtakes nobody; never waits."""
        _args.check_int("units", units, 1, self._capacity)
        return self._handle.take(units, 0, owner_key(), native_tid()) is not None

    async def _grant(self, units: int, timeout: float | None, priority: int,
                     deadlock_raise: bool) -> Lease | None:
        """The one async acquire path: queue (granted at once if it can be
        had now) and wait without blocking the loop; None at the deadline."""
        h, owner, tid = self._handle, task_key(), native_tid()
        if timeout == 0:
            return h.take(units, priority, owner, tid)
        # enqueue() grants at once what take() would: one ledger transaction
        loop = asyncio.get_running_loop()
        waits = _loop_waits(loop)
        deadline = None if timeout is None else loop.time() + timeout
        woken = asyncio.Event()

        def notify() -> None:          # called from the backend's thread
            waits.post(woken)

        while True:
            if not waits.busy():
                pending = waits.timed(h.enqueue, units, priority, owner, tid, deadlock_raise,
                                      notify)
                if pending is not None:
                    break
            if deadline is not None and loop.time() >= deadline:
                return None
            await asyncio.sleep(RETRY)   # the backend was busy (e.g. a lock held)
        if isinstance(pending, Lease):
            return pending
        task = asyncio.current_task()
        assert task is not None      # task_key() above raised otherwise
        w = _Wait(h, pending, self._name, owner, deadlock_raise, task, woken)
        self._pending[pending] = w
        waits.add(w)
        # Not asyncio.wait_for: before Python 3.12 it swallows a cancel that
        # arrives just after the event fired.  One timer for the deadline;
        # no slices (the backend re-notifies, the loop's upkeep does the rest).
        timer = None if deadline is None else loop.call_at(deadline, woken.set)
        # A PI mutex's waiter lends the owner its loop thread's priority each
        # of _pi's (short) slices, as a blocked thread does between its sleeps.
        boosting: list[asyncio.TimerHandle] = []
        if h.params.priority_inheritance:
            def boost() -> None:
                boosting[:] = [loop.call_later(_pi.SLICE, boost)]
                h.recover_if_due()      # the shm handle boosts there (_pi.update)
            boosting.append(loop.call_later(_pi.SLICE, boost))
        try:
            # enqueue() just said "not now": settle once the backend says
            # it may have been granted (it also checks right after queueing)
            settle = False
            while True:
                if w.error is not None:
                    raise w.error       # closed, or chosen as a deadlock's victim
                if not settle:
                    retry = None
                elif waits.busy():
                    # another task just waited for a ledger lock: look later
                    retry = loop.call_at(waits.busy_until, woken.set)
                else:
                    retry = None
                    g = waits.timed(h.settle, pending)
                    if g is not None:
                        return g
                if deadline is not None and loop.time() >= deadline:
                    if retry is not None:
                        retry.cancel()
                    h.cancel(pending)
                    return None
                try:
                    await woken.wait()
                finally:
                    if retry is not None:
                        retry.cancel()
                woken.clear()
                settle = True
        except BaseException:
            # CancelledError, a deadlock victim, anything: leave nothing
            # behind (a grant that raced in is given back), then propagate.
            if not w.entry_gone:
                h.cancel(pending)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            for t in boosting:
                t.cancel()
            self._pending.pop(pending, None)
            waits.remove(w)

    def release(self, units: int = 1) -> None:
        """Give ``units`` back (a plain call, like asyncio.Semaphore.release;
        from a task, a loop callback or any thread)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:       # a worker thread: nothing of a loop to spare
            self._handle.release(units, owner_key())
        else:
            _loop_waits(loop).timed(self._handle.release, units, owner_key())


@final
class AsyncSemaphore(_AsyncPrimitive):
    """``ipcsem.Semaphore`` for event-loop programs: the same ledger, options
    and name space (both interoperate), awaited instead of blocking.

        sem = ipcsem.AsyncSemaphore("gpu", capacity=3)
        async with sem as lease:                    # 1 unit
            ...
        async with sem.hold(2, timeout=5.0) as lease:   # ipcsem.Timeout on expiry
            ...
        if await sem.acquire(2, timeout=1.0):       # False on timeout
            try: ...
            finally: sem.release(2)
    """

    __slots__ = ()

    def __init__(self, name: str, capacity: int | None = None, *, initial: int | None = None,
                 mode: int = 0o600, group: str | int | None = None, slots: bool | None = None,
                 fair: bool | None = None, max_holders: int = 1024, max_waiters: int = 1024,
                 backend: str | None = None, **options: Any) -> None:
        if slots is not None:
            _args.check_bool("slots", slots)
        if fair is not None:
            _args.check_bool("fair", fair)
        if capacity is None:
            if initial is not None:
                raise ValueError("initial= needs capacity= (it only applies when creating)")
            params = None
        else:
            params = make_params(capacity, initial, mode, max_holders, max_waiters,
                                 slots=bool(slots), fair=True if fair is None else fair)
        super().__init__(name, params, backend, group,
                         {"slots": slots, "fair": fair, "kind": "semaphore"}, options)

    async def acquire(self, units: int = 1, *, timeout: float | None = None, priority: int = 0,
                      deadlock: str = "wait") -> bool:
        """Take ``units`` units, all or none; False on timeout (``timeout=0``:
        only if free now).  Raises as Semaphore.acquire does."""
        if units.__class__ is not int:
            raise TypeError(f"units must be an int, not {type(units).__name__}")
        _args.check_int("units", units, 1, self._capacity)
        t = _args.check_timeout(timeout)
        _args.check_priority(priority)
        return await self._grant(units, t, priority, _args.check_deadlock(deadlock)) is not None

    def disown(self, units: int = 1) -> None:
        """Hand owned units off without returning them (as
        ``Semaphore.disown``): they stay taken but belong to nobody, so this
        process's death no longer returns them (a consumer's item, a
        producer's filled slot).  An unowned post by anyone (``release``
        beyond what it owns) returns them later.  On a slotted semaphore
        their unit numbers stay taken, owned by nobody.  A plain call, from a
        task, a loop callback or any thread (units are the process's).
        ValueError beyond the units this process owns."""
        _args.check_units(units, self._capacity)
        self._handle.disown(units)

    def hold(self, units: int = 1, *, timeout: float | None = None, priority: int = 0,
             deadlock: str = "wait") -> _AsyncHold:
        """``async with sem.hold(2, timeout=5) as lease:``; ipcsem.Timeout if
        not had in time."""
        _args.check_int("units", units, 1, self._capacity)
        return _AsyncHold(self, units, _args.check_timeout(timeout),
                          _args.check_priority(priority), _args.check_deadlock(deadlock))

    async def __aenter__(self) -> Lease:
        lease = await self._grant(1, None, 0, False)
        assert lease is not None     # no deadline: only a grant ends the wait
        return lease

    async def __aexit__(self, *exc: object) -> None:
        self.release(1)


@final
class AsyncMutex(_AsyncPrimitive):
    """``ipcsem.Mutex`` for event-loop programs, owned by the acquiring *task*:
    release by another task, thread or process raises NotOwner; a second
    acquire by its owner raises DeadlockDetected unless ``reentrant=True``."""

    __slots__ = ()

    def __init__(self, name: str, *, reentrant: bool | None = None, mode: int = 0o600,
                 group: str | int | None = None, max_holders: int = 1024,
                 max_waiters: int = 1024, backend: str | None = None,
                 **options: Any) -> None:
        if reentrant is not None:
            _args.check_bool("reentrant", reentrant)
        params = make_params(1, 1, mode, max_holders, max_waiters, kind="mutex",
                             reentrant=bool(reentrant))
        super().__init__(name, params, backend, group,
                         {"kind": "mutex", "reentrant": reentrant}, options)

    async def acquire(self, *, timeout: float | None = None, priority: int = 0,
                      deadlock: str = "wait") -> bool:
        """Lock it for this task; False on timeout."""
        t = _args.check_timeout(timeout)
        _args.check_priority(priority)
        return await self._grant(1, t, priority, _args.check_deadlock(deadlock)) is not None

    # A mutex has one unit to give back: no ``units`` (as Mutex.release),
    # unlike the base class's release(units).
    def release(self) -> None:   # type: ignore[override]
        """Unlock it; NotOwner unless this task owns it."""
        self._handle.release(1, task_key())

    @property
    def previous_owner_died(self) -> bool:
        """For the owning task: its previous owner died holding it."""
        return self._handle.owner_died(task_key())

    def locked(self) -> bool:
        return self._handle.available == 0

    def hold(self, *, timeout: float | None = None, priority: int = 0,
             deadlock: str = "wait") -> _AsyncHold:
        return _AsyncHold(self, 1, _args.check_timeout(timeout), _args.check_priority(priority),
                          _args.check_deadlock(deadlock))

    async def __aenter__(self) -> Lease:
        lease = await self._grant(1, None, 0, False)
        assert lease is not None     # no deadline: only a grant ends the wait
        return lease

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class _AsyncHold:
    __slots__ = ("_deadlock", "_prim", "_priority", "_timeout", "_units")

    def __init__(self, prim: _AsyncPrimitive, units: int, timeout: float | None, priority: int,
                 deadlock: bool) -> None:
        self._prim, self._units, self._timeout = prim, units, timeout
        self._priority, self._deadlock = priority, deadlock

    async def __aenter__(self) -> Lease:
        p = self._prim
        lease = await p._grant(self._units, self._timeout, self._priority, self._deadlock)
        if lease is None:
            raise Timeout(p.name, self._units, self._timeout)
        return lease

    async def __aexit__(self, *exc: object) -> None:
        if isinstance(self._prim, AsyncMutex):
            self._prim.release()
        else:
            self._prim.release(self._units)
