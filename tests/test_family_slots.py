"""Leases, slots and fencing tokens (issue 9 §1), with real processes.

The storm's oracle does not trust the ledger: each unit number k is a file,
and whoever the ledger says holds slot k must be able to take flock k without
waiting (the kernel drops a killed holder's flocks before the process counts
as dead, so a correct ledger never hands out a slot whose flock is held).
Tokens are appended to slot k's log while that flock is held, so each log is
in grant order and must be strictly increasing, kills included.
"""
import fcntl
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from family_procs import ChildError, children, wait_queued, wait_until  # noqa: F401

import ipcsem


def holders_slots(sem) -> dict[int, tuple[int, ...]]:
    return {h.pid: h.slots for h in sem.holders()}


# ------------------------------------------------------------------ leases
def test_with_and_hold_yield_a_lease_on_every_semaphore(names, children):
    plain, slotted = names(), names()
    ipcsem.Semaphore(plain, capacity=3)
    ipcsem.Semaphore(slotted, capacity=3, slots=True)
    c = children(f"p = ipcsem.Semaphore({plain!r}); s = ipcsem.Semaphore({slotted!r})")
    code = ("out = []\n"
            "for sem in (p, s):\n"
            "    with sem as a:\n"
            "        with sem.hold(2) as b:\n"
            "            out.append((isinstance(a, ipcsem.Lease), a.units, a.slots, a.token,\n"
            "                        isinstance(b, ipcsem.Lease), b.units, b.slots, b.token,\n"
            "                        a.valid, a.deadline, a.previous_owner_died))\n"
            "result = out")
    (p, s) = c.run(code)
    assert p[0] and p[4], "with sem / with sem.hold() must give a Lease"
    assert (p[1], p[2], p[5], p[6]) == (1, (), 2, ())          # no slots asked: ()
    assert (s[1], s[2], s[5], s[6]) == (1, (0,), 2, (1, 2))    # lowest free first, sorted
    for r in (p, s):
        assert r[3] < r[7], "a later grant has a larger token"
        assert r[8:] == (True, None, False)


def test_slots_are_fixed_at_creation(name, children):
    ipcsem.Semaphore(name, capacity=2, slots=True)
    c = children()
    with pytest.raises(ChildError) as e:
        c.run(f"ipcsem.Semaphore({name!r}, capacity=2, slots=False)")
    assert "PolicyMismatch" in e.value.mro and "ValueError" in e.value.mro
    assert e.value.attrs["setting"] == "'slots'"
    assert (e.value.attrs["existing"], e.value.attrs["requested"]) == ("True", "False")
    plain = name + "-plain"
    try:
        ipcsem.Semaphore(plain, capacity=2)
        with pytest.raises(ipcsem.PolicyMismatch):
            ipcsem.Semaphore(plain, capacity=2, slots=True)
        assert ipcsem.Semaphore(plain).params.slots is False
    finally:
        ipcsem.unlink(plain)
    # Nothing changed: the slotted one still numbers its units.
    assert c.run(f"ipcsem.Semaphore({name!r}).hold(2).__enter__().slots") == (0, 1)


def test_reopen_without_restating_slots_opens_it(name, children):
    ipcsem.Semaphore(name, capacity=4, slots=True)
    c = children()
    assert c.run(f"ipcsem.Semaphore({name!r}, capacity=4).params.slots") is True


def test_slotted_capacity_is_bounded_and_a_refusal_creates_nothing(name):
    with pytest.raises(ValueError):
        ipcsem.Semaphore(name, capacity=4097, slots=True)
    with pytest.raises(ipcsem.NotFound):
        ipcsem.Semaphore(name)
    assert ipcsem.Semaphore(name, capacity=4096, slots=True).hold(4096).__enter__().slots == \
        tuple(range(4096))


def test_grants_pick_the_lowest_free_unit_numbers(name, children):
    sem = ipcsem.Semaphore(name, capacity=5, slots=True)
    a, b, c = children(f"s = ipcsem.Semaphore({name!r})", n=3)
    assert a.run("la = s.hold(2).__enter__(); result = la.slots") == (0, 1)
    assert b.run("lb = s.hold(1).__enter__(); result = lb.slots") == (2,)
    assert c.run("lc = s.hold(1).__enter__(); result = lc.slots") == (3,)
    assert holders_slots(sem) == {a.pid: (0, 1), b.pid: (2,), c.pid: (3,)}
    a.run("s.release(1)")          # a bare release: a frees one of its own, the highest
    assert holders_slots(sem)[a.pid] == (0,)
    b.run("s.release(1)")
    # Free now: 1, 2, 4 -> a 3-unit grant gets exactly those.
    assert b.run("s.hold(3).__enter__().slots") == (1, 2, 4)
    assert holders_slots(sem) == {a.pid: (0,), b.pid: (1, 2, 4), c.pid: (3,)}
    sem.check()


