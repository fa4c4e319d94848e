"""Priority inheritance for robust mutexes (``Mutex(name, priority_inheritance=True)``).

While a thread waits on such a mutex, the owner *thread* runs with a
scheduling priority at least as good as the waiting thread's -- its nice
value, and its real-time policy and priority if it has one -- for as long as
it owns the mutex; when it releases it, its own priority is back exactly as
it was before it took the mutex (policy, real-time priority, nice value).

Policies: a SCHED_OTHER or SCHED_BATCH owner keeps its policy and takes the
better nice value; a SCHED_IDLE owner (where nice means nothing) takes the
lender's policy; a real-time lender makes the owner real-time (its nice
value kept for when it leaves).  SCHED_IDLE ranks below every nice value;
SCHED_DEADLINE threads are never touched.

Chains: an owner that itself waits on another PI mutex lends, there, what
it was given, one hop further (the ledger records, while boosted, how many
PI mutexes the priority came through); after MAX_CHAIN hops it lends only
its own priority.  A cycle (a deadlock) never lends better than the best
thread in it, since what is lent is always a priority the kernel shows.

Who boosts: every waiting thread (a blocked ``acquire()``, or an
``AsyncMutex`` waiter's event-loop thread, whose ledger row names that
thread), each slice of its wait (20 ms), lending its own priority as the
kernel reports it, never anything a ledger says: raising another thread's
priority needs CAP_SYS_NICE, or a target of the same user whose RLIMIT_NICE
(RLIMIT_RTPRIO for real time) allows the new value.  Where the kernel
refuses, the ledger records "inheritance unavailable", what the owner should
have run at, and why (``ipcsem-status`` shows it); the mutex works as
without inheritance.  Nothing else boosts: ``ipcsem supervise`` (its
per-user workers, and root) changes no priority, so running it as root does
not make a refused boost happen and root never changes another user's
priorities for a mutex (docs/pi.md, "Privilege").

Serialized with ownership: a boost is applied by the ledger itself, under
its lock, only while the target thread still owns the mutex and is a thread
of the holder process (``Ledger.pi_boost``); the owner's release decides,
in the locked transaction that ends its ownership, that its own priority
comes back, and applies it right after the unlock, before the call returns
(``Ledger.release`` with the priority to restore; not inside the lock,
where the owner back at nice 19 would hold the ledger lock itself next to a
hog).  No boost can land after the restore: from the unlock on the thread
is no longer the owner, and ``pi_boost`` finds that under the lock.

Trust (a ledger is written by other processes): the thread boosted is the
ledger's owner thread only if it is a thread of the process the ledger
names as the holder, that process is alive with the recorded start time,
and it maps this very ledger (so a forged word cannot point a privileged
waiter at a bystander or a kernel thread); the priority given is never
better than the waiter's own (or, in a chain, than what the kernel shows it
was given); the owner's own priority is kept by the owner's process (here,
per thread), never read back from the ledger.  The ledger's record (the
boosted thread, the priority before the first boost, the priority given,
the booster, a refusal's reason or the hops) is for status tools; its
"before" is used only to *lower* a boosted owner once the waiter that
raised it left, never below the best remaining waiter (each counted only if
its row's thread is a thread of its live process, which maps this ledger),
never above what the kernel shows now.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import IpcsemError
from ._identity import ALIVE, STOPPED, native_tid, status
from ._names import shm_path

if TYPE_CHECKING:
    from ._shm import _ledger
    from ._shm.handle import ShmHandle, ShmPending

# pi_state in the ledger header
PI_NONE, PI_BOOSTED, PI_UNAVAILABLE = 0, 1, 2
SLICE = 0.02     # how often a waiter of a PI mutex looks at its owner's priority
LOCK_NS = 100_000_000    # how long a boost waits for the ledger lock (then: next slice)
MAX_CHAIN = 8            # PI mutexes a lent priority goes through, at most (then: own priority)
MAX_HOPS = 64            # what the ledger stores of it (pi_reason while boosted)

_RT = (os.SCHED_FIFO, os.SCHED_RR)
_NORMAL = (os.SCHED_OTHER, os.SCHED_BATCH)
_NAMES = {os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR", os.SCHED_BATCH: "SCHED_BATCH",
          os.SCHED_IDLE: "SCHED_IDLE"}
_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0x40000000)


@dataclass(frozen=True)
class Prio:
    """A thread's scheduling priority: its policy, real-time priority and
    nice value, exactly (``==`` compares all three).  Ordered (``<``,
    ``max``) by how well the thread runs: any real-time policy beats any
    other, then the higher real-time priority; SCHED_IDLE is below every
    nice value of SCHED_OTHER/SCHED_BATCH; among those, the lower nice value.
    A real-time thread's nice value (kept for when it leaves real time) and
    SCHED_IDLE's do not count."""

    policy: int
    rtprio: int
    nice: int

    @property
    def rt(self) -> bool:
        return self.policy in _RT

    @property
    def rank(self) -> tuple[bool, int, bool, int]:
        normal = self.policy in _NORMAL
        return (self.rt, self.rtprio if self.rt else 0, self.rt or normal,
                -self.nice if normal else 0)

    def __lt__(self, other: Prio) -> bool:
        return self.rank < other.rank

    def __le__(self, other: Prio) -> bool:
        return self.rank <= other.rank

    def __gt__(self, other: Prio) -> bool:
        return self.rank > other.rank

    def __ge__(self, other: Prio) -> bool:
        return self.rank >= other.rank

    @property
    def valid(self) -> bool:
        """One the kernel could have (ledger words may be anything); a
        SCHED_DEADLINE thread has a reservation, not a priority: not valid."""
        if self.rt:
            return 1 <= self.rtprio <= 99 and -20 <= self.nice <= 19
        return (self.policy in _NORMAL or self.policy == os.SCHED_IDLE) and self.rtprio == 0 \
            and -20 <= self.nice <= 19

    def describe(self) -> str:
        name = _NAMES.get(self.policy)
        if self.rt:
            return f"{name} {self.rtprio}"
        if self.policy == os.SCHED_OTHER:
            return f"nice {self.nice}"
        if self.policy == os.SCHED_IDLE:
            return "SCHED_IDLE"
        if name is not None:
            return f"{name} nice {self.nice}"
        return f"policy {self.policy} priority {self.rtprio} nice {self.nice}"

    def encode(self) -> tuple[int, int, int]:
        """(policy, rtprio, nice) for the ledger."""
        return self.policy, self.rtprio, self.nice


