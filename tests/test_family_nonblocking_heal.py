"""Non-blocking callers heal too (issue 9 §4): with no supervisor and nobody
blocked, a dead holder's units come back to callers that never wait.

Assertions are "eventually succeeds" within a deadline of several seconds,
never a timing threshold: the machine is shared.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
from family_procs import children, ledger_view, stop_holding_the_ledger_lock, wait_until  # noqa: F401

import ipcsem

DEADLINE = 6.0     # "within ~1 s of the death", checked as "eventually", with room


def counters(sem):
    h = ledger_view(sem.name).header
    return h.recoveries, h.recovered_units, h.registrations, h.acquisitions


def test_try_acquire_succeeds_after_the_holder_is_killed(name, children):
    sem = ipcsem.Semaphore(name, capacity=2)
    holder = children(f"s = ipcsem.Semaphore({name!r}); s.acquire(2)")
    assert sem.try_acquire() is False
    holder.kill()
    died = time.monotonic()
    wait_until(sem.try_acquire, timeout=DEADLINE, what="try_acquire() after the death")
    print(f"try_acquire() succeeded {time.monotonic() - died:.2f} s after the kill")
    assert sem.waiters() == []          # nobody ever blocked
    assert {h.pid: h.units for h in sem.holders()} == {os.getpid(): 1}
    assert sem.stats().recoveries == 1 and sem.stats().recovered_units == 2
    sem.release()
    sem.check()


@pytest.mark.parametrize("call", ["s.acquire(timeout=0)", "s.acquire(False)",
                                  "s.acquire(blocking=False)", "s.acquire(block=False)",
                                  "s.try_acquire(2)"])
def test_every_non_blocking_form_heals_in_a_fresh_process(name, children, call):
    """The cron "skip if busy" pattern: a new process each time, each asking
    once and leaving."""
    sem = ipcsem.Semaphore(name, capacity=2)
    holder = children(f"s = ipcsem.Semaphore({name!r}); s.acquire(2)")
    once = (f"import ipcsem, sys\n"
            f"s = ipcsem.Semaphore({name!r})\n"
            f"sys.exit(0 if {call} else 75)\n")

    def attempt() -> bool:
        rc = subprocess.run([sys.executable, "-c", once], timeout=30).returncode
        assert rc in (0, 75), f"the attempt crashed ({rc})"
        return rc == 0

    assert attempt() is False
    holder.kill()
    wait_until(attempt, timeout=DEADLINE + 4, interval=0, what=f"{call} after the death")
    assert sem.waiters() == []
    # The successful job exited holding its unit(s) (it never released):
    # they are a dead holder's now, and come back like any other.
    sem.recover()
    assert sem.available == 2 and sem.holders() == []
    assert sem.stats().recovered_units == 2 + (2 if "(2)" in call else 1)
    sem.check()


def test_failed_attempts_while_the_holder_lives_recover_nothing(name, children):
    sem = ipcsem.Semaphore(name, capacity=1)
    holder = children(f"s = ipcsem.Semaphore({name!r}); s.acquire()")
    other = children(f"s = ipcsem.Semaphore({name!r})")
    before = counters(sem)
    for _ in range(200):
        assert sem.try_acquire() is False
    assert other.run("[s.acquire(timeout=0) for _ in range(200)].count(True)") == 0
    assert counters(sem) == before, "a refused attempt changed the ledger"
    assert [h.pid for h in sem.holders()] == [holder.pid]
    # Rate-limited (a lock-free election, one scan per HEAL_INTERVAL): once
    # the last claim is old, a refused attempt claims, and nobody may scan
    # again right after it.
    from ipcsem._shm.handle import HEAL_INTERVAL, SLICE_NS

    time.sleep(HEAL_INTERVAL * 1.2)
    assert sem.try_acquire() is False
    from ipcsem._shm.segment import open_segment

    other_mapping = open_segment(sem.name)      # the election lives in the shared ledger
    assert other_mapping.ledger.claim_heal(time.time_ns(), SLICE_NS) is False
    other_mapping.close()
    holder.run("s.release()")
    assert sem.try_acquire() is True
    sem.release()


def test_no_healing_on_the_success_path(name, children):
    """A dead holder's units are recovered only when that changes the
    answer: while enough units are free the dead one stays on the books."""
    sem = ipcsem.Semaphore(name, capacity=3)
    dead = children(f"s = ipcsem.Semaphore({name!r}); s.acquire()")
    dead_pid = dead.pid
    dead.kill()
    before = counters(sem)
    for _ in range(20):
        assert sem.try_acquire() is True
        sem.release()
    assert sem.acquire(2, timeout=0) is True
    assert counters(sem)[:2] == before[:2], "a successful attempt ran recovery"
    assert dead_pid in [h.pid for h in sem.holders()]
    # Now the dead unit is needed: the refused attempt heals and succeeds.
    wait_until(sem.try_acquire, timeout=DEADLINE, what="the dead unit")
    assert counters(sem)[:2] == (before[0] + 1, before[1] + 1)
    assert dead_pid not in [h.pid for h in sem.holders()]
    sem.release(3)
    sem.check()


def test_ipcsem_run_timeout_zero_heals(name, children):
    probe = subprocess.run([sys.executable, "-m", "ipcsem", "run", "--help"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("`ipcsem run` is not in this branch yet (cli/run.py is a placeholder)")
    ipcsem.Semaphore(name, capacity=1)
    holder = children(f"s = ipcsem.Semaphore({name!r}); s.acquire()")
    run = [sys.executable, "-m", "ipcsem", "run", name, "--timeout", "0", "--", "true"]
    assert subprocess.run(run, capture_output=True, timeout=30).returncode != 0
    holder.kill()
    wait_until(lambda: subprocess.run(run, capture_output=True, timeout=30).returncode == 0,
               timeout=DEADLINE + 4, interval=0, what="ipcsem run --timeout 0 after the death")


def test_try_acquire_never_blocks_on_a_stopped_lock_holder(name, children):
    sem = ipcsem.Semaphore(name, capacity=1)
    dead = children(f"s = ipcsem.Semaphore({name!r}); s.acquire()")
    dead.kill()                     # a dead holder: the refused attempt will want to heal
    looper = children(f"s = ipcsem.Semaphore({name!r})")
    looper.begin("while True: s.check()")
    if not stop_holding_the_ledger_lock(sem, looper):
        pytest.skip("never caught the looper inside a transaction")
    try:
        c = children(f"s = ipcsem.Semaphore({name!r})")
        c.begin("s.try_acquire()")
        assert c.result(timeout=10) is False      # "never blocks": a stopped lock holder
        c.begin("s.acquire(timeout=1)")
        assert c.result(timeout=10) is False      # a timeout is a timeout
    finally:
        os.kill(looper.pid, signal.SIGCONT)


# ------------------------------------------- a recoverer dies mid-recovery
class Interfered(Exception):
    pass


def _retrying(attempt, tries=3):
    """attempt() again when a third party's healing got in the way."""
    for _ in range(tries - 1):
        try:
            return attempt()
        except Interfered:
            pass
    return attempt()


