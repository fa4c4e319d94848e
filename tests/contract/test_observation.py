"""What a semaphore tells about itself: holders() (pid, start, units,
since), waiters() in serving order, available, stats(), names(), and what
unlink does to a name in use (hazard 11)."""
import os
import time

import pytest

import ipcsem
from ipcsem.testing import AgentError, assert_consistent, queued_pids
from ipcsem.testing.loop_load import start_churners


def test_holders_say_who_holds_how_much_since_when(backend, sem_name):
    sem = backend.open(sem_name, capacity=4)
    before = time.time()
    h = backend.spawn_holder(sem_name, 3)
    after = time.time()
    (row,) = sem.holders()
    assert isinstance(row, ipcsem.Holder)
    assert (row.pid, row.start, row.units) == (h.pid, h.start, 3)
    assert before - 1 <= row.since <= after + 1      # epoch seconds (clock granularity)
    assert row.acquisitions == 1
    sem.acquire()
    assert {r.pid: r.units for r in sem.holders()} == {h.pid: 3, os.getpid(): 1}
    assert sem.available == 0
    sem.release()
    h.release()
    assert sem.holders() == [] and sem.available == 4


def test_waiters_in_serving_order_with_their_facts(backend, sem_name):
    sem = backend.open(sem_name, capacity=2)
    sem.acquire(2)
    a, b, c = backend.agents(3)
    for x in (a, b, c):
        x.open(sem_name)
    before = time.time()
    a.start_acquire(1, on=sem)
    b.start_acquire(2, on=sem)
    c.start_acquire(1, priority=7, on=sem)
    after = time.time()
    rows = sem.waiters()
    assert all(isinstance(w, ipcsem.Waiter) for w in rows)
    assert [(w.pid, w.start, w.units, w.priority) for w in rows] == [
        (c.pid, c.start, 1, 7), (a.pid, a.start, 1, 0), (b.pid, b.start, 2, 0)]
    assert all(before - 1 <= w.since <= after + 1 for w in rows)
    assert rows[1].ticket < rows[2].ticket              # FIFO within priority 0
    assert all(w.tid > 0 for w in rows)
    st = sem.stats()
    assert (st.capacity, st.available, st.held, st.holders, st.waiting) == (2, 0, 2, 1, 3)
    sem.release(2)
    assert c.result() is True and a.result() is True
    assert queued_pids(sem) == [b.pid]


def test_stats_are_one_consistent_reading(backend, sem_name):
    sem = backend.open(sem_name, capacity=5, initial=3)
    sem.acquire(2)
    st = sem.stats()
    assert isinstance(st, ipcsem.Stats) and st.name == sem_name
    assert (st.capacity, st.available, st.held, st.unowned, st.holders, st.waiting) == \
        (5, 1, 2, 2, 1, 0)
    assert st.available + st.held + st.unowned == st.capacity
    assert st.acquisitions == 1 and st.kind == "semaphore"
    sem.release(2)


def test_names_lists_what_exists(backend):
    a, b = backend.name(), backend.name()
    backend.open(a, capacity=1)
    assert a in backend.names() and b not in backend.names()
    backend.open(b, capacity=1)
    assert {a, b} <= set(backend.names())
    backend.unlink(a)
    assert a not in backend.names() and b in backend.names()


def test_unlink_api(backend, sem_name):
    s = backend.open(sem_name, capacity=1)
    backend.unlink(sem_name)
    assert sem_name not in backend.names()
    with pytest.raises(ipcsem.NotFound):
        backend.unlink(sem_name)
    with pytest.raises(ipcsem.Unlinked) as e:
        s.acquire()
    assert e.value.name == sem_name
    with pytest.raises(ValueError):
        backend.unlink("bad/name")


def test_unlink_while_held_and_waited_on(backend, sem_name):
    """Hazard 11: a queued waiter gets Unlinked; the holder keeps releasing
    into the old semaphore; a new open of the name makes a new one."""
    sem = backend.open(sem_name, capacity=1)
    holder, waiter = backend.agents(2)
    holder.open(sem_name)
    waiter.open(sem_name)
    assert holder.try_acquire() is True
    waiter.start_acquire(on=sem)
    backend.unlink(sem_name)
    with pytest.raises(AgentError) as e:
        waiter.result(10)
    assert e.value.type == "Unlinked"
    assert holder.release() is None            # the old object still works
    fresh = backend.open(sem_name, capacity=2)
    assert fresh.created and fresh.capacity == 2
    assert_consistent(fresh, available=2, held=0, holders=0, waiting=0)
    with pytest.raises(ipcsem.Unlinked):       # old handles stay on the old object
        sem.acquire(timeout=0)
    with pytest.raises(AgentError, match="Unlinked"):
        waiter.try_acquire()


def test_a_picture_is_one_reading_while_others_churn(backend, sem_name):
    # Status tools show picture(): its counters must agree with its lists
    # at every moment.  (stats(), holders() and waiters() read one after
    # another showed a fresh holder next to "1 available".)
    sem = backend.open(sem_name, capacity=3)
    churners = start_churners([sem_name], 3, 60, 0.0, backend.url, units=2)
    try:
        seen_held = seen_waiting = 0
        end = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < end or n < 50:
            n += 1
            pic = sem.picture()
            assert isinstance(pic, ipcsem.Picture)
            st = pic.stats
            assert st.available + st.held + st.unowned == st.capacity == 3
            assert st.held == sum(h.units for h in pic.holders), pic
            assert st.holders == len(pic.holders), pic
            assert st.available >= 0 and all(h.units == 2 for h in pic.holders), pic
            assert st.waiting == len(pic.waiters), pic
            seen_held += bool(pic.holders)
            seen_waiting += bool(pic.waiters)
        assert seen_held and seen_waiting       # the churn was seen mid-flight
    finally:
        for p in churners:
            p.kill()
            p.wait()