def decode(policy: int, rtprio: int, nice: int) -> Prio:
    return Prio(policy, rtprio, nice)


def prio_of(tid: int) -> Prio | None:
    """The scheduling priority of thread ``tid`` now, None if it is gone
    (or not ours to look at)."""
    try:
        policy = os.sched_getscheduler(tid) & ~_RESET_ON_FORK
        rtprio = os.sched_getparam(tid).sched_priority
        nice = os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None
    return Prio(policy, rtprio, nice)


def lift(current: Prio, lender: Prio) -> Prio:
    """What a thread at ``current`` runs at when it must run at least as
    well as ``lender``: ``current`` if it already does; else the lender's
    real-time policy and priority (its own nice value kept for when it
    leaves real time), or the better nice value, taking the lender's policy
    only from SCHED_IDLE (where nice means nothing; SCHED_BATCH stays)."""
    if lender <= current:
        return current
    if lender.rt:
        return Prio(lender.policy, lender.rtprio, current.nice)
    if current.policy in _NORMAL:
        return Prio(current.policy, 0, min(current.nice, lender.nice))
    return Prio(lender.policy, 0, lender.nice)


# reasons recorded for "unavailable" (pi_reason, set by the ledger from the
# kernel's errno): small codes, text here
REASONS = {1: "not permitted (no CAP_SYS_NICE, and the owner's RLIMIT_NICE does not allow it)",
           2: "the owner thread is gone", 3: "the kernel refused"}


# ---------------------------------------------------------- the owner's side
#
# A thread's own priority is its own process's knowledge: read from the
# kernel when it is about to take a PI mutex while it owns none (and has no
# event-loop request for one queued), so nothing of ours can have raised it;
# restored at each release that ends an ownership (the waiters of the PI
# mutexes it still owns raise it again within a slice).

_lock = threading.Lock()
_own: dict[int, Prio] = {}                      # tid -> its own priority
_held: dict[int, dict[tuple[int, int], ShmHandle]] = {}   # tid -> {(id(handle), owner key): handle}
_queued: dict[int, tuple[int, ShmHandle, int]] = {}       # id(pending) -> (tid, handle, owner key)


def _after_fork() -> None:
    # A forked child owns nothing (its threads have new ids anyway).
    global _lock
    _lock = threading.Lock()
    _own.clear()
    _held.clear()
    _queued.clear()
    _participants.clear()


