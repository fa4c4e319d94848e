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
import itertools
import weakref
from collections.abc import Callable
from typing import Any, final

from . import _args
from ._backend import Pending
from ._base import Opened, make_params
from ._errors import Timeout
from ._identity import native_tid
from ._records import Lease, Params

SLICE = 0.5          # a waiting task heals, checks deadlocks, re-parks at least this often
RETRY = 0.002        # the backend was momentarily busy: try again after this long

_keys = itertools.count(1)
_task_keys: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
# Per loop: the tasks waiting on ipcsem now (for "is the loop parked?").
_waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                    weakref.WeakSet[asyncio.Task[Any]]] = \
    weakref.WeakKeyDictionary()


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


def _loop_parked(loop: asyncio.AbstractEventLoop) -> bool:
    """Every task of the loop is waiting on ipcsem (so the loop's thread can
    do nothing but wait: deadlock detectors may count it as parked)."""
    mine = _waiting.get(loop, ())
    return bool(mine) and all(t in mine for t in asyncio.all_tasks(loop))


class _AsyncPrimitive(Opened):
    __slots__ = ("__weakref__", "_capacity", "_handle", "_name", "_pending")

    def __init__(self, name: str, params: Params | None, backend: str | None,
                 group: str | int | None, policy: dict[str, object],
                 options: dict[str, Any]) -> None:
        # each waiting task's entry -> its wake-up (close() ends them)
        self._pending: dict[Pending, Callable[[BaseException], None]] = {}
        self._open(name, params, backend, group, policy, options)

    def close(self) -> None:
        """Let go of the semaphore.  Units this process holds stay held (and
        recoverable).  Tasks waiting on this handle give up with
        ipcsem.Closed first (their entries leave the queue)."""
        from ._errors import Closed

        for pending, wake in list(self._pending.items()):
            self._handle.cancel(pending)
            wake(Closed("closed while waiting", name=self._name))
        self._pending.clear()
        self._handle.close()

    def try_acquire(self, units: int = 1) -> bool:
        """Take ``units`` now if that overtakes nobody; never waits."""
        _args.check_int("units", units, 1, self._capacity)
        return self._handle.take(units, 0, owner_key(), native_tid()) is not None

    async def _grant(self, units: int, timeout: float | None, priority: int,
                     deadlock_raise: bool) -> Lease | None:
        """The one async acquire path: try, then queue and wait without
        blocking the loop; None at the deadline."""
        h, owner, tid = self._handle, task_key(), native_tid()
        g = h.take(units, priority, owner, tid)
        if g is not None or timeout == 0:
            return g
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        woken = asyncio.Event()
        closed: list[BaseException] = []

        def notify() -> None:          # called from the backend's thread
            loop.call_soon_threadsafe(woken.set)

        def end(exc: BaseException) -> None:    # close() on the loop's thread
            closed.append(exc)
            woken.set()

        while True:
            pending = h.enqueue(units, priority, owner, tid, deadlock_raise, notify)
            if pending is not None:
                break
            if deadline is not None and loop.time() >= deadline:
                return None
            await asyncio.sleep(RETRY)   # the backend was busy (e.g. a lock held)
        if isinstance(pending, Lease):
            return pending
        self._pending[pending] = end
        task = asyncio.current_task()
        assert task is not None      # task_key() above raised otherwise
        waiting = _waiting.setdefault(loop, weakref.WeakSet())
        waiting.add(task)
        parked = False
        try:
            next_slice = loop.time() + SLICE
            while True:
                if closed:
                    raise closed[0]     # close() already cancelled the entry
                g = h.settle(pending)
                if g is not None:
                    return g
                now = loop.time()
                if deadline is not None and now >= deadline:
                    h.cancel(pending)
                    return None
                if now >= next_slice:
                    next_slice = now + SLICE
                    h.recover_if_due()
                    if deadlock_raise:
                        now_parked = _loop_parked(loop)
                        if now_parked != parked:
                            parked = now_parked
                            h.park(pending, parked)
                        from . import _deadlock

                        _deadlock.raise_if_victim(self._name, owner)
                until = next_slice if deadline is None else min(next_slice, deadline)
                # Not asyncio.wait_for: before Python 3.12 it swallows a
                # cancel that arrives just after the event fired.
                timer = loop.call_at(until, woken.set)
                try:
                    await woken.wait()
                finally:
                    timer.cancel()
                woken.clear()
        except BaseException:
            # CancelledError, a deadlock victim, anything: leave nothing
            # behind (a grant that raced in is given back), then propagate.
            if not closed:
                h.cancel(pending)
            raise
        finally:
            self._pending.pop(pending, None)
            waiting.discard(task)

    def release(self, units: int = 1) -> None:
        """Give ``units`` back (a plain call, like asyncio.Semaphore.release;
        from a task, a loop callback or any thread)."""
        self._handle.release(units, owner_key())


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
