"""The chaos storm (ipcsem/_chaos.py): short storms that must come out whole,
and proofs that the storm's checks can fail (an oracle with fewer files than
units must report over-admissions; a unit that is really gone must be
reported lost).

Storms here fork their workers (~1 ms each) so a few hundred kills fit in a
few seconds; one small storm uses the default exec spawn (a fresh interpreter
per worker, ~0.1 s CPU each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psutil
import pytest

import ipcsem
from ipcsem import _chaos, _names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leftovers(name: str) -> list[str]:
    return [f for f in os.listdir(_names.SHM_DIR)
            if f == f"ipcsem.{name}" or f.startswith(f"sem.ipcsem.{name}:")]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _assert_whole(r, name: str, kills: int | None = None, before: set[int] = frozenset()) -> None:
    text = _chaos.format_report(r)
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
    # Clean-up: the name, its doorbells and every process the storm started
    # are gone (no zombie either: a zombie is still a child).
    assert name not in ipcsem.names()
    assert _leftovers(name) == []
    assert _children() - before == set()


@pytest.mark.parametrize("capacity", [2, 3])
@pytest.mark.parametrize("supervisor", [True, False], ids=["supervised", "unsupervised"])
def test_storm_comes_out_whole(name, capacity, supervisor):
    before = _children()
    r = _chaos.run_storm(name, capacity=capacity, workers=6, kill_every=0.01, kills=300,
                         supervisor=supervisor, spawn="fork")
    _assert_whole(r, name, kills=300, before=before)
    text = _chaos.format_report(r)
    # Kills really landed inside ipcsem's critical section: some workers
    # SIGKILLed themselves at a crash point, and the next process to take the
    # ledger lock had to repair a dead owner's transaction.
    assert r.self_kills > 0, text
    assert r.details["lock_repairs"] > 0, text
    assert r.details["recovered_units"] > 0, text
    if supervisor:
        assert r.details["supervisor_recoveries"] > 0, text


def test_storm_with_exec_workers(name):
    """The default spawn: every worker a fresh interpreter (slow to restart)."""
    before = _children()
    r = _chaos.run_storm(name, capacity=2, workers=4, kill_every=0.01, kills=20,
                         duration=15.0, spawn="exec")
    _assert_whole(r, name, before=before)


def test_oracle_detects_double_booking(tmp_path):
    """Two holders of the same oracle file: the second one must be reported."""
    violations = tmp_path / "violations"
    a = _chaos.Oracle(str(tmp_path), 2, str(violations), "a")
    b = _chaos.Oracle(str(tmp_path), 2, str(violations), "b")
    try:
        assert a.take(2)              # both files
        assert not b.take(1)          # nothing left: over-admission
        assert _chaos.count_violations(str(violations)) == 1
        assert "over-admission: b" in violations.read_text()
        a.release()
        b.release()
        assert b.take(2)              # free again after release
        assert _chaos.count_violations(str(violations)) == 1
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
                    import random
                    import time

                    rng = random.Random(i)
                    o = _chaos.Oracle(str(tmp_path), 3, violations, f"w{i}")
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
    assert _chaos.count_violations(violations) == 0, open(violations).read()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")
def test_oracle_flock_is_free_before_death_is_visible(tmp_path):
    """A SIGKILLed holder's oracle file is free by the time its pidfd says it
    died, before it is reaped: what keeps the oracle free of false positives
    (ipcsem's recovery cannot see a death earlier than that)."""
    import select

    code = ("import sys, time; from ipcsem import _chaos; "
            "o = _chaos.Oracle(sys.argv[1], 1, sys.argv[2], 'child'); "
            "assert o.take(1); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "v")],
                         stdout=subprocess.PIPE)
    o = _chaos.Oracle(str(tmp_path), 1, str(tmp_path / "v"), "me")
    pidfd = os.pidfd_open(p.pid)
    try:
        assert p.stdout.readline() == b"held\n"
        assert not o.take(1)  # the child holds it
        o.release()
        p.kill()
        assert select.select([pidfd], [], [], 10)[0] == [pidfd]
        assert psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE  # not reaped yet
        assert o.take(1)
        assert _chaos.count_violations(str(tmp_path / "v")) == 1  # only the first refusal
    finally:
        os.close(pidfd)
        o.close()
        p.kill()
        p.wait()
        p.stdout.close()


def test_storm_reports_over_admission(name):
    """A semaphore with more units than the oracle has files: the storm must
    report over-admissions and fail (through the CLI, exit status 1)."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "chaos.py"), "--name", name,
         "--capacity", "3", "--oracle-slots", "2", "--workers", "6", "--kills", "1000",
         "--duration", "1.5s", "--kill-every", "100ms", "--spawn", "fork", "--json"],
        capture_output=True, timeout=60)
    assert out.returncode == 1, out.stderr.decode()
    r = json.loads(out.stdout)
    assert r["over_admissions"] > 0, r
    assert r["ok"] is False
    assert "over-admission" in r["details"]["violations"][0]
    # ... and nothing else was wrong: the units all came back.
    assert r["lost_units"] == 0 and r["check_error"] is None, r
    assert name not in ipcsem.names()


def test_cli_passes(name):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "chaos.py"), "--name", name,
         "--capacity", "2", "--workers", "4", "--kills", "60", "--kill-every", "10ms",
         "--spawn", "fork"],
        capture_output=True, timeout=60)
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    assert "over-admissions  0" in text and "lost units       0" in text
    assert text.rstrip().endswith("PASS")


def test_verify_reports_a_lost_unit(name):
    """A unit that really is gone (held by a live process that will not give
    it back) must show as lost and fail the independent acquire."""
    sem = ipcsem.Semaphore(name, capacity=2)
    try:
        assert sem.acquire()
        lost, error, details = _chaos.verify(sem, 2, settle_timeout=0.2, verify_timeout=0.3)
        assert lost == 1
        assert error is not None
        assert "could not acquire all 2 units" in error
        assert "holders left" in error
        sem.release()
        lost, error, details = _chaos.verify(sem, 2, settle_timeout=0.2, verify_timeout=0.3)
        assert (lost, error) == (0, None)
    finally:
        sem.close()


def test_parse_duration():
    assert _chaos.parse_duration("10ms") == pytest.approx(0.01)
    assert _chaos.parse_duration("60s") == 60.0
    assert _chaos.parse_duration("2m") == 120.0
    assert _chaos.parse_duration("1.5") == 1.5
    assert _chaos.parse_duration("250us") == pytest.approx(0.00025)
    for bad in ("", "ms", "10 parsecs", "-1s", "0"):
        with pytest.raises(ValueError):
            _chaos.parse_duration(bad)


def test_existing_name_is_refused(name):
    sem = ipcsem.Semaphore(name, capacity=1)
    try:
        with pytest.raises(ValueError, match="already exists"):
            _chaos.run_storm(name, kills=1)
    finally:
        sem.close()
