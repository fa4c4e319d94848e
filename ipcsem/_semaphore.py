"""The public classes: Semaphore and Mutex, facades over a backend.

They speak every calling convention users bring (ipcsem's own, threading's,
multiprocessing's), build leases and context managers, and leave everything
that decides who holds what to the backend (``ipcsem._backend``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, final

from . import _args
from ._base import Opened, make_params
from ._errors import DeadlockDetected, Timeout
from ._identity import ME, native_tid
from ._records import Deadlock, Lease, Params
from ._shm import _ledger


def _positional(args: tuple[Any, ...], units: int | None, blocking: bool | None,
                timeout: float | None) -> tuple[int | None, bool | None, float | None]:
    """acquire()'s positional forms: ``(blocking[, timeout])`` as in threading,
    ``(units[, blocking or timeout])`` as in ipcsem.  A bool is never a unit
    count; an int (not a bool) first is one."""
    if len(args) > 2:
        raise TypeError(f"acquire() takes at most 2 positional arguments ({len(args)} given)")
    first = args[0]
    if first.__class__ is bool:
        if blocking is not None:
            raise TypeError("blocking given twice (positionally and as blocking=)")
        blocking = first
        if len(args) == 2:
            timeout = args[1]
    elif first.__class__ is int:
        if units is not None:
            raise TypeError("units given twice (positionally and as units=)")
        units = first
        if len(args) == 2:
            if args[1].__class__ is bool:
                if blocking is not None:
                    raise TypeError("blocking given twice")
                blocking = args[1]
            else:
                timeout = args[1]
    else:
        raise TypeError(f"acquire(): the first argument is blocking (a bool) or a unit count "
                        f"(an int), not {type(first).__name__}")
    return units, blocking, timeout


def _self_deadlock(e: DeadlockDetected, name: str, tid: int) -> DeadlockDetected:
    """A non-reentrant mutex asked for by its own owner: a deadlock of one
    thread, described as any other."""
    if isinstance(e.deadlock, Deadlock):
        return e
    desc = f"thread {tid} of pid {ME.pid} owns {name!r} and asked for it again: {e.deadlock}"
    return DeadlockDetected(Deadlock((ME.pid,), (name,), desc, (desc,)), name=name)


def _deadlock_probe(name: str) -> Callable[[], None]:
    """The check a ``deadlock="raise"`` waiter runs every slice."""
    from . import _deadlock

    return lambda: _deadlock.raise_if_victim(name)


class _Primitive(Opened, _ledger.Primitive):
    """What Semaphore and Mutex share (beyond ``Opened``): the one sync
    acquire path.

    The hot methods (``acquire``, ``release``, ``__enter__``, ``__exit__``)
    are inherited from a C base type that does the common uncontended case on
    the shared-memory backend without running any Python, and otherwise calls
    the ``_*_slow`` methods here, which are the implementation."""

    __slots__ = ("__weakref__", "_capacity", "_handle", "_name", "_opened_on")

    def __init__(self, name: str, params: Params | None, backend: str | None,
                 group: str | int | None, policy: dict[str, object],
                 options: dict[str, Any]) -> None:
        self._open(name, params, backend, group, policy, options)
        fast = getattr(self._handle, "fast_ledger", None)
        if fast is not None and not self._handle.params.priority_inheritance:
            self._fast_attach(fast)

    def close(self) -> None:
        """Let go of the semaphore.  Units this process holds stay held (and
        recoverable).  Blocking acquires of other threads on this handle give
        up with ipcsem.Closed first."""
        self._fast_attach(None)
        self._handle.close()

    # -------------------------------------------------------------- granting
    def _grant(self, units: int, wait: bool, timeout: float | None, priority: int,
               deadlock_raise: bool, owner: int | None = None) -> Lease | None:
        """The one acquire path: try, then (if allowed) queue and wait."""
        tid = native_tid()
        owner = tid if owner is None else owner
        h = self._handle
        try:
            g = h.take(units, priority, owner, tid)
        except DeadlockDetected as e:
            raise _self_deadlock(e, self._name, tid) from None
        if g is not None or not wait or timeout == 0:
            return g
        deadline = None if timeout is None else time.monotonic() + timeout
        probe = _deadlock_probe(self._name) if deadlock_raise else None
        return h.wait(units, priority, owner, tid, deadline, deadlock_raise, probe)


@final
class Semaphore(_Primitive):
    """A named counting semaphore shared by any process that knows the name.

    ``Semaphore(name, capacity=N)`` opens NAME or creates it with N units;
    ``Semaphore(name)`` opens an existing one (NotFound if absent).  Units
    belong to the acquiring *process* until it releases them; if it dies
    they come back, exactly once.  Waiters are served strictly in order:
    higher ``priority`` first, FIFO within a priority (``fair=False``: a
    releasing or arriving process may take free units before a woken waiter,
    at most OVERTAKE_LIMIT times per queued request).

    ``slots=True`` numbers the units 0..N-1 and tells each grant which it got
    (``lease.slots``).  ``capacity``, ``slots`` and ``fair`` are fixed at
    creation; asking an existing semaphore for others is PolicyMismatch.
    ``mode`` (default 0o600) and ``group`` choose who may share it.
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
        super().__init__(name, params, backend, group, {"slots": slots, "fair": fair,
                                                        "kind": "semaphore"}, options)

    # --------------------------------------------------------------- acquire
    def _acquire_slow(self, *args: Any, units: int | None = None, blocking: bool | None = None,
                      block: bool | None = None, timeout: float | None = None,
                      priority: int = 0, deadlock: str = "wait") -> bool:
        """Take ``units`` units (default 1), all or none; True when taken.

        Every form of the standard library works with its meaning:
        ``acquire()``, ``acquire(False)``, ``acquire(True, 2.0)``,
        ``acquire(blocking=False)``, ``acquire(timeout=-1)`` (forever), and
        multiprocessing's ``acquire(block=False)`` (which ignores a timeout).
        ipcsem's own: ``acquire(2)`` or ``acquire(units=2)``, ``timeout=``
        seconds (0: only if free now), ``priority=`` (higher is served first),
        ``deadlock="raise"`` (DeadlockDetected if this wait closes a deadlock).
        A bool is never a unit count.  Returns False on timeout or when a
        non-blocking attempt finds the units taken.  Raises ValueError/
        TypeError for bad arguments (nothing changes), Unlinked, Closed,
        DeadlockDetected, LedgerFull.
        """
        if args:
            units, blocking, timeout = _positional(args, units, blocking, timeout)
        return self._grant_from_args(blocking, timeout, units, block, priority,
                                     deadlock) is not None

    def _grant_from_args(self, blocking: bool | None, timeout: float | None, units: int | None,
                         block: bool | None, priority: int, deadlock: str) -> Lease | None:
        if block is not None:
            if block.__class__ is not bool:
                raise TypeError(f"block must be True or False, not {block!r}")
            if blocking is not None:
                raise TypeError("give blocking= or block=, not both")
            blocking = block
            if not block:
                timeout = None      # multiprocessing ignores a timeout then
        elif blocking is None:
            blocking = True
        elif blocking.__class__ is not bool:
            raise TypeError(f"blocking must be True or False, not {blocking!r}")
        if units is None:
            units = 1
        elif units.__class__ is not int:
            raise TypeError(f"units must be an int, not {type(units).__name__}")
        if not blocking and timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking acquire")
        # threading.Semaphore and multiprocessing do not wait for a negative timeout
        t = _args.check_timeout(timeout, "now")
        if priority:
            _args.check_priority(priority)
        raise_dl = _args.check_deadlock(deadlock) if deadlock != "wait" else False
        return self._grant(units, blocking, t, priority, raise_dl)

    def try_acquire(self, units: int = 1) -> bool:
        """Take ``units`` now if that overtakes nobody; never blocks.  A dead
        holder's units are recovered first when that would change the answer
        (at most twice a second per semaphore)."""
        _args.check_units(units, self._capacity)
        return self._grant(units, False, None, 0, False) is not None

    # --------------------------------------------------------------- release
    def _release_slow(self, units: int = 1, *, n: int | None = None) -> None:
        """release(units=1, *, n=None): give back ``units`` (threading's
        ``release(n)`` too): owned units first; beyond that an unowned post
        (producer/consumer signalling), allowed only up to the capacity:
        otherwise ValueError and nothing changes.  On a slotted semaphore the
        unit numbers of this thread's latest grant go first."""
        if n is not None:
            units = n
        _args.check_units(units, self._capacity)
        self._handle.release(units, native_tid())

    def disown(self, units: int = 1) -> None:
        """Hand owned units off without returning them: they stay taken but
        belong to nobody, so this process's death no longer returns them
        (a consumer's item, a producer's filled slot).  An unowned post by
        anyone (``release`` beyond what it owns) returns them later.  On a
        slotted semaphore their unit numbers stay taken, owned by nobody."""
        _args.check_units(units, self._capacity)
        self._handle.disown(units)

    # ------------------------------------------------------ context managers
    def _enter_slow(self) -> Lease:
        lease = self._grant(1, True, None, 0, False)
        assert lease is not None     # no deadline: only a grant ends the wait
        return lease

    def _exit_slow(self, *exc: object) -> None:
        self._handle.release(1, native_tid())

    def hold(self, units: int = 1, *, timeout: float | None = None, priority: int = 0,
             deadlock: str = "wait") -> _ledger.Hold:
        """``with sem.hold(2, timeout=5) as lease:`` hold 2 units for the
        block; raises ipcsem.Timeout if they cannot be had in time."""
        _args.check_int("units", units, 1, self._capacity)
        t = _args.check_timeout(timeout)
        _args.check_priority(priority)
        return _ledger.Hold(self, units, t, priority, _args.check_deadlock(deadlock))

    def _hold_enter(self, units: int, timeout: float | None, priority: int,
                    deadlock: bool) -> Lease:
        lease = self._grant(units, True, timeout, priority, deadlock)
        if lease is None:
            raise Timeout(self._name, units, timeout)
        return lease

    def _hold_exit(self, units: int, lease: Lease | None) -> None:
        self._handle.release(units, native_tid(), lease)


