"""Dining philosophers: 5 forks as 5 ipcsem semaphores of capacity 1.

    python -m tools.scenarios.philosophers [--chaos] [--seconds S]
                                           [--solution ordered|butler|both]

Three acts, each philosopher a separate process:

1. **naive**: everyone takes the left fork, then the right one.  All five
   hold their left fork and wait for their right: deadlock.  The director
   sees it in the ledgers alone, with ``ipcsem.find_deadlocks(forks)``
   (Holt's reduction over the forks' holders and queues: who can never be
   granted).  The philosophers' acquires have a timeout, so the act ends;
   with --chaos the director instead SIGKILLs one of them, its fork comes
   back, and the others eat.
2. **ordered**: take the lower-numbered fork first.  No cycle can form.
3. **butler**: a semaphore of N-1 seats; sit down first.  No cycle either.

In acts 2 and 3 the director checks, all along: no deadlock that lasts
(``find_deadlocks`` reads five ledgers one after another, not in one atomic
picture, so a deadlock must be seen in three polls in a row to count), two
neighbours never eat at once, no acquire times out, everyone eats.  With
--chaos it SIGKILLs random philosophers (mid-meal, waiting, thinking) and
respawns them; their forks and seat come back.
"""
from __future__ import annotations

import random
import time

from . import _common as c

SCENARIO = "philosophers"
NAIVE_TIMEOUT = 2.0
GIVE_UP = 10.0       # an acquire this long in acts 2 and 3 is a failure


def philosopher(t0: float, mode: str, i: str, n: str, tag: str, path: str) -> int:
    i, n = int(i), int(n)
    forks = [c.ipcsem.Semaphore(f"{tag}-fork{k}") for k in range(n)]
    left, right = i, (i + 1) % n
    words = c.Words(path)
    c.ready()
    while not words[2 * n]:        # the director starts the clock once all are ready
        time.sleep(0.005)
    until = words[2 * n] / 1e9
    me = f"philosopher {i}"
    rng = random.Random()
    if mode == "naive":
        forks[left].acquire()
        c.say(t0, f"{me} took fork {left} (left), reaches for fork {right}")
        # Everyone holds their left fork before anyone reaches for the right.
        while any(f.available for f in forks) and time.monotonic() < until:
            time.sleep(0.005)
        if not forks[right].acquire(timeout=NAIVE_TIMEOUT):
            c.say(t0, f"{me} gave up on fork {right} after {NAIVE_TIMEOUT:g} s")
            forks[left].release()
            return 3
        c.say(t0, f"{me} got fork {right} and eats")
        words[i] += 1
        forks[right].release()
        forks[left].release()
        return 0
    butler = c.ipcsem.Semaphore(f"{tag}-butler") if mode == "butler" else None
    first, second = (min(left, right), max(left, right)) if mode == "ordered" else (left, right)
    while time.monotonic() < until:
        time.sleep(rng.uniform(0, 0.03))                         # think
        if butler is not None and not butler.acquire(timeout=GIVE_UP):
            c.say(t0, f"{me}: no seat in {GIVE_UP:g} s")
            return 4
        try:
            if not forks[first].acquire(timeout=GIVE_UP):
                c.say(t0, f"{me}: no fork {first} in {GIVE_UP:g} s")
                return 4
            try:
                if not forks[second].acquire(timeout=GIVE_UP):
                    c.say(t0, f"{me}: no fork {second} in {GIVE_UP:g} s")
                    return 4
                words[n + i] = c.os.getpid()                     # eating
                time.sleep(rng.uniform(0.005, 0.03))
                words[n + i] = 0
                words[i] += 1
                forks[second].release()
            finally:
                forks[first].release()
        finally:
            if butler is not None:
                butler.release()
    return 0


def deadlocks(names: list[str]) -> list:
    """The deadlocks among these semaphores right now (ipcsem.find_deadlocks);
    a semaphore removed meanwhile means none."""
    try:
        return c.ipcsem.find_deadlocks(names)
    except c.ipcsem.NotFound:
        return []


def describe(dl, who: dict[int, int], forks) -> str:
    """A Deadlock in the scenario's words: which philosopher holds which
    fork and waits for which (read from the forks' ledgers)."""
    holds = {k: {h.pid for h in f.holders()} for k, f in enumerate(forks)}
    waits = {k: {w.pid for w in f.waiters()} for k, f in enumerate(forks)}
    parts = []
    for pid in dl.processes:
        held = [f"fork {k}" for k in holds if pid in holds[k]]
        wanted = [f"fork {k}" for k in waits if pid in waits[k]]
        name = f"P{who[pid]}" if pid in who else f"pid {pid}"
        parts.append(f"{name} holds {' and '.join(held) or 'nothing'}, waits for "
                     f"{' and '.join(wanted) or 'nothing'}")
    return "; ".join(parts)


