"""Deadlocks across processes (issue 9 §5): real cycles are found, and each
shape that only *looks* like one is not.

Every participant is a separate process whose only thread is the one that
waits (family_procs.Child runs the test's code in its main thread), so "all
its threads are parked in ipcsem waits" is true exactly when the test means
it.  "Not reported" is checked with find_deadlocks() and, for waiters that
asked ``deadlock="raise"``, by their still waiting after several detection
slices — and then by the shape resolving the way the test says it will.
"""
import dataclasses
import os
import signal
import time

import pytest
from family_procs import ChildError, children, state_of, wait_queued, wait_until  # noqa: F401

import ipcsem

RAISE_DEADLINE = 8.0    # "within ~1-3 s", checked as "eventually" on a shared machine
QUIET = 1.6             # > 3 detection slices (HEAL_INTERVAL = 0.5 s)


@pytest.fixture
def sems(names):
    """sems(cap1, cap2, ...) -> (names, Semaphores), created with those
    capacities (a dict as a capacity: Semaphore keyword arguments)."""
    def make(*caps):
        ns, ss = [], []
        for cap in caps:
            kw = cap if isinstance(cap, dict) else {"capacity": cap}
            n = names()
            ns.append(n)
            ss.append(ipcsem.Semaphore(n, **kw))
        return ns, ss
    return make


def opener(ns) -> str:
    return "; ".join(f"s{i + 1} = ipcsem.Semaphore({n!r})" for i, n in enumerate(ns))


def found(ns) -> list[ipcsem.Deadlock]:
    return ipcsem.find_deadlocks(list(ns))


VICTIM_CODE = """
try:
    got = {wait}
    result = "granted"
except ipcsem.DeadlockDetected as e:
    result = ("raised", e.deadlock.processes, e.deadlock.semaphores,
              isinstance(e, ipcsem.IpcsemError), e.name)
"""


def until_answer(child, timeout):
    """The child's answer and how long after now it came."""
    t = time.monotonic()
    return child.result(timeout), time.monotonic() - t


# ------------------------------------------------------------ real cycles
def test_two_process_cycle_is_found(sems, children):
    ns, (s1, s2) = sems(1, 1)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire()")
    b.run("s2.acquire()")
    a.begin("s2.acquire()")
    wait_queued(s2, a)
    assert found(ns) == []                  # a waits for b, b runs: no deadlock yet
    b.begin("s1.acquire()")
    wait_queued(s1, b)
    (dl,) = found(ns)
    assert isinstance(dl, ipcsem.Deadlock)
    assert dl.processes == tuple(sorted((a.pid, b.pid)))
    assert dl.semaphores == tuple(sorted(ns))
    for fact in (str(a.pid), str(b.pid), ns[0], ns[1]):
        assert fact in dl.description
    every = ipcsem.find_deadlocks()     # all names: ours is among them
    assert (dl.processes, dl.semaphores) in [(d.processes, d.semaphores) for d in every]
    with pytest.raises(dataclasses.FrozenInstanceError):
        dl.processes = ()                                     # a frozen record
    # A death ends it: the dead holder's units come back (b heals them).
    a.kill()
    assert b.result(15) is True
    assert found(ns) == []


def test_three_process_cycle_is_found(sems, children):
    ns, ss = sems(1, 1, 1)
    ps = children(opener(ns), n=3)
    for i, p in enumerate(ps):
        p.run(f"s{i + 1}.acquire()")
    for i, p in enumerate(ps):
        j = (i + 1) % 3
        p.begin(f"s{j + 1}.acquire()")
        wait_queued(ss[j], p)
        if i < 2:
            assert found(ns) == [], "not closed yet"
    (dl,) = found(ns)
    assert dl.processes == tuple(sorted(p.pid for p in ps))
    assert dl.semaphores == tuple(sorted(ns))


def test_fifo_wait_behind_an_unservable_head_is_a_deadlock_with_units_free(sems, children):
    """Capacity 2; a holds 1; b asks 2 (head, cannot be served while a holds
    its unit); a asks 1 more.  One unit is free, but strict FIFO serves
    nobody behind b: a and b wait for each other."""
    ns, (s,) = sems(2)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire()")
    b.begin("s1.acquire(2)")
    wait_queued(s, b, units=2)
    assert found(ns) == []
    a.begin("s1.acquire(1)")
    wait_queued(s, a, units=1)
    assert s.available == 1
    (dl,) = found(ns)
    assert dl.processes == tuple(sorted((a.pid, b.pid)))