def test_holders_show_each_holders_slots_and_status_reads_them_unlocked(name, children):
    sem = ipcsem.Semaphore(name, capacity=3, slots=True)
    a, b = children(f"s = ipcsem.Semaphore({name!r})", n=2)
    a.run("s.acquire()")
    b.run("s.acquire(2)")
    assert holders_slots(sem) == {a.pid: (0,), b.pid: (1, 2)}
    from ipcsem._shm.segment import read_view  # what status tools and root use

    rows = {h.pid: h.slots for h in read_view(name).snapshot.holders if h.units}
    assert rows == {a.pid: (0,), b.pid: (1, 2)}


def test_a_dead_holders_slots_come_back_with_its_units_exactly_once(name, children):
    sem = ipcsem.Semaphore(name, capacity=4, slots=True)
    a, b = children(f"s = ipcsem.Semaphore({name!r})", n=2)
    a.run("s.acquire(2)")
    b.run("s.acquire(1)")
    before = sem.stats()
    a.kill()
    # Two recoverers race: the units (and their numbers) come back once.
    c = children(f"s = ipcsem.Semaphore({name!r})")
    c.begin("s.recover()")
    mine = sem.recover()
    theirs = c.result()
    assert mine + theirs <= 2          # (a machine-wide healer may have been first)
    assert sem.recover() == 0
    after = sem.stats()
    assert after.recovered_units - before.recovered_units == 2
    assert after.recoveries - before.recoveries == 1
    assert holders_slots(sem) == {b.pid: (2,)}
    assert sem.available == 3
    # The slots of the dead are free again (lowest first) and only those.
    assert c.run("s.hold(3).__enter__().slots") == (0, 1, 3)
    assert sem.available == 0
    sem.check()


def test_tokens_increase_across_a_kill_and_its_recovery(name, children):
    sem = ipcsem.Semaphore(name, capacity=1, slots=True)
    a, b = children(f"s = ipcsem.Semaphore({name!r})", n=2)
    t1 = a.run("s.hold().__enter__().token")
    b.begin("s.hold(timeout=30).__enter__().token")   # b heals a's units when a dies
    wait_queued(sem, b)
    a.kill()
    t2 = b.result(15)
    assert t2 > t1
    b.run("s.release()")
    t3 = sem.hold().__enter__().token
    assert t3 > t2
    sem.release()


# ------------------------------------------------ bare release and threads
def test_bare_release_frees_the_slots_of_this_threads_latest_acquire(name, children):
    sem = ipcsem.Semaphore(name, capacity=4, slots=True)
    c = children(f"s = ipcsem.Semaphore({name!r})")
    c.run("import queue\n"
          "todo, done = queue.Queue(), queue.Queue()\n"
          "def second():\n"
          "    while True:\n"
          "        op = todo.get()\n"
          "        if op is None: return\n"
          "        done.put(eval(op))\n"
          "t = threading.Thread(target=second); t.start()\n"
          "def there(op):\n"
          "    todo.put(op); return done.get(timeout=10)\n")
    assert c.run("s.acquire()") is True                          # main: slot 0
    assert c.run("there('s.acquire()')") is True                 # other thread: slot 1
    assert c.run("s.acquire()") is True                          # main: slot 2
    assert holders_slots(sem) == {c.pid: (0, 1, 2)}
    c.run("s.release()")              # main's latest: 2, not the other thread's 1
    assert holders_slots(sem) == {c.pid: (0, 1)}
    c.run("there('s.release()')")     # the other thread's own: 1
    assert holders_slots(sem) == {c.pid: (0,)}
    c.run("s.release()")
    assert holders_slots(sem) == {}
    # A grant of several units, released one by one: its own numbers go.
    assert c.run("s.acquire(2)") is True                         # main: 0, 1
    assert c.run("there('s.acquire()')") is True                 # other: 2
    c.run("s.release()")
    c.run("s.release()")
    assert holders_slots(sem) == {c.pid: (2,)}
    c.run("there('s.release()'); todo.put(None); t.join()")
    sem.check()