def act(d: c.Director, mode: str, seconds: float, forks, path: str, words) -> None:
    a, n = d.args, a_n(d)
    for k in range(len(words)):
        words[k] = 0
    who: dict[int, int] = {}
    procs: dict[int, object] = {}
    killed: set[int] = set()
    timed_out = 0

    def start(i):
        p = d.spawn("philosopher", mode, i, n, d.tag, path)
        who[p.pid] = i
        procs[i] = p

    for i in range(n):
        start(i)
    d.wait_ready(procs.values())
    until = time.monotonic() + (10.0 if mode == "naive" else seconds)
    words[2 * n] = int(until * 1e9)
    streak, last, reported = 0, None, False
    neighbours_together = 0
    next_kill = time.monotonic() + d.rng.uniform(0.2, 0.5)
    watched = [f.name for f in forks] + ([d.butler.name] if mode == "butler" else [])
    while any(p.poll() is None for p in procs.values()):
        found = deadlocks(watched)
        key = tuple(sorted(dl.processes for dl in found)) if found else None
        streak = streak + 1 if key and key == last else (1 if key else 0)
        last = key
        if streak >= 3 and not reported:
            reported = True
            chain = " | ".join(describe(dl, who, forks) for dl in found)
            if mode == "naive":
                d.say(f"DEADLOCK found in the ledgers (ipcsem.find_deadlocks): {chain}",
                      indent=9)
                if a.chaos:
                    victim = procs[d.rng.randrange(n)]
                    i = who[victim.pid]
                    # Its queue entry on fork i+1 goes too (recovered until no
                    # ledger shows it), or a later release would grant that fork
                    # to the dead (until the next heal).
                    held, _queued = d.kill_and_recover(victim, forks)
                    killed.add(victim.pid)
                    got = [f"fork {k}" for k, f in enumerate(forks) if held.get(f.name)]
                    d.say(f"SIGKILL philosopher {i}: {c.plural(sum(held.values()), 'unit')} "
                          f"recovered ({', '.join(got) or 'none'}); the deadlock is broken")
                    d.check(not deadlocks(watched), "naive: still a deadlock after the kill")
            else:
                d.fail(f"{mode}: a deadlock that lasts: {chain}")
        if mode != "naive":
            # Read the flags forwards, then backwards: a meal that ends just as
            # its neighbour's begins cannot look simultaneous in both orders.
            fwd = [words[n + i] for i in range(n)]
            bwd = [words[n + i] for i in reversed(range(n))][::-1]
            for i in range(n):
                j = (i + 1) % n
                if (fwd[i] and fwd[j] and fwd[i] == bwd[i] and fwd[j] == bwd[j]
                        and fwd[i] not in killed and fwd[j] not in killed):
                    neighbours_together += 1
            ready = [i for i in range(n) if d.is_ready(procs[i])]
            if (a.chaos and ready and time.monotonic() >= next_kill
                    and time.monotonic() < until - 0.3):
                next_kill = time.monotonic() + d.rng.uniform(0.15, 0.4)
                i = d.rng.choice(ready)
                victim = procs[i]
                eating = words[n + i] == victim.pid
                held, queued = d.kill_and_recover(victim, (*forks, d.butler))
                killed.add(victim.pid)
                words[n + i] = 0
                got = [f"fork {k}" for k, f in enumerate(forks) if held.get(f.name)]
                if held.get(d.butler.name):
                    got.append("a seat")
                state = ("eating" if eating else "waiting" if queued else
                         "holding a fork" if got else "thinking")
                d.say(f"SIGKILL philosopher {i} (pid {victim.pid}) while {state}: "
                      f"{c.plural(sum(held.values()), 'unit')} recovered"
                      + (f" ({', '.join(got)})" if got else "") + "; respawned")
                start(i)
        for i, p in list(procs.items()):
            if p.poll() is not None and p.pid not in killed and p.returncode not in (0, 3):
                timed_out += 1
                killed.add(p.pid)  # report once
                d.fail(f"{mode}: philosopher {i} exited with {p.returncode}")
        time.sleep(0.02)
    meals = [words[i] for i in range(n)]
    if mode == "naive":
        gave_up = sum(1 for p in procs.values() if p.returncode == 3)
        d.check(reported, "naive: the deadlock was not found in the ledgers")
        d.say(f"naive: deadlock {'found' if reported else 'NOT found'}; "
              f"{gave_up} gave up (acquire timeout), meals {meals}")
    else:
        d.check(neighbours_together == 0,
                f"{mode}: two neighbours seen eating at once ({neighbours_together} times)")
        d.check(all(m > 0 for m in meals), f"{mode}: someone starved: meals {meals}")
        d.say(f"{mode}: no deadlock in {seconds:g} s; meals per philosopher {meals}"
              + (f"; {c.plural(len(killed), 'philosopher')} SIGKILLed" if a.chaos else ""))
    for k, f in enumerate(forks):
        d.check(f.available == 1, f"{mode}: fork {k} still taken after the act")


def a_n(d: c.Director) -> int:
    return d.args.philosophers


def direct(d: c.Director) -> None:
    a = d.args
    n = a.philosophers
    forks = [d.semaphore(f"fork{k}", 1) for k in range(n)]
    butler = d.butler = d.semaphore("butler", n - 1)
    path, words = d.words("table", 2 * n + 1)
    c.raw(f"philosophers: {n} processes, {n} forks (ipcsem semaphores of capacity 1)")
    c.raw(f"semaphores {d.tag}-fork0..{n - 1} and -butler  seed {a.seed}"
          + ("  CHAOS" if a.chaos else ""))
    solutions = ["ordered", "butler"] if a.solution == "both" else [a.solution]
    if not a.no_naive:
        c.rule("act 1: naive (left fork, then right)")
        act(d, "naive", 0, forks, path, words)
    for i, mode in enumerate(solutions, 2):
        c.rule(f"act {i}: {mode}" + (" (lower fork first)" if mode == "ordered" else
                                     f" ({n - 1} seats)"))
        act(d, mode, a.seconds / len(solutions), forks, path, words)
    d.check(butler.available == n - 1, "a butler's seat is still taken")


def main(argv=None) -> int:
    p = c.parser("Dining philosophers over ipcsem semaphores.", 4.0)
    p.add_argument("--philosophers", type=int, default=5)
    p.add_argument("--solution", choices=["ordered", "butler", "both"], default="both")
    p.add_argument("--no-naive", action="store_true", help="skip the deadlock act")
    return c.run(SCENARIO, p, direct, {"philosopher": philosopher}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