def test_counting_cycle_is_found(sems, children):
    """Capacity 3: a holds 2 of S1 and wants S2; b holds S2 and wants 2 of S1
    (only 1 free)."""
    ns, (s1, s2) = sems(3, 1)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire(2)")
    b.run("s2.acquire()")
    a.begin("s2.acquire()")
    wait_queued(s2, a)
    b.begin("s1.acquire(2)")
    wait_queued(s1, b)
    assert s1.available == 1
    (dl,) = found(ns)
    assert dl.processes == tuple(sorted((a.pid, b.pid)))


def test_multi_unit_three_semaphore_cycle_is_found(sems, children):
    ns, (s1, s2, s3) = sems(2, 2, 1)
    a, b, c = children(opener(ns), n=3)
    a.run("s1.acquire(2)")
    b.run("s2.acquire(2)")
    c.run("s3.acquire()")
    a.begin("s2.acquire(1)")
    wait_queued(s2, a)
    b.begin("s3.acquire(1)")
    wait_queued(s3, b)
    assert found(ns) == []
    c.begin("s1.acquire(1)")
    wait_queued(s1, c)
    (dl,) = found(ns)
    assert dl.processes == tuple(sorted((a.pid, b.pid, c.pid)))


# --------------------------------------------- shapes that are no deadlock
def test_cycle_through_a_semaphore_with_enough_free_units_is_not_one(sems, children):
    """a waits for 1 of S1 (unfair), which b holds one of; b waits for S2,
    which a holds: a cycle, and while c (parked behind b) holds the other
    unit of S1, a deadlock.  Once c's unit is free, a unit of S1 is there
    for a (an unfair head is rung and takes it when it runs; a is stopped
    for now): the same cycle is no deadlock."""
    ns, (s1, s2) = sems({"capacity": 2, "fair": False}, 1)
    a, b, c = children(opener(ns), n=3)
    b.run("s1.acquire()")
    c.run("s1.acquire()")
    a.run("s2.acquire()")
    a.begin("s1.acquire(); s2.release(); s1.release(); result = 'a done'")
    wait_queued(s1, a)
    b.begin("s2.acquire(); s2.release(); s1.release(); result = 'b done'")
    wait_queued(s2, b)
    c.begin("s2.acquire()")
    wait_queued(s2, c)
    (dl,) = found(ns)
    assert dl.processes == tuple(sorted((a.pid, b.pid, c.pid)))
    os.kill(a.pid, signal.SIGSTOP)
    wait_until(lambda: state_of(a.pid) in "Tt", what="a stopped")
    try:
        c.kill()
        s1.recover()                   # rings a, which cannot run to take it
        assert s1.stats().recovered_units == 1
        assert s1.available == 1 and [(w.pid, w.units) for w in s1.waiters()] == [(a.pid, 1)]
        assert found(ns) == []
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert a.result(15) == "a done"
    assert b.result(15) == "b done"


def test_cycle_through_a_holder_that_can_finish_is_not_one(sems, children):
    """b's unit of S2 is held by its process, and b's main thread runs (only
    a worker thread of b waits): b can release, so the cycle a->S2->b->S1->a
    is no deadlock, even with both waits asking to be told."""
    ns, (s1, s2) = sems(1, 1)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire()")
    b.run("s2.acquire()")
    a.begin(VICTIM_CODE.format(wait="s2.acquire(deadlock='raise'); s1.release(); s2.release()"))
    wait_queued(s2, a)
    b.thread("s1.acquire(deadlock='raise')", name="w")
    wait_queued(s1, b)
    assert found(ns) == []
    assert a.pending(QUIET), "a was told of a deadlock that is not one"
    assert b.run("threads['w']") == ("running",)
    b.run("s2.release()")              # b's running thread finishes its part
    assert a.result(15) == "granted"
    wait_until(lambda: b.run("threads['w']") == ("ok", True), what="b's worker granted")


def test_own_thread_waits_for_a_unit_another_thread_will_release_is_not_one(sems, children):
    ns, (s,) = sems(1)
    p = children(opener(ns))
    p.run("s1.acquire()")              # the process holds the unit (main thread took it)
    p.thread("s1.acquire(deadlock='raise')", name="w")
    wait_queued(s, p)
    assert found(ns) == []
    time.sleep(QUIET)
    assert p.run("threads['w']") == ("running",), "the worker was told of a deadlock"
    p.run("s1.release()")
    wait_until(lambda: p.run("threads['w']") == ("ok", True), what="the worker granted")


