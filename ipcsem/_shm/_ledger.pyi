"""Types of the C extension ``ipcsem._shm._ledger`` (``_ledger.c``).

Checked against the compiled module by ``make lint`` (mypy's stubtest).

Every ``lock`` argument is how long to wait for the ledger lock: a
CLOCK_MONOTONIC deadline in ns (``time.monotonic_ns() + ...``; Wedged when it
passes), ``LOCK_FOREVER`` (signal handlers run), ``LOCK_UNINTERRUPTED``
(signals wait), or -3 (do not wait: the fast path's).  ``pid, start`` is a
process identity (start in clock ticks); ``tid``/``owner`` of 0 mean the
calling thread.
"""
from collections.abc import Callable
from typing import Any, Final, TypedDict, final, overload

from _typeshed import ReadableBuffer, WriteableBuffer, structseq
from typing_extensions import disjoint_base

from .._records import Lease

LAYOUT_VERSION: Final = 3
HEADER_SIZE: Final = 4096
MAGIC: Final = 0x32304D4553435049
MAX_CAPACITY: Final = 2147483647
MAX_SLOTTED_CAPACITY: Final = 4096
MAX_SLOTS: Final = 1048576
OVERTAKE_LIMIT: Final = 16

# waiter entry states (WaiterRow.state)
WAITING: Final = 1
GRANTED: Final = 2

# policy bits (Header.policy, Ledger.policy)
P_SLOTS: Final = 1
P_MUTEX: Final = 2
P_REENTRANT: Final = 4
P_UNFAIR: Final = 8
P_PI: Final = 16

# waiter entry flags (WaiterRow.flags)
WF_ASYNC: Final = 1
WF_DEADLOCK_RAISE: Final = 2
WF_PARKED: Final = 4

LOCK_FOREVER: Final = -1
LOCK_UNINTERRUPTED: Final = -2

@final
class Grant(Lease):
    """ipcsem.Lease of this backend (``tp_name`` "ipcsem.Lease"; registered
    as a virtual subclass of ``ipcsem.Lease``).  Made only by the ledger."""

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
    def deadline(self) -> None: ...

_HolderTuple = tuple[int, int, int, int, int, int, int, int, tuple[int, ...]]

