"""The public records: what ipcsem tells callers about a semaphore.

Every record is frozen (except :class:`Lease`, whose validity a backend may
withdraw) and labelled with the API that returns it.  No caller indexes a
tuple by position: backends build these from whatever they read.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

KINDS = ("semaphore", "mutex")


@dataclass(frozen=True)
class Params:
    """Creation-time policy of a semaphore, fixed for its whole life
    (``Semaphore(..., capacity=, slots=, fair=)``, ``Mutex(..., reentrant=)``).
    A re-open that asks for another value is a PolicyMismatch."""

    capacity: int
    initial: int
    kind: str = "semaphore"            # "semaphore" | "mutex"
    slots: bool = False                # units are numbered 0..capacity-1; grants say which
    fair: bool = True                  # False: releasers/arrivals may barge (bounded)
    reentrant: bool = False            # mutex: the owner may nest acquires
    priority_inheritance: bool = False  # mutex: boost the owner to its best waiter
    mode: int = 0o600
    max_holders: int = 1024
    max_waiters: int = 1024


@dataclass(frozen=True)
class Holder:
    """A process holding units (``Semaphore.holders()``).  (pid, start) is
    its identity; ``start`` is its start time in clock ticks since boot.
    ``slots``: the unit numbers it holds (slotted semaphores), else ().
    ``owner_tid``: the owning thread of a mutex, else None.  ``host``: the
    machine (ZooKeeper backend), else None."""

    pid: int
    start: int
    units: int
    since: float          # epoch seconds when its holding went from 0 to > 0
    acquisitions: int     # grants it received since it registered
    slots: tuple[int, ...] = ()
    owner_tid: int | None = None
    host: str | None = None


@dataclass(frozen=True)
class Waiter:
    """A blocked acquire, in the order it will be served (``Semaphore.waiters()``)."""

    pid: int
    start: int
    tid: int              # native thread id of the waiting thread
    units: int
    priority: int
    since: float          # epoch seconds when it started waiting
    ticket: int           # FIFO order within a priority
    host: str | None = None


@dataclass(frozen=True)
class Stats:
    """Counters and policy of one semaphore, read together (``Semaphore.stats()``)."""

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
    kind: str = "semaphore"
    slots: bool = False
    fair: bool = True
    reentrant: bool = False
    priority_inheritance: bool = False


@dataclass(frozen=True)
class Picture:
    """The counters, holders and waiters of one semaphore from one reading
    of it, so that they agree with each other (what status tools show:
    ``stats.available`` is what ``holders`` leave free)."""

    stats: Stats
    holders: list[Holder]
    waiters: list[Waiter]     # in serving order


# An ABC with no abstract methods on purpose: backends register their lease
# types as virtual subclasses (the shm one is a C type).
class Lease(ABC):  # noqa: B024
    """What a grant gave you: ``with sem as lease`` / ``with sem.hold(2) as lease``.

    A read-only record with these attributes:

    ``units``
        how many units;
    ``slots``
        the unit numbers held, sorted (``()`` where the semaphore has no slots);
    ``token``
        fencing token: strictly increasing across every grant of the
        semaphore, crashes and recoveries included;
    ``previous_owner_died``
        a mutex's previous owner died holding it and nobody has released it
        normally since (repair what it protects, then release normally);
    ``valid``
        False once the backend can no longer prove the lease holds (a
        ZooKeeper session lost); on one machine always True: a lease ends
        only with its process;
    ``deadline``
        monotonic time until which the lease is guaranteed, or None when it
        does not expire by time.

    Each backend has its own concrete type (the shared-memory one is a C
    struct sequence, so a grant costs no Python object construction);
    ``isinstance(x, ipcsem.Lease)`` holds for all of them.
    """

    __slots__ = ()
    if TYPE_CHECKING:
        # Read-only for callers (a backend's type may make them anything
        # readable: the shm Grant's are C members).
        @property
        def units(self) -> int: ...
        @property
        def slots(self) -> tuple[int, ...]: ...
        @property
        def token(self) -> int: ...
        @property
        def previous_owner_died(self) -> bool: ...
        @property
        def valid(self) -> bool: ...
        @property
        def deadline(self) -> float | None: ...


@dataclass(frozen=True)
class Deadlock:
    """One deadlock found by ``ipcsem.find_deadlocks()``: the processes that
    can never proceed, the semaphores involved, and a description of who
    holds what and who waits for what."""

    processes: tuple[int, ...]                 # pids, sorted
    semaphores: tuple[str, ...]                # names, sorted
    description: str
    edges: tuple[str, ...] = field(default=(), compare=False)   # one line per hold/wait


__all__ = ["KINDS", "Deadlock", "Holder", "Lease", "Params", "Stats", "Waiter"]