def test_stopped_holder_that_is_not_waiting_is_not_one(sems, children):
    ns, (s1, _s2) = sems(1, 1)
    holder, waiter = children(opener(ns), n=2)
    holder.run("s1.acquire()")
    waiter.run("s2.acquire()")
    os.kill(holder.pid, signal.SIGSTOP)
    wait_until(lambda: state_of(holder.pid) in "Tt", what="holder stopped")
    try:
        waiter.begin(VICTIM_CODE.format(wait="s1.acquire(deadlock='raise')"))
        wait_queued(s1, waiter)
        assert found(ns) == []
        assert waiter.pending(QUIET), "a stopped holder was taken for a deadlock"
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    holder.run("s1.release()")
    assert waiter.result(15) == "granted"


def test_counting_cycle_with_a_holder_that_can_finish_is_not_one(sems, children):
    """Capacity 3: a holds 1 of S1, c (running) holds 1, b holds S2 and wants
    2 of S1 (1 free), a wants S2.  A cycle a->S2->b->S1->a, but c's unit
    will come back, and then b, then a, can go."""
    ns, (s1, s2) = sems(3, 1)
    a, b, c = children(opener(ns), n=3)
    a.run("s1.acquire()")
    c.run("s1.acquire()")
    b.run("s2.acquire()")
    b.begin(VICTIM_CODE.format(wait="s1.acquire(2, deadlock='raise'); s2.release(); s1.release(2)"))
    wait_queued(s1, b, units=2)
    a.begin(VICTIM_CODE.format(wait="s2.acquire(deadlock='raise'); s2.release(); s1.release()"))
    wait_queued(s2, a)
    assert found(ns) == []
    assert a.pending(QUIET) and b.pending(0)
    c.run("s1.release()")
    assert b.result(15) == "granted"
    assert a.result(15) == "granted"
    assert s1.available == 3 and s2.available == 1


def test_dead_holder_in_a_cycle_is_not_one(sems, children):
    ns, (s1, s2) = sems(1, 1)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire()")
    b.run("s2.acquire()")
    a.begin("s2.acquire()")
    wait_queued(s2, a)
    b.begin("s1.acquire()")
    wait_queued(s1, b)
    assert len(found(ns)) == 1
    a.kill()                           # dead, maybe not yet recovered: its units will come back
    assert found(ns) == []
    assert b.result(15) is True


def test_consumer_waiting_for_an_unowned_post_is_not_one(sems, children):
    ns, (q,) = sems({"capacity": 4, "initial": 0})      # a queue: items are posted
    consumer, producer = children(opener(ns), n=2)
    consumer.begin(VICTIM_CODE.format(wait="s1.acquire(deadlock='raise')"))
    wait_queued(q, consumer)
    assert found(ns) == []
    assert consumer.pending(QUIET), "a consumer of an empty queue was told of a deadlock"
    producer.run("s1.release()")       # an unowned post: an item
    assert consumer.result(15) == "granted"


# ------------------------------------------------------ deadlock="raise"
def test_the_participant_that_asked_is_told_and_leaves_nothing_behind(sems, children):
    ns, (s1, s2) = sems(1, 1)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire()")
    b.run("s2.acquire()")
    a.begin("s2.acquire()")                            # a waits without asking
    wait_queued(s2, a)
    b.begin(VICTIM_CODE.format(wait="s1.acquire(deadlock='raise')"))
    wait_queued(s1, b)
    answer, after = until_answer(b, RAISE_DEADLINE)
    print(f"DeadlockDetected {after:.2f} s after the deadlock formed")
    assert answer == ("raised", tuple(sorted((a.pid, b.pid))), tuple(sorted(ns)), True, ns[0])
    assert s1.waiters() == [], "the victim's queue entry stayed"
    assert [w.pid for w in s2.waiters()] == [a.pid]
    assert found(ns) == []
    s1.check()
    b.run("s2.release()")                              # the victim's code gives back what it held
    assert a.result(15) is True