@final
class Mutex(_Primitive):
    """A named mutex shared by any process that knows the name: capacity 1,
    owned by the acquiring *thread*.

    Only its owner may release it (anyone else gets NotOwner, and nothing
    changes).  If the owner dies holding it, the next owner's lease (and
    ``previous_owner_died``) says so until some owner releases it normally,
    like a robust pthread mutex's EOWNERDEAD.  ``reentrant=True`` lets the
    owner nest acquires (released at depth 0); otherwise a second acquire by
    the owner raises DeadlockDetected instead of waiting forever.
    """

    __slots__ = ()

    def __init__(self, name: str, *, reentrant: bool | None = None,
                 priority_inheritance: bool | None = None, mode: int = 0o600,
                 group: str | int | None = None, max_holders: int = 1024,
                 max_waiters: int = 1024, create: bool = True, backend: str | None = None,
                 **options: Any) -> None:
        if reentrant is not None:
            _args.check_bool("reentrant", reentrant)
        if priority_inheritance is not None:
            _args.check_bool("priority_inheritance", priority_inheritance)
        params = make_params(1, 1, mode, max_holders, max_waiters, kind="mutex",
                         reentrant=bool(reentrant),
                         priority_inheritance=bool(priority_inheritance)) if create else None
        super().__init__(name, params, backend, group,
                         {"kind": "mutex", "reentrant": reentrant,
                          "priority_inheritance": priority_inheritance}, options)

    def _acquire_slow(self, blocking: bool = True, timeout: float | None = None, *,
                      priority: int = 0, deadlock: str = "wait") -> bool:
        """Lock it (threading.Lock's signature: ``timeout=-1`` is forever).
        True when this thread owns it; False on timeout or when a
        non-blocking attempt finds it taken."""
        if blocking.__class__ is not bool:
            raise TypeError(f"blocking must be True or False, not {blocking!r}")
        if not blocking and timeout is not None and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking acquire")
        t = _args.check_timeout(timeout, "lock")     # threading.Lock: -1 is forever
        _args.check_priority(priority)
        return self._grant(1, blocking, t, priority, _args.check_deadlock(deadlock)) is not None

    def _release_slow(self) -> None:
        """release(): unlock it; NotOwner unless this thread owns it."""
        self._handle.release(1, native_tid())

    @property
    def previous_owner_died(self) -> bool:
        """For the current owner: its previous owner died holding it and
        nobody has released it normally since (repair, then release)."""
        return self._handle.owner_died(native_tid())

    def locked(self) -> bool:
        return self._handle.available == 0

    def _enter_slow(self) -> Lease:
        lease = self._grant(1, True, None, 0, False)
        assert lease is not None     # no deadline: only a grant ends the wait
        return lease

    def _exit_slow(self, *exc: object) -> None:
        self._handle.release(1, native_tid())

    def hold(self, *, timeout: float | None = None, priority: int = 0,
             deadlock: str = "wait") -> _ledger.Hold:
        """``with m.hold(timeout=5) as lease:``; ipcsem.Timeout if not had in time."""
        return _ledger.Hold(self, 1, _args.check_timeout(timeout), _args.check_priority(priority),
                            _args.check_deadlock(deadlock))

    def _hold_enter(self, units: int, timeout: float | None, priority: int,
                    deadlock: bool) -> Lease:
        lease = self._grant(1, True, timeout, priority, deadlock)
        if lease is None:
            raise Timeout(self._name, 1, timeout)
        return lease

    def _hold_exit(self, units: int, lease: Lease | None) -> None:
        self._handle.release(1, native_tid())
