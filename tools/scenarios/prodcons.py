"""Producers and consumers on a bounded buffer in shared memory.

    python -m tools.scenarios.prodcons [--chaos] [--seconds S] [--slots 4]
                                       [--producers 3] [--consumers 3]
                                       [--protocol readme|late]
    python -m tools.scenarios.prodcons --windows

Three semaphores: ``empty`` (capacity N, initially N), ``full`` (capacity N,
initially 0) and ``use`` (capacity 1, the buffer's lock).  The buffer is a
ring of N slots in a shared file with two counters, head (items ever put)
and tail (items ever taken); item k carries sequence number k.

Where the disown goes matters.  Two protocols:

  readme (README.md, the default)         late (disown after the change)
  producer: empty.acquire()               empty.acquire()
            with use: empty.disown()      with use: put
                      put; full.release()  empty.disown(); full.release()
  consumer: full.acquire()                full.acquire()
            with use: full.disown()       with use: take
                      take; empty.release()  full.disown(); empty.release()

An owned unit comes back when its owner dies.  That is right only while the
buffer has not yet changed on its behalf.  In the late protocol a producer
killed after its put but before its disown gets its empty unit back although
its slot is full: empty now promises a slot that holds an item (a later
producer would overwrite one); a consumer killed after its take but before
its disown gets its full unit back although the item is gone (a later
consumer would take from an empty slot).  In the readme protocol the disown
comes first, so a death can only *lose* a unit, never return one wrongly;
and because every change (the posts too) is made under ``use``, the
director, holding ``use``, sees the exact invariant

    E := empty.available + empty.held  ==  N - items
    F :=  full.available +  full.held  ==  items          (items = head - tail)

(held = units owned by processes, dead or alive: a dead owner's units come
back to available).  ``E + F <= N`` (the classic emptyCount + fullCount <= N)
follows, but is weaker: the late protocol's wrong return keeps E + F <= N
and still breaks E <= N - items.  A death inside the critical section shows
as E < N - items (a slot lost) or F < items (an item nobody was told about);
the director detects it on its next look and re-posts exactly the missing
units (``release`` beyond what one owns is an unowned post).  That repair is
only right because the post is inside ``use`` too: a post after the lock
would let the director see a live producer's item as unsignalled, and
re-posting it would promise one item twice.

Run mode checks, all along: the invariant above (E + F <= N only, for
--protocol late); no producer finds the buffer full, no consumer finds it
empty or a wrong sequence number; at the end every item was taken exactly
once and processed exactly once, except items taken by a consumer that was
then SIGKILLed before processing them: those are lost with it, and listed.
The consumers start first and wait on the empty buffer; the producers then
fill it and wait whenever it is full; each participant says so now and then.
With --chaos the director SIGKILLs random participants, and each one also
SIGKILLs itself at a random protocol point with probability SELF_KILL per
item (outside kills almost never land in a critical section).
--windows SIGKILLs one producer or consumer at each point of both protocols
and prints what each death does to the ledgers and the buffer.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time

from . import _common as c

SCENARIO = "prodcons"
HEAD, TAIL, STOP_P, STOP_C, VIOLATIONS = 0, 1, 2, 3, 4
RING = 8


class Buffer:
    """The shared ring and the per-item records (taker pid, times processed)."""

    def __init__(self, path: str, n: int, m: int, create: bool = False) -> None:
        self.n, self.m = n, m
        self.w = c.Words(path, RING + n + 2 * m if create else None)

    def taker(self, k):        # k = 0-based position = sequence number - 1
        return RING + self.n + k

    def processed(self, k):
        return RING + self.n + self.m + k

    @property
    def items(self) -> int:
        return self.w[HEAD] - self.w[TAIL]


# The README's producer/consumer section, as the readme protocol runs it
# (tests/test_scenarios.py holds the README to it).
README_PROTOCOL = """\
empty = ipcsem.Semaphore("empty", capacity=8)              # 8 free slots
full = ipcsem.Semaphore("full", capacity=8, initial=0)     # 0 items
use = ipcsem.Semaphore("use", capacity=1)                  # the buffer's lock
# producer                          # consumer
empty.acquire()                     full.acquire()
with use:                           with use:
    empty.disown()                      full.disown()
    put_item()                          item = take_item()
    full.release()                      empty.release()
