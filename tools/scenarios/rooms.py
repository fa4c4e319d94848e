"""Library study rooms: 10 rooms, students arriving at random, FIFO at the desk.

    python -m tools.scenarios.rooms [--chaos] [--seconds S] [--rooms 10]
                                    [--students 40]

Each student is a separate process: it asks the desk for a room (one unit
of the ``rooms`` semaphore, created with ``slots=True``, so the lease says
*which* room: its unit number), studies, gives the room back, and says which
room it got after how long a wait and which it returned, with the number of
free rooms each time.  Students arrive at random, several at once, so the arrival order is
the order in which ipcsem queued them: the ticket of their queue entry,
which the director reads from ``waiters()`` while they wait.  It checks:

* never more than the number of rooms in use (the ledger's holders), and
  never one room given to two students (the students' own leases);
* FIFO at the desk: of two students who queued, the one with the earlier
  ticket got a room no later (the ledger's grant time, ``Holder.since``);
* every student who was not killed got a room; at the end all rooms are free
  and every ledger passes check().

With --chaos, random students are SIGKILLed while studying or waiting; their
room comes back or their place in the queue goes, and a new student arrives
instead.
"""
from __future__ import annotations

import time

from . import _common as c

SCENARIO = "rooms"


def student(t0: float, name: str, who: str, study: str) -> int:
    desk = c.ipcsem.Semaphore(name)
    asked = time.time()
    with desk as lease:
        waited = time.time() - asked
        (room,) = lease.slots
        # The ledger's grant time and the room, for the director (which
        # polls, and may miss a short stay on a loaded machine).
        since = next(h.since for h in desk.holders() if h.pid == c.os.getpid())
        c.note("since", repr(since))
        c.note("room", str(room))
        c.say(t0, f"{who} got room {room} after waiting {waited:4.2f} s "
                  f"({desk.available} of {desk.capacity} free)")
        time.sleep(float(study))
    c.say(t0, f"{who} returns room {room} ({desk.available} of {desk.capacity} free)")
    return 0


def direct(d: c.Director) -> None:
    a = d.args
    rng = d.rng
    desk = d.semaphore("rooms", a.rooms, slots=True)
    watch = c.QueueWatch(desk)
    c.raw(f"rooms: {a.rooms} study rooms; {a.students} students arrive at random over "
          f"{a.seconds:g} s")
    c.raw(f"semaphore {desk.name}  seed {a.seed}" + ("  CHAOS" if a.chaos else ""))
    c.rule()
    label: dict[int, str] = {}
    live: dict[int, object] = {}
    killed: set[int] = set()
    everyone: list[int] = []
    count = 0
    queue_seen: set[int] = set()

    def tick() -> None:
        waiters, holders = watch.poll()
        if sum(h.units for h in holders) > a.rooms:
            d.fail(f"{sum(h.units for h in holders)} rooms in use, only {a.rooms} exist")
        rooms = [r for h in holders for r in h.slots]
        if len(rooms) != len(set(rooms)):
            d.fail(f"one room given to two students at once: {sorted(rooms)}")
        for i, w in enumerate(waiters, 1):
            if w.pid in label and w.pid not in queue_seen:
                queue_seen.add(w.pid)
                d.say(f"{label[w.pid]} queues at the desk: ticket {w.ticket}, "
                      f"position {i} of {len(waiters)}")
        for pid, p in list(live.items()):
            if p.poll() is not None:
                del live[pid]
                if p.returncode != 0 and pid not in killed:
                    d.fail(f"{label[pid]} exited with {p.returncode}")

    def arrive() -> None:
        nonlocal count
        count += 1
        who = f"student{count:02d}"
        study = rng.uniform(1.0, 2.5) * a.pace
        p = d.spawn("student", desk.name, who, f"{study:.3f}")
        label[p.pid] = who
        live[p.pid] = p
        everyone.append(p.pid)

    # Arrival times: uniform over the run, a few in bursts.
    times = sorted(rng.uniform(0, a.seconds) for _ in range(a.students))
    start = time.monotonic()
    next_kill = start + rng.uniform(0.5, 1.0)
    while times or live:
        now = time.monotonic()
        if times and now - start >= times[0]:   # one per round: keep polling
            times.pop(0)
            arrive()
        in_ledger = sorted(p for p in live if p in watch.since or p in watch.ticket)
        if a.chaos and now >= next_kill and in_ledger and (times or now - start < a.seconds):
            next_kill = now + rng.uniform(0.3, 0.7)
            pid = rng.choice(in_ledger)
            rooms = {h.pid: h.slots for h in desk.holders()}.get(pid, ())
            held, _queued = d.kill_and_recover(live.pop(pid), (desk,))
            killed.add(pid)
            state = (f"studying in room {rooms[0]}" if held and rooms else
                     "studying" if held else "waiting")
            d.say(f"SIGKILL {label[pid]} (pid {pid}) while {state}: "
                  f"{c.plural(sum(held.values()), 'room')} back at the desk "
                  f"({desk.available} of {a.rooms} free); a new student comes")
            arrive()
        tick()
        if now - start > a.seconds + 60:
            d.fail("students still running 60 s after the last arrival")
            break
        time.sleep(0.002)

    for p in everyone:  # grants the director's polls missed: the student's own record
        if p not in watch.since and d.note(p, "since") is not None:
            watch.since[p] = float(d.note(p, "since"))
    c.rule("FIFO at the desk")
    survivors = [p for p in everyone if p not in killed]
    queued = [p for p in survivors if p in watch.ticket and p in watch.since]
    order = sorted(queued, key=lambda p: watch.ticket[p])
    rows = []
    for p in order:
        rows.append(f"{label[p][7:]}:{watch.since[p] - watch.since[order[0]]:4.2f}")
    c.raw(c.textwrap.fill("queued students in ticket order, with the time they got a room "
                          "(s, from the first): " + "  ".join(rows), c.WIDTH))
    bad = watch.fifo_violations(survivors)
    d.check(not bad, "FIFO broken: " + ", ".join(
        f"{label[x]} queued before {label[y]} but got a room later" for x, y in bad[:5]))
    missing = [label[p] for p in survivors if p not in watch.since]
    d.check(not missing, f"never got a room: {missing}")
    d.check(desk.available == a.rooms, f"{a.rooms - desk.available} rooms still taken at the end")
    d.check(watch.max_held <= a.rooms, "more rooms in use than exist")
    st = desk.stats()
    c.raw(c.textwrap.fill(
        f"{len(survivors)} students studied, {len(queued)} after queueing; granted in ticket "
        f"order: {'yes' if not bad else 'NO'}; most rooms in use: {watch.max_held} of "
        f"{a.rooms}; {c.plural(len(killed), 'student')} SIGKILLed, "
        f"{c.plural(st.recovered_units, 'room')} recovered from the dead", c.WIDTH))


def main(argv=None) -> int:
    p = c.parser("Library study rooms: N rooms, students queue FIFO at the desk.", 4.0)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--students", type=int, default=40)
    p.add_argument("--pace", type=float, default=1.0, help="scale study times")
    return c.run(SCENARIO, p, direct, {"student": student}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
