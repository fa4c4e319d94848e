"""Strict order across processes: highest priority first, FIFO within a
priority, and nobody behind the head is served before it.  The order oracle
is what each process observes (whose acquire returned), not the queue that
waiters() reports; waiters() is checked separately."""
import os

from ipcsem.testing import assert_consistent, held_by, queued_pids


def test_fifo_order_across_processes(backend, sem_name):
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    waiters = backend.agents(4)
    for a in waiters:
        a.open(sem_name)
        a.start_acquire(on=sem)
    assert queued_pids(sem) == [a.pid for a in waiters]
    sem.release()
    for i, a in enumerate(waiters):
        assert a.result() is True  # this one got it ...
        for later in waiters[i + 1:]:
            assert not later.answered(0.05)  # ... and nobody behind it did
        a.release()
    assert_consistent(sem, available=1, held=0, holders=0, waiting=0)


def test_big_request_is_not_starved_by_small_ones(backend, sem_name):
    sem = backend.open(sem_name, capacity=2)
    sem.acquire(1)
    big, small = backend.agents(2)
    big.open(sem_name)
    small.open(sem_name)
    big.start_acquire(2, on=sem)
    # One unit is free, but taking it would overtake the queued 2-unit request.
    assert sem.available == 1
    assert small.try_acquire(1) is False
    small.start_acquire(1, on=sem)
    assert not small.answered(0.3)
    sem.release(1)
    assert big.result() is True and held_by(sem) == {big.pid: 2}
    assert not small.answered(0.1)
    big.release(2)
    assert small.result() is True
    assert_consistent(sem, available=1, holders={small: 1}, waiting=0)


def test_a_stream_of_one_unit_requests_never_overtakes_a_two_unit_head(backend, sem_name):
    """A free unit is there all along, and three processes keep asking for
    it, without blocking and blocking with short timeouts; none gets it
    while the 2-unit request waits, and the head is served first when the
    second unit comes back."""
    sem = backend.open(sem_name, capacity=2)
    sem.acquire(1)
    big = backend.agent()
    big.open(sem_name)
    big.start_acquire(2, on=sem)
    stream = backend.agents(2)
    for a in stream:
        a.open(sem_name)
    for _ in range(20):
        assert not sem.try_acquire(1)
        for a in stream:
            assert a.try_acquire(1) is False
    assert stream[0].acquire(1, timeout=0.2) is False
    assert not sem.acquire(1, timeout=0.1)
    assert not big.answered(0)
    stream[1].start_acquire(1, on=sem)
    assert queued_pids(sem) == [big.pid, stream[1].pid]
    sem.release(1)
    assert big.result() is True
    assert held_by(sem) == {big.pid: 2}
    big.release(2)
    assert stream[1].result() is True
    assert_consistent(sem, available=1, holders={stream[1]: 1}, waiting=0)


def test_priority_orders_the_queue(backend, sem_name):
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    low, mid, high, low2 = backend.agents(4)
    for a in (low, mid, high, low2):
        a.open(sem_name)
    low.start_acquire(priority=0, on=sem)
    mid.start_acquire(priority=1, on=sem)
    high.start_acquire(priority=5, on=sem)
    low2.start_acquire(priority=0, on=sem)
    assert [w.priority for w in sem.waiters()] == [5, 1, 0, 0]
    assert queued_pids(sem) == [high.pid, mid.pid, low.pid, low2.pid]
    sem.release()
    for a in (high, mid, low, low2):
        assert a.result() is True
        a.release()
    assert_consistent(sem, available=1, holders=0, waiting=0)


def test_a_higher_priority_arrival_is_served_before_an_earlier_queue(backend, sem_name):
    sem = backend.open(sem_name, capacity=2)
    sem.acquire(2)
    early, urgent = backend.agents(2)
    early.open(sem_name)
    urgent.open(sem_name)
    early.start_acquire(2, on=sem)
    urgent.start_acquire(1, priority=3, on=sem)
    sem.release(1)
    assert urgent.result() is True           # one unit free: the head (urgent) fits
    assert not early.answered(0.1)
    sem.release(1)
    urgent.release(1)
    assert early.result() is True
    assert_consistent(sem, available=0, holders={early: 2}, waiting=0)


def test_cancelled_head_lets_smaller_requests_behind_it_go(backend, sem_name):
    sem = backend.open(sem_name, capacity=2)
    sem.acquire(1)
    big, small = backend.agents(2)
    big.open(sem_name)
    small.open(sem_name)
    big.start_acquire(2, timeout=0.5, on=sem)
    small.start_acquire(1, on=sem)
    assert big.result() is False       # timed out at the head ...
    assert small.result() is True      # ... and the 1 free unit went to the next in line
    assert_consistent(sem, available=0, holders={small: 1, os.getpid(): 1}, waiting=0)