@final
class HolderRow(structseq[int | tuple[int, ...]], _HolderTuple):
    """One holder slot in use."""

    __match_args__: Final = ("slot", "pid", "start", "units", "since_ns", "acquisitions",
                             "pending", "registered_ns", "slots")
    @property
    def slot(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def units(self) -> int: ...
    @property
    def since_ns(self) -> int: ...
    @property
    def acquisitions(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def registered_ns(self) -> int: ...
    @property
    def slots(self) -> tuple[int, ...]: ...

_WaiterTuple = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int]

@final
class WaiterRow(structseq[int], _WaiterTuple):
    """One waiter entry in use (WAITING or GRANTED)."""

    __match_args__: Final = ("entry", "state", "pid", "start", "tid", "units", "priority",
                             "ticket", "since_ns", "holder", "token", "flags", "owner",
                             "position")
    @property
    def entry(self) -> int: ...
    @property
    def state(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def tid(self) -> int: ...
    @property
    def units(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def ticket(self) -> int: ...
    @property
    def since_ns(self) -> int: ...
    @property
    def holder(self) -> int: ...
    @property
    def token(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def owner(self) -> int: ...
    @property
    def position(self) -> int: ...

_HeaderTuple = tuple[
    int, int, int, int, int, int, int, int, int, int,
    int, int, int, int, int, int, int, int, int, int,
    int, int, int, int, int, int, int, int, int, int,
    int, int, int, int, int, int, int, int, int, int,
]

@final
class Header(structseq[int], _HeaderTuple):
    """The ledger's header fields."""

    __match_args__: Final = (
        "capacity", "max_holders", "max_waiters", "policy", "created_ns", "creator_pid",
        "initial", "nonce", "flags", "available", "unowned", "waiting", "next_ticket",
        "next_token", "recovered_units", "recoveries", "lock_repairs", "lock_owner",
        "acquisitions", "registrations", "changes", "holder_hwm", "waiter_hwm",
        "undo_count", "head_overtaken", "mx_owner", "mx_owner_tid", "mx_depth",
        "mx_owner_died", "pi_state", "pi_tid", "pi_base_policy", "pi_base_rtprio",
        "pi_base_nice", "pi_boost_policy", "pi_boost_rtprio", "pi_boost_nice",
        "pi_booster", "pi_reason", "commits")
    @property
    def capacity(self) -> int: ...
    @property
    def max_holders(self) -> int: ...
    @property
    def max_waiters(self) -> int: ...
    @property
    def policy(self) -> int: ...
    @property
    def created_ns(self) -> int: ...
    @property
    def creator_pid(self) -> int: ...
    @property
    def initial(self) -> int: ...
    @property
    def nonce(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def available(self) -> int: ...
    @property
    def unowned(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def next_ticket(self) -> int: ...
    @property
    def next_token(self) -> int: ...
    @property
    def recovered_units(self) -> int: ...
    @property
    def recoveries(self) -> int: ...
    @property
    def lock_repairs(self) -> int: ...
    @property
    def lock_owner(self) -> int: ...
    @property
    def acquisitions(self) -> int: ...
    @property
    def registrations(self) -> int: ...
    @property
    def changes(self) -> int: ...
    @property
    def holder_hwm(self) -> int: ...
    @property
    def waiter_hwm(self) -> int: ...
    @property
    def undo_count(self) -> int: ...
    @property
    def head_overtaken(self) -> int: ...
    @property
    def mx_owner(self) -> int: ...
    @property
    def mx_owner_tid(self) -> int: ...
    @property
    def mx_depth(self) -> int: ...
    @property
    def mx_owner_died(self) -> int: ...
    @property
    def pi_state(self) -> int: ...
    @property
    def pi_tid(self) -> int: ...
    @property
    def pi_base_policy(self) -> int: ...
    @property
    def pi_base_rtprio(self) -> int: ...
    @property
    def pi_base_nice(self) -> int: ...
    @property
    def pi_boost_policy(self) -> int: ...
    @property
    def pi_boost_rtprio(self) -> int: ...
    @property
    def pi_boost_nice(self) -> int: ...
    @property
    def pi_booster(self) -> int: ...
    @property
    def pi_reason(self) -> int: ...
    @property
    def commits(self) -> int: ...

_SnapshotTuple = tuple[Header, list[HolderRow], list[WaiterRow], bool]

@final
class Snapshot(structseq[Any], _SnapshotTuple):
    """One look at a ledger."""

    __match_args__: Final = ("header", "holders", "waiters", "consistent")
    @property
    def header(self) -> Header: ...
    @property
    def holders(self) -> list[HolderRow]: ...
    @property
    def waiters(self) -> list[WaiterRow]:
        """WAITING entries in serving order, then GRANTED ones."""
    @property
    def consistent(self) -> bool:
        """Read between transactions (False: may show one half done)."""

@final
class Ledger:
    """Transactions on one mapped ledger.  Methods raise ipcsem.Closed once
    it is shut down, Corrupt for a ledger that breaks its rules, Wedged when
    a ``lock`` deadline passes (unless said otherwise)."""

    def __init__(self, buffer: WriteableBuffer) -> None:
        """Attach to a mapped, 64-byte aligned, initialised ledger (Corrupt
        if it is not one)."""
    @property
    def mutex(self) -> tuple[int, int, int, int]:
        """(owner key, owner tid, depth, owner died), lock-free."""
    @property
    def capacity(self) -> int: ...
    @property
    def policy(self) -> int: ...
    @property
    def available(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def nonce(self) -> int: ...
    @property
    def changes(self) -> int: ...
    @property
    def unlinked(self) -> bool: ...
    @property
    def max_holders(self) -> int: ...
    @property
    def max_waiters(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def active(self) -> int: ...
    def take(self, pid: int, start: int, tid: int, owner: int, units: int, priority: int,
             lock: int, /) -> Grant | None:
        """The units now, or None (not free for us, or the lock deadline passed)."""
    def enqueue(self, pid: int, start: int, tid: int, owner: int, units: int, priority: int,
                flags: int, lock: int, /) -> Grant | int | None:
        """A Grant (free after all), the queued entry's index, or None (lock deadline)."""
    def wait(self, pid: int, start: int, tid: int, owner: int, units: int, priority: int,
             flags: int, deadline_ns: int, slice_ns: int,
             on_slice: Callable[[], object] | None,
             on_watch: Callable[[bool], object] | None = None, /) -> Grant | None:
        """Queue and wait; None when ``deadline_ns`` (0: never) passed.
        ``on_watch(True)`` once the wait has lasted 2 ms, ``on_watch(False)``
        when it ends."""
    def state(self, entry: int, /) -> int: ...
    def settle(self, entry: int, pid: int, start: int, lock: int, /) -> Grant | None: ...
    def cancel(self, entry: int, pid: int, start: int, lock: int, /) -> int:
        """Units given back (a grant that raced in)."""
    def ring(self, entry: int, /) -> None: ...
    def set_flags(self, entry: int, pid: int, start: int, set: int, clear: int, lock: int,
                  /) -> None: ...
    def pi_boost(self, pid: int, start: int, tid: int, hops: int, base_policy: int,
                 base_rtprio: int, base_nice: int, policy: int, rtprio: int, nice: int,
                 booster: int, lock: int, /) -> int | None:
        """Under the lock, if ``tid`` owns the mutex, is a thread of ``pid``
        and (pid, start) holds it: give ``tid`` policy/rtprio/nice and record
        it: boosted (state 1) with ``hops`` (1..64, how many PI mutexes the
        lent priority came through) in ``pi_reason``; hops 0: back at its
        own priority (state 0); unavailable (2, with the reason) when the
        kernel refuses.  None if ``tid`` is not the owner (nothing done),
        else the kernel's errno (0: applied)."""
    def recover_orphan(self, pid: int, start: int, owner_key: int, lock: int, /) -> bool: ...
    def touch(self, lock: int, /) -> None: ...
    def process_bell(self, pid: int, start: int, /) -> tuple[int, int] | None:
        """(holder slot, bell value), or None if the process holds no slot."""
    @overload
    def release(self, pid: int, start: int, owner: int, units: int, token_hint: int,
                /) -> None: ...
    @overload
    def release(self, pid: int, start: int, owner: int, units: int, token_hint: int,
                lock: int, /) -> None:
        """Waiting for the ledger lock until ``lock`` (monotonic ns) at most:
        Wedged (nothing done) when it passes."""
    @overload
    def release(self, pid: int, start: int, owner: int, units: int, token_hint: int,
                policy: int, rtprio: int, nice: int, /) -> None:
        """A PI mutex's owner thread: when this ends its ownership, the
        calling thread gets policy/rtprio/nice back, after the unlock."""
    def disown(self, pid: int, start: int, units: int, token_hint: int, key: int,
               /) -> None: ...
    def recover(self, pid: int, start: int, lock: int, /) -> tuple[int, int]:
        """(units, entries) returned from a dead identity."""
    def unregister(self, pid: int, start: int, lock: int, /) -> bool: ...
    def mark_unlinked(self, lock: int, /) -> None: ...
    def claim_heal(self, now_ns: int, interval_ns: int, /) -> bool: ...
    def snapshot(self, tries: int = 200, /) -> Snapshot: ...
    def check(self, lock: int, /) -> None:
        """Corrupt naming the first broken rule of the invariant."""
    def shutdown(self, seconds: float, /) -> bool:
        """False (nothing released) if calls remain in flight after ``seconds``."""

@disjoint_base    # a C layout of its own: combines only with layout-free bases (mixins)
class Primitive:
    """Base of ipcsem.Semaphore and ipcsem.Mutex: a C fast path for their hot
    methods, which hand every other call to the subclass's ``_acquire_slow``,
    ``_release_slow``, ``_enter_slow``, ``_exit_slow``."""

    def acquire(self, *args: Any, **kwargs: Any) -> bool: ...
    def release(self, *args: Any, **kwargs: Any) -> None: ...
    def __enter__(self) -> Lease: ...
    def __exit__(self, *exc: object) -> None: ...
    def _fast_attach(self, ledger: Ledger | tuple[Ledger, Callable[[], object],
                                                  Callable[[bool | None], object], str] | None,
                     /) -> None:
        """The ledger for the fast path; with the handle's healing slice,
        watcher hook and name (``ipcsem._shm.handle.FastLedger``, unpacked
        by position), a refused blocking acquire waits in C too."""

@final
class Hold:
    """``with sem.hold(units, timeout=...) as lease``: the primitive's
    ``_hold_enter(units, timeout, priority, deadlock)`` / ``_hold_exit``."""

    def __init__(self, primitive: Primitive, units: int, timeout: float | None, priority: int,
                 deadlock: bool, /) -> None: ...
    def __enter__(self) -> Lease: ...
    def __exit__(self, *exc: object) -> None: ...

class _Extent(TypedDict):
    holders: tuple[int, int]
    waiters: tuple[int, int]
    units: tuple[int, int]
    total: int

def initialize(buffer: WriteableBuffer, capacity: int, initial: int, max_holders: int,
               max_waiters: int, policy: int, creator_pid: int, nonce: int, /) -> int:
    """Lay out a fresh ledger; its size in bytes."""
def segment_size(capacity: int, max_holders: int, max_waiters: int, policy: int, /) -> int: ...
def extent(header: ReadableBuffer, /) -> _Extent:
    """(offset, length) of the regions to pread for a view, and the total size."""
def parse(header: ReadableBuffer, holders: ReadableBuffer, waiters: ReadableBuffer,
          units: ReadableBuffer, consistent: bool, /) -> Snapshot: ...
def seqlock_words(header: ReadableBuffer, /) -> tuple[int, int]:
    """(commits, undo_count)."""
def set_identity(pid: int, start: int, /) -> None: ...
def tid() -> int: ...
def wait_bells(bells: list[tuple[Ledger, int, int]], notifier_seen: int, seconds: float,
               /) -> bool:
    """False when ``seconds`` passed with no bell changed."""
def poke_bells() -> None: ...
def notifier_word() -> int: ...
def set_crash_point(n: int, /) -> None:
    """TEST HOOK: SIGKILL this process at the Nth crash point (-1: off)."""
