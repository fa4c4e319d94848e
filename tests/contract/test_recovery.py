"""A process that dies holding or waiting gives everything back, exactly
once (hazards 1, 3, 4), with real SIGKILLs of separate processes started by
ipcsem.testing.  Oracles: whether a *different*, fresh process can take the
units (can_take_all), and who the blocked processes say got them."""
from ipcsem.testing import assert_consistent, held_by, kill_and_wait_recovered


def test_killed_holder_units_come_back(backend, sem_name):
    sem = backend.open(sem_name, capacity=3)
    worker = backend.spawn_holder(sem_name, 2)
    assert_consistent(sem, available=1, held=2, holders={worker: 2}, waiting=0)
    assert not backend.can_take_all(sem_name, 2, timeout=0.2)
    kill_and_wait_recovered(sem, worker)
    assert worker.returncode == -9
    assert_consistent(sem, available=3, held=0, holders=0, waiting=0)
    assert backend.can_take_all(sem_name, 3)
    st = sem.stats()
    assert (st.recovered_units, st.recoveries) == (2, 1)


def test_killed_holder_units_reach_a_blocked_waiter_without_a_supervisor(backend, sem_name):
    """Hazard 1 and 'no daemon is a single point of failure': nobody calls
    recover(); the blocked waiter's own wait brings the units back."""
    sem = backend.open(sem_name, capacity=2)
    h = backend.spawn_holder(sem_name, 2)
    w = backend.agent()
    w.open(sem_name)
    w.start_acquire(2, on=sem)
    kill_and_wait_recovered(sem, h, recover=False, timeout=backend.recovery_timeout)
    assert w.result(timeout=10) is True      # the waiter got both units
    assert held_by(sem) == {w.pid: 2}
    assert sem.stats().recovered_units == 2
    w.close()
    assert backend.can_take_all(sem_name, 2, timeout=backend.recovery_timeout + 5)
    sem.check()


def test_killed_waiter_does_not_block_the_queue(backend, sem_name):
    """Hazards 3 and 4: a waiter killed while queued, and then granted the
    unit while it is dead (it is the head); the one behind it still gets it."""
    sem = backend.open(sem_name, capacity=1)
    sem.acquire()
    dead, alive = backend.agents(2)
    for a in (dead, alive):
        a.open(sem_name)
    dead.start_acquire(1, on=sem)
    alive.start_acquire(1, on=sem)
    dead.kill()
    sem.release()          # grants the unit to the dead head of the queue ...
    assert alive.result(timeout=backend.recovery_timeout + 5) is True
    assert held_by(sem) == {alive.pid: 1}
    # ... unless a watcher (the other waiter watches the ledger's processes)
    # removed the dead entry first; either way its death was recovered once.
    st = sem.stats()
    assert st.recoveries == 1 and st.recovered_units in (0, 1)
    assert_consistent(sem, available=0, holders={alive: 1}, waiting=0)


def test_killed_waiter_leaves_the_queue(backend, sem_name):
    sem = backend.open(sem_name, capacity=1)
    holder = backend.spawn_holder(sem_name)
    w = backend.agent()
    w.open(sem_name)
    w.start_acquire(on=sem)
    kill_and_wait_recovered(sem, w)
    assert_consistent(sem, available=0, holders={holder: 1}, waiting=0)
    holder.release()
    assert backend.can_take_all(sem_name, 1)


def test_every_holder_killed_gives_every_unit_back(backend, sem_name):
    sem = backend.open(sem_name, capacity=4)
    holders = [backend.spawn_holder(sem_name, u, wait=False) for u in (1, 2, 1)]
    for h in holders:
        h.wait_holding(30)
    assert_consistent(sem, available=0, held=4, holders=3)
    for h in holders:
        kill_and_wait_recovered(sem, h)
    assert_consistent(sem, available=4, held=0, holders=0, waiting=0)
    assert sem.stats().recovered_units == 4
    assert backend.can_take_all(sem_name, 4)
