"""Priority inheritance for robust mutexes (``Mutex(name, priority_inheritance=True)``).

While a thread waits on such a mutex, the owner *thread* runs with a
scheduling priority at least as good as the best waiting thread's — its nice
value, and its real-time policy and priority if it has one — for as long as
it owns the mutex; when it releases it (or dies) its own priority is back
exactly as it was.  A chain (the owner itself waiting on another PI mutex)
propagates: the boosted owner, waiting, boosts the next owner in its turn.

Who boosts: every waiting thread, each slice of its wait (20 ms), when the
kernel lets it: raising another thread's priority needs CAP_SYS_NICE, or a
target whose RLIMIT_NICE (RLIMIT_RTPRIO for real-time) allows the new value,
and, across processes, the same user (or CAP_SYS_NICE).  Where it cannot,
the ledger records "inheritance unavailable" and why (tools show it), the
mutex still works, and a supervisor running as root boosts instead: its
per-user worker asks root over its pipe, and root re-checks the request
against its own read-only view of the ledger (the target must be the
mutex's owner, the priority no better than a live waiter's) before it
applies it — a user cannot make root change any priority their mutex does
not justify.

What is recorded in the ledger (header, undo-logged, cleared with the
owner): the boosted owner thread, its own priority before the first boost
(restored on release), the priority it was raised to, and the booster.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

# pi_state in the ledger header
PI_NONE, PI_BOOSTED, PI_UNAVAILABLE = 0, 1, 2
SLICE = 0.02     # how often a waiter of a PI mutex looks at its owner's priority


@dataclass(frozen=True, order=True)
class Prio:
    """A thread's scheduling priority, ordered so that greater is better:
    any real-time policy beats any normal one; then the real-time priority;
    then the lower nice value."""

    rt: bool
    rtprio: int
    neg_nice: int
    policy: int = os.SCHED_OTHER

    @property
    def nice(self) -> int:
        return -self.neg_nice

    def describe(self) -> str:
        if self.rt:
            name = {os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(self.policy, "RT")
            return f"{name} {self.rtprio}"
        return f"nice {self.nice}"

    def encode(self) -> tuple[int, int, int]:
        """(policy, rtprio, nice) for the ledger."""
        return self.policy, self.rtprio, self.nice


def decode(policy: int, rtprio: int, nice: int) -> Prio:
    rt = policy in (os.SCHED_FIFO, os.SCHED_RR)
    return Prio(rt, rtprio if rt else 0, -nice, policy)


def prio_of(tid: int) -> Prio | None:
    """The scheduling priority of thread ``tid`` now, None if it is gone."""
    try:
        policy = os.sched_getscheduler(tid)
        rtprio = os.sched_getparam(tid).sched_priority
        nice = os.getpriority(os.PRIO_PROCESS, tid)
    except (ProcessLookupError, PermissionError, OSError):
        return None
    return decode(policy, rtprio, nice)


def apply(tid: int, prio: Prio) -> str | None:
    """Give thread ``tid`` the priority ``prio`` (policy, real-time priority
    and nice value); None, or why not (the kernel's refusal)."""
    try:
        if prio.rt:
            os.sched_setscheduler(tid, prio.policy, os.sched_param(prio.rtprio))
        else:
            if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, prio.nice)
    except ProcessLookupError:
        return "the owner thread is gone"
    except PermissionError as e:
        return ("not permitted (needs CAP_SYS_NICE, or RLIMIT_NICE/RLIMIT_RTPRIO of the owner "
                f"allowing it: {errno.errorcode.get(e.errno, e.errno)})")
    except OSError as e:
        return str(e)
    return None


# reasons recorded for "unavailable" (pi_reason): small codes, text here
REASONS = {1: "not permitted (no CAP_SYS_NICE, and the owner's RLIMIT_NICE does not allow it)",
           2: "the owner thread is gone", 3: "the kernel refused"}


def reason_code(why: str) -> int:
    if why.startswith("not permitted"):
        return 1
    if "gone" in why:
        return 2
    return 3


def best_waiter(snapshot) -> tuple[Prio, int] | None:
    """The best priority among the threads queued on a mutex (and its tid)."""
    from ._shm import _ledger

    best = None
    for w in snapshot.waiters:
        if w.state != _ledger.WAITING or w.tid <= 0:
            continue
        p = prio_of(w.tid)
        if p is not None and (best is None or p > best[0]):
            best = (p, w.tid)
    return best


def update(handle, booster: int) -> str | None:
    """Make the owner of ``handle``'s PI mutex run at least as well as its
    best waiter (or back towards its own priority when better waiters
    left), recording it in the ledger.  ``booster`` is this process's pid.
    Returns what was done, for logs, or None."""
    ledger = handle.ledger
    snap = ledger.snapshot()
    h = snap.header
    owner_tid = h.mx_owner_tid
    if not h.mx_owner or owner_tid <= 0:
        return None
    mine = owner_tid == _my_tid()
    best = best_waiter(snap)
    base = decode(h.pi_base_policy, h.pi_base_rtprio, h.pi_base_nice) \
        if h.pi_state == PI_BOOSTED and h.pi_tid == owner_tid else None
    current = prio_of(owner_tid)
    if current is None:
        return None
    own = base or current            # the owner's own priority
    want = max(own, best[0]) if best else own
    if want == current or mine and want > current and best is None:
        return None
    if want <= own and base is None:
        return None                  # nobody better waits: nothing to do
    why = apply(owner_tid, want)
    if why is not None:
        if h.pi_state != PI_UNAVAILABLE or h.pi_reason != reason_code(why):
            ledger.pi_record(owner_tid, PI_UNAVAILABLE, *own.encode(), *current.encode(),
                             booster, reason_code(why))
        return f"priority inheritance unavailable for thread {owner_tid}: {why}"
    state = PI_NONE if want == own else PI_BOOSTED
    ledger.pi_record(owner_tid, state, *own.encode(), *want.encode(), booster, 0)
    by = f" because of thread {best[1]}" if best else ""
    return f"owner thread {owner_tid}: {current.describe()} -> {want.describe()}{by}"


def restore_self(handle) -> None:
    """The owner, about to release: its own priority back, exactly."""
    h = handle.ledger.snapshot().header
    tid = _my_tid()
    if h.pi_state == PI_BOOSTED and h.pi_tid == tid:
        apply(tid, decode(h.pi_base_policy, h.pi_base_rtprio, h.pi_base_nice))


def _my_tid() -> int:
    from ._shm import _ledger

    return _ledger.tid()
