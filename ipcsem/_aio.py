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
import contextvars
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
BUDGET = 0.002       # loop time in ledger calls per RETRY before the tasks back off

_T = TypeVar("_T")
_keys = itertools.count(1)
_task_keys: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()


def task_key() -> int:
    """This task's owner key: a negative number, unique in the process
    (thread owner keys are native thread ids, which are positive)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("ipcsem's async classes must be used from a task")
    return _key_of(task)


# The last task asked about and its key: a task's acquire and release ask
# twice in a row, and the weak dictionary's lookup is Python code.  (This
# keeps that one task object alive until another task asks: no key is ever
# reused, so a stale entry can only be a hit for that same task.)
_last_task: asyncio.Task[Any] | None = None
_last_key = 0


def _key_of(task: asyncio.Task[Any]) -> int:
    global _last_task, _last_key
    if task is _last_task:
        return _last_key
    key = _task_keys.get(task)
    if key is None:
        key = _task_keys[task] = -next(_keys)
    _last_task, _last_key = task, key
    return key


def owner_key() -> int:
    """The owner key of a semaphore call: this task's, or outside a task (a
    loop callback, a worker thread) this thread's, as for the sync class
    (semaphore units are the process's either way)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:           # no running loop in this thread
        task = None
    return native_tid() if task is None else _key_of(task)


class _Wait:
    """One task's wait: its queued entry as its loop's upkeep and close()
    see it, and the task's wake-up.  Lean on purpose (one object and one
    future per wake-up, no closures, no Event): 1,000 waiting tasks are
    1,000 of these, and every garbage collection of the process walks them
    (docs/asyncio.md, "What a wait costs")."""

    __slots__ = ("entry_gone", "error", "flagged", "future", "handle", "name", "owner",
                 "pending", "raise_", "rung", "task", "waits")

    def __init__(self, waits: _LoopWaits, handle: Handle, name: str, owner: int, raise_: bool,
                 task: asyncio.Task[Any]) -> None:
        self.waits, self.handle, self.name, self.owner = waits, handle, name, owner
        self.raise_, self.task = raise_, task
        self.pending: Pending | None = None    # once queued
        self.flagged = False                   # the entry says "parked"
        self.error: BaseException | None = None
        self.entry_gone = False
        self.rung = False                      # woken since the task last slept
        self.future: asyncio.Future[None] | None = None   # what the task sleeps on

    def notify(self) -> None:
        """The backend's news (from its thread): wake the task on its loop."""
        self.waits.post(self)

    def wake(self) -> None:
        """Wake the task (on the loop's thread): now if it sleeps, else its
        next sleep returns at once."""
        self.rung = True
        f = self.future
        if f is not None and not f.done():
            f.set_result(None)

    def fail(self, exc: BaseException, entry_gone: bool) -> None:
        """End the wait with ``exc`` (on the loop's thread); ``entry_gone``:
        the entry has already left the queue."""
        if self.error is None:
            self.error, self.entry_gone = exc, entry_gone
            self.wake()


class _Booster:
    """A PI mutex's waiter lends the owner its loop thread's priority each
    of _pi's (short) slices, as a blocked thread does between its sleeps."""

    __slots__ = ("handle", "loop", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, handle: Handle) -> None:
        self.loop, self.handle = loop, handle
        self.timer = loop.call_later(_pi.SLICE, self.boost)

    def boost(self) -> None:
        self.timer = self.loop.call_later(_pi.SLICE, self.boost)
        self.handle.recover_if_due()      # the shm handle boosts there (_pi.update)

    def stop(self) -> None:
        self.timer.cancel()


class _LoopWaits:
    """The ipcsem waits of one event loop and their upkeep.  A waiting task
    wakes only when the backend says its entry may have been granted (or at
    its deadline): the periodic work -- the entries' "parked" flags for
    deadlock detectors, the deadlock scans of ``deadlock="raise"`` waits --
    is one timer per loop, its ledger transactions CHUNK per callback and
    its scans in a thread of their own, so 1,000 waiting tasks cost the loop
    no burst of 1,000 wake-ups every slice."""

    __slots__ = ("__weakref__", "_loop", "_posted", "_posting", "_spent", "_window",
                 "busy_until", "context", "parked", "tasks", "timer", "waits")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: _loops maps the loop to us, and must not keep it alive
        self._loop = weakref.ref(loop)
        self.waits: dict[_Wait, None] = {}            # in queueing order
        self.tasks: dict[asyncio.Task[Any], int] = {}  # task -> its waits now
        self.timer: asyncio.TimerHandle | None = None
        self.parked = False
        self.busy_until = 0.0       # loop.time() until which tasks leave the ledgers alone
        self._window = 0.0          # monotonic start of the current BUDGET window
        self._spent = 0.0           # time the loop spent in ledger calls in it
        # Our timers and drains need no context variables: one context for
        # them all, not a copy per call (a copy is an object per wait that
        # every collection walks).  Per loop: a context is entered by one
        # thread at a time.
        self.context = contextvars.Context()
        self._posted: collections.deque[_Wait] = collections.deque()
        self._posting = threading.Lock()   # _posted has a drain scheduled: held

    def post(self, w: _Wait) -> None:
        """Wake ``w`` on the loop's thread (called from the backend's
        thread): one call_soon_threadsafe, one write to the loop's self-pipe
        and one loop wake-up per batch, however many grants a ring made."""
        self._posted.append(w)
        if self._posting.acquire(blocking=False):
            try:
                self.loop.call_soon_threadsafe(self._drain, context=self.context)
            except BaseException:
                self._posting.release()
                raise

    def _drain(self) -> None:
        self._posting.release()        # posts from now on schedule another drain
        posted = self._posted
        while posted:
            posted.popleft().wake()

    def timed(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` on the loop's thread.  If it took longer than
        BUSY (it waited for a ledger lock), or the loop's ledger calls of
        the last RETRY took more than BUDGET together (a burst: many tasks'
        deadlines or grants at once), the loop's tasks back off for RETRY:
        the loop's other callbacks run in between."""
        t0 = time.monotonic()
        try:
            return call(*args)
        finally:
            now = time.monotonic()
            if now - self._window > RETRY:
                self._window, self._spent = t0, 0.0
            self._spent += now - t0
            if now - t0 > BUSY or self._spent > BUDGET:
                self.busy_until = self.loop.time() + RETRY
                self._window, self._spent = now + RETRY, 0.0

    def busy(self) -> bool:
        if not self.busy_until:          # the common case: no back-off, no clock read
            return False
        if self.loop.time() < self.busy_until:
            return True
        self.busy_until = 0.0
        return False

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
            self.timer = self.loop.call_later(SLICE, self._tick, context=self.context)

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
        self.timer = self.loop.call_later(SLICE, self._tick, context=self.context)
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
            # (a wait is added once queued: its pending is set)
            if w in self.waits and w.error is None and w.flagged != self.parked \
                    and w.pending is not None:
                try:
                    w.handle.park(w.pending, self.parked)
                except Exception:  # noqa: BLE001 - closed or corrupt: the task's own calls say so
                    continue
                w.flagged = self.parked
        if start + CHUNK < len(todo):
            self.loop.call_soon(self._flag, todo, start + CHUNK, context=self.context)

    def victim(self, w: _Wait, exc: BaseException) -> None:
        """A deadlock scan chose ``w`` to give up (on the loop's thread)."""
        if w in self.waits:
            w.fail(exc, entry_gone=False)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaits] = \
    weakref.WeakKeyDictionary()


_last_waits: _LoopWaits | None = None     # the last loop's, for the pair's second call


def _loop_waits(loop: asyncio.AbstractEventLoop) -> _LoopWaits:
    global _last_waits
    lw = _last_waits
    if lw is not None and lw._loop() is loop:
        return lw
    lw = _loops.get(loop)
    if lw is None:
        lw = _loops[loop] = _LoopWaits(loop)
    _last_waits = lw
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
    __slots__ = ("__weakref__", "_capacity", "_handle", "_name", "_opened_on", "_pending")

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

    def _take_now(self, units: int, priority: int) -> Lease | None:
        """The uncontended acquire, without a coroutine of its own: one
        lock-bounded take on the loop's thread, nothing allocated.  None:
        not now (taken, the loop backing off, a busy lock): _grant queues."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ipcsem's async classes must be used from a task")
        waits = _loop_waits(task.get_loop())
        if waits.busy():
            return None
        return waits.timed(self._handle.take_now, units, priority, _key_of(task), native_tid())

    async def _grant(self, units: int, timeout: float | None, priority: int,
                     deadlock_raise: bool, tried: bool = False) -> Lease | None:
        """The one async acquire path: queue (granted at once if it can be
        had now) and wait without blocking the loop; None at the deadline.
        ``tried``: the caller's _take_now just said "not now"."""
        h, owner, tid = self._handle, task_key(), native_tid()
        if timeout == 0:
            return h.take(units, priority, owner, tid)
        if not tried:
            lease = self._take_now(units, priority)
            if lease is not None:
                return lease
        loop = asyncio.get_running_loop()
        waits = _loop_waits(loop)
        deadline = None if timeout is None else loop.time() + timeout
        task = asyncio.current_task()
        assert task is not None      # task_key() above raised otherwise
        w = _Wait(waits, h, self._name, owner, deadlock_raise, task)
        # enqueue() grants at once what take() would: one ledger transaction
        while True:
            if not waits.busy():
                pending = waits.timed(h.enqueue, units, priority, owner, tid, deadlock_raise,
                                      w.notify)
                if pending is not None:
                    break
            if deadline is not None and loop.time() >= deadline:
                return None
            await asyncio.sleep(RETRY)   # the backend was busy (e.g. a lock held)
        if isinstance(pending, Lease):
            return pending
        w.pending = pending
        self._pending[pending] = w
        waits.add(w)
        # Not asyncio.wait_for: before Python 3.12 it swallows a cancel that
        # arrives just after the event fired.  One timer for the deadline;
        # no slices (the backend re-notifies, the loop's upkeep does the rest).
        ctx = waits.context
        timer = None if deadline is None else loop.call_at(deadline, w.wake, context=ctx)
        booster = _Booster(loop, h) if h.params.priority_inheritance else None
        try:
            # enqueue() just said "not now": settle once the backend says
            # it may have been granted (it also checks right after queueing)
            settle = False
            while True:
                if w.error is not None:
                    raise w.error       # closed, or chosen as a deadlock's victim
                retry = None
                if not waits.busy():
                    if settle:
                        g = waits.timed(h.settle, pending)
                        if g is not None:
                            return g
                    if deadline is not None and loop.time() >= deadline:
                        w.entry_gone = True
                        waits.timed(h.cancel, pending)   # never waits: finished later if busy
                        return None
                if waits.busy():
                    # this or another task's call waited for a ledger lock or
                    # used the loop's budget (a settle that met a busy lock
                    # said None): look again once the back-off is over
                    retry = loop.call_at(waits.busy_until, w.wake, context=ctx)
                # Sleep until woken (a wake since the last sleep counts), on
                # a bare future: no coroutine, no Event per wait.
                try:
                    if not w.rung:
                        w.future = loop.create_future()
                        try:
                            await w.future
                        finally:
                            w.future = None
                finally:
                    if retry is not None:
                        retry.cancel()
                w.rung = False
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
            if booster is not None:
                booster.stop()
            self._pending.pop(pending, None)
            waits.remove(w)

    def release(self, units: int = 1) -> None:
        """Give ``units`` back (a plain call, like asyncio.Semaphore.release;
        from a task, a loop callback or any thread)."""
        self._release(units, None)

    def _release(self, units: int, owner: int | None) -> None:
        """``owner`` None: the caller's, as owner_key() says -- found here
        with the one loop lookup this call needs anyway (half the async pair)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:       # a worker thread: nothing of a loop to spare
            self._handle.release(units, native_tid() if owner is None else owner)
            return
        if owner is None:
            task = asyncio.current_task(loop)
            owner = native_tid() if task is None else _key_of(task)
        # never waits for a busy ledger lock (the backend finishes it then)
        _loop_waits(loop).timed(self._handle.release_soon, units, owner)


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
        raise_ = _args.check_deadlock(deadlock)
        if t != 0:
            if self._take_now(units, priority) is not None:
                return True
            return await self._grant(units, t, priority, raise_, tried=True) is not None
        return await self._grant(units, t, priority, raise_) is not None

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
        raise_ = _args.check_deadlock(deadlock)
        if t != 0:
            if self._take_now(1, priority) is not None:
                return True
            return await self._grant(1, t, priority, raise_, tried=True) is not None
        return await self._grant(1, t, priority, raise_) is not None

    # A mutex has one unit to give back: no ``units`` (as Mutex.release),
    # unlike the base class's release(units).
    def release(self) -> None:   # type: ignore[override]
        """Unlock it; NotOwner unless this task owns it."""
        self._release(1, task_key())

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
