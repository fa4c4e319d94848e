"""Blocking, trying and timing out, in every calling form the README
promises (ipcsem's own, threading's, multiprocessing's), and signals during
a blocked acquire (hazard 12).  A wait that ends, however it ends, leaves no
queue entry and no unit behind."""
import os
import signal
import threading
import time

import pytest

import ipcsem
from ipcsem.testing import AgentError, assert_consistent, held_by, wait_until


def test_timeout_leaves_nothing_behind(backend, sem_name):
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    a = backend.agent()
    a.open(sem_name)
    assert a.acquire(1, timeout=0.2) is False
    assert sem.waiters() == [] and held_by(sem) == {os.getpid(): 1}
    assert_consistent(sem, available=0, waiting=0)


def test_timeout_zero_and_try_never_wait(backend, sem_name):
    sem = backend.open(sem_name, capacity=1)
    holder = backend.spawn_holder(sem_name)
    assert sem.try_acquire() is False
    assert sem.acquire(timeout=0) is False
    assert sem.acquire(blocking=False) is False
    assert_consistent(sem, available=0, holders={holder: 1}, waiting=0)
    holder.release()
    assert sem.acquire(timeout=0) is True
    assert sem.try_acquire() is False       # capacity 1: mine now
    sem.release()


def test_hold_and_with_block_and_give_back(backend, sem_name):
    s = backend.open(sem_name, capacity=2)
    with s as lease:
        assert s.available == 1 and lease.units == 1
    with s.hold(2, timeout=1) as lease:
        assert s.available == 0 and lease.units == 2
        with pytest.raises(ipcsem.Timeout) as e, s.hold(1, timeout=0.05):
            pass
        assert isinstance(e.value, TimeoutError)
        assert (e.value.name, e.value.units, e.value.timeout) == (sem_name, 1, 0.05)
    assert_consistent(s, available=2, held=0, waiting=0)


def test_hold_gives_back_when_the_block_raises(backend, sem_name):
    s = backend.open(sem_name, capacity=2)
    with pytest.raises(KeyError), s.hold(2):
        raise KeyError("boom")
    assert_consistent(s, available=2, held=0)


def test_a_blocked_acquire_is_granted_on_release_from_another_process(backend, sem_name):
    sem = backend.open(sem_name, capacity=1)
    holder = backend.spawn_holder(sem_name)
    got = []
    t = threading.Thread(target=lambda: got.append(sem.acquire(timeout=30)))
    t.start()
    wait_until(lambda: len(sem.waiters()) == 1, what="the thread queued")
    assert not got
    holder.release()
    t.join(30)
    assert got == [True] and held_by(sem) == {os.getpid(): 1}
    sem.release()


# ------------------------------------------------- the standard library's forms
def test_threading_forms(backend, sem_name):
    """threading.Semaphore's calls keep their meaning: a bool is never a unit
    count, (blocking, timeout) positionally, timeout=-1 is forever, release(n)."""
    backend.require("threading-forms")
    s = backend.open(sem_name, capacity=2)
    assert s.acquire(True) is True and s.available == 1       # one unit, not True == 1 by luck
    assert s.acquire(False) is True and s.available == 0
    assert s.acquire(False) is False
    assert s.acquire(True, 0.05) is False
    assert s.acquire(blocking=False) is False
    assert s.acquire(blocking=True, timeout=0.05) is False
    with pytest.raises(ValueError):
        s.acquire(False, 1.0)        # threading: no timeout for a non-blocking acquire
    s.release(n=2)
    assert s.available == 2
    assert s.acquire(2) is True and s.available == 0           # an int first: units
    s.release(2)
    assert s.acquire(units=2, timeout=1) is True
    s.release(2)
    assert_consistent(s, available=2, held=0, waiting=0)


