"""``ipcsem chaos`` on the ZooKeeper backend, through the installed console
script against a real standalone server: a storm with real SIGKILLs passes
(exit 0) and its report names the backend, the kills, the grants and zero
violations; a storm whose oracle has fewer lock files than units must find
over-admissions and fail (exit 1), so the verdict is not a constant there
either; an shm-only option is one usage line; "already exists" is asked of
the backend.  Workers are forked (a storm of exec'd workers spends most of
its kills on interpreter start-up), the session timeout is 2 s (the
server's minimum with tickTime 1000)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

import ipcsem

BIN = os.path.dirname(sys.executable)
IPCSEM = shutil.which("ipcsem", path=BIN)
pytestmark = pytest.mark.skipif(IPCSEM is None, reason="console scripts not installed: "
                                                       "pip install -e .")


@pytest.fixture
def storm_url(zk):
    """A fresh chroot with a 2 s session timeout; this process's backend
    for it closed afterwards."""
    from ipcsem._backend import forget, resolve

    u = zk.url(f"/c{uuid.uuid4().hex[:10]}", session_timeout=2)
    yield u
    resolve(u).close()
    forget(u)


def chaos(*args: str, env: dict | None = None, timeout: float = 120
          ) -> subprocess.CompletedProcess:
    return subprocess.run([IPCSEM, *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, env=env)


def field(text: str, label: str) -> str:
    m = re.search(rf"^  {re.escape(label)} +(.*)$", text, re.M)
    assert m, f"no {label!r} line in:\n{text}"
    return m.group(1)


def test_storm_on_zookeeper_passes_and_reports(storm_url):
    r = chaos("--backend", storm_url, "chaos", "zkstorm", "--duration", "6s", "--workers", "4",
              "--kill-every", "100ms", "--spawn", "fork", "--seed", "11", "-q")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert out.startswith("chaos storm on 'zkstorm': capacity 3, 4 workers (fork), "
                          "supervisor on, seed 11"), out
    assert field(out, "backend") == storm_url
    kills = int(field(out, "kills").split()[0])
    cycles = int(field(out, "cycles").split()[0])
    tokens = field(out, "tokens")
    assert kills >= 10 and cycles > kills, out          # ~60 kills were asked for
    assert int(tokens.split()[0]) > 0 and tokens.endswith("strictly increasing"), out
    assert field(out, "over-admissions") == "0"
    assert field(out, "lost units").startswith("0 (fresh process took all units: ok ")
    assert field(out, "end checks") == "ok"
    assert "passed" in field(out, "mid-storm checks")
    assert "error" not in re.findall(r"^  (\w+)", out, re.M), out
    assert "self-kills" not in out and "lock repairs" not in out   # shm's ledger only
    assert out.rstrip().endswith("PASS")
    # the storm removed its semaphore, on the server (and never made one on shm)
    assert ipcsem.names(storm_url) == []
    assert "zkstorm" not in ipcsem.names("shm")


def test_oracle_finds_over_admission_on_zookeeper(storm_url):
    """2 oracle files for 3 units (the hidden --oracle-slots, the oracle's
    self-test): grants of the third unit must show up as over-admissions and
    the storm must fail.  The backend comes from $IPCSEM_BACKEND here."""
    env = dict(os.environ, IPCSEM_BACKEND=storm_url)
    r = chaos("chaos", "--capacity", "3", "--oracle-slots", "2", "--workers", "6",
              "--duration", "3s", "--kill-every", "200ms", "--spawn", "fork", "--json", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    d = rep["details"]
    assert d["backend"] == storm_url and d["oracle_slots"] == 2
    assert rep["ok"] is False and rep["over_admissions"] > 0, rep
    assert any("over-admission" in v for v in d["violations"]), d["violations"]
    assert rep["lost_units"] == 0 and rep["check_error"] is None    # nothing else was wrong
    assert d["errors"] == [] and rep["kills"] > 0
    assert ipcsem.names(storm_url) == []


def test_shm_only_option_and_existing_name_ask_the_backend(storm_url):
    r = chaos("--backend", storm_url, "chaos", "--self-kill-fraction", "0.5", "--duration", "1s")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "shm backend only" in r.stderr, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert ipcsem.names(storm_url) == []                 # nothing was created
    # NAME exists on the server (not on shm): refused before anything starts
    sem = ipcsem.Semaphore("taken", capacity=1, backend=storm_url)
    try:
        r = chaos("--backend", storm_url, "chaos", "taken", "--duration", "1s")
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and "already exists" in r.stderr, r.stderr
        assert sem.available == 1 and sem.holders() == []
    finally:
        sem.close()
        ipcsem.unlink("taken", backend=storm_url)