"""

POINTS = {
    ("late", "producer"): ["after-acquire", "after-put", "after-unlock", "after-disown"],
    ("late", "consumer"): ["after-acquire", "after-take", "after-unlock", "after-disown"],
    ("readme", "producer"): ["after-acquire", "after-disown", "after-put"],
    ("readme", "consumer"): ["after-acquire", "after-disown", "after-take"],
}
SELF_KILL = 0.003   # --chaos: chance per item that a participant dies at a random point
TELL_EVERY = 1.5    # a participant says it had to wait at most this often (seconds)


class Teller:
    """Says, now and then, that a participant had to wait: the textbook's
    producer blocked on a full buffer, consumer on an empty one."""

    def __init__(self, t0: float, me: str, quiet: bool) -> None:
        self.t0, self.me, self.quiet, self.next = t0, me, quiet, 0.0

    def waited(self, seconds: float, what: str) -> None:
        now = time.monotonic()
        if not self.quiet and now >= self.next and seconds >= 0.001:
            self.next = now + TELL_EVERY
            took = f"{seconds * 1000:.0f} ms" if seconds < 0.1 else f"{seconds:.2f} s"
            c.say(self.t0, f"{self.me} waited {took}: {what}")


def take_unit(sem, stop, teller: Teller, what: str) -> bool:
    """One unit of ``sem``, blocking until it comes or ``stop()``; tells
    ``what`` when it had to wait."""
    if sem.acquire(timeout=0):
        return True
    since = time.monotonic()
    while not stop():
        if sem.acquire(timeout=0.2):
            teller.waited(time.monotonic() - since, what)
            return True
    return False


def _pick(die_at: str, protocol: str, role: str, rng) -> str:
    if die_at == "chaos":
        return rng.choice(POINTS[protocol, role]) if rng.random() < SELF_KILL else "-"
    return die_at


def _die_point(point: str, target: str, t0: float, role: str, sems) -> None:
    if point == target:
        if t0:
            c.say(t0, f"{role} {os.getpid()} SIGKILLs itself {point} (chaos)")
        # What it holds as it dies, for the director's report: only this
        # process changes its own holdings, so this is exact.
        me = os.getpid()
        held = {s.name: units for s in sems
                if (units := sum(h.units for h in s.holders() if h.pid == me))}
        c.note("held", json.dumps(held))
        os.kill(me, signal.SIGKILL)


def producer(t0, protocol, tag, path, n, m, die_at, pace) -> int:
    n, m, pace = int(n), int(m), float(pace)
    empty, full, use = (c.ipcsem.Semaphore(f"{tag}-{x}") for x in ("empty", "full", "use"))
    b = Buffer(path, n, m)
    w = b.w
    rng = random.Random()
    me = f"producer {os.getpid()}"
    c.ready()

    def put() -> None:
        head = w[HEAD]
        if head - w[TAIL] >= n:
            w[VIOLATIONS] += 1
            c.say(t0, f"VIOLATION: {me} holds an empty unit but all {n} slots are full: "
                      f"putting item {head + 1} would overwrite item {w[TAIL] + 1}")
            raise SystemExit(5)
        w[RING + head % n] = head + 1
        w[HEAD] = head + 1          # the put commits with this one store

    teller = Teller(t0, me, quiet=die_at not in ("-", "chaos"))   # --windows: quiet
    while not w[STOP_P] and w[HEAD] < m - n:
        if not take_unit(empty, lambda: w[STOP_P], teller,
                         "the buffer was full (blocked in empty.acquire)"):
            continue
        point = _pick(die_at, protocol, "producer", rng)
        t = t0 if die_at == "chaos" else 0.0

        def _die_at(target, point=point, t=t):
            _die_point(point, target, t, "producer", (empty, full, use))

        _die_at("after-acquire")
        if protocol == "readme":
            with use:
                empty.disown()
                _die_at("after-disown")
                put()
                _die_at("after-put")
                full.release()
        else:
            with use:
                put()
                _die_at("after-put")
            _die_at("after-unlock")
            empty.disown()
            _die_at("after-disown")
            full.release()
        if die_at not in ("-", "chaos"):
            return 0
        time.sleep(rng.uniform(0, 0.004) * pace)
    return 0


def consumer(t0, protocol, tag, path, n, m, die_at, pace) -> int:
    n, m, pace = int(n), int(m), float(pace)
    empty, full, use = (c.ipcsem.Semaphore(f"{tag}-{x}") for x in ("empty", "full", "use"))
    b = Buffer(path, n, m)
    w = b.w
    rng = random.Random()
    me = f"consumer {os.getpid()}"
    c.ready()

    def take() -> int:
        tail = w[TAIL]
        if w[HEAD] - tail <= 0:
            w[VIOLATIONS] += 1
            c.say(t0, f"VIOLATION: {me} holds a full unit but the buffer is empty: it "
                      f"would take slot {tail % n} again (item {w[RING + tail % n]})")
            raise SystemExit(5)
        seq = w[RING + tail % n]
        if seq != tail + 1:
            w[VIOLATIONS] += 1
            c.say(t0, f"VIOLATION: {me} found item {seq} where item {tail + 1} belongs")
            raise SystemExit(5)
        w[b.taker(tail)] = os.getpid()
        w[TAIL] = tail + 1          # the take commits with this one store
        return seq

    teller = Teller(t0, me, quiet=die_at not in ("-", "chaos"))   # --windows: quiet
    while not w[STOP_C]:
        if not take_unit(full, lambda: w[STOP_C], teller,
                         "the buffer was empty (blocked in full.acquire)"):
            continue
        point = _pick(die_at, protocol, "consumer", rng)
        t = t0 if die_at == "chaos" else 0.0

        def _die_at(target, point=point, t=t):
            _die_point(point, target, t, "consumer", (empty, full, use))

        _die_at("after-acquire")
        if protocol == "readme":
            with use:
                full.disown()
                _die_at("after-disown")
                seq = take()
                _die_at("after-take")
                empty.release()
        else:
            with use:
                seq = take()
                _die_at("after-take")
            _die_at("after-unlock")
            full.disown()
            _die_at("after-disown")
            empty.release()
        if die_at not in ("-", "chaos"):
            return 0
        time.sleep(rng.uniform(0, 0.006) * pace)          # process the item
        w[b.processed(seq - 1)] += 1
    return 0


# --------------------------------------------------------------- director
class Audit:
    """The director's look at buffer and ledgers, taken while holding ``use``."""

    def __init__(self, d, empty, full, use, b: Buffer) -> None:
        self.d, self.empty, self.full, self.use, self.b = d, empty, full, use, b
        self.repaired_slots = self.repaired_items = 0
        self.looks = 0
        self.max_items = 0

    def look(self, strict: bool, repair: bool, allowed_loss: int = 0,
             unreaped=lambda: 0) -> tuple[int, int, int]:
        """``unreaped()``: participants already dead but not yet noticed by the
        director (asked while holding ``use``: one that died inside the
        critical section is dead by then); each may have lost one unit."""
        d, b, n = self.d, self.b, self.b.n
        with self.use:
            items = b.items
            se, sf = self.empty.stats(), self.full.stats()
            empty_n, full_n = se.available + se.held, sf.available + sf.held
            self.looks += 1
            self.max_items = max(self.max_items, items)
            d.check(0 <= items <= n, f"{items} items in a buffer of {n}")
            d.check(empty_n + full_n <= n,
                    f"emptyCount + fullCount = {empty_n} + {full_n} > {n}")
            if strict:
                d.check(empty_n <= n - items,
                        f"empty promises {empty_n} free slots, the buffer has {n - items}: "
                        "a producer would overwrite an item")
                d.check(full_n <= items, f"full promises {full_n} items, the buffer has {items}: "
                                         "a consumer would take from an empty slot")
                lost_slots, lost_items = max(0, n - items - empty_n), max(0, items - full_n)
                if lost_slots + lost_items > allowed_loss:
                    allowed_loss += unreaped()
                d.check(lost_slots + lost_items <= allowed_loss,
                        f"{lost_slots} slot(s) and {lost_items} item signal(s) lost with no "
                        "process killed inside the critical section")
                if repair and (lost_slots or lost_items):
                    if lost_slots:
                        self.empty.release(lost_slots)
                        self.repaired_slots += lost_slots
                    if lost_items:
                        self.full.release(lost_items)
                        self.repaired_items += lost_items
                    d.say(f"  repair: buffer holds {items} of {n}, but empty+held={empty_n}, "
                          f"full+held={full_n}: re-posted {lost_slots} empty, {lost_items} full")
            return items, empty_n, full_n


