"""Leases: what a grant gave you (units, slots, a fencing token), and slots:
numbered units, the lowest free ones first, never shared."""
import os

import ipcsem
from ipcsem.testing import assert_consistent


def test_with_and_hold_yield_a_lease(backend, sem_name):
    s = backend.open(sem_name, capacity=3)
    with s as lease:
        assert isinstance(lease, ipcsem.Lease)
        assert lease.units == 1 and lease.slots == () and lease.valid
        assert lease.previous_owner_died is False
        assert isinstance(lease.token, int)
    with s.hold(3, timeout=1) as lease:
        assert isinstance(lease, ipcsem.Lease)
        assert lease.units == 3 and lease.slots == () and lease.valid
    assert s.available == 3


def test_tokens_strictly_increase_across_grants_processes_and_kills(backend, sem_name):
    s = backend.open(sem_name, capacity=2)
    tokens = []
    with s as lease:
        tokens.append(lease.token)
    a = backend.agent()
    a.open(sem_name)
    tokens.append(a.hold(2).token)
    a.kill()                                   # dies holding its lease
    s.recover()
    with s.hold(2, timeout=5) as lease:        # the units of the dead come back ...
        tokens.append(lease.token)             # ... under a newer token
    h = backend.spawn_holder(sem_name, 1)
    tokens.append(h.token)
    h.kill()
    with s.hold(2, timeout=5) as lease:
        tokens.append(lease.token)
    assert tokens == sorted(set(tokens)), tokens   # strictly increasing


def test_slots_lowest_free_first(backend, sem_name):
    s = backend.open(sem_name, capacity=4, slots=True)
    assert s.params.slots is True
    with s.hold(2) as a:
        assert a.slots == (0, 1)
        with s as b:
            assert b.slots == (2,)
            with s.hold(1) as c:
                assert c.slots == (3,)
        with s.hold(2) as d:                  # 2 and 3 are free again
            assert d.slots == (2, 3)
    with s.hold(4) as e:
        assert e.slots == (0, 1, 2, 3)
    assert_consistent(s, available=4, held=0)


def test_slots_are_disjoint_across_processes_and_shown_by_holders(backend, sem_name):
    s = backend.open(sem_name, capacity=5, slots=True)
    a, b = backend.agents(2)
    a.open(sem_name)
    b.open(sem_name)
    la = a.hold(2)
    lb = b.hold(2)
    with s as mine:
        got = [la.slots, lb.slots, mine.slots]
        flat = [x for g in got for x in g]
        assert sorted(flat) == [0, 1, 2, 3, 4] and len(set(flat)) == 5
        shown = {h.pid: h.slots for h in s.holders()}
        assert shown == {a.pid: la.slots, b.pid: lb.slots, os.getpid(): mine.slots}
    b.unhold()
    lb2 = b.hold(1)
    assert lb2.slots == (min(lb.slots),)        # lowest free: one of those it gave back
    assert not set(lb2.slots) & set(la.slots)


def test_a_dead_holders_slots_come_back(backend, sem_name):
    s = backend.open(sem_name, capacity=3, slots=True)
    h = backend.spawn_holder(sem_name, 2)
    assert h.slots == (0, 1)
    with s as lease:
        assert lease.slots == (2,)
    h.kill()
    s.recover()
    with s.hold(3, timeout=5) as lease:
        assert lease.slots == (0, 1, 2)
    assert_consistent(s, available=3, held=0, holders=0)


def test_acquire_and_release_on_a_slotted_semaphore(backend, sem_name):
    """A bare acquire()/release() pair frees the unit numbers that acquire
    got, so the next grant can reuse them."""
    s = backend.open(sem_name, capacity=3, slots=True)
    assert s.acquire(2)
    with s as lease:
        assert lease.slots == (2,)
    s.release(2)
    with s.hold(3) as lease:
        assert lease.slots == (0, 1, 2)
    assert_consistent(s, available=3, held=0)
