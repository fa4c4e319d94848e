"""The grant log and what it proves: fencing tokens strictly increasing
across kills, and a mutex's owner-died flag.

Every worker appends one ``G`` line per grant to a shared log, under the
oracle's guard (:meth:`ipcsem.chaos.oracle.Oracle.take`)::

    G <asked_ns> <got_ns> <token> <previous_owner_died> <pid>

``asked_ns`` is CLOCK_MONOTONIC (one clock for every process on the
machine) read *before* the acquire call, ``got_ns`` read under the guard
*after* the grant; ``token`` is 0 when the API form used does not return a
lease (``acquire()`` returns a bool).  On a mutex storm a worker also appends
``R <token>`` once a normal ``release()`` has returned.

Tokens.  Two holders of a counting semaphore may log in either order, so the
log's order is not the grant order; what is certain is real-time precedence:
if A's grant was logged (``got_ns``) before B even asked (``asked_ns``), A was
granted before B, and B's token must be larger.  :func:`check_tokens` checks
that for every such pair (sorting by ``got_ns`` and a running maximum: n log
n), that no token repeats, and, on a mutex, where the guard serialises the
owners, that the log's own order is increasing.

Owner died.  A mutex's grants form one sequence (tokens 1, 2, 3, ...; only
a grant takes a token).  ``previous_owner_died`` must be True for the next
owner after an owner died holding it and stay True until some owner releases
normally.  :func:`check_owner_died` replays that rule along the tokens.  What
ended each grant comes from the log (``R``: a normal release) and from the
storm, which records each dead worker's state and token: dead while HOLDING
means it died holding.  Where the end is not known (killed while releasing:
the release may or may not have committed; a grant nobody logged: granted to
a worker killed before it returned, or raced into a timed-out wait and given
back) the expected value is unknown until the next observation: those are
not counted as checked.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

MAX_PROBLEMS = 10


@dataclass(frozen=True)
class Grant:
    asked_ns: int
    got_ns: int
    token: int             # 0: not known (a bool-returning acquire)
    died: bool             # the lease's previous_owner_died
    pid: int


@dataclass
class GrantLog:
    grants: list[Grant] = field(default_factory=list)   # in log order
    releases: set[int] = field(default_factory=set)      # tokens released normally (mutex)
    malformed: list[str] = field(default_factory=list)   # the first few bad lines


@dataclass
class Finding:
    """What one check found: ``checked`` cases, the ``problems`` (at most
    MAX_PROBLEMS described, ``failures`` counted)."""

    checked: int = 0
    failures: int = 0
    problems: list[str] = field(default_factory=list)
    seen: int = 0          # check_owner_died: grants that said the previous owner died

    def fail(self, text: str) -> None:
        self.failures += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def read_log(path: str) -> GrantLog:
    """Parse the grant log.  Every field is checked: a line that is not a
    well-formed G or R record is kept (the first few) as ``malformed``."""
    log = GrantLog()
    bad = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - `with f` below; only open() may be missing
    except FileNotFoundError:
        return log
    with f:
        for raw in f:
            parts = raw.split()
            try:
                if parts[0] == b"G" and len(parts) == 6:
                    a, g, t, d, p = (int(x) for x in parts[1:])
                    if a < 0 or g < 0 or t < 0 or d not in (0, 1) or p <= 0:
                        raise ValueError
                    log.grants.append(Grant(a, g, t, bool(d), p))
                    continue
                if parts[0] == b"R" and len(parts) == 2:
                    t = int(parts[1])
                    if t <= 0:
                        raise ValueError
                    log.releases.add(t)
                    continue
            except (ValueError, IndexError):
                pass
            bad += 1
            if len(log.malformed) < MAX_PROBLEMS:
                log.malformed.append(raw[:120].decode(errors="replace").rstrip())
    if bad > len(log.malformed):
        log.malformed.append(f"... {bad} malformed line(s) in all")
    return log


def check_tokens(grants: list[Grant], *, serial: bool = False) -> Finding:
    """Tokens strictly increase in grant order (see the module docstring).
    ``grants`` in log order; ``serial``: the log order is the grant order
    (a mutex).  Grants with token 0 are skipped."""
    found = Finding()
    known = [g for g in grants if g.token > 0]
    t0 = min((g.asked_ns for g in known), default=0)

    def at(ns: int) -> str:
        return f"+{(ns - t0) / 1e9:.6f} s"

    for token, n in Counter(g.token for g in known).items():
        if n > 1:
            found.fail(f"token {token} was granted {n} times")
    by_got = sorted(known, key=lambda g: g.got_ns)
    got = [g.got_ns for g in by_got]
    best: list[Grant] = []          # best[i]: the largest token among by_got[:i + 1]
    for g in by_got:
        best.append(g if not best or g.token > best[-1].token else best[-1])
    for b in known:
        i = bisect.bisect_left(got, b.asked_ns)   # by_got[:i] were granted before b asked
        found.checked += 1
        if i and best[i - 1].token >= b.token:
            a = best[i - 1]
            found.fail(f"token {b.token} (pid {b.pid}, asked at {at(b.asked_ns)}) is not above "
                       f"token {a.token} (pid {a.pid}, granted by {at(a.got_ns)})")
    if serial:
        for prev, g in pairwise(known):
            if g.token <= prev.token:
                found.fail(f"the mutex's log order has token {g.token} (pid {g.pid}) after "
                           f"token {prev.token} (pid {prev.pid})")
    return found


def check_owner_died(log: GrantLog, died_holding: set[int], final: Grant | None = None) -> Finding:
    """Replay the owner-died rule along a mutex's tokens (see the module
    docstring).  ``died_holding``: tokens whose owner was found dead while
    HOLDING.  ``final``: the verification's own grant, after every worker
    died."""
    found = Finding()
    known = sorted((g for g in log.grants if g.token > 0), key=lambda g: g.token)
    if final is not None:
        known.append(final)
    expect: bool | None = False          # a fresh mutex: nobody died yet
    why = "a fresh mutex"
    # Tokens start at the ledger's creation time, not at 1: the first grant
    # anyone saw (logged, or found dead holding it) is the mutex's first.
    # (A first grant whose owner died before logging it and was not found
    # holding it cannot exist: the log line is written while holding.)
    seen = [g.token for g in known] + list(died_holding)
    prev = min(seen) - 1 if seen else 0
    for g in known:
        if g.token <= prev:
            continue                      # a repeat: check_tokens reports it
        if g.token - 1 > prev:            # grants nobody logged: the last of them decides
            t = g.token - 1
            expect, why = (True, f"token {t} died holding it") if t in died_holding \
                else (None, "")
        if g.died:
            found.seen += 1
        if expect is not None:
            found.checked += 1
            if g.died != expect:
                found.fail(f"token {g.token} (pid {g.pid}): previous_owner_died is {g.died}, "
                           f"expected {expect} ({why})")
        if g.token in log.releases:
            expect, why = False, f"token {g.token} was released normally"
        elif g.token in died_holding:
            expect, why = True, f"token {g.token} died holding it"
        else:
            expect, why = None, ""        # died releasing, or never reaped: not known
        prev = g.token
    return found
