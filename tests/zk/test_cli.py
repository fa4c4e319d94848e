"""The command line on the ZooKeeper backend: ``ipcsem --backend URL ...``
(and $IPCSEM_BACKEND) for create, ls, status, run, rm, recover and
supervise, as real processes against a real server."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

BIN = os.path.dirname(sys.executable)
IPCSEM = shutil.which("ipcsem", path=BIN)
pytestmark = pytest.mark.skipif(IPCSEM is None, reason="console scripts not installed: "
                                                       "pip install -e .")


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([IPCSEM, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def status(url: str, *names: str) -> dict:
    r = cli("--backend", url, "status", "--json", *names)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def readline(proc: subprocess.Popen, timeout: float) -> str:
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, "no line in time"
    return proc.stdout.readline()


def test_backend_option_before_or_after_the_subcommand_and_from_the_environment(url):
    r = cli("--backend", url, "create", "gpu", "--capacity", "2")
    assert r.returncode == 0, r.stderr
    assert "capacity 2, 2 available" in r.stdout
    r = cli("create", "--backend", url, "mx", "--mutex")
    assert r.returncode == 0, r.stderr
    assert cli("--backend", url, "ls").stdout.split() == ["gpu", "mx"]
    env = dict(os.environ, IPCSEM_BACKEND=url)
    assert cli("ls", env=env).stdout.split() == ["gpu", "mx"]
    # ... and never on shm: the names are not there
    assert "gpu" not in cli("--backend", "shm", "ls", env=env).stdout.split()
    doc = status(url, "gpu")
    [o] = doc["semaphores"]
    assert (o["capacity"], o["available"], o["kind"]) == (2, 2, "semaphore")
    r = cli("--backend", url, "rm", "gpu", "mx")
    assert r.returncode == 0, r.stderr
    assert cli("--backend", url, "ls").stdout.split() == []


def test_bad_backend_is_one_line_and_exit_2(url):
    r = cli("--backend", "bogus://x", "ls")
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "unknown ipcsem backend" in r.stderr
    r = cli("ls", env=dict(os.environ, IPCSEM_BACKEND="zookeeper://"))
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "IPCSEM_BACKEND" in r.stderr
    # (an option of one backend only: tests/zk/test_zk_chaos.py)


def test_run_holds_a_unit_status_shows_it_rm_refuses_while_held(url):
    assert cli("--backend", url, "create", "gpu", "--capacity", "1").returncode == 0
    holder = subprocess.Popen([IPCSEM, "--backend", url, "run", "gpu", "--", "sleep", "60"])
    try:
        deadline = time.monotonic() + 20
        while True:
            [o] = status(url, "gpu")["semaphores"]
            if o["holders"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        [h] = o["holders"]
        assert h["pid"] == holder.pid and h["units"] == 1 and h["state"] == "alive"
        assert h["host"] == os.uname().nodename
        assert o["available"] == 0
        # a second run cannot get it now: exit 75, nothing left queued
        r = cli("--backend", url, "run", "gpu", "--timeout", "0.2", "--", "true")
        assert r.returncode == 75, r.stderr
        r = cli("--backend", url, "rm", "gpu")
        assert r.returncode == 1 and "in use" in r.stderr
        [o] = status(url, "gpu")["semaphores"]
        assert o["waiters"] == [] and len(o["holders"]) == 1
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(20)
    [o] = status(url, "gpu")["semaphores"]
    assert o["holders"] == [] and o["available"] == 1
    assert cli("--backend", url, "rm", "gpu").returncode == 0


def test_supervise_reaps_a_sigkilled_local_holder_long_before_its_session_ends(zk, agents):
    # A 20 s session: what frees the unit within seconds is the supervisor.
    url = zk.url(f"/t{uuid.uuid4().hex[:10]}", session_timeout=20)
    assert cli("--backend", url, "create", "lic", "--capacity", "1").returncode == 0
    sup = subprocess.Popen([IPCSEM, "--backend", url, "supervise", "lic"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert readline(sup, 30).startswith("supervising lic on zookeeper://")
        a = agents(url, "lic")
        assert a.call({"op": "take"})["lease"] is not None
        assert readline(sup, 30).strip() == "watching every local holder"
        time.sleep(0.3)           # the supervisor's rescan arms a watch on the new node
        t0 = time.monotonic()
        a.kill()
        line = readline(sup, 15)
        took = time.monotonic() - t0
        assert line.startswith(f"recovered name=lic pid={a.pid} units=1"), line
        assert took < 10, took
        # the oracle: a fresh process takes the unit at once
        b = agents(url, "lic")
        assert b.call({"op": "take"})["lease"] is not None
    finally:
        sup.send_signal(signal.SIGTERM)
        out, err = sup.communicate(timeout=20)
    assert sup.returncode == 0, err
    assert out.strip().endswith("supervisor stopped")


def test_recover_returns_a_sigkilled_local_holders_unit_and_status_p_shows_a_pid(zk, agents):
    url = zk.url(f"/t{uuid.uuid4().hex[:10]}", session_timeout=20)
    assert cli("--backend", url, "create", "db", "--capacity", "2").returncode == 0
    a = agents(url, "db")
    assert a.call({"op": "take"})["lease"] is not None
    doc = json.loads(cli("--backend", url, "status", "--json", "-p", str(a.pid)).stdout)
    assert [(o["name"], [h["pid"] for h in o["holders"]]) for o in doc["semaphores"]] \
        == [("db", [a.pid])]
    a.kill()
    [o] = status(url, "db")["semaphores"]
    assert [h["state"] for h in o["holders"]] == ["dead"] and o["dead_holders"] == 1
    r = cli("--backend", url, "recover")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "recovered name=db units=1"
    [o] = status(url, "db")["semaphores"]
    assert o["holders"] == [] and o["available"] == 2 and o["recovered_units"] == 1


def test_run_stops_cmd_and_says_so_when_its_lease_is_lost(url, tmp_path):
    """CMD must never run without the units: ``ipcsem run`` SIGSTOPped past
    its session timeout (another process meanwhile gets the unit) stops CMD
    as soon as it runs again, says why in one line and exits 75."""
    assert cli("--backend", url, "create", "lost", "--capacity", "1").returncode == 0
    marker = tmp_path / "cmd.pid"
    run = subprocess.Popen([IPCSEM, "--backend", url, "run", "lost", "--", "sh", "-c",
                            f"echo $$ > {marker}; exec sleep 60"],
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (marker.exists() and marker.read_text().strip()):
            assert time.monotonic() < deadline and run.poll() is None, "CMD never started"
            time.sleep(0.05)
        cmd_pid = int(marker.read_text())
        os.kill(run.pid, signal.SIGSTOP)
        # the session expires at the server: another run gets the unit
        other = cli("--backend", url, "run", "lost", "--timeout", "15", "--", "true", timeout=30)
        assert other.returncode == 0, other.stderr
        os.kill(run.pid, signal.SIGCONT)
        assert run.wait(20) == 75
        err = run.stderr.read() if run.stderr else ""
        # the session's own warning, then run's line: no kazoo chatter, no traceback
        lines = err.splitlines()
        assert "lost the lease on 'lost'" in lines[-1] and "CMD was stopped" in lines[-1], err
        assert len(lines) <= 2 and "Traceback" not in err and "Connection dropped" not in err, err
        try:
            with open(f"/proc/{cmd_pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        assert state == "gone", f"CMD still there ({state})"    # stopped, and reaped by run
    finally:
        if run.poll() is None:
            os.kill(run.pid, signal.SIGCONT)
            run.kill()
            run.wait()
    assert cli("--backend", url, "rm", "lost").returncode == 0
