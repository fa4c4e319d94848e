"""The pinned public API and its input validation: bad input gets a typed
error and changes nothing."""
import math
import pickle

import pytest

import ipcsem
from procs import held_by


def test_create_open_and_reopen(name):
    with pytest.raises(ipcsem.NotFound):
        ipcsem.Semaphore(name)
    a = ipcsem.Semaphore(name, capacity=3)
    b = ipcsem.Semaphore(name)
    c = ipcsem.Semaphore(name, capacity=3)
    assert (a.name, a.capacity, a.available) == (name, 3, 3)
    assert b.capacity == c.capacity == 3
    with pytest.raises(ipcsem.CapacityMismatch) as e:
        ipcsem.Semaphore(name, capacity=4)
    assert isinstance(e.value, ValueError) and e.value.name == name
    assert name in ipcsem.names()
    for s in (a, b, c):
        s.close()


def test_initial_units(name):
    items = ipcsem.Semaphore(name, capacity=8, initial=0)
    assert items.available == 0
    assert not items.try_acquire()
    items.release(3)  # unowned posts: the producer side
    assert items.available == 3
    items.check()
    with pytest.raises(ValueError):
        ipcsem.Semaphore(name + "x", initial=2)


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "x" * 201, ".", "..", "a:b", "é"])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        ipcsem.Semaphore(bad, capacity=1)


def test_name_type():
    with pytest.raises(TypeError):
        ipcsem.Semaphore(b"bytes", capacity=1)


@pytest.mark.parametrize("cap", [0, -1, 2**31])
def test_bad_capacity(name, cap):
    with pytest.raises(ValueError):
        ipcsem.Semaphore(name, capacity=cap)
    assert name not in ipcsem.names()


def test_bad_arguments_change_nothing(name):
    s = ipcsem.Semaphore(name, capacity=3)
    for kwargs in [dict(units=0), dict(units=4), dict(units=-1), dict(timeout=-1),
                   dict(timeout=math.nan), dict(timeout=math.inf), dict(blocking=False, timeout=1)]:
        with pytest.raises(ValueError):
            s.acquire(**kwargs)
    for kwargs in [dict(units=1.0), dict(timeout="1"), dict(units="2")]:
        with pytest.raises(TypeError):
            s.acquire(**kwargs)
    with pytest.raises(ValueError):
        s.release(4)
    assert s.available == 3 and s.holders() == [] and s.waiters() == []
    s.check()


def test_acquire_release_multi_unit_and_ownership(name):
    s = ipcsem.Semaphore(name, capacity=5)
    assert s.acquire(2)
    assert s.try_acquire(3)
    assert not s.try_acquire(1)
    assert not s.acquire(1, timeout=0.05)
    assert held_by(s) == {__import__("os").getpid(): 5}
    (h,) = s.holders()
    assert h.units == 5 and h.since > 0 and h.acquisitions == 2
    s.release(4)
    assert s.available == 4
    s.release(1)
    with pytest.raises(ValueError):
        s.release(1)  # nothing owned, nothing unowned: would exceed capacity
    assert s.available == 5
    s.check()


def test_context_managers(name):
    s = ipcsem.Semaphore(name, capacity=2)
    with s:
        assert s.available == 1
    with s.hold(2, timeout=1) as same:
        assert same is s and s.available == 0
        with pytest.raises(ipcsem.Timeout) as e:
            with s.hold(1, timeout=0.05):
                pass
        assert isinstance(e.value, TimeoutError)
    assert s.available == 2


def test_disown_hands_units_off(name):
    s = ipcsem.Semaphore(name, capacity=2)
    s.acquire(2)
    s.disown(1)
    assert s.stats().unowned == 1 and held_by(s)[__import__("os").getpid()] == 1
    with pytest.raises(ValueError):
        s.disown(2)
    s.release(2)  # one owned + one unowned post
    assert s.available == 2 and s.stats().unowned == 0
    s.check()


def test_errors_pickle_and_hierarchy():
    for cls in (ipcsem.NotFound, ipcsem.Timeout, ipcsem.Corrupt, ipcsem.LedgerFull,
                ipcsem.PermissionDenied, ipcsem.Unlinked, ipcsem.CapacityMismatch):
        assert issubclass(cls, ipcsem.IpcsemError)
        e = pickle.loads(pickle.dumps(cls("msg", "nm")))
        assert type(e) is cls and str(e) == "msg" and e.name == "nm"


def test_unlink_api(name):
    s = ipcsem.Semaphore(name, capacity=1)
    ipcsem.unlink(name)
    assert name not in ipcsem.names()
    with pytest.raises(ipcsem.NotFound):
        ipcsem.unlink(name)
    with pytest.raises(ipcsem.Unlinked):
        s.acquire()
    s.close()
    with pytest.raises(ValueError):
        ipcsem.unlink("bad/name")


def test_ledger_full_is_a_clear_error(name, agents):
    s = ipcsem.Semaphore(name, capacity=1, max_holders=1, max_waiters=1)
    a = agents()
    a.cmd(f"open {name}")
    assert a.cmd("try 1") is True
    with pytest.raises(ipcsem.LedgerFull):
        s.acquire(timeout=0.05)  # no holder slot for this process to queue in
    assert s.available == 0 and s.waiters() == []
    s.check()
    a.close()
    # a full table of the dead heals itself before saying "full"
    assert s.acquire(timeout=5)
    s.check()
