"""Counting: units granted never exceed the capacity; a grant of k units is
all or nothing; units belong to the process; unowned posts and disown."""
import os
import threading

import pytest

import ipcsem
from ipcsem.testing import assert_consistent, held_by


def test_create_open_and_reopen(backend, sem_name):
    with pytest.raises(ipcsem.NotFound):
        backend.open(sem_name)
    a = backend.open(sem_name, capacity=3)
    b = backend.open(sem_name)
    c = backend.open(sem_name, capacity=3)
    assert (a.name, a.capacity, a.available) == (sem_name, 3, 3)
    assert b.capacity == c.capacity == 3
    assert a.created and not b.created and not c.created
    assert sem_name in backend.names()


def test_acquire_release_multi_unit_and_ownership(backend, sem_name):
    s = backend.open(sem_name, capacity=5)
    assert s.acquire(2)
    assert s.try_acquire(3)
    assert not s.try_acquire(1)
    assert not s.acquire(1, timeout=0.05)
    assert held_by(s) == {os.getpid(): 5}
    (h,) = s.holders()
    assert h.units == 5 and h.since > 0 and h.acquisitions == 2
    s.release(4)
    assert s.available == 4
    s.release(1)
    with pytest.raises(ValueError):
        s.release(1)  # nothing owned, nothing unowned: would exceed capacity
    assert_consistent(s, available=5, held=0, holders=0, waiting=0, unowned=0)


def test_multi_unit_grant_is_all_or_nothing(backend, sem_name):
    """3 of 4 taken elsewhere: a request for 2 gets nothing (not 1), and the
    free unit stays free; once 2 are free it gets both at once."""
    s = backend.open(sem_name, capacity=4)
    other = backend.spawn_holder(sem_name, 3)
    assert not s.try_acquire(2)
    assert not s.acquire(2, timeout=0.1)
    assert_consistent(s, available=1, held=3, holders={other: 3}, waiting=0)
    w = backend.agent()
    w.open(sem_name)
    w.start_acquire(2, on=s)
    assert_consistent(s, available=1, held=3, waiting=1)   # nothing granted in part
    other.release()
    assert w.result() is True
    assert_consistent(s, available=2, holders={w: 2}, waiting=0)


def test_initial_units_and_unowned_posts(backend, sem_name):
    items = backend.open(sem_name, capacity=8, initial=0)
    assert items.available == 0
    assert not items.try_acquire()
    items.release(3)  # unowned posts: the producer side
    assert_consistent(items, available=3, held=0, unowned=5)
    with pytest.raises(ValueError):
        items.release(6)        # 3 + 6 > 8: beyond the capacity
    assert_consistent(items, available=3, unowned=5)
    with pytest.raises(ValueError):
        backend.open(backend.name(), initial=2)     # initial= needs capacity=


def test_disown_hands_units_off(backend, sem_name):
    s = backend.open(sem_name, capacity=2)
    s.acquire(2)
    s.disown(1)
    assert s.stats().unowned == 1 and held_by(s)[os.getpid()] == 1
    with pytest.raises(ValueError):
        s.disown(2)
    assert_consistent(s, available=0, held=1, unowned=1)
    s.release(2)  # one owned + one unowned post
    assert_consistent(s, available=2, held=0, unowned=0)


def test_a_disowned_unit_does_not_come_back_when_its_taker_dies(backend, sem_name):
    s = backend.open(sem_name, capacity=2)
    a = backend.agent()
    a.open(sem_name)
    assert a.try_acquire(2) is True
    a.disown(1)
    a.kill()
    s.recover()
    assert_consistent(s, available=1, held=0, holders=0, unowned=1)


def test_threads_of_one_process_share_its_holdings(backend, sem_name):
    """Hazard 14: many threads of two processes contend; holds are per
    process and the count is exact afterwards."""
    backend.require("threads")
    sem = backend.open(sem_name, capacity=2)
    a, b = backend.agents(2)
    for x in (a, b):
        x.open(sem_name)
    n = backend.contention_rounds
    b.send(f"threads 4 {n}")              # another process, contending
    assert a.cmd(f"threads 8 {n}", timeout=120) == []
    assert b.result(120) == []
    assert_consistent(sem, available=2, held=0, holders=0, waiting=0)


def test_units_taken_by_one_thread_may_be_released_by_another(backend, sem_name):
    backend.require("threads")
    sem = backend.open(sem_name, capacity=2)
    sem.acquire(2)
    t = threading.Thread(target=sem.release, args=(2,))
    t.start()
    t.join()
    assert_consistent(sem, available=2, held=0)


def test_never_more_than_capacity_under_contention(backend, sem_name, tmp_path):
    """Three processes of two threads each take a unit 200 times.  The
    oracle is the kernel's, not the ledger's: while holding, each must get
    one of CAPACITY flocks; none free means more holders than units."""
    sem = backend.open(sem_name, capacity=3)
    agents = backend.agents(3)
    for a in agents:
        a.open(sem_name)
    for a in agents:
        a.send(f"admitted {tmp_path} 200 2")
    assert [a.result(120) for a in agents] == [0, 0, 0]
    assert sem.stats().acquisitions >= 3 * 2 * 200
    assert_consistent(sem, available=3, held=0, holders=0, waiting=0)
