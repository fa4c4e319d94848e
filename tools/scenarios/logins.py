"""Login limiter: at most S sessions at once; extra logins wait in a FIFO.

    python -m tools.scenarios.logins [--chaos] [--seconds S] [--sessions 3]

Each user is a separate process that takes one unit of the ``sessions``
semaphore for the length of its session.  The director lets the users arrive
one at a time (each is in the ledger, holding or queued, before the next
starts), so the arrival order is known exactly, and it checks:

* never more than S sessions (the ledger's holders, polled all along);
* logins happen in arrival order: for any two users that were not killed,
  the earlier arrival got its session no later (the ledger's grant time);
* at the end all S units are free and every ledger passes check().

The director announces each arrival before the user's process starts, so
every user's "arrives" line comes before its "logged in" line.  With
--chaos, random users are SIGKILLed, logged in or still queued; their
session comes back (or their queue entry goes), the others keep their
order, and each killed user (the same user, a new process) logs in again,
at the back of the queue.
"""
from __future__ import annotations

import time

from . import _common as c

SCENARIO = "logins"


def user(t0: float, name: str, who: str, session: str) -> int:
    sem = c.ipcsem.Semaphore(name)
    asked = time.time()
    sem.acquire()
    waited = time.time() - asked
    c.say(t0, f"{who} logged in after waiting {waited:4.2f} s")
    time.sleep(float(session))
    sem.release()
    c.say(t0, f"{who} logged out after a {float(session):4.2f} s session")
    return 0


def direct(d: c.Director) -> None:
    a = d.args
    sem = d.semaphore("sessions", a.sessions)
    watch = c.QueueWatch(sem)
    rng = d.rng
    c.raw(f"logins: at most {a.sessions} sessions; users arrive one by one for "
          f"{a.seconds:g} s and queue FIFO")
    c.raw(f"semaphore {sem.name}  seed {a.seed}" + ("  CHAOS" if a.chaos else ""))
    c.rule()

    arrival: list[int] = []        # pids in arrival order
    label: dict[int, str] = {}
    live: dict[int, object] = {}
    killed: set[int] = set()
    count = 0

    def tick() -> None:
        _, holders = watch.poll()
        if len(holders) > a.sessions or watch.max_held > a.sessions:
            d.fail(f"{len(holders)} sessions at once, limit {a.sessions}")
        for pid, p in list(live.items()):
            if p.poll() is not None:
                del live[pid]
                if p.returncode != 0 and pid not in killed:
                    d.fail(f"{label[pid]} exited with {p.returncode}")

    def arrive(again: str | None = None) -> None:
        """A user arrives (``again``: a killed user, back at the end of the
        queue): announced first, then its process starts; the next user
        arrives only once this one is in the ledger, holding or queued."""
        nonlocal count
        if again is None:
            count += 1
            who = f"user{count:02d}"
        else:
            who = again
        session = rng.uniform(0.5, 1.2) * a.pace
        d.say(f"{who} arrives" + (" again, after being killed" if again else ""))
        p = d.spawn("user", sem.name, who, f"{session:.3f}")
        label[p.pid] = who
        live[p.pid] = p

        def seen():
            return p.pid in watch.since or p.pid in watch.ticket

        c.sleep_until(lambda: tick() or seen() or p.poll() is not None, 30, 0.002)
        if not seen():
            d.fail(f"{who} never reached the ledger")
            return
        arrival.append(p.pid)
        if p.pid in watch.ticket:
            d.say(f"{who} (pid {p.pid}): all {a.sessions} sessions taken, queued at "
                  f"position {watch.position[p.pid]}")

    end = time.monotonic() + a.seconds
    next_kill = time.monotonic() + rng.uniform(0.3, 0.8)
    while time.monotonic() < end:
        arrive()
        pause = time.monotonic() + rng.uniform(0.02, 0.25) * a.pace
        while time.monotonic() < pause:
            tick()
            if a.chaos and time.monotonic() >= next_kill and live:
                next_kill = time.monotonic() + rng.uniform(0.2, 0.6)
                pid = rng.choice(sorted(live))
                held, queued = d.kill_and_recover(live.pop(pid), (sem,))
                killed.add(pid)
                state = ("logged in" if held else "queued" if queued else
                         "starting (not yet in the ledger)")
                d.say(f"SIGKILL {label[pid]} (pid {pid}) while {state}: "
                      f"{c.plural(sum(held.values()), 'session')} recovered")
                tick()
                arrive(again=label[pid])
            time.sleep(0.003)
    if not c.sleep_until(lambda: tick() or not live, 60, 0.003):
        d.fail("users still running 60 s after the last arrival")
    tick()

    c.rule("order")
    done = [p for p in arrival if p not in killed and p in watch.since]
    by_login = sorted(done, key=lambda p: (watch.since[p], arrival.index(p)))
    for title, order in (("arrival order: ", done), ("login order:   ", by_login)):
        c.raw(c.textwrap.fill(title + " ".join(label[p][4:] for p in order), c.WIDTH,
                              subsequent_indent=" " * len(title)))
    inversions = [(x, y) for i, x in enumerate(done) for y in done[i + 1:]
                  if watch.since[y] < watch.since[x]]
    d.check(not inversions, "logins out of arrival order: " + ", ".join(
        f"{label[x]} arrived before {label[y]} but logged in later" for x, y in inversions[:5]))
    bad = watch.fifo_violations(done)
    d.check(not bad, f"FIFO broken among queued users: {bad[:5]}")
    queued = sum(1 for p in done if p in watch.ticket)
    c.raw(c.textwrap.fill(
        f"{len(done)} users logged in, {queued} of them after queueing; most sessions at "
        f"once: {watch.max_held} (limit {a.sessions}); {c.plural(len(killed), 'user')} "
        f"SIGKILLed; login order == arrival order: {'yes' if not inversions else 'NO'}",
        c.WIDTH))
    st = sem.stats()
    d.check(sem.available == a.sessions,
            f"{a.sessions - sem.available} session(s) still taken at the end")
    d.check(watch.max_held <= a.sessions, "session limit exceeded")
    if not queued:  # a slow machine (interpreters start slowly) or many kills
        c.raw("note: nobody had to queue in this run; try a longer --seconds")
    if a.chaos:
        c.raw(f"ledger: {st.recovered_units} units recovered from "
              f"{c.plural(st.recoveries, 'dead process', 'dead processes')}")


def main(argv=None) -> int:
    p = c.parser("Login limiter: at most S sessions, FIFO queue.", 4.0)
    p.add_argument("--sessions", type=int, default=3, help="session limit (default 3)")
    p.add_argument("--pace", type=float, default=1.0, help="scale session lengths and gaps")
    return c.run(SCENARIO, p, direct, {"user": user}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