os.register_at_fork(after_in_child=_after_fork)


def _busy(tid: int) -> bool:
    return bool(_held.get(tid)) or any(q[0] == tid for q in _queued.values())


def about_to_acquire(tid: int) -> None:
    """Thread ``tid`` is about to try for a PI mutex: if it owns none (nor
    may be granted one), its priority now is its own."""
    with _lock:
        if not _busy(tid):
            p = prio_of(tid)
            if p is not None:
                _own[tid] = p


def acquired(handle: ShmHandle, owner: int, tid: int) -> None:
    """``owner`` (thread ``tid``, or a task on it) now owns ``handle``'s mutex."""
    with _lock:
        if tid not in _own and not _busy(tid):
            p = prio_of(tid)
            if p is not None:
                _own[tid] = p
        _held.setdefault(tid, {})[(id(handle), owner)] = handle


def queued(handle: ShmHandle, pending: ShmPending, owner: int, tid: int) -> None:
    """An event-loop request: it may be granted at any moment from now on."""
    with _lock:
        _queued[id(pending)] = (tid, handle, owner)


def settled(pending: ShmPending) -> None:
    """The queued request was granted: its owner owns the mutex."""
    with _lock:
        q = _queued.pop(id(pending), None)
        if q is not None:
            _held.setdefault(q[0], {})[(id(q[1]), q[2])] = q[1]


def unqueued(pending: ShmPending) -> None:
    """The queued request is gone (granted and settled, or cancelled)."""
    with _lock:
        _queued.pop(id(pending), None)


def release(handle: ShmHandle, pid: int, start: int, owner: int, units: int,
            token: int) -> None:
    """Release ``handle``'s PI mutex for ``owner``; when that ends the
    ownership, the calling thread's own priority comes back in the same
    call, after the unlock (raises as ``Ledger.release``)."""
    ledger = handle.ledger
    tid = native_tid()
    own = _own.get(tid)
    if own is None:
        ledger.release(pid, start, owner, units, token)
    else:
        ledger.release(pid, start, owner, units, token, *own.encode())
    if ledger.mutex[0] != owner:          # no longer ours (not a nested release)
        with _lock:
            held = _held.get(tid)
            if held is not None:
                held.pop((id(handle), owner), None)
                if not held:
                    del _held[tid]


# --------------------------------------------------------- the waiter's side

def update(handle: ShmHandle, booster: int) -> str | None:
    """A waiter's slice: make the owner of ``handle``'s PI mutex run at
    least as well as the calling thread (or, if it was raised for a waiter
    that left, lower it towards the best one still queued).  ``booster`` is
    this process's pid.  What was done, for logs, or None.  Never raises an
    ipcsem error (a busy ledger lock: the next slice tries again)."""
    try:
        return _update(handle, booster)
    except IpcsemError:
        return None


def _update(handle: ShmHandle, booster: int) -> str | None:
    ledger = handle.ledger
    snap = ledger.snapshot()
    h = snap.header
    owner_tid, me = h.mx_owner_tid, native_tid()
    if not h.mx_owner or owner_tid <= 0 or owner_tid == me:
        return None
    holders = [x for x in snap.holders if x.units > 0]
    if len(holders) != 1:
        return None                       # a mutex has one holder: anything else is not ours
    holder = holders[0]
    current, mine = prio_of(owner_tid), prio_of(me)
    if current is None or mine is None or not current.valid or not mine.valid:
        return None
    mine, hops = _lendable(me, mine)
    base = given = None
    if h.pi_state == PI_BOOSTED and h.pi_tid == owner_tid:
        base = decode(h.pi_base_policy, h.pi_base_rtprio, h.pi_base_nice)
        given = decode(h.pi_boost_policy, h.pi_boost_rtprio, h.pi_boost_nice)
        if not (base.valid and given.valid):
            base = given = None
    if mine > current:
        # lend our own priority (or what our chain gave us), nothing more
        own, want = base or current, lift(current, mine)
    elif base is not None and given == current:
        # raised by a waiter (the record matches the kernel): if that waiter
        # left, lower towards the best one still here, never below it (nor
        # below us), never above what the owner has now
        floor = _best_waiter(handle, snap, me, mine, current)
        want = lift(base, floor)
        if not want < current:
            return None
        own = base
        hops = 0 if want == base else hops if floor == mine else 1
    else:
        return None
    if not _participant(handle, holder.pid, holder.start, owner_tid):
        return None
    err = ledger.pi_boost(holder.pid, holder.start, owner_tid, hops, *own.encode(),
                          *want.encode(), booster, time.monotonic_ns() + LOCK_NS)
    if err is None:
        return None                       # it released (or died) meanwhile: nothing done
    if err:
        return f"priority inheritance unavailable for thread {owner_tid}: {os.strerror(err)}"
    return f"owner thread {owner_tid}: {current.describe()} -> {want.describe()}"


