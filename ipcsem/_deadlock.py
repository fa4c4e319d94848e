"""Deadlock detection across semaphores: Holt's graph reduction for counting,
multi-unit resources, under ipcsem's own grant rule.

A cycle in the wait-for graph is not enough for counting semaphores: a cycle
through a semaphore with enough free units for the waiter, or through a
holder that can still finish, is no deadlock.  So we *reduce*: every process
that can still make progress is assumed to finish and give back everything it
holds; whatever can then never be granted is deadlocked.

The model (per semaphore: capacity, free units, each process's holdings,
the queue in serving order; per process: its threads):

* holdings belong to processes, waits to threads.  A process is *live* if
  one of its threads is not parked in an ipcsem wait (it may release), or it
  is dead or hidden from us (recovery or its own code will free its units).
  Threads that ipcsem itself runs (named ``ipcsem-*``) do not count.  An
  event-loop waiter does not park its thread; its entry says "parked" only
  while every task of its loop waits on ipcsem (the loop can then do nothing
  but wait), so a loop with other work is live: no false positives from
  tasks we cannot see;
* a live process gives back all its holdings;
* a queue is served in order: its head is granted when it fits the free
  units (strict FIFO: an entry behind a head that cannot be served is not
  grantable even when units are free, so such a wait can close a deadlock);
  the granted thread runs, so its process becomes live (and the units it was
  granted come back with everything else);
* repeat until nothing changes.  Threads still parked can never be granted.
  Processes with such a thread that are not live are deadlocked; each
  connected group of them (waits-for-what-the-other-holds) is one Deadlock.

``raise_if_victim`` is what a ``deadlock="raise"`` waiter runs each slice:
of the participants of a deadlock that asked to be told, exactly one — the
one that started waiting last — raises DeadlockDetected, leaves the queue
(nothing is left behind), and the others can go on once its units are back.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ._errors import DeadlockDetected, IpcsemError, NotFound
from ._identity import ME, native_tid
from ._records import Deadlock

Ident = tuple[int, int]      # (pid, start)
# a deadlock's chosen victim: (since, pid, tid, owner, name)
Victim = tuple[float, int, int, int, str]
ThreadsOf = Callable[[int], "set[int] | None"]      # pid -> its threads' ids (None: gone)
Alive = Callable[[Ident], bool]
Stuck = list[tuple["SemState", "Queued"]]

INTERNAL_THREAD_PREFIX = "ipcsem-"


@dataclass
class Queued:
    ident: Ident
    tid: int
    units: int
    since: float
    raise_: bool
    is_async: bool
    owner: int = 0
    parked: bool = False        # async: every task of its loop waits on ipcsem


@dataclass
class SemState:
    name: str
    available: int
    holdings: dict[Ident, int]
    queue: list[Queued]          # WAITING entries, serving order
    granted_tids: set[tuple[int, int]] = field(default_factory=set)   # (pid, tid) about to run
    unowned: int = 0             # out without an owner: anyone's unowned post returns them


def _read_states(names: list[str] | None) -> list[SemState]:
    from . import _names
    from ._shm import _ledger
    from ._shm.segment import read_view

    states = []
    for name in sorted(names if names is not None else _names.names()):
        try:
            snap = read_view(name).snapshot
        except (IpcsemError, OSError):
            continue       # gone, unreadable, corrupt: not part of any graph we can see
        holdings = {(h.pid, h.start): h.units for h in snap.holders if h.units > 0}
        queue: list[Queued] = []
        granted: set[tuple[int, int]] = set()
        for w in snap.waiters:
            if w.state == _ledger.WAITING:
                queue.append(Queued((w.pid, w.start), w.tid, w.units, w.since_ns / 1e9,
                                    bool(w.flags & _ledger.WF_DEADLOCK_RAISE),
                                    bool(w.flags & _ledger.WF_ASYNC), w.owner,
                                    bool(w.flags & _ledger.WF_PARKED)))
            else:
                granted.add((w.pid, w.tid))
        states.append(SemState(name, snap.header.available, holdings, queue, granted,
                               snap.header.unowned))
    return states


def _threads(pid: int) -> set[int] | None:
    """Native ids of pid's threads that are not ipcsem's own; None if gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out = set()
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                if f.read().startswith(INTERNAL_THREAD_PREFIX):
                    continue
        except OSError:
            continue
        out.add(int(t))
    return out