def run_mode(d: c.Director) -> None:
    a = d.args
    n, m = a.slots, 400_000
    empty = d.semaphore("empty", n)
    full = d.semaphore("full", n, initial=0)
    use = d.semaphore("use", 1)
    path, _ = d.words("buffer", RING + n + 2 * m)
    b = Buffer(path, n, m)
    w = b.w
    strict = a.protocol == "readme"
    audit = Audit(d, empty, full, use, b)
    c.raw(f"prodcons: {a.producers} producers and {a.consumers} consumers share a ring of "
          f"{n} slots")
    c.raw(f"in shared memory; protocol {a.protocol}")
    c.raw(f"semaphores {d.tag}-empty/-full/-use  seed {a.seed}" + ("  CHAOS" if a.chaos else ""))
    c.rule()
    roles: dict[int, str] = {}
    live: dict[int, object] = {}
    killed: set[int] = set()

    def start(role):
        fn = "producer" if role == "P" else "consumer"
        p = d.spawn(fn, a.protocol, d.tag, path, n, m, "chaos" if a.chaos else "-", a.pace)
        roles[p.pid] = role
        live[p.pid] = p
        return p

    if strict:
        c.raw("the README's protocol (every post under the lock too):")
        for line in README_PROTOCOL.splitlines()[3:]:
            c.raw("    " + line)
        c.rule()
    for _ in range(a.consumers):       # first: they find the buffer empty, and wait
        start("C")
    d.wait_ready(live.values())
    d.say(f"{c.plural(a.consumers, 'consumer')} ready; the buffer is empty")
    d.say(f"{c.plural(a.producers, 'producer')} start")
    for _ in range(a.producers):
        start("P")
    d.wait_ready(live.values())
    sems = (use, empty, full)

    def came_back(held: dict[str, int]) -> str:
        parts = ", ".join(f"{units} {name.rsplit('-', 1)[1]}" for name, units in held.items())
        return f"{c.plural(sum(held.values()), 'unit')} recovered" + (f" ({parts})" if parts
                                                                         else "")

    def reap():
        for pid, p in list(live.items()):
            if p.poll() is not None:
                del live[pid]
                if a.chaos and p.returncode == -signal.SIGKILL and pid not in killed:
                    killed.add(pid)      # it SIGKILLed itself at a protocol point
                    d.kills += 1
                    d.recover_dead(pid, sems)
                    # What it held as it died: it may have been recovered before we
                    # looked (by a blocked acquire, ours on `use` included).
                    held = json.loads(d.note(pid, "held") or "{}")
                    d.say(f"  {came_back(held)}; respawned")
                    audit.look(strict, repair=strict, allowed_loss=1, unreaped=unreaped)
                    if not w[STOP_P] or roles[pid] == "C":
                        start(roles[pid])
                elif pid not in killed and p.returncode != 0:
                    d.fail(f"{'producer' if roles[pid] == 'P' else 'consumer'} {pid} exited "
                           f"with {p.returncode}")

    def unreaped() -> int:
        return sum(1 for p in live.values() if p.poll() is not None)

    start_t = time.monotonic()
    next_kill = start_t + d.rng.uniform(0.1, 0.3)
    next_status = start_t + 0.5
    while time.monotonic() - start_t < a.seconds:
        reap()
        ready = sorted(pid for pid, p in live.items() if d.is_ready(p)) if a.chaos else []
        if a.chaos and time.monotonic() >= next_kill and ready:
            next_kill = time.monotonic() + d.rng.uniform(0.1, 0.3)
            pid = d.rng.choice(ready)
            role = roles[pid]
            held, queued = d.kill_and_recover(live.pop(pid), sems)
            killed.add(pid)
            doing = ""
            if queued:
                doing = (" while waiting for a free slot" if queued == [empty.name] else
                         " while waiting for an item" if queued == [full.name] else
                         " while waiting for the lock")
            d.say(f"SIGKILL {'producer' if role == 'P' else 'consumer'} {pid}{doing}: "
                  f"{came_back(held)}; respawned")
            audit.look(strict, repair=strict, allowed_loss=1, unreaped=unreaped)
            start(role)
        else:
            audit.look(strict, repair=False, unreaped=unreaped)
        if time.monotonic() >= next_status:
            next_status += 0.5
            items, empty_n, full_n = audit.look(strict, repair=False, unreaped=unreaped)
            d.say(f"put {w[HEAD]:6d}  taken {w[TAIL]:6d}  in buffer {items}  |  "
                  f"E={empty_n} F={full_n}  E+F={empty_n + full_n} <= {n}")
        if w[VIOLATIONS]:
            break
        time.sleep(0.01)

    # Stop: producers first, then let the consumers empty the buffer.
    w[STOP_P] = 1
    c.sleep_until(lambda: reap() or not any(roles[p] == "P" for p in live), 20)
    audit.look(strict, repair=strict, allowed_loss=len(killed))
    if not c.sleep_until(lambda: reap() or b.items == 0 or w[VIOLATIONS], 30):
        d.fail(f"{b.items} items left in the buffer 30 s after the producers stopped")
    w[STOP_C] = 1
    if not c.sleep_until(lambda: reap() or not live, 20):
        d.fail("consumers did not stop")
    reap()
    items, empty_n, full_n = audit.look(strict, repair=False)
    c.rule("the items")
    head = w[HEAD]
    d.check(w[VIOLATIONS] == 0, f"{w[VIOLATIONS]} violations reported by participants")
    d.check(w[TAIL] == head, f"{head - w[TAIL]} items never taken")
    if strict:
        d.check(empty_n == n and full_n == 0,
                f"at the end empty={empty_n} full={full_n}, expected {n} and 0")
    twice = [k + 1 for k in range(head) if w[b.processed(k)] > 1]
    untaken = [k + 1 for k in range(head) if w[b.taker(k)] == 0]
    lost = [k + 1 for k in range(head) if w[b.processed(k)] == 0 and w[b.taker(k)]]
    wrongly_lost = [k for k in lost if w[b.taker(k - 1)] not in killed]
    d.check(not twice, f"items processed twice: {twice[:10]}")
    d.check(not untaken, f"items never taken: {untaken[:10]}")
    d.check(not wrongly_lost, f"items taken but not processed by a live consumer: "
                              f"{wrongly_lost[:10]}")
    c.raw(c.textwrap.fill(
        f"{head} items put with sequence numbers 1..{head}; every one taken exactly once; "
        f"{head - len(lost)} processed exactly once; {len(lost)} lost with a consumer "
        f"SIGKILLed after taking it" + (f" ({', '.join(map(str, lost[:12]))}"
                                        f"{', ...' if len(lost) > 12 else ''})" if lost else "")
        + f"; none twice. Invariant checked {audit.looks} times under the lock; most "
        f"items in the buffer at once: {audit.max_items}.", c.WIDTH))
    if a.chaos:
        c.raw(c.textwrap.fill(
            f"{c.plural(len(killed), 'process', 'processes')} SIGKILLed; units lost by a "
            f"death inside the critical section and re-posted: {audit.repaired_slots} empty "
            f"(slot), {audit.repaired_items} full (item signal).", c.WIDTH))