def _lendable(me: int, mine: Prio) -> tuple[Prio, int]:
    """What the calling thread (at ``mine`` now) lends the owner it waits
    for, and through how many PI mutexes that priority came (1: its own).
    A thread that owns PI mutexes and was boosted by their waiters lends
    what it was given, one hop further than the longest boost recorded for
    it on the mutexes it owns; at MAX_CHAIN hops it lends only its own
    priority, so a chain ends there (a cycle of PI mutexes, a deadlock,
    never lends further than that either: nobody in it runs better than the
    best thread of it, and the lent priority is always one the kernel
    shows, never one a ledger claims)."""
    with _lock:
        own = _own.get(me)
        held = list(_held.get(me, {}).values())
    if own is None or not held or not mine > own:
        return mine, 1
    hops = 0
    for handle in held:
        try:
            h = handle.ledger.snapshot().header
        except IpcsemError:
            continue
        if h.pi_state == PI_BOOSTED and h.pi_tid == me:
            hops = max(hops, min(max(h.pi_reason, 1), MAX_HOPS))
    if hops == 0:
        return mine, 1          # raised by its own process, or an admin: its own to lend
    if hops >= MAX_CHAIN:
        return own, 1
    return mine, hops + 1


def _best_waiter(handle: ShmHandle, snap: _ledger.Snapshot, me: int, mine: Prio,
                 current: Prio) -> Prio:
    """The best priority among the threads queued on the mutex (at least
    ours): a row counts only if its thread is a thread of its live process
    and that process maps this ledger (rows are ledger words: a forged one
    could otherwise name any thread, and keep the owner from being
    lowered).  Stops once one is as good as ``current``."""
    from ._shm import _ledger

    best = mine
    for w in snap.waiters:
        if best >= current:
            break
        if w.state != _ledger.WAITING or w.tid <= 0 or w.pid <= 0 or w.tid == me:
            continue
        p = prio_of(w.tid)
        if p is not None and p.valid and p > best and _participant(handle, w.pid, w.start, w.tid):
            best = p
    return best


def _thread_of(tid: int, pid: int, start: int) -> bool:
    """Is ``tid`` a thread of the live process (pid, start)?"""
    return os.path.exists(f"/proc/{pid}/task/{tid}") and status(pid, start) in (ALIVE, STOPPED)


# ------------------------------------------------- is the owner one of us?

_participants: dict[tuple[str, int, int, int], bool] = {}   # (name, nonce, pid, start) -> maps it


def _participant(handle: ShmHandle, pid: int, start: int, tid: int) -> bool:
    """Is ``tid`` a thread of the live process (pid, start), and does that
    process map this very ledger (the file we map as this name)?  Where its
    memory map is not ours to read, we are unprivileged: the kernel lets us
    do no more than our user may do anyway, so we go on unless we have
    CAP_SYS_NICE."""
    if not _thread_of(tid, pid, start):
        return False
    if pid == os.getpid():
        return True
    key = (handle.name, handle.ledger.nonce, pid, start)
    if _participants.get(key):
        return True
    path = shm_path(handle.name)
    ours = _mapped(os.getpid(), path)
    theirs = _mapped(pid, path)
    if theirs is None:
        return not _may_renice_anyone()
    ok = bool(ours and ours & theirs)
    if ok:
        if len(_participants) > 256:
            _participants.clear()
        _participants[key] = True
    return ok


def _mapped(pid: int, path: str) -> set[tuple[str, int]] | None:
    """(device, inode) of the files process ``pid`` maps at ``path`` (also
    once unlinked); None if its map is not ours to read."""
    deleted = path + " (deleted)"
    out = set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5] in (path, deleted):
                    out.add((parts[3], int(parts[4])))
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    return out


def _may_renice_anyone() -> bool:
    """Does the calling thread have CAP_SYS_NICE (effective)?"""
    try:
        with open("/proc/thread-self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 23 & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0
