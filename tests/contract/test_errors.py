"""Typed errors that carry their facts, and bad input that changes nothing:
every rejected call leaves the semaphore exactly as it was."""
import math
import os
import pickle

import pytest

import ipcsem
from ipcsem.testing import assert_consistent


def _roundtrip(err):
    return pickle.loads(pickle.dumps(err))


def test_not_found_names_the_semaphore(backend, sem_name):
    with pytest.raises(ipcsem.NotFound) as e:
        backend.open(sem_name)
    err = e.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, ipcsem.IpcsemError)
    assert err.name == sem_name and sem_name in str(err)
    back = _roundtrip(err)
    assert type(back) is ipcsem.NotFound and back.name == sem_name and str(back) == str(err)
    assert sem_name not in backend.names()
    with pytest.raises(ipcsem.NotFound):
        backend.unlink(sem_name)


def test_capacity_is_fixed_at_creation(backend, sem_name):
    backend.open(sem_name, capacity=3)
    with pytest.raises(ipcsem.CapacityMismatch) as e:
        backend.open(sem_name, capacity=4)
    err = e.value
    assert isinstance(err, ipcsem.PolicyMismatch) and isinstance(err, ValueError)
    assert (err.name, err.setting, err.existing, err.requested) == (sem_name, "capacity", 3, 4)
    back = _roundtrip(err)
    assert type(back) is ipcsem.CapacityMismatch
    assert (back.name, back.existing, back.requested) == (sem_name, 3, 4)
    assert backend.open(sem_name).capacity == 3


@pytest.mark.parametrize("setting, first, then", [("slots", True, False),
                                                  ("slots", False, True),
                                                  ("fair", True, False)])
def test_policy_is_fixed_at_creation(backend, sem_name, setting, first, then):
    s = backend.open(sem_name, capacity=2, **{setting: first})
    assert getattr(s.params, setting) is first
    with pytest.raises(ipcsem.PolicyMismatch) as e:
        backend.open(sem_name, capacity=2, **{setting: then})
    err = e.value
    assert (err.name, err.setting, err.existing, err.requested) == (sem_name, setting, first, then)
    assert _roundtrip(err).setting == setting
    again = backend.open(sem_name)              # not asking: whatever it was created with
    assert getattr(again.params, setting) is first


def test_a_mutex_is_not_a_semaphore(backend, sem_name):
    backend.mutex(sem_name)
    with pytest.raises(ipcsem.PolicyMismatch) as e:
        backend.open(sem_name)
    assert e.value.setting == "kind" and e.value.existing == "mutex"
    other = backend.name()
    backend.open(other, capacity=1)
    with pytest.raises(ipcsem.PolicyMismatch):
        backend.mutex(other)


@pytest.mark.parametrize("cap", [0, -1, 2**31])
def test_bad_capacity_creates_nothing(backend, sem_name, cap):
    with pytest.raises(ValueError):
        backend.open(sem_name, capacity=cap)
    assert sem_name not in backend.names()


def test_bad_arguments_change_nothing(backend, sem_name):
    s = backend.open(sem_name, capacity=3)
    s.acquire(1)
    # (a negative timeout means what the stood-in class means: see the
    # drop-in tests; it is not an error for Semaphore, as for threading's)
    for kwargs in [dict(units=0), dict(units=4), dict(units=-1),
                   dict(timeout=math.nan), dict(timeout=math.inf),
                   dict(blocking=False, timeout=1), dict(priority=2**31),
                   dict(deadlock="maybe")]:
        with pytest.raises(ValueError):
            s.acquire(**kwargs)
    for kwargs in [dict(units=1.0), dict(timeout="1"), dict(units="2"), dict(blocking=1),
                   dict(priority=1.5)]:
        with pytest.raises(TypeError):
            s.acquire(**kwargs)
    for bad in (0, 4, 1.0):
        with pytest.raises((ValueError, TypeError)), s.hold(bad):
            pass
    with pytest.raises(ValueError):
        s.release(3)        # owns 1; 2 more would exceed the capacity
    with pytest.raises(ValueError):
        s.disown(2)         # owns only 1
    assert s.available == 2 and s.waiters() == []
    assert_consistent(s, available=2, held=1, holders=1, waiting=0, unowned=0)


def test_over_release_is_a_value_error_and_changes_nothing(backend, sem_name):
    s = backend.open(sem_name, capacity=2)
    with pytest.raises(ValueError):
        s.release()                         # nothing taken at all
    s.acquire(2)
    s.release(2)
    with pytest.raises(ValueError):
        s.release()
    assert_consistent(s, available=2, held=0, unowned=0)
    other = backend.spawn_holder(sem_name, 1)
    s.acquire(1)
    with pytest.raises(ValueError):
        s.release(2)     # mine 1, unowned 0: a second unit would be another's
    assert_consistent(s, available=0, holders={other: 1, os.getpid(): 1})


def test_closed_handle_raises_closed(backend, sem_name):
    s = backend.open(sem_name, capacity=1)
    s.close()
    s.close()                               # idempotent
    with pytest.raises(ipcsem.Closed) as e:
        s.acquire()
    assert e.value.name == sem_name and isinstance(e.value, ipcsem.IpcsemError)
    assert backend.open(sem_name).available == 1