def test_release_of_several_grants_frees_only_this_threads_slots(name, children):
    sem = ipcsem.Semaphore(name, capacity=4, slots=True)
    c = children(f"s = ipcsem.Semaphore({name!r})")
    c.run("s.acquire()")                                           # main: 0
    c.run("t = threading.Thread(target=s.acquire); t.start(); t.join()")   # other: 1
    c.run("s.acquire()")                                           # main: 2
    c.run("s.release(2)")             # main's two grants: 2 and 0
    assert holders_slots(sem) == {c.pid: (1,)}


def test_disown_hands_off_this_threads_slot(name, children):
    sem = ipcsem.Semaphore(name, capacity=4, slots=True)
    c = children(f"s = ipcsem.Semaphore({name!r})")
    c.run("s.acquire()")                                           # main: 0
    c.run("t = threading.Thread(target=s.acquire); t.start(); t.join()")   # other: 1
    c.run("s.disown()")               # main hands off its own unit, 0
    assert holders_slots(sem) == {c.pid: (1,)}


def test_unowned_posts_and_disown_on_a_slotted_semaphore(name, children):
    """The meaning docs/family.md gives them: a disowned unit keeps its
    number taken, owned by nobody (a dead disowner does not bring it back);
    an unowned post frees the lowest-numbered unowned units."""
    sem = ipcsem.Semaphore(name, capacity=4, initial=2, slots=True)
    # initial=2: units 2 and 3 start unowned ("taken"), 0 and 1 are free.
    assert sem.stats().unowned == 2
    producer, consumer = children(f"s = ipcsem.Semaphore({name!r})", n=2)
    assert producer.run("s.hold(2).__enter__().slots") == (0, 1)
    producer.run("s.disown(1)")       # hands one unit off: its number stays taken
    assert holders_slots(sem) == {producer.pid: (0,)}
    assert sem.stats().unowned == 3
    producer.kill()                   # its owned unit (0) comes back, the disowned (1) does not
    sem.recover()
    assert sem.available == 1 and sem.stats().unowned == 3
    consumer.run("s.release(2)")      # an unowned post of 2: the lowest unowned numbers, 1 and 2
    assert sem.available == 3 and sem.stats().unowned == 1
    assert consumer.run("s.hold(3).__enter__().slots") == (0, 1, 2)
    assert sem.available == 0
    sem.check()


# -------------------------------------------------------------- the storm
CAPACITY = 3
WORKERS = 6
STORM_SECONDS = 4.0