# What each death does, as (E - (N - items), F - items, effect).
EXPECTED = {
    ("readme", "producer", "after-acquire"): (0, 0, "clean: the empty unit comes back"),
    ("readme", "producer", "after-disown"): (-1, 0, "slot lost (detected, repairable)"),
    ("readme", "producer", "after-put"): (0, -1, "item unsignalled (repairable)"),
    ("readme", "consumer", "after-acquire"): (0, 0, "clean: the full unit comes back"),
    ("readme", "consumer", "after-disown"): (0, -1, "item unsignalled (repairable)"),
    ("readme", "consumer", "after-take"): (-1, 0, "slot lost (repairable), item lost"),
    ("late", "producer", "after-acquire"): (0, 0, "clean: the empty unit comes back"),
    ("late", "producer", "after-put"): (+1, -1, "WRONG RETURN: slot full yet free"),
    ("late", "producer", "after-unlock"): (+1, -1, "WRONG RETURN: slot full yet free"),
    ("late", "producer", "after-disown"): (0, -1, "item put, never signalled"),
    ("late", "consumer", "after-acquire"): (0, 0, "clean: the full unit comes back"),
    ("late", "consumer", "after-take"): (-1, +1, "WRONG RETURN: item gone yet full"),
    ("late", "consumer", "after-unlock"): (-1, +1, "WRONG RETURN: item gone yet full"),
    ("late", "consumer", "after-disown"): (-1, 0, "slot lost; item lost w/ consumer"),
}


