"""Crash recovery on one machine (hazards 5-8), with real SIGKILL/SIGSTOP of
separate processes: the supervisor, zombies, stopped holders, reused pids,
recovery itself killed.  What every backend promises about a killed holder
or waiter is tests/contract/test_recovery.py.  Oracles: whether a
*different* process can take the units, the kernel's own view of the dead
(psutil), and check()."""
import signal
import subprocess
import sys
import time

import psutil
import pytest

import ipcsem
from ipcsem import _identity
from ipcsem._shm import _ledger
from ipcsem._shm.segment import open_segment
from ipcsem.testing import can_take_all, held_by, queued_pids, start_supervisor, wait_until


def holder(agents, name, units=1, capacity=None):
    a = agents()
    a.open(name, capacity)
    assert a.try_acquire(units) is True
    return a


def test_killed_holder_with_supervisor(name, agents):
    """The supervisor alone gives a killed holder's unit back: no process
    of ours waits (a waiter's own watcher would race it to the recovery),
    and reading the ledger recovers nothing."""
    sem = ipcsem.Semaphore(name, capacity=1)
    sup = start_supervisor(name)
    try:
        h = holder(agents, name)
        time.sleep(0.1)  # let the supervisor see the holder register
        h.kill()
        wait_until(lambda: held_by(sem) == {}, 10, what="the supervisor's recovery")
    finally:
        log = sup.stop()
    assert f"recovered name={name} pid={h.pid} units=1" in log
    assert can_take_all(name, 1)
    sem.check()


def test_an_idle_supervisor_recovers_a_newcomer_that_dies_at_once(name, agents):
    """An idle supervisor looks for new holders less often (up to 0.2 s
    apart); one that registers and is SIGKILLed before any look could watch
    it is still recovered, by the next look (its pidfd cannot be opened) --
    with no waiter of ours to race it."""
    sem = ipcsem.Semaphore(name, capacity=1)
    sup = start_supervisor(name)
    try:
        for _ in range(3):
            time.sleep(1.5)          # idle: the looks have backed off, a sweep found it settled
            h = holder(agents, name)
            h.kill()
            wait_until(lambda: held_by(sem) == {}, 5, what="the supervisor's recovery")
    finally:
        log = sup.stop()
    assert log.count(f"recovered name={name}") == 3, log
    assert can_take_all(name, 1)
    sem.check()


def test_recover_returns_exactly_once(name, agents):
    sem = ipcsem.Semaphore(name, capacity=3)
    h = holder(agents, name, units=2)
    h.kill()
    assert sem.recover() == 2
    assert sem.recover() == 0
    assert sem.available == 3
    sem.check()


def test_zombie_holder_is_dead(name, agents):
    """Hazard 6: exited but not reaped; psutil says is_running() for it."""
    sem = ipcsem.Semaphore(name, capacity=2)
    parent = agents()
    parent.open(name)
    zombie = parent.cmd("fork-zombie 2")
    p = psutil.Process(zombie)
    assert p.status() == psutil.STATUS_ZOMBIE and p.is_running()  # the trap
    assert held_by(sem) == {zombie: 2}
    assert sem.recover() == 2
    assert can_take_all(name, 2)


def test_zombie_holder_recovered_by_supervisor_pidfd(name, agents):
    sem = ipcsem.Semaphore(name, capacity=1)
    sup = start_supervisor(name)
    try:
        parent = agents()
        parent.open(name)
        zombie = parent.cmd("fork-zombie 1")
        wait_until(lambda: sem.available == 1, timeout=10, what="supervisor recovery")
        assert psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE
    finally:
        sup.stop()


def test_stopped_holder_keeps_its_units(name, agents):
    """Hazard 7: SIGSTOP is alive, however long; never expire by time."""
    sem = ipcsem.Semaphore(name, capacity=1)
    sup = start_supervisor(name)
    try:
        h = holder(agents, name)
        w = agents()
        w.open(name)
        w.start_acquire(1, on=sem)
        h.kill(signal.SIGSTOP)
        wait_until(lambda: _identity.status(h.pid, h.start) == _identity.STOPPED)
        deadline = time.monotonic() + 2.5   # > 4 heal intervals and many sweeps
        while time.monotonic() < deadline:
            assert sem.recover() == 0
            time.sleep(0.1)
        assert held_by(sem) == {h.pid: 1} and queued_pids(sem) == [w.pid]
        h.kill(signal.SIGCONT)
        h.release(1)
        assert w.result() is True
    finally:
        sup.stop()
    sem.check()