def _storm_worker(name: str, d: str, seed: int) -> None:
    """Forked: take 1..2 units, prove each slot with its flock, log the
    token under it, hold briefly, unlock, release.  Forever, until killed."""
    rng = random.Random(seed)
    sem = ipcsem.Semaphore(name)
    locks = [os.open(os.path.join(d, f"slot-{k}"), os.O_RDWR) for k in range(CAPACITY)]
    logs = [os.open(os.path.join(d, f"log-{k}"), os.O_WRONLY | os.O_APPEND)
            for k in range(CAPACITY)]
    bad = os.open(os.path.join(d, "violations"), os.O_WRONLY | os.O_APPEND)
    while True:
        units = rng.choice((1, 1, 2))
        with sem.hold(units) as lease:
            if len(lease.slots) != units or len(set(lease.slots)) != units or \
                    not all(0 <= k < CAPACITY for k in lease.slots):
                os.write(bad, f"{os.getpid()} got slots {lease.slots} for {units}\n".encode())
            for k in lease.slots:
                try:
                    fcntl.flock(locks[k], fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.write(bad, f"{os.getpid()} slot {k} (token {lease.token}) is held "
                                  f"by another\n".encode())
                    continue
                os.write(logs[k], f"{lease.token}\n".encode())
            time.sleep(rng.uniform(0, 0.004))
            for k in lease.slots:
                fcntl.flock(locks[k], fcntl.LOCK_UN)


def _fork_worker(name: str, d: str, seed: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _storm_worker(name, d, seed)
        except BaseException as e:  # noqa: BLE001 - report, never return into pytest
            try:
                with open(os.path.join(d, "violations"), "a") as f:
                    f.write(f"{os.getpid()} crashed: {e!r}\n")
            finally:
                os._exit(code)
        os._exit(code)
    return pid


def test_slots_disjoint_and_complete_under_a_sigkill_storm(name, tmp_path):
    d = str(tmp_path)
    for k in range(CAPACITY):
        open(os.path.join(d, f"slot-{k}"), "w").close()
        open(os.path.join(d, f"log-{k}"), "w").close()
    open(os.path.join(d, "violations"), "w").close()
    sem = ipcsem.Semaphore(name, capacity=CAPACITY, slots=True)
    rng = random.Random(9)
    workers = [_fork_worker(name, d, rng.randrange(1 << 30)) for _ in range(WORKERS)]
    kills = 0
    try:
        end = time.monotonic() + STORM_SECONDS
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.02, 0.12))
            i = rng.randrange(len(workers))
            os.kill(workers[i], signal.SIGKILL)
            os.waitpid(workers[i], 0)
            kills += 1
            workers[i] = _fork_worker(name, d, rng.randrange(1 << 30))
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    with open(os.path.join(d, "violations")) as f:
        violations = f.read()
    assert violations == "", violations
    grants = 0
    for k in range(CAPACITY):
        with open(os.path.join(d, f"log-{k}")) as f:
            tokens = [int(x) for x in f.read().split()]
        grants += len(tokens)
        assert all(a < b for a, b in itertools.pairwise(tokens)), \
            f"slot {k}: tokens not strictly increasing in grant order: {tokens}"
    print(f"storm: {kills} kills, {grants} slot grants logged")
    assert kills >= 10 and grants >= 30, \
        f"the storm did too little ({kills} kills, {grants} grants)"
    # Complete: every number comes back, once; a fresh process (exec'd, so it
    # shares nothing with us) heals the dead, gets all of them, and can flock
    # each.
    check = (
        "import fcntl, os, sys, ipcsem\n"
        "s = ipcsem.Semaphore(sys.argv[1]); d = sys.argv[2]\n"
        "with s.hold(s.capacity, timeout=20) as lease:\n"
        "    for k in lease.slots:\n"
        "        fd = os.open(os.path.join(d, f'slot-{k}'), os.O_RDWR)\n"
        "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print(lease.slots, lease.token)\n")
    out = subprocess.run([sys.executable, "-c", check, name, d], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    slots, token = out.stdout.split(")")
    assert slots + ")" == str(tuple(range(CAPACITY)))
    last = max(int(x) for k in range(CAPACITY)
               for x in Path(d, f"log-{k}").read_text().split())
    assert int(token) > last
    assert sem.holders() == [] and sem.available == CAPACITY
    sem.check()


# ------------------------------------------- crash points inside slotted ops
# The C ledger's fault injection kills the child at the Nth store of its
# transactions; after every kill the slot table must agree with the counts
# (check()) and every unit number must come back exactly once.
def _fresh(capacity=4):
    import uuid

    n = f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return n, ipcsem.Semaphore(n, capacity=capacity, slots=True), []


def _all_numbers_back(sem, point):
    """After recovery: nothing held, every unit number free exactly once."""
    sem.check()         # takes the lock: a dead transaction is rolled back (H2)
    sem.recover()
    sem.check()
    assert sem.holders() == [], point
    unowned = sem.stats().unowned
    assert sem.available == sem.capacity - unowned, point
    if unowned:
        sem.release(unowned)            # an unowned post brings the disowned back
    with sem.hold(sem.capacity, timeout=5) as lease:
        assert lease.slots == tuple(range(sem.capacity)), point


@pytest.mark.slow
def test_kill_at_every_crash_point_of_a_slotted_take():
    from family_procs import sweep_crash_points

    def verify(sem, died, point):
        sem.check()                     # takes the lock: a dead transaction is rolled back
        slots = [h.slots for h in sem.holders()]
        assert slots in ([(0,)], [(0, 1, 2)]), (point, slots)     # before or after, no mix
        if not died:
            assert slots == [(0, 1, 2)]
        _all_numbers_back(sem, point)

    assert sweep_crash_points(_fresh, "s = ipcsem.Semaphore(name); s.acquire()", "s.acquire(2)",
                              verify) > 10


@pytest.mark.slow
def test_kill_at_every_crash_point_of_a_slotted_release():
    from family_procs import sweep_crash_points

    def verify(sem, died, point):
        sem.check()                     # takes the lock: a dead transaction is rolled back
        slots = [h.slots for h in sem.holders()]
        assert slots in ([(0, 1, 2)], [(0, 1)]), (point, slots)
        if not died:
            assert slots == [(0, 1)]
        _all_numbers_back(sem, point)

    assert sweep_crash_points(_fresh, "s = ipcsem.Semaphore(name); s.acquire(); s.acquire(2)",
                              "s.release()", verify) > 5


@pytest.mark.slow
def test_kill_at_every_crash_point_of_a_slotted_disown():
    from family_procs import sweep_crash_points

    def verify(sem, died, point):
        sem.check()
        state = ([h.slots for h in sem.holders()], sem.stats().unowned)
        assert state in (([(0, 1)], 0), ([(0,)], 1)), (point, state)
        if not died:
            assert state == ([(0,)], 1)
        _all_numbers_back(sem, point)

    assert sweep_crash_points(_fresh, "s = ipcsem.Semaphore(name); s.acquire(2)", "s.disown()",
                              verify) > 5


@pytest.mark.slow
def test_kill_at_every_crash_point_of_a_release_that_grants_a_queued_waiter():
    from family_procs import Child

    waiters = {}

    def create():
        n, sem, _ = _fresh(capacity=2)
        w = Child(f"s = ipcsem.Semaphore({n!r})")
        waiters[n] = w
        return n, sem, [w]

    def queue_waiter(sem):
        w = waiters[sem.name]
        w.begin("l = s.hold(timeout=30).__enter__(); result = l.slots")
        wait_queued(sem, w)

    def verify(sem, died, point):
        w = waiters[sem.name]
        slots = w.result(20)            # granted exactly once, dead releaser or not
        assert len(slots) == 1 and slots[0] in (0, 1), (point, slots)
        sem.check()
        sem.recover()                   # the releaser's other unit
        assert holders_slots(sem) == {w.pid: slots}, point
        if not died:
            assert slots == (1,)        # the releaser's highest number went
        w.kill()
        _all_numbers_back(sem, point)

    assert _sweep_with_waiter(create, "s = ipcsem.Semaphore(name); s.acquire(2)", verify,
                              queue_waiter) > 5


def _sweep_with_waiter(create, setup, verify, queue_waiter, batch=6, max_points=400):
    """family_procs.sweep_crash_points, with a waiter queued after the
    setup and before the crash point is armed; the op is ``s.release()``."""
    from family_procs import Child

    for first in range(0, max_points, batch):
        cases = []
        try:
            for point in range(first, first + batch):
                name, sem, extra = create()
                cases.append((point, name, sem, Child(wait=False), extra))
            for point, name, sem, child, _extra in cases:
                child.ready()
                child.run(f"name = {name!r}\n" + setup)
                queue_waiter(sem)
                child.begin(f"from ipcsem._shm import _ledger\n"
                            f"_ledger.set_crash_point({point})\ns.release()")
            survived = []
            for point, _name, sem, child, _extra in cases:
                try:
                    child.result(20)
                    died = False
                    survived.append(point)
                    child.kill()
                except EOFError:
                    child.proc.wait(10)
                    assert child.proc.returncode == -9, point
                    died = True
                verify(sem, died, point)
            if survived:
                assert survived == list(range(survived[0], first + batch)), survived
                return survived[0]
        finally:
            for _point, name, _sem, child, extra in cases:
                child.close()
                for x in extra:
                    x.close()
                try:
                    ipcsem.unlink(name)
                except ipcsem.IpcsemError:
                    pass
    raise AssertionError("the release never completed")


@pytest.mark.slow
def test_kill_at_every_crash_point_of_recovering_a_dead_slotted_holder():
    from family_procs import Child, sweep_crash_points

    def create():
        n, sem, _ = _fresh()
        dead = Child(f"s = ipcsem.Semaphore({n!r}); s.acquire(); s.acquire(2)")
        dead.kill()
        return n, sem, [dead]

    def verify(sem, died, point):
        _all_numbers_back(sem, point)
        assert sem.stats().recovered_units == 3, point   # exactly once, whoever finished it

    assert sweep_crash_points(create, "s = ipcsem.Semaphore(name)", "s.recover()", verify) > 5
