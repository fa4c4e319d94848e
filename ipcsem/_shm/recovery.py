"""Recovery: return the units of dead processes, exactly once.

``heal(segment)`` is the single recovery step every path uses (blocked
waiters, failed non-blocking attempts, ``Semaphore.recover()``, the
supervisor): look at every identity the ledger knows, ask the kernel whether
it is dead, and call the ledger's ``recover(pid, start)``, which is
idempotent under the ledger lock: however many healers race, a dead
process's units are posted once.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _identity
from . import _ledger

if TYPE_CHECKING:
    from .segment import Segment

log = logging.getLogger("ipcsem")

# on_recover(name, pid, start, units, entries)
OnRecover = Callable[[str, int, int, int, int], None]


def identities(snapshot: _ledger.Snapshot) -> set[tuple[int, int]]:
    """Every (pid, start) a ledger snapshot mentions (a pid <= 0 is no
    process: a corrupt row, which check() reports; never 'recovered')."""
    return ({(h.pid, h.start) for h in snapshot.holders if h.pid > 0}
            | {(w.pid, w.start) for w in snapshot.waiters if w.pid > 0})


def recover_identity(segment: Segment, pid: int, start: int, on_recover: OnRecover | None = None,
                     lock: int = _ledger.LOCK_FOREVER) -> int:
    """Return what one identity, known to be dead, holds or waits for (the
    ledger rings the waiters this grants to); report it.  Units recovered
    (0 if another recoverer got there first).  Wedged if ``lock`` (a
    CLOCK_MONOTONIC deadline in ns) passes before the ledger lock is had."""
    units, entries = segment.ledger.recover(pid, start, lock)
    if units or entries:
        log.info("recovered %d unit(s) of %s from dead pid %d", units, segment.name, pid)
        if on_recover is not None:
            on_recover(segment.name, pid, start, units, entries)
    return units


def heal(segment: Segment, on_recover: OnRecover | None = None,
         lock: int = _ledger.LOCK_FOREVER) -> int:
    """Recover every dead holder/waiter of one semaphore; units recovered.

    The look is lock-free.  If it caught the ledger between two stores (a
    process died inside a transaction, perhaps inside a recovery), the dead
    may not show: take the lock once, which rolls the half-done transaction
    back, and look again."""
    ledger = segment.ledger
    snap = ledger.snapshot()
    if not snap.consistent:
        ledger.touch(lock)
        snap = ledger.snapshot()
    units = sum(recover_identity(segment, pid, start, on_recover, lock)
                for pid, start in identities(snap) if _identity.is_dead(pid, start))
    return units + _orphaned_mutex(segment, snap, on_recover, lock)


def _orphaned_mutex(segment: Segment, snap: _ledger.Snapshot, on_recover: OnRecover | None,
                    lock: int) -> int:
    """A mutex whose owning *thread* exited while its process lives would stay
    locked for good: recover it (owner-died for the next owner)."""
    h = snap.header
    if not h.mx_owner or h.mx_owner < 0:        # free, or owned by a task (no thread)
        return 0
    holder = next((x for x in snap.holders if x.units > 0), None)
    if holder is None or _identity.is_dead(holder.pid, holder.start):
        return 0                                # the process's recovery covers it
    if os.path.exists(f"/proc/{holder.pid}/task/{h.mx_owner_tid}"):
        return 0
    if _identity.start_of(holder.pid) != holder.start:
        return 0
    if segment.ledger.recover_orphan(holder.pid, holder.start, h.mx_owner, lock):
        log.info("recovered mutex %s from exited thread %d of pid %d", segment.name,
                 h.mx_owner_tid, holder.pid)
        if on_recover is not None:
            on_recover(segment.name, holder.pid, holder.start, 1, 0)
        return 1
    return 0