def test_negative_timeouts_mean_what_the_standard_library_means(backend, sem_name):
    """threading.Semaphore and multiprocessing do not wait for a negative
    timeout (they return False at once when busy); threading.Lock waits
    forever for -1.  Semaphore and Mutex stand in for those, so they do
    the same (the issue's parenthesis "threading means forever" describes
    Lock)."""
    backend.require("threading-forms")
    s = backend.open(sem_name, capacity=1)
    holder = backend.spawn_holder(sem_name)
    t0 = time.monotonic()
    assert s.acquire(timeout=-1) is False and s.acquire(True, -5) is False
    assert time.monotonic() - t0 < 2 and s.waiters() == []
    holder.release()
    assert s.acquire(timeout=-1) is True
    s.release()
    mutex_name = backend.name("m")          # (unlinked after the test, as sem_name is)
    m = backend.mutex(mutex_name)
    owner = backend.agent()
    owner.open_mutex(mutex_name)
    assert owner.cmd("try 1") is True
    got = []

    def waiter():
        got.append(m.acquire(timeout=-1))
        m.release()          # by its owner: this thread

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: len(m.waiters()) == 1, what="the timeout=-1 waiter queued")
    assert not got
    owner.cmd("release 1")
    t.join(30)
    assert got == [True]
    with pytest.raises(ValueError):
        m.acquire(timeout=-2)            # as threading.Lock


def test_multiprocessing_forms(backend, sem_name):
    """multiprocessing.Semaphore's ``block=``; a non-blocking call ignores a
    timeout there, so it does here."""
    backend.require("threading-forms")
    s = backend.open(sem_name, capacity=1)
    assert s.acquire(block=False) is True
    assert s.acquire(block=False) is False
    assert s.acquire(block=False, timeout=5) is False        # ignored, as in multiprocessing
    assert s.acquire(block=True, timeout=0.05) is False
    with pytest.raises(TypeError):
        s.acquire(block=False, blocking=False)
    s.release()
    assert_consistent(s, available=1, held=0, waiting=0)


# ---------------------------------------------------------------- signals
def test_ctrl_c_during_blocking_acquire_leaks_nothing(backend, sem_name):
    """Hazard 12: SIGINT while queued -> KeyboardInterrupt, no entry, no unit."""
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    a = backend.agent()
    a.open(sem_name)
    a.start_acquire(on=sem)
    a.kill(signal.SIGINT)
    with pytest.raises(AgentError, match="KeyboardInterrupt"):
        a.result()
    assert sem.waiters() == []
    sem.release()
    assert sem.available == 1 and held_by(sem) == {}
    assert_consistent(sem, available=1, held=0, waiting=0)


def test_signal_with_quiet_handler_does_not_abort_the_wait(backend, sem_name):
    """Hazard 12: EINTR from a handled signal: the acquire keeps waiting."""
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    a = backend.agent()
    a.open(sem_name)
    a.cmd(f"handler {int(signal.SIGUSR1)}")
    a.start_acquire(on=sem)
    for _ in range(5):
        a.kill(signal.SIGUSR1)
    assert not a.answered(0.3)
    assert [w.pid for w in sem.waiters()] == [a.pid]
    sem.release()
    assert a.result() is True
    assert_consistent(sem, available=0, holders={a: 1}, waiting=0)


def test_a_handler_raising_systemexit_ends_the_wait_and_leaks_nothing(backend, sem_name):
    """Hazard 12: an exception from a signal handler (SystemExit, as most
    SIGTERM handlers raise) ends the wait and leaves nothing behind."""
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    a = backend.agent()
    a.open(sem_name)
    a.cmd(f"handler-exit {int(signal.SIGTERM)}")
    a.start_acquire(on=sem)
    a.kill(signal.SIGTERM)
    with pytest.raises(AgentError, match="SystemExit signal 15"):
        a.result(5)
    assert sem.waiters() == []
    sem.release()
    assert sem.available == 1 and held_by(sem) == {}
    assert_consistent(sem, available=1, held=0, waiting=0)