def windows_mode(d: c.Director) -> None:
    n, m = 4, 64
    c.raw("prodcons --windows: a ring of 4 slots holding 2 items; one producer or consumer")
    c.raw("is SIGKILLed at one point of its protocol; its units are recovered; then the")
    c.raw("director compares ledgers and buffer: dE = E - free slots, dF = F - items,")
    c.raw("where E = empty.available + empty.held and F = full.available + full.held")
    c.rule()
    c.raw(f"{'protocol':<8} {'who':<9} {'killed':<14} {'dE':>3} {'dF':>3}  effect")
    for k, ((protocol, role, point), (want_e, want_f, effect)) in enumerate(EXPECTED.items()):
        empty = d.semaphore(f"w{k}-empty", n, initial=2)
        full = d.semaphore(f"w{k}-full", n, initial=2)
        use = d.semaphore(f"w{k}-use", 1)
        path, _ = d.words(f"w{k}", RING + n + 2 * m)
        b = Buffer(path, n, m)
        b.w[RING + 0], b.w[RING + 1], b.w[HEAD] = 1, 2, 2
        tag = f"{d.tag}-w{k}"
        p = d.spawn(role, protocol, tag, path, n, m, point, 1.0)
        p.wait(30)
        d.check(p.returncode == -signal.SIGKILL,
                f"{protocol} {role} {point}: exited {p.returncode}, not killed")
        for s in (use, empty, full):
            s.recover()
        with use:
            items = b.items
            se, sf = empty.stats(), full.stats()
            de = se.available + se.held - (n - items)
            df = sf.available + sf.held - items
        ok = (de, df) == (want_e, want_f)
        d.check(ok, f"{protocol} {role} killed {point}: dE={de} dF={df}, "
                    f"expected {want_e} {want_f}")
        c.raw(f"{protocol:<8} {role:<9} {point:<14} {de:>+3} {df:>+3}  {effect}"
              + ("" if ok else "  (UNEXPECTED)"))
        d.check(not (protocol == "readme" and (de > 0 or df > 0)),
                f"readme protocol returned a unit wrongly ({role} {point})")
    c.rule()
    c.raw(c.textwrap.fill(
        "late: a death between put/take and disown returns a unit that must not come "
        "back (+1): the counts promise a slot or an item that is not there, and no count "
        "check (E + F <= N still holds) can see it; only the buffer can. readme (disown "
        "first): a death can only lose a unit (-1), which the buffer shows and a "
        "repairer holding the lock re-posts.",
        c.WIDTH))


def direct(d: c.Director) -> None:
    if d.args.windows:
        windows_mode(d)
    else:
        run_mode(d)


def main(argv=None) -> int:
    p = c.parser("Producers/consumers on a bounded buffer in shared memory.", 4.0)
    p.add_argument("--slots", type=int, default=4, help="buffer size N (default 4)")
    p.add_argument("--producers", type=int, default=3)
    p.add_argument("--consumers", type=int, default=3)
    p.add_argument("--protocol", choices=["readme", "late"], default="readme",
                   help="readme: the README's order, disown first (default); late: disown "
                        "after the put/take")
    p.add_argument("--pace", type=float, default=1.0, help="scale the sleeps between items")
    p.add_argument("--windows", action="store_true",
                   help="kill one participant at each point of both protocols; print a table")
    return c.run(SCENARIO, p, direct, {"producer": producer, "consumer": consumer}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