def _run_cycle_where_everyone_asked(sems, children, k):
    ns, ss = sems(*[1] * k)
    ps = children(opener(ns), n=k)
    for i, p in enumerate(ps):
        p.run(f"s{i + 1}.acquire()")
    for i, p in enumerate(ps):
        j = (i + 1) % k
        p.begin(f"""
try:
    s{j + 1}.acquire(deadlock='raise')
    s{j + 1}.release(); s{i + 1}.release()
    result = 'proceeded'
except ipcsem.DeadlockDetected:
    s{i + 1}.release()                 # the victim backs off: gives back what it holds
    result = 'victim'
""")
        wait_queued(ss[j], p)
    outcomes = [p.result(RAISE_DEADLINE + 10) for p in ps]
    return ps, outcomes, ss


@pytest.mark.parametrize("k", [2, 3])
def test_exactly_one_victim_per_deadlock_the_others_proceed(sems, children, k):
    _ps, outcomes, ss = _run_cycle_where_everyone_asked(sems, children, k)
    assert sorted(outcomes) == ["proceeded"] * (k - 1) + ["victim"], outcomes
    assert outcomes[-1] == "victim", "the one that started waiting last gives up"
    for s in ss:
        assert s.available == 1 and s.waiters() == [] and s.holders() == []
        s.check()


def test_hold_with_deadlock_raise(sems, children):
    """The FIFO shape, told through ``with sem.hold(..., deadlock="raise")``."""
    ns, (s,) = sems(2)
    a, b = children(opener(ns), n=2)
    a.run("s1.acquire()")
    b.begin("s1.acquire(2)")
    wait_queued(s, b, units=2)
    a.begin(VICTIM_CODE.format(wait="s1.hold(1, deadlock='raise').__enter__()"))
    wait_queued(s, a, units=1)
    answer, _ = until_answer(a, RAISE_DEADLINE)
    assert answer[0] == "raised" and answer[1] == tuple(sorted((a.pid, b.pid)))
    assert [w.pid for w in s.waiters()] == [b.pid]
    a.run("s1.release()")               # a backs off
    assert b.result(15) is True


def test_mutex_lock_order_inversion_one_victim(names, children):
    """The classic: two mutexes taken in opposite orders by two processes."""
    m1, m2 = names(), names()
    ipcsem.Mutex(m1), ipcsem.Mutex(m2)
    setup = f"x = ipcsem.Mutex({m1!r}); y = ipcsem.Mutex({m2!r})"
    a, b = children(setup, n=2)
    a.run("x.acquire()")
    b.run("y.acquire()")
    code = """
try:
    {second}.acquire(deadlock='raise'); {second}.release(); {first}.release()
    result = 'proceeded'
except ipcsem.DeadlockDetected:
    {first}.release()
    result = 'victim'
"""
    a.begin(code.format(first="x", second="y"))
    wait_queued(ipcsem.Mutex(m2), a)
    b.begin(code.format(first="y", second="x"))
    assert sorted([a.result(RAISE_DEADLINE + 10), b.result(RAISE_DEADLINE + 10)]) == \
        ["proceeded", "victim"]
    assert ipcsem.find_deadlocks([m1, m2]) == []


def test_a_bystander_is_not_the_victim(sems, children):
    """a and b deadlock on S1/S2; c then queues for S1 too, holding nothing.
    c's giving up would free nothing: one of a, b must be the one told, and
    only one."""
    ns, (s1, s2) = sems(1, 1)
    a, b, c = children(opener(ns), n=3)
    a.run("s1.acquire()")
    b.run("s2.acquire()")
    a.begin(VICTIM_CODE.format(wait="s2.acquire(deadlock='raise')"))
    wait_queued(s2, a)
    b.begin(VICTIM_CODE.format(wait="s1.acquire(deadlock='raise')"))
    wait_queued(s1, b)
    c.begin(VICTIM_CODE.format(wait="s1.acquire(deadlock='raise')"))
    wait_queued(s1, c)
    time.sleep(RAISE_DEADLINE / 2)
    told = [p for p in (a, b, c) if not p.pending(0)]
    assert c not in told, "the bystander was made the victim"
    assert len(told) == 1, f"{len(told)} victims for one deadlock"


def test_find_deadlocks_checks_its_names(name):
    with pytest.raises(ipcsem.NotFound):
        ipcsem.find_deadlocks([name + "-absent"])
    with pytest.raises(ValueError):
        ipcsem.find_deadlocks(["bad/name"])
