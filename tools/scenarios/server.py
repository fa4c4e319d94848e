"""An apache2-style pre-forked server: a dispatcher and a pool of workers.

    python -m tools.scenarios.server [--chaos] [--seconds S] [--slots 3]
                                     [--workers 5] [--rate 10]

Processes: one *dispatcher* (requests arrive at random; it appends each to
the shared request board) and W *workers* (more than the limit N).  Three
semaphores:

* ``slots`` (capacity N): a worker holds one unit while it serves, so at most
  N requests are served at once however many workers there are;
* ``board`` (capacity 1): the lock of the request board, a shared file;
* ``tickets`` (capacity = board size, initially 0): one unit per request
  waiting on the board.  The dispatcher posts one (``release`` beyond what
  it owns) per request; a worker takes one, and under the board lock marks
  the oldest waiting request as its own and ``disown``s the ticket.

Worker: slots.acquire(); tickets.acquire(); with board: take the oldest
NEW request, mark it SERVING by me, tickets.disown(); serve; with board:
mark it DONE; slots.release().  Each worker says when it starts and when it
is done with a request, so the N-at-once limit can be followed line by line.

**A worker killed mid-request** (the decision): its slot unit comes back by
itself (owned, recovered by ipcsem), and the request is *not* lost: the
director, which knows which workers died, finds requests SERVING by a dead
worker under the board lock, puts them back to NEW (oldest first, so they
are served next) and reports them as retried.  Tickets are then reconciled
under the lock, exactly: free + held tickets must equal NEW requests (held
tickets of a dead worker are counted, they come back); if fewer — the
worker died after its disown, or the dispatcher between adding a request
and posting its ticket — the missing ones are posted.  A request may thus be
*started* twice (once by the killed worker) but is *completed* exactly once.

Checks: never more than N requests served at once (live workers' SERVING
marks, polled under the lock, and the completed services' time intervals);
every request completed exactly once; no worker ever finds a ticket without
a request or a request not in the state it left it; at the end all slots
free and every ledger passes check().  Without --chaos one worker is killed
mid-request to show the healing; --chaos kills random workers (and now and
then the dispatcher) at random points and respawns them.
"""
from __future__ import annotations

import os
import random
import time

from . import _common as c

SCENARIO = "server"
NEXT, STOP, VIOLATIONS = 0, 1, 2
RECS, WIDTH = 8, 4           # record: state|wid<<4, attempts, start_ns, end_ns
NEW, SERVING, DONE = 0, 1, 2
MAX = 20000


def _sems(tag):
    return tuple(c.ipcsem.Semaphore(f"{tag}-{x}") for x in ("slots", "board", "tickets"))


def dispatcher(t0, tag, path, until, rate) -> int:
    until, rate = float(until), float(rate)
    _slots, board, tickets = _sems(tag)
    w = c.Words(path)
    rng = random.Random()
    c.ready()
    while True:
        time.sleep(rng.expovariate(rate))
        if time.monotonic() >= until:
            return 0
        with board:
            i = w[NEXT]
            if i >= MAX:
                return 0
            base = RECS + WIDTH * i
            w[base], w[base + 1], w[base + 2], w[base + 3] = NEW, 0, 0, 0
            w[NEXT] = i + 1            # the request exists from this store on
            tickets.release()          # ... and has its ticket from this one


def worker(t0, tag, path, wid, pace) -> int:
    wid, pace = int(wid), float(pace)
    slots, board, tickets = _sems(tag)
    w = c.Words(path)
    rng = random.Random()
    me = f"w{wid} (pid {os.getpid()})"
    c.ready()

    def violation(text):
        w[VIOLATIONS] += 1
        c.say(t0, f"VIOLATION: {me} {text}")

    while not w[STOP]:
        if not slots.acquire(timeout=0.3):
            continue
        try:
            if not tickets.acquire(timeout=0.3):
                continue
            with board:
                i = next((k for k in range(w[NEXT]) if w[RECS + WIDTH * k] == NEW), None)
                if i is None:
                    violation("holds a ticket but no request is waiting")
                    tickets.release()
                    continue
                base = RECS + WIDTH * i
                attempt = w[base + 1] = w[base + 1] + 1
                w[base + 2] = time.monotonic_ns()
                w[base] = SERVING | wid << 4   # the request is mine from this store on
                tickets.disown()
            c.say(t0, f"{me} serves request #{i + 1}"
                      + (f" (attempt {attempt})" if attempt > 1 else ""))
            time.sleep(rng.uniform(0.1, 0.4) * pace)
            with board:
                if w[base] != SERVING | wid << 4:
                    violation(f"finds request #{i + 1} in state {w[base]}, not its own")
                    continue
                w[base + 3] = time.monotonic_ns()
                w[base] = DONE | wid << 4
            c.say(t0, f"{me} done with request #{i + 1} after "
                      f"{(w[base + 3] - w[base + 2]) / 1e9:.2f} s; gives its slot back")
        finally:
            slots.release()
    return 0


