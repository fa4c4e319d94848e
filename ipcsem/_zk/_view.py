"""What one read of a ZooKeeper semaphore shows.

A :class:`View` is the state one admission decision is made from (the gate
and the children listing read after it); the handle reads views and decides
on them.  The rest of this module is observation: the records users get
(``holders()``, ``waiters()``, ``stats()``) made from a view and the data of
the nodes it lists.  No I/O here: the handle reads, these interpret.
"""
from __future__ import annotations

import dataclasses

from .._records import Holder, Params, Stats, Waiter
from ._codec import Gate, HeldNode, Meta, ReqNode, Who


@dataclasses.dataclass
class View:
    """One decision's worth of state: the gate (and its version), the
    children listing read after it, with the queue node's data version
    (``arrivals``: every request bumps it when it queues).  A request with
    a priority above 0 (the default), which may go ahead of requests
    already queued, also bumps the gate version."""

    gate: Gate
    version: int
    arrivals: int
    reqs: list[ReqNode]
    held: list[HeldNode]


@dataclasses.dataclass
class _Agg:
    """holders(): one process's holds added up."""

    since: float
    units: int = 0
    n: int = 0
    slots: list[int] = dataclasses.field(default_factory=list)
    tid: int | None = None


def holders(view: View, whos: dict[str, Who], mutex: bool) -> list[Holder]:
    """One Holder per process (host, machine, pid, start) holding in
    ``view``; ``whos`` the data of its hold nodes (a node without: left
    meanwhile, not counted).  A mutex's holder carries its thread."""
    agg: dict[tuple[str, str, int, int], _Agg] = {}
    for h in view.held:
        who = whos.get(h.name)
        if who is None:
            continue
        key = (who.host, who.mkey, h.pid, h.start)
        a = agg.get(key)
        if a is None:
            a = agg[key] = _Agg(since=who.since)
        a.units += h.units
        a.since = min(a.since, who.since)
        a.n += 1
        a.slots.extend(h.slots)
        if mutex:
            a.tid = who.tid
    return [Holder(pid, start, a.units, a.since, a.n, tuple(sorted(a.slots)), a.tid, host)
            for (host, _mk, pid, start), a in agg.items()]


def waiters(order: list[ReqNode], whos: dict[str, Who]) -> list[Waiter]:
    """The queued requests in serving ``order`` (the admission decision's),
    those whose node data was read (``whos``)."""
    return [Waiter(r.pid, r.start, whos[r.name].tid, r.units, r.priority, whos[r.name].since,
                   r.seq, whos[r.name].host)
            for r in order if r.name in whos]


def stats(name: str, params: Params, meta: Meta, view: View) -> Stats:
    """The semaphore's counters as ``view`` shows them."""
    held = sum(h.units for h in view.held)
    procs = {(h.mkey, h.pid, h.start) for h in view.held}
    g, p = view.gate, params
    return Stats(name, p.capacity, max(0, p.capacity - g.unowned - held), g.unowned,
                 held, len(procs), len(view.reqs), g.grants, g.recovered_units,
                 g.recoveries, 0, meta.created, meta.creator_pid, p.kind,
                 p.slots, p.fair, p.reentrant, p.priority_inheritance)
