"""The robust mutex: capacity 1, owned by the acquiring thread; only its
owner releases it; a dead owner is reported to the next owners until one
releases normally."""
import threading

import pytest

import ipcsem
from ipcsem.testing import AgentError, assert_consistent


def test_lock_and_unlock(backend, sem_name):
    m = backend.mutex(sem_name)
    assert m.capacity == 1 and m.params.kind == "mutex"
    assert not m.locked()
    assert m.acquire() is True and m.locked()
    assert m.previous_owner_died is False
    m.release()
    assert not m.locked()
    with m as lease:
        assert lease.units == 1 and lease.previous_owner_died is False and m.locked()
    with m.hold(timeout=1) as lease:
        assert m.locked()
    assert not m.locked()


def test_a_second_process_waits_and_times_out(backend, sem_name):
    m = backend.mutex(sem_name)
    a = backend.agent()
    a.open_mutex(sem_name)
    assert a.try_acquire() is True
    assert m.acquire(False) is False
    assert m.acquire(timeout=0.05) is False
    a.release()
    assert m.acquire(timeout=5) is True
    m.release()


def test_not_owner_from_another_thread(backend, sem_name):
    backend.require("threads")
    m = backend.mutex(sem_name)
    m.acquire()
    errors = []

    def other():
        try:
            m.release()
        except ipcsem.NotOwner as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert errors[0].name == sem_name
    assert m.locked()                          # nothing changed
    m.release()
    assert not m.locked()


def test_not_owner_from_another_process(backend, sem_name):
    m = backend.mutex(sem_name)
    m.acquire()
    a = backend.agent()
    a.open_mutex(sem_name)
    with pytest.raises(AgentError) as e:
        a.release()
    assert e.value.type == "NotOwner"
    assert m.locked() and a.try_acquire() is False
    m.release()
    assert a.try_acquire() is True
    with pytest.raises(ipcsem.NotOwner):
        m.release()                            # now it is the agent's
    a.release()
    assert not m.locked()


def test_unlocked_release_is_not_owner(backend, sem_name):
    m = backend.mutex(sem_name)
    with pytest.raises(ipcsem.NotOwner):
        m.release()
    assert not m.locked()


def test_reacquire_by_its_owner_raises_unless_reentrant(backend, sem_name):
    m = backend.mutex(sem_name)
    m.acquire()
    with pytest.raises(ipcsem.DeadlockDetected):
        m.acquire(timeout=1)
    assert m.locked()
    m.release()
    r = backend.mutex(backend.name(), reentrant=True)
    assert r.acquire() and r.acquire()
    r.release()
    assert r.locked()                          # depth 1 still
    r.release()
    assert not r.locked()


def test_previous_owner_died_after_its_owner_is_sigkilled(backend, sem_name):
    m = backend.mutex(sem_name)
    owner = backend.agent()
    owner.open_mutex(sem_name)
    assert owner.hold().previous_owner_died is False
    waiter = backend.agent()
    waiter.open_mutex(sem_name)
    waiter.start_hold(on=m)
    owner.kill()                               # dies holding it
    lease = waiter.lease_result(backend.recovery_timeout + 5)
    assert lease.previous_owner_died is True
    # The next owner is told too, until some owner releases normally.
    waiter.kill()
    with m.hold(timeout=backend.recovery_timeout + 5) as lease:
        assert lease.previous_owner_died is True and m.previous_owner_died is True
    # released normally: the state was repaired
    with m as lease:
        assert lease.previous_owner_died is False and m.previous_owner_died is False
    assert_consistent(m, available=1, held=0, holders=0, waiting=0)