def _reuse_pid(pid: int) -> subprocess.Popen | None:
    """Start a process with exactly `pid` by setting ns_last_pid (root)."""
    try:
        for _ in range(20):
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            if p.pid == pid:
                return p
            p.kill()
            p.wait()
    except OSError:
        return None
    return None


def test_reused_pid_is_not_the_old_holder(name, agents):
    """Hazard 5: the dead holder's pid is taken by an unrelated process."""
    sem = ipcsem.Semaphore(name, capacity=1)
    h = holder(agents, name)
    old_pid = h.pid
    h.kill()
    impostor = _reuse_pid(old_pid)
    if impostor is None:
        pytest.skip("cannot steer pid allocation here (needs root and ns_last_pid)")
    try:
        assert psutil.pid_exists(old_pid)        # the pid is alive again ...
        assert held_by(sem) == {old_pid: 1}
        assert sem.recover() == 1                # ... but it is not our holder
        assert can_take_all(name, 1)
    finally:
        impostor.kill()
        impostor.wait()


def test_identity_mismatch_on_a_live_pid(name):
    """Hazard 5 without steering pids: a ledger entry naming a *live* pid with
    another start time is a dead identity."""
    sem = ipcsem.Semaphore(name, capacity=2)
    me, tid = _identity.ME, _identity.native_tid()
    seg = open_segment(name)
    try:   # "an earlier process with my pid" takes a unit
        assert seg.ledger.take(me.pid, me.start - 1, tid, tid, 1, 0, _ledger.LOCK_FOREVER)
    finally:
        seg.close()
    assert [(h.pid, h.start, h.units) for h in sem.holders()] == [(me.pid, me.start - 1, 1)]
    assert sem.recover() == 1
    assert sem.holders() == [] and sem.available == 2
    sem.check()


@pytest.mark.slow
def test_recovery_killed_midway_is_still_exactly_once(name, agents):
    """Hazard 8: a recoverer SIGKILLed inside recovery, at every point; the
    next one finishes the job; units are posted once."""
    for point in range(0, 200, 2):
        sem = ipcsem.Semaphore(name, capacity=2)
        h = holder(agents, name, units=2)
        h.kill()
        r = agents()
        r.open(name)
        r.cmd(f"crashpoint {point}")
        r.send("recover")
        try:
            r.read(30)
            survived = True   # the point lies beyond this recovery: all covered
        except EOFError:
            survived = False
            assert r.proc.wait(30) == -signal.SIGKILL
        sem.recover()
        assert sem.available == 2, f"crash point {point}"
        sem.check()
        assert can_take_all(name, 2)
        sem.close()
        ipcsem.unlink(name)
        if survived:
            assert point > 10, "the crash points never fired"
            break


def test_two_supervisors_and_a_restart(name, agents):
    """Hazard 8: two supervisors at once, one killed, one restarted."""
    sem = ipcsem.Semaphore(name, capacity=3)
    sups = [start_supervisor(name), start_supervisor()]
    try:
        for round_ in range(3):
            hs = [holder(agents, name) for _ in range(3)]
            time.sleep(0.1)
            for h in hs:
                h.kill()
            wait_until(lambda: sem.available == 3, timeout=10, what="recovery")
            sem.check()
            assert sem.available == 3            # never more than capacity
            if round_ == 0:
                sups[0].kill()                   # as a crash would
                sups[0] = start_supervisor(name)
    finally:
        for s in sups:
            s.stop()
    assert sem.stats().recovered_units == 9


def test_supervisor_picks_up_semaphores_created_later(name, agents):
    sup = start_supervisor()
    try:
        time.sleep(0.2)
        sem = ipcsem.Semaphore(name, capacity=1)
        h = holder(agents, name)
        time.sleep(1.5)  # at least one sweep
        h.kill()
        wait_until(lambda: sem.available == 1, timeout=10, what="recovery")
    finally:
        log = sup.stop()
    assert f"recovered name={name}" in log
