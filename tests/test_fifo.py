"""Strict FIFO, priorities, multi-unit atomicity, timeouts and signals, with
real processes.  The order oracle is what each process observes (which one's
acquire returned), not the ledger's queue."""
import signal

import pytest

import ipcsem
from procs import AgentError, held_by, queued_pids, wait_until


def queue_up(sem, agent, units=1, timeout=None, priority=0):
    agent.start_acquire(units, timeout, priority)
    wait_until(lambda: agent.pid in queued_pids(sem), what=f"{agent.pid} queued")


def still_blocked(agent, seconds=0.3):
    try:
        agent.read(seconds)
    except TimeoutError:
        return True
    return False


def test_fifo_order_across_processes(name, agents):
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    waiters = [agents() for _ in range(4)]
    for a in waiters:
        a.cmd(f"open {name}")
        queue_up(sem, a)
    assert queued_pids(sem) == [a.pid for a in waiters]
    sem.release()
    for i, a in enumerate(waiters):
        assert a.result() is True  # this one got it ...
        for later in waiters[i + 1:]:
            assert still_blocked(later, 0.05)  # ... and nobody behind it did
        a.cmd("release 1")
    assert sem.available == 1
    sem.check()


def test_big_request_is_not_starved_by_small_ones(name, agents):
    sem = ipcsem.Semaphore(name, capacity=2)
    sem.acquire(1)
    big, small = agents(), agents()
    big.cmd(f"open {name}")
    small.cmd(f"open {name}")
    queue_up(sem, big, units=2)
    # One unit is free, but taking it would overtake the queued 2-unit request.
    assert sem.available == 1
    assert small.cmd("try 1") is False
    queue_up(sem, small, units=1)
    assert still_blocked(small)
    sem.release(1)
    assert big.result() is True and held_by(sem) == {big.pid: 2}
    assert still_blocked(small, 0.1)
    big.cmd("release 2")
    assert small.result() is True
    sem.check()


def test_priority_orders_the_queue(name, agents):
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    low, mid, high = agents(), agents(), agents()
    for a in (low, mid, high):
        a.cmd(f"open {name}")
    queue_up(sem, low, priority=0)
    queue_up(sem, mid, priority=1)
    queue_up(sem, high, priority=5)
    assert [w.priority for w in sem.waiters()] == [5, 1, 0]
    sem.release()
    for a in (high, mid, low):
        assert a.result() is True
        a.cmd("release 1")
    sem.check()


def test_timeout_leaves_nothing_behind(name, agents):
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    a = agents()
    a.cmd(f"open {name}")
    assert a.cmd("acquire 1 0.2") is False
    assert sem.waiters() == [] and held_by(sem) == {sem_pid(): 1}
    sem.check()


def sem_pid():
    import os

    return os.getpid()


def test_cancelled_head_lets_smaller_requests_behind_it_go(name, agents):
    sem = ipcsem.Semaphore(name, capacity=2)
    sem.acquire(1)
    big, small = agents(), agents()
    big.cmd(f"open {name}")
    small.cmd(f"open {name}")
    queue_up(sem, big, units=2, timeout=0.5)
    queue_up(sem, small, units=1)
    assert big.result() is False       # timed out at the head ...
    assert small.result() is True      # ... and the 1 free unit went to the next in line
    sem.check()


def test_ctrl_c_during_blocking_acquire_leaks_nothing(name, agents):
    """Hazard 12: SIGINT while queued -> KeyboardInterrupt, no entry, no unit."""
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    a = agents()
    a.cmd(f"open {name}")
    queue_up(sem, a)
    a.kill(signal.SIGINT)
    with pytest.raises(AgentError, match="KeyboardInterrupt"):
        a.result()
    assert sem.waiters() == []
    sem.release()
    assert sem.available == 1 and held_by(sem) == {}
    sem.check()


def test_signal_with_quiet_handler_does_not_abort_the_wait(name, agents):
    """Hazard 12: EINTR from a handled signal: the acquire keeps waiting."""
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    a = agents()
    a.cmd(f"open {name}")
    a.cmd(f"handler {int(signal.SIGUSR1)}")
    queue_up(sem, a)
    for _ in range(5):
        a.kill(signal.SIGUSR1)
    assert still_blocked(a)
    assert queued_pids(sem) == [a.pid]
    sem.release()
    assert a.result() is True
    sem.check()


def test_a_handler_raising_systemexit_ends_the_wait_and_leaks_nothing(name, agents):
    """Hazard 12: posix_ipc drops such exceptions (only KeyboardInterrupt
    survives its EINTR path); ipcsem's own doorbell wait lets them through."""
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    a = agents()
    a.cmd(f"open {name}")
    a.cmd(f"handler-exit {int(signal.SIGTERM)}")
    queue_up(sem, a)
    a.kill(signal.SIGTERM)
    with pytest.raises(AgentError, match="SystemExit signal 15"):
        a.result(5)
    assert sem.waiters() == []
    sem.release()
    assert sem.available == 1 and held_by(sem) == {}
    sem.check()