def _recoverer_killed_at(point, name, made, waiter=None):
    """A dead holder D (1 unit of a capacity-1 semaphore), and a recoverer R
    killed by the crash point inside its ``recover()``.  ``waiter``, if
    given, is kept stopped meanwhile (so its own healing cannot win the
    race).  Returns whether R died (False: it finished)."""
    from family_procs import Child, state_of

    d = Child(f"s = ipcsem.Semaphore({name!r}); s.acquire()")
    r = Child(f"s = ipcsem.Semaphore({name!r}); from ipcsem._shm import _ledger")
    made += [d, r]
    if waiter is not None:
        waiter.begin(f"s.acquire(timeout={DEADLINE!r})")
        wait_until(lambda: waiter.pid in [w.pid for w in ipcsem.Semaphore(name).waiters()],
                   what="the waiter queued")
        os.kill(waiter.pid, signal.SIGSTOP)
        wait_until(lambda: state_of(waiter.pid) in "Tt", what="the waiter stopped")
    try:
        d.kill()
        r.begin(f"_ledger.set_crash_point({point}); s.recover()")
        try:
            if r.result(20) == 0:
                # Someone else (another engineer's machine-wide healer)
                # recovered D first: this point proved nothing.
                raise Interfered(point)
            return False
        except EOFError:
            r.proc.wait(10)
            assert r.proc.returncode == -signal.SIGKILL
            return True
    finally:
        if waiter is not None:
            os.kill(waiter.pid, signal.SIGCONT)


def _points_that_tear(names, made, first_only=False):
    """Crash points of recover() after which a lock-free snapshot no longer
    shows the dead holder although the recovery did not commit."""
    torn, point = [], 0
    while True:
        name = names()
        sem = ipcsem.Semaphore(name, capacity=1)
        died = _retrying(lambda point=point, name=name: _recoverer_killed_at(point, name, made))
        snap = ledger_view(sem.name)
        shown = list(snap.holders)         # any row of D: healing would look at it
        sem.check()                        # the lock: the dead transaction is rolled back
        if died and not shown and sem.holders():
            torn.append(point)
            if first_only:
                return point, torn
        if not died:
            return point, torn
        point += 1


@pytest.mark.slow
def test_recover_after_a_recoverer_died_mid_recovery_returns_the_units(names):
    made = []
    try:
        point, missed = 0, []
        while True:
            name = names()
            sem = ipcsem.Semaphore(name, capacity=1)
            died = _retrying(lambda point=point, name=name: _recoverer_killed_at(point, name, made))
            sem.recover()                  # whatever R did or did not finish: the unit is back
            sem.check()                    # (seen after the lock rolled a dead transaction back)
            if sem.holders() or sem.available != 1:
                missed.append(point)
            if not died:
                break
            point += 1
        assert point > 5 and missed == [], f"recover() left the dead holder's unit out " \
                                           f"after a recoverer died at crash points {missed}"
    finally:
        for c in made:
            c.close()


@pytest.mark.slow
def test_blocked_waiter_gets_the_units_when_a_recoverer_died_mid_recovery(names):
    """The user-visible symptom of H2: nobody takes the ledger lock while
    everyone waits, so the dead transaction's torn state stays, and every
    per-slice heal of the waiter reads it and finds nobody to recover."""
    from family_procs import Child

    made = []
    try:
        _, torn = _points_that_tear(names, made, first_only=True)
        if not torn:
            pytest.skip("no crash point of recover() leaves a torn view (fixed?)")
        name = names()
        ipcsem.Semaphore(name, capacity=1)
        waiter = Child(f"s = ipcsem.Semaphore({name!r})")
        made.append(waiter)
        assert _recoverer_killed_at(torn[0], name, made, waiter=waiter)
        assert waiter.result(DEADLINE + 10) is True, \
            f"the waiter timed out: the dead holder's unit never came back (crash point {torn[0]})"
    finally:
        for c in made:
            c.close()