def direct(d: c.Director) -> None:
    a = d.args
    n = a.slots
    slots = d.semaphore("slots", n)
    board = d.semaphore("board", 1)
    tickets = d.semaphore("tickets", MAX, initial=0)
    path, w = d.words("board", RECS + WIDTH * MAX)
    c.raw(f"server: a dispatcher and {a.workers} worker processes; at most {n} requests "
          f"served at once;")
    c.raw(f"requests arrive at ~{a.rate:g}/s for {a.seconds:g} s" +
          ("; CHAOS: workers, dispatcher SIGKILLed at random" if a.chaos else
           "; one worker is SIGKILLed mid-request"))
    c.raw(f"semaphores {d.tag}-slots/-board/-tickets  seed {a.seed}")
    c.rule()
    workers: dict[int, object] = {}      # wid -> process
    dead: set[int] = set()               # wids killed
    next_wid = 0
    killed_pids: set[int] = set()
    retried: list[int] = []
    most = 0
    done = 0
    board_new = 0
    serving_now = 0

    def hire():
        nonlocal next_wid
        next_wid += 1
        workers[next_wid] = d.spawn("worker", d.tag, path, next_wid, a.pace)

    for _ in range(a.workers):
        hire()
    d.wait_ready(workers.values())
    until = time.monotonic() + a.seconds
    disp = [d.spawn("dispatcher", d.tag, path, f"{until:.6f}", a.rate)]
    d.say(f"{a.workers} workers ready; the dispatcher opens the doors")

    def reconcile() -> None:
        nonlocal most, done, board_new, serving_now
        with board:
            count, live_serving, new, finished = w[NEXT], 0, 0, 0
            for i in range(count):
                s = w[RECS + WIDTH * i]
                kind, wid = s & 15, s >> 4
                if kind == SERVING and wid in dead:
                    w[RECS + WIDTH * i] = NEW
                    retried.append(i + 1)
                    d.say(f"request #{i + 1} was being served by killed w{wid}: back to "
                          "the board, it is served next")
                    kind = NEW
                if kind == SERVING:
                    live_serving += 1
                if kind == NEW:
                    new += 1
                if kind == DONE:
                    finished += 1
            done, board_new, serving_now = finished, new, live_serving
            most = max(most, live_serving)
            d.check(live_serving <= n, f"{live_serving} requests served at once, limit {n}")
            st = tickets.stats()
            have = st.available + st.held
            if have < new:
                tickets.release(new - have)
                d.say(f"tickets: {c.plural(new, 'request')} waiting but "
                      f"{c.plural(have, 'ticket')}: posted {new - have}")
            d.check(have <= new, f"{have} tickets for {new} waiting requests")

    def what_came_back(held: dict[str, int]) -> str:
        """'2 units recovered (its slot, 1 ticket)': the units a killed
        participant held, each named, so the count and the names agree."""
        parts = []
        if held.get(slots.name):
            parts.append("its slot")
        if held.get(board.name):
            parts.append("the board lock")
        if held.get(tickets.name):
            parts.append(c.plural(held[tickets.name], "ticket"))
        total = sum(held.values())
        return f"{c.plural(total, 'unit')} recovered ({', '.join(parts) or 'it held none'})"

    def kill_worker(wid: int, why: str) -> None:
        p = workers.pop(wid)
        held, _queued = d.kill_and_recover(p, (slots, board, tickets))
        dead.add(wid)
        killed_pids.add(p.pid)
        d.say(f"SIGKILL w{wid} (pid {p.pid}) {why}: {what_came_back(held)}; a new worker "
              "is forked")
        reconcile()
        hire()

    demo_kill_done = False
    next_kill = time.monotonic() + d.rng.uniform(0.3, 0.6)
    next_status = time.monotonic() + 1.0
    deadline = until + 60
    while True:
        now = time.monotonic()
        for wid, p in list(workers.items()):
            if p.poll() is not None:
                d.fail(f"w{wid} exited with {p.returncode}")
                del workers[wid]
                dead.add(wid)
                hire()
        dp = disp[-1]
        if dp.poll() is not None and dp.returncode != 0 and dp.pid not in killed_pids:
            d.fail(f"dispatcher exited with {dp.returncode}")
            break
        if (not a.chaos and not demo_kill_done and now > until - a.seconds / 2):
            busy = sorted((w[RECS + WIDTH * i + 2], w[RECS + WIDTH * i] >> 4)
                          for i in range(w[NEXT]) if w[RECS + WIDTH * i] & 15 == SERVING)
            busy = [wid for _start, wid in busy if wid in workers]
            if busy:  # the one that started last: most of its request still ahead
                demo_kill_done = True
                kill_worker(busy[-1], "in the middle of a request")
        if a.chaos and now >= next_kill and now < until:
            next_kill = now + d.rng.uniform(0.15, 0.5)
            if d.rng.random() < 0.15 and dp.poll() is None and d.is_ready(dp):
                held, _queued = d.kill_and_recover(dp, (slots, board, tickets))
                killed_pids.add(dp.pid)
                d.say(f"SIGKILL the dispatcher (pid {dp.pid}): {what_came_back(held)}; "
                      "restarted")
                reconcile()
                disp.append(d.spawn("dispatcher", d.tag, path, f"{until:.6f}", a.rate))
            else:
                ready = sorted(wid for wid, p in workers.items() if d.is_ready(p))
                if ready:
                    kill_worker(d.rng.choice(ready), "at a random moment")
        reconcile()
        if now >= next_status:
            next_status += 1.0
            d.say(f"status: {c.plural(w[NEXT], 'request')} arrived, {done} done, "
                  f"{serving_now} being served (limit {n}), {board_new} waiting on the "
                  f"board; {c.plural(len(slots.waiters()), 'worker')} waiting for a slot")
        if w[VIOLATIONS]:
            break
        if disp[-1].poll() == 0 and done == w[NEXT]:
            break
        if now > deadline:
            d.fail(f"{w[NEXT] - done} requests not served 60 s after the last arrival")
            break
        time.sleep(0.02)

    w[STOP] = 1
    if not c.sleep_until(lambda: all(p.poll() is not None for p in workers.values()), 10):
        d.fail("workers did not stop")
    c.rule("requests")
    count = w[NEXT]
    states = [w[RECS + WIDTH * i] & 15 for i in range(count)]
    undone = [i + 1 for i, s in enumerate(states) if s != DONE]
    d.check(w[VIOLATIONS] == 0, f"{w[VIOLATIONS]} violations reported by workers")
    d.check(not undone, f"requests never completed: {undone[:10]}")
    # The completed services' intervals never overlap more than N deep.
    events = []
    for i in range(count):
        if states[i] == DONE:
            events += [(w[RECS + WIDTH * i + 2], 1), (w[RECS + WIDTH * i + 3], -1)]
    depth = deepest = 0
    for _t, step in sorted(events, key=lambda e: (e[0], e[1])):
        depth += step
        deepest = max(deepest, depth)
    d.check(deepest <= n, f"completed services overlapped {deepest} deep, limit {n}")
    d.check(slots.available == n, f"{n - slots.available} slots still taken")
    st = tickets.stats()
    d.check(st.available == 0 and st.held == 0, f"tickets left: {st}")
    attempts = [w[RECS + WIDTH * i + 1] for i in range(count)]
    c.raw(c.textwrap.fill(
        f"{count} requests, each completed exactly once; "
        f"{sum(1 for x in attempts if x > 1)} needed another start because their worker "
        f"was killed (requests {', '.join(map(str, retried[:10]))}"
        f"{', ...' if len(retried) > 10 else ''}); most served at once: {max(most, deepest)} "
        f"of {n}; {c.plural(len(dead), 'worker')} killed, "
        f"{c.plural(slots.stats().recovered_units, 'slot unit')} recovered.", c.WIDTH))


def main(argv=None) -> int:
    p = c.parser("A dispatcher and a pool of workers; at most N requests served at once.", 4.0)
    p.add_argument("--slots", type=int, default=3, help="requests served at once (N)")
    p.add_argument("--workers", type=int, default=5, help="worker processes (more than N)")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second")
    p.add_argument("--pace", type=float, default=1.0, help="scale the service times")
    return c.run(SCENARIO, p, direct, {"dispatcher": dispatcher, "worker": worker}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
