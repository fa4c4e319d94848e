"""The chaos storm (ipcsem/chaos/): short storms that must come out whole,
on a counting semaphore, a slotted one and a mutex; proofs that the storm's
checks can fail (an oracle with fewer files than units must report
over-admissions, of units or of slots; a unit that is really gone must be
reported lost; a token log out of grant order, or a wrong owner-died flag,
must be caught); and interruption at any moment.

Storms here fork their workers (~1 ms each) so a few hundred kills fit in a
few seconds; one small storm uses the default exec spawn (a fresh interpreter
per worker, ~0.1 s CPU each).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

import ipcsem
from ipcsem import _names
from ipcsem.chaos import Storm, format_report, run_storm
from ipcsem.chaos.oracle import BAD_SLOTS, Oracle, count_violations
from ipcsem.chaos.tokens import Grant, GrantLog, check_owner_died, check_tokens, read_log
from ipcsem.chaos.verify import check_grants, verify


def _leftovers(name: str) -> list[str]:
    return [f for f in os.listdir(_names.SHM_DIR) if f == f"{_names.PREFIX}{name}"]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _assert_whole(r, name: str, kills: int | None = None, before: set[int] = frozenset()) -> None:
    text = format_report(r)
    assert r.over_admissions == 0, text
    assert r.lost_units == 0, text
    assert r.check_error is None, text
    assert r.details["errors"] == [], text
    assert r.ok, text
    if kills is not None:
        assert r.kills == kills, text
    assert r.kills > 0, text
    assert r.cycles > 0, text
    assert r.details["midstorm_checks"] > 0, text
    # Fencing tokens: many grants were in real-time order, all increasing.
    assert r.details["tokens_checked"] > 0 and r.details["token_failures"] == 0, text
    # Clean-up: the name and every process the storm started are gone (no
    # zombie either: a zombie is still a child).
    assert name not in ipcsem.names()
    assert _leftovers(name) == []
    assert _children() - before == set()


# ------------------------------------------------------------------ storms
@pytest.mark.parametrize("capacity", [2, 3])
@pytest.mark.parametrize("supervisor", [True, False], ids=["supervised", "unsupervised"])
def test_storm_comes_out_whole(name, capacity, supervisor):
    before = _children()
    r = run_storm(name, capacity=capacity, workers=6, kill_every=0.01, kills=300,
                  supervisor=supervisor, spawn="fork")
    _assert_whole(r, name, kills=300, before=before)
    text = format_report(r)
    # Kills really landed inside ipcsem's critical section: some workers
    # SIGKILLed themselves at a crash point, and the next process to take the
    # ledger lock had to repair a dead owner's transaction.
    assert r.self_kills > 0, text
    assert r.details["lock_repairs"] > 0, text
    assert r.details["recovered_units"] > 0, text
    if supervisor:
        assert r.details["supervisor_recoveries"] > 0, text


def test_slotted_storm_comes_out_whole(name):
    """Slots disjoint and complete under the storm: each grant got exactly
    the oracle files of its lease's unit numbers, and the fresh process at
    the end was given every number."""
    before = _children()
    r = run_storm(name, capacity=3, workers=6, kill_every=0.01, kills=200, spawn="fork",
                  slots=True)
    _assert_whole(r, name, kills=200, before=before)
    text = format_report(r)
    assert r.details["kind"] == "slots" and r.details["bad_slots"] == 0, text
    assert r.details["recovered_units"] > 0 and r.self_kills > 0, text
    assert "slotted semaphore" in text.splitlines()[0]


def test_mutex_storm_comes_out_whole(name):
    """A robust mutex under the storm: one owner at a time by the oracle, and
    previous_owner_died True for the next owner after each owner killed
    holding it, False after a normal release (checked along the tokens)."""
    before = _children()
    r = run_storm(name, workers=5, kill_every=0.01, kills=200, spawn="fork", mutex=True)
    _assert_whole(r, name, kills=200, before=before)
    text = format_report(r)
    d = r.details
    assert d["kind"] == "mutex" and d["capacity"] == 1, text
    assert d["owner_died_failures"] == 0, text
    assert d["owner_died_seen"] > 0, text          # owners really died holding it
    assert d["owner_died_checked"] > d["owner_died_seen"], text   # both values checked
    assert d["kills_by_state"].get("holding", 0) > 0, text
    assert "owner died" in text


def test_storm_with_exec_workers(name):
    """The default spawn: every worker a fresh interpreter (slow to restart)."""
    before = _children()
    r = run_storm(name, capacity=2, workers=4, kill_every=0.01, kills=20, duration=15.0,
                  spawn="exec")
    _assert_whole(r, name, before=before)


def test_storm_reports_over_admission(name):
    """A semaphore with more units than the oracle has files: the storm must
    report over-admissions and fail (through the CLI, exit status 1)."""
    out = subprocess.run(
        [sys.executable, "-m", "ipcsem", "chaos", name, "--capacity", "3", "--oracle-slots",
         "2", "--workers", "6", "--kills", "1000", "--duration", "1.5s", "--kill-every",
         "100ms", "--spawn", "fork", "--json"],
        capture_output=True, timeout=60)
    assert out.returncode == 1, out.stderr.decode()
    r = json.loads(out.stdout)
    assert r["over_admissions"] > 0, r
    assert r["ok"] is False
    assert "over-admission" in r["details"]["violations"][0]
    # ... and nothing else was wrong: the units all came back.
    assert r["lost_units"] == 0 and r["check_error"] is None, r
    assert name not in ipcsem.names()


def test_slotted_storm_reports_a_shared_slot(name):
    """Per-slot oracle self-test: 3 slots over 2 files, so the holders of
    slots 0 and 2 share a file: that must be reported as over-admission of
    a slot, and fail the storm."""
    r = run_storm(name, capacity=3, workers=6, kill_every=0.1, duration=1.0, spawn="fork",
                  slots=True, oracle_slots=2)
    text = format_report(r)
    assert r.over_admissions > 0 and not r.ok, text
    assert "oracle file of slot" in r.details["violations"][0], text
    assert r.lost_units == 0 and r.check_error is None, text
    assert name not in ipcsem.names()


def test_cli_passes(name):
    out = subprocess.run(
        [sys.executable, "-m", "ipcsem", "chaos", name, "--capacity", "2", "--workers", "4",
         "--kills", "60", "--kill-every", "10ms", "--spawn", "fork"],
        capture_output=True, timeout=60)
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "over-admissions  0" in text and "lost units       0" in text
    assert text.rstrip().endswith("PASS")


def test_existing_name_is_refused(name):
    sem = ipcsem.Semaphore(name, capacity=1)
    try:
        with pytest.raises(ValueError, match="already exists"):
            run_storm(name, kills=1)
        assert sem.available == 1 and sem.holders() == []
    finally:
        sem.close()


def test_bad_arguments_are_refused_before_anything_starts(name):
    before = _children()
    for kw in ({"mutex": True, "slots": True}, {"mutex": True, "capacity": 2},
               {"capacity": 0}, {"workers": 0}, {"spawn": "thread"},
               {"self_kill_fraction": 2.0}, {"kill_every": 0}):
        with pytest.raises(ValueError):
            Storm(name, **kw)
    assert name not in ipcsem.names() and _children() == before


def test_only_children_run_from_python_m():
    """One user entry point, `ipcsem chaos`: ``python -m ipcsem.chaos`` only
    starts the storm's own child processes."""
    out = subprocess.run([sys.executable, "-m", "ipcsem.chaos"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "ipcsem chaos" in out.stderr
    out = subprocess.run([sys.executable, "-m", "ipcsem.chaos", "worker", "name=x"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "missing" in out.stderr


# ------------------------------------------------------------------ oracle
def test_oracle_detects_double_booking(tmp_path):
    """Two holders of the same oracle file: the second one must be reported."""
    violations = tmp_path / "violations"
    a = Oracle(str(tmp_path), 2, str(violations), "a")
    b = Oracle(str(tmp_path), 2, str(violations), "b")
    try:
        assert a.take(2)              # both files
        assert not b.take(1)          # nothing left: over-admission
        assert count_violations(str(violations)) == 1
        assert "over-admission: b" in violations.read_text()
        a.release()
        b.release()
        assert b.take(2)              # free again after release
        assert count_violations(str(violations)) == 1
    finally:
        a.close()
        b.close()


def test_slot_oracle_detects_a_shared_slot_and_bad_slots(tmp_path):
    """Per slot: the same unit number held twice is an over-admission of
    that slot; other numbers are free; a lease whose slots are not its
    units' distinct numbers in 0..capacity-1 is a bad-slots violation."""
    violations = str(tmp_path / "violations")
    a = Oracle(str(tmp_path), 3, violations, "a")
    b = Oracle(str(tmp_path), 3, violations, "b")
    try:
        assert a.take_slots((0, 2), 2)
        assert not b.take_slots((2,), 1)           # slot 2 is a's
        assert count_violations(violations) == 1
        assert "oracle file of slot 2" in Path(violations).read_text()
        b.release()
        assert b.take_slots((1,), 1)               # slot 1 is free: no alarm
        b.release()
        for slots, units in (((1,), 2), ((1, 1), 2), ((3,), 1), ((-1,), 1), ([1], 1)):
            assert not b.take_slots(slots, units)
        assert count_violations(violations, BAD_SLOTS) == 5
        assert count_violations(violations) == 1
        a.release()
        assert b.take_slots((0, 1, 2), 3)
    finally:
        a.close()
        b.close()


def test_oracle_has_no_false_alarms_with_a_kernel_semaphore(tmp_path):
    """The oracle itself must be sound: against a plain kernel POSIX semaphore
    (no kills) it must never cry over-admission.  A lock-free scan of the
    files did, about twice a second with 8 processes (see Oracle.take)."""
    import posix_ipc

    sem_name = f"/t-chaos-ctl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, initial_value=3)
    violations = str(tmp_path / "violations")
    pids = []
    try:
        for i in range(8):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 1
                try:
                    rng = random.Random(i)
                    o = Oracle(str(tmp_path), 3, violations, f"w{i}")
                    s = posix_ipc.Semaphore(sem_name)
                    end = time.monotonic() + 1.5
                    while time.monotonic() < end:
                        s.acquire()
                        o.take(1, rng.randrange(3))
                        if rng.random() < 0.5:
                            time.sleep(rng.random() * 0.002)
                        o.release()
                        s.release()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
    finally:
        sem.unlink()
    assert count_violations(violations) == 0, Path(violations).read_text()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")
def test_oracle_flock_is_free_before_death_is_visible(tmp_path):
    """A SIGKILLed holder's oracle file is free by the time its pidfd says it
    died, before it is reaped: what keeps the oracle free of false positives
    (ipcsem's recovery cannot see a death earlier than that)."""
    import select

    code = ("import sys, time; from ipcsem.chaos.oracle import Oracle; "
            "o = Oracle(sys.argv[1], 1, sys.argv[2], 'child'); "
            "assert o.take(1); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "v")],
                         stdout=subprocess.PIPE)
    o = Oracle(str(tmp_path), 1, str(tmp_path / "v"), "me")
    pidfd = os.pidfd_open(p.pid)
    try:
        assert p.stdout.readline() == b"held\n"
        assert not o.take(1)  # the child holds it
        o.release()
        p.kill()
        assert select.select([pidfd], [], [], 10)[0] == [pidfd]
        assert psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE  # not reaped yet
        assert o.take(1)
        assert count_violations(str(tmp_path / "v")) == 1  # only the first refusal
    finally:
        os.close(pidfd)
        o.close()
        p.kill()
        p.wait()
        p.stdout.close()


# ------------------------------------------------------------ verification
def test_verify_reports_a_lost_unit(name):
    """A unit that really is gone (held by a live process that will not give
    it back) must show as lost and fail the independent acquire."""
    sem = ipcsem.Semaphore(name, capacity=2)
    try:
        hold = sem.hold()
        first = hold.__enter__()
        lost, error, details = verify(sem, 2, settle_timeout=0.2, verify_timeout=0.3)
        assert lost == 1
        assert error is not None
        assert "could not acquire all 2 units" in error
        assert "holders left" in error
        hold.__exit__(None, None, None)
        lost, error, details = verify(sem, 2, settle_timeout=0.2, verify_timeout=0.3)
        assert (lost, error) == (0, None)
        # the grant after ours (tokens start at the creation time, one per grant)
        assert details["final_grant"]["token"] == first.token + 1
    finally:
        sem.close()


def _log(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "grants"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_token_check_catches_a_non_increasing_log(tmp_path):
    """Grant B asked after grant A was logged, yet got a smaller (or the
    same) token: out of grant order.  Overlapping grants may log in any
    order: no alarm."""
    # G asked_ns got_ns token died pid
    ok = [Grant(0, 300, 2, False, 1), Grant(100, 200, 1, False, 2),   # overlap: either order
          Grant(400, 500, 3, False, 1), Grant(450, 600, 5, False, 3),
          Grant(550, 700, 4, False, 2)]                                # asked before 5 was logged
    found = check_tokens(ok)
    assert (found.checked, found.failures) == (5, 0), found.problems
    bad = [*ok, Grant(800, 900, 4, False, 4)]                          # after 5 was logged
    found = check_tokens(bad)
    assert found.failures == 2, found.problems    # below 5, and token 4 twice
    assert any("token 4 (pid 4" in p and "not above token 5" in p for p in found.problems)
    assert any("granted 2 times" in p for p in found.problems)
    # A mutex: the log's own order is the grant order.
    serial = [Grant(0, 10, 1, False, 1), Grant(20, 30, 3, False, 2), Grant(15, 40, 2, False, 3)]
    assert check_tokens(serial).failures == 0
    assert check_tokens(serial, serial=True).failures == 1
    # Through the storm's end check, from the file the workers write.
    path = _log(tmp_path, ["G 0 10 1 0 11", "G 20 30 3 0 12", "G 40 50 2 0 13"])
    details, problems = check_grants(path, "semaphore", set(), None)
    assert details["token_failures"] == 1 and problems and "tokens:" in problems[0]
    # The fresh process at the end asked after everything: a token below
    # the ones logged is caught too.
    path = _log(tmp_path, ["G 0 10 1 0 11", "G 20 30 2 0 12"])
    final = {"asked_ns": 100, "token": 2, "died": False, "slots": [], "pid": 99}
    details, problems = check_grants(path, "semaphore", set(), final)
    assert details["token_failures"] >= 1, details


def test_grant_log_is_parsed_as_untrusted(tmp_path):
    path = _log(tmp_path, ["G 0 10 1 0 11", "G 0 10 x 0 11", "G 1 2 3", "R -4", "Q 1",
                           "G 0 10 2 7 11", "R 1", ""])
    log = read_log(path)
    assert [g.token for g in log.grants] == [1] and log.releases == {1}
    assert len(log.malformed) == 6
    _details, problems = check_grants(path, "semaphore", set(), None)
    assert any("malformed" in p for p in problems)


def test_owner_died_check(tmp_path):
    """The owner-died rule replayed along a mutex's tokens: True after an
    owner died holding it (also one that died before it logged), until a
    normal release; unknown endings are not counted as checked."""
    def run(lines, died_holding=(), final=None):
        log = GrantLog()
        for line in lines:
            kind, *f = line.split()
            if kind == "G":
                log.grants.append(Grant(0, 0, int(f[0]), f[1] == "1", 1))
            else:
                log.releases.add(int(f[0]))
        return check_owner_died(log, set(died_holding), final)

    right = run(["G 1 0", "R 1", "G 2 0", "G 3 1", "G 4 1", "R 4", "G 6 1", "R 6", "G 7 0"],
                died_holding={2, 3, 5})
    assert (right.failures, right.seen, right.checked) == (0, 3, 6), right.problems
    wrong = run(["G 1 0", "R 1", "G 2 1"])                 # released normally, yet "died"
    assert wrong.failures == 1 and "expected False" in wrong.problems[0]
    wrong = run(["G 1 0", "G 2 0"], died_holding={1})      # died holding, yet not told
    assert wrong.failures == 1 and "expected True" in wrong.problems[0]
    sticky = run(["G 1 0", "G 2 1", "G 3 0"], died_holding={1, 2})  # until a normal release
    assert sticky.failures == 1
    unknown = run(["G 1 0", "G 3 0", "G 4 1"])       # 1 ended unknown; token 2 nobody logged
    assert (unknown.failures, unknown.checked) == (0, 1)
    final = Grant(0, 0, 3, False, 9)                  # the verification's grant, last
    assert run(["G 1 0", "R 1", "G 2 0"], died_holding={2}, final=final).failures == 1
    # Tokens start at the ledger's creation time (ns), not at 1: the same
    # story 1.8e18 higher is judged the same (and at once).
    base = 1_796_122_527_809_879_109
    shifted = run([f"{k} {int(t) + base} {d}" if k == "G" else f"R {int(t) + base}"
                   for k, t, *rest in (ln.split() for ln in
                                       ["G 1 0", "R 1", "G 2 0", "G 3 1", "G 4 1", "R 4",
                                        "G 6 1", "R 6", "G 7 0"])
                   for d in (rest or ["0"])],
                  died_holding={2 + base, 3 + base, 5 + base})
    assert (shifted.failures, shifted.seen, shifted.checked) == (0, 3, 6), shifted.problems
    wrong = run([f"G {base} 1"])                      # a fresh mutex's first owner told "died"
    assert wrong.failures == 1 and "fresh" in wrong.problems[0]


# ------------------------------------------------------------ interruption
def _interrupt_later(storm: Storm, delay: float) -> threading.Timer:
    t = threading.Timer(delay, storm.interrupt)
    t.start()
    return t


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.4, 1.2])
def test_interrupt_at_any_phase_cleans_up(name, delay):
    """Interrupted before the workers start, while they start, mid-storm, or
    around the end and the verification: KeyboardInterrupt (or, if the storm
    was already over, its report), every process gone, NAME removed."""
    before = _children()
    storm = Storm(name, capacity=2, workers=4, kill_every=0.01, duration=1.0, spawn="fork")
    timer = _interrupt_later(storm, delay)
    try:
        storm.run()
    except KeyboardInterrupt:
        assert storm.interrupted is not None
    else:
        assert delay >= 1.0            # only a storm already over may finish
    finally:
        timer.cancel()
    assert name not in ipcsem.names() and _leftovers(name) == []
    assert _children() - before == set()


def test_interrupt_before_run_starts_nothing(name):
    before = _children()
    storm = Storm(name, workers=3, duration=5.0, spawn="fork")
    storm.interrupt()
    with pytest.raises(KeyboardInterrupt):
        storm.run()
    assert storm.live == {} and _children() == before
    assert name not in ipcsem.names()