def _stuck(states: list[SemState], threads_of: ThreadsOf, alive: Alive,
           withdrawn: Queued | None = None) -> tuple[Stuck, set[Ident], dict[str, int]]:
    """The reduction itself: (entries that can never be granted, the
    processes that are not live, free units per semaphore at the end).
    ``withdrawn``: pretend that entry left and its process is live (what a
    victim's DeadlockDetected does)."""
    idents: set[Ident] = set()
    parked: dict[Ident, set[int]] = {}          # waiting threads per process
    for s in states:
        idents.update(s.holdings)
        for q in s.queue:
            if q is withdrawn:
                continue
            idents.add(q.ident)
            if not q.is_async or q.parked:
                parked.setdefault(q.ident, set()).add(q.tid)
    live: set[Ident] = set()
    for ident in idents:
        if withdrawn is not None and ident == withdrawn.ident:
            live.add(ident)                      # the victim's code releases what it holds
            continue
        if not alive(ident):
            live.add(ident)                      # dead: recovery frees its units
            continue
        threads = threads_of(ident[0])
        if threads is None or not threads <= parked.get(ident, set()) or \
                any((ident[0], t) in s.granted_tids for s in states for t in threads):
            live.add(ident)
    # Unowned units (initial < capacity, disown) belong to nobody: any live
    # process may post them back, so a wait for them is not a deadlock.
    free = {s.name: s.available + s.unowned for s in states}
    for ident in live:                           # the live give back what they hold
        for s in states:
            free[s.name] += s.holdings.get(ident, 0)

    def make_live(ident: Ident) -> None:
        if ident in live:
            return
        live.add(ident)
        for s in states:
            free[s.name] += s.holdings.get(ident, 0)

    granted: set[int] = set()                    # id() of Queued entries simulated as granted
    changed = True
    while changed:
        changed = False
        for s in states:
            for q in s.queue:
                if q is withdrawn or id(q) in granted:
                    continue
                if q.units <= free[s.name]:
                    granted.add(id(q))           # granted, runs, gives everything back
                    make_live(q.ident)
                    changed = True
                    continue
                break                            # strict FIFO: nothing behind it goes first
    stuck = [(s, q) for s in states for q in s.queue
             if q is not withdrawn and id(q) not in granted]
    return stuck, live, free


def reduce(states: list[SemState], threads_of: ThreadsOf = _threads,
           alive: Alive | None = None) -> list[tuple[Deadlock, Victim | None]]:
    """Holt's reduction (module docstring) -> [(Deadlock, victim)], victim
    being (since, pid, tid, owner, name) of the participant that should give
    up: of those that asked ``deadlock="raise"``, the one that started
    waiting last *whose withdrawal lets every other member go on* (a
    bystander queued behind the deadlock is never chosen while a member
    whose leaving resolves it asked), else the one that started waiting
    last; None if nobody asked."""
    from . import _identity

    alive = alive or (lambda ident: not _identity.is_dead(*ident))
    stuck, live, free = _stuck(states, threads_of, alive)
    participants = {q.ident for _s, q in stuck if q.ident not in live}
    if not participants:
        return []
    # Group participants: P waits on S, Q holds S (both participants) -> linked.
    parent = {p: p for p in participants}

    def find(p: Ident) -> Ident:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for s, q in stuck:
        if q.ident not in participants:
            continue
        for holder in s.holdings:
            if holder in participants:
                parent[find(q.ident)] = find(holder)
    groups: dict[Ident, set[Ident]] = {}
    for p in participants:
        groups.setdefault(find(p), set()).add(p)
    out: list[tuple[Deadlock, Victim | None]] = []
    for members in groups.values():
        sems = sorted({s.name for s, q in stuck if q.ident in members}
                      | {s.name for s in states for h in s.holdings if h in members})
        edges = []
        for s in states:
            for h, units in sorted(s.holdings.items()):
                if h in members:
                    edges.append(f"pid {h[0]} holds {units} of {s.name!r}")
        candidates: list[tuple[Victim, Queued]] = []
        for s, q in stuck:
            if q.ident in members:
                edges.append(f"pid {q.ident[0]} (thread {q.tid}) waits for {q.units} of "
                             f"{s.name!r} ({free[s.name]} could be free)")
                if q.raise_:
                    candidates.append(((q.since, q.ident[0], q.tid, q.owner, s.name), q))
        pids = tuple(sorted(m[0] for m in members))
        desc = (f"{len(members)} process(es) {', '.join(map(str, pids))} wait for each other on "
                f"{', '.join(repr(n) for n in sems)}: " + "; ".join(edges))
        dl = Deadlock(pids, tuple(sems), desc, tuple(edges))
        victim: Victim | None = None
        for key, q in sorted(candidates, key=lambda kq: kq[0], reverse=True):
            after, live_after, _free = _stuck(states, threads_of, alive, withdrawn=q)
            if not any(x.ident in members and x.ident not in live_after for _s, x in after):
                victim = key
                break
        if victim is None and candidates:
            victim = max(k for k, _q in candidates)
        out.append((dl, victim))
    return sorted(out, key=lambda dv: dv[0].processes)


def find_deadlocks(names: list[str] | None = None) -> list[Deadlock]:
    """Every deadlock among the semaphores ``names`` (default: all this
    process can read) right now.  Reads the ledgers without locking them."""
    if names is not None:
        from . import _names

        for n in names:
            _names.validate(n)
        missing = [n for n in names if not os.path.exists(_names.shm_path(n))]
        if missing:
            raise NotFound(missing[0])
    return [dl for dl, _victim in reduce(_read_states(names))]


def raise_if_victim(name: str, owner: int | None = None) -> None:
    """For a ``deadlock="raise"`` waiter on ``name`` (this thread, or the task
    with owner key ``owner``): raise DeadlockDetected if its wait closes a
    deadlock and it is the one chosen to give up (the participant that
    asked and started waiting last)."""
    me, tid = ME.pid, native_tid()
    for dl, victim in reduce(_read_states(None)):
        if victim is None or victim[1] != me or victim[4] != name:
            continue
        if (victim[3] == owner) if owner is not None else (victim[2] == tid):
            raise DeadlockDetected(dl, name=name)
