"""The admission rule, as a pure function of one children listing.

Requests are served highest priority first, FIFO (ZooKeeper sequence order)
within a priority.  With a fair semaphore the admissible requests are the
longest prefix of that order whose units fit in what is free: the first one
that does not fit stops everybody behind it, so a 2-unit head is never
overtaken by 1-unit requests.  With ``fair=False`` a request that does not
fit is skipped (later ones may barge past it).

Free units = capacity - unowned units - units of every hold node.  A hold
node that is already gone from the server but still in a stale listing only
makes the answer more conservative; a grant that is missing from the
listing is impossible because grants are conditional on the gate version
read *before* the listing (see docs/zookeeper.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._codec import HeldNode, ReqNode, serial_key


class _Take:
    """The virtual request of a take(): it arrives after everyone of its priority."""

    def __repr__(self) -> str:
        return "TAKE"


TAKE = _Take()
Admissible = ReqNode | _Take


@dataclass(frozen=True)
class Decision:
    free: int                     # units free before any of the admissible are granted
    order: list[ReqNode]          # serving order of the queued requests
    admissible: list[Admissible]  # prefix (fair) or subset of order (+TAKE) that fits
    free_slots: list[int]         # unit numbers not held, lowest first (slotted)


def serving_order(reqs: Sequence[ReqNode]) -> list[ReqNode]:
    if not reqs:
        return []
    ref = reqs[0].seq
    return sorted(reqs, key=lambda r: (-r.priority, serial_key(r.seq, ref)))


def decide(capacity: int, unowned: int, held: Sequence[HeldNode], reqs: Sequence[ReqNode],
           fair: bool = True, take: tuple[int, int] | None = None,
           slotted: bool = False) -> Decision:
    """Who may be granted now.  ``take=(units, priority)`` adds a virtual
    request behind every queued one of its priority (ahead of lower ones);
    it appears as ``TAKE`` in ``admissible`` when it fits."""
    free = capacity - unowned - sum(h.units for h in held)
    order = serving_order(reqs)
    seq: list[tuple[Admissible, int]] = [(r, r.units) for r in order]
    if take is not None:
        units, prio = take
        pos = next((i for i, r in enumerate(order) if r.priority < prio), len(order))
        seq.insert(pos, (TAKE, units))
    admissible: list[Admissible] = []
    used = 0
    for item, units in seq:
        if used + units > free:
            if fair:
                break
            continue
        admissible.append(item)
        used += units
    free_slots: list[int] = []
    if slotted:
        taken = {s for h in held for s in h.slots}
        free_slots = [s for s in range(capacity) if s not in taken]
    return Decision(free, order, admissible, free_slots)


def head_of(order: list[ReqNode], admissible: list[Admissible]) -> ReqNode | None:
    """The first queued request not admissible now (the one that waits for
    units rather than for the ones ahead of it)."""
    ok = {id(a) for a in admissible}
    for r in order:
        if id(r) not in ok:
            return r
    return None
