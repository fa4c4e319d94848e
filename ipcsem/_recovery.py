"""Recovery: return the units of dead processes, exactly once.

``heal(segment)`` is the single recovery step every path uses (blocked
waiters, Semaphore.recover(), the supervisor): look at every identity the
ledger knows, ask the kernel whether it is dead, and call the ledger's
``recover(pid, start)``, which is idempotent under the ledger lock: however
many healers race, a dead process's units are posted once.
"""
from __future__ import annotations

import logging

from . import _identity

log = logging.getLogger("ipcsem")


def dead_identities(holders, waiters) -> set[tuple[int, int]]:
    idents = {(h[1], h[2]) for h in holders} | {(w[2], w[3]) for w in waiters}
    return {i for i in idents if _identity.is_dead(*i)}


def heal(segment, on_recover=None) -> int:
    """Recover every dead holder/waiter of one semaphore; units recovered."""
    ledger = segment.ledger
    _header, holders, waiters, wakes = ledger.snapshot()
    segment.ring(wakes)
    total = 0
    for pid, start in dead_identities(holders, waiters):
        units, entries, wakes = ledger.recover(pid, start)
        segment.ring(wakes)
        total += units
        if units or entries:
            log.info("recovered %d unit(s) of %s from dead pid %d", units, segment.name, pid)
            if on_recover is not None:
                on_recover(segment.name, pid, start, units, entries)
    return total
