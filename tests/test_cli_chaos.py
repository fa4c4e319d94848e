"""`ipcsem chaos` end to end, through the installed console script: a short
storm passes (exit 0) and reports kills, cycles, over-admissions and lost
units; a storm whose oracle has fewer files than units must fail (exit 1),
so the exit status is not a constant; usage and help follow the CLI's
conventions.  Storms fork their workers to fit in a few seconds."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import ipcsem

BIN = os.path.dirname(sys.executable)
IPCSEM = shutil.which("ipcsem", path=BIN)

pytestmark = pytest.mark.skipif(not IPCSEM, reason="console script not installed: "
                                                   "pip install -e .")


def chaos(*args, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([IPCSEM, "chaos", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def field(text: str, label: str) -> str:
    m = re.search(rf"^  {re.escape(label)} +(.*)$", text, re.M)
    assert m, f"no {label!r} line in:\n{text}"
    return m.group(1)


def test_storm_passes_and_reports(name):
    r = chaos(name, "--duration", "2s", "--workers", "4", "--kill-every", "10ms",
              "--spawn", "fork", "--seed", "7")
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert out.startswith(f"chaos storm on {name!r}: capacity 3, 4 workers (fork), "
                          "supervisor on, seed 7"), out
    kills = int(field(out, "kills").split()[0])
    cycles = int(field(out, "cycles").split()[0])
    assert kills > 20 and cycles > kills, out      # ~100 kills/s were asked for
    assert field(out, "over-admissions") == "0"
    assert field(out, "lost units").startswith("0 (fresh process took all units: ok ")
    assert field(out, "end checks") == "ok"
    assert int(field(out, "recovered").split()[0]) > 0, out
    assert out.rstrip().endswith("PASS")
    assert name not in ipcsem.names()                 # the storm removed its semaphore


def test_storm_json(name):
    r = chaos(name, "--duration", "1s", "--workers", "3", "--spawn", "fork",
              "--no-supervisor", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""                             # --json: no progress lines
    rep = json.loads(r.stdout)
    assert rep["ok"] is True
    assert rep["over_admissions"] == 0 and rep["lost_units"] == 0
    assert rep["check_error"] is None and rep["details"]["errors"] == []
    assert rep["kills"] > 0 and rep["cycles"] > 0
    assert rep["details"]["name"] == name and rep["details"]["supervisor"] is False


def test_storm_fails_on_over_admission(name):
    """An oracle with 2 files for 3 units: over-admissions must be found and
    the exit status must be 1 (the hidden --oracle-slots is this self-test)."""
    r = chaos(name, "--capacity", "3", "--oracle-slots", "2", "--workers", "6",
              "--duration", "1.5s", "--kill-every", "100ms", "--spawn", "fork")
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert int(field(out, "over-admissions")) > 0, out
    assert "over-admission" in field(out, "violation")
    assert field(out, "lost units").startswith("0 ")   # nothing else was wrong
    assert out.rstrip().endswith("FAIL")


def test_existing_name_is_an_error(name):
    sem = ipcsem.Semaphore(name, capacity=1)
    try:
        r = chaos(name, "--duration", "1s")
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "already exists" in r.stderr, r.stderr
        assert sem.available == 1                     # untouched
    finally:
        sem.close()


@pytest.mark.parametrize("args", [
    ["--workers", "0"],
    ["--capacity", "0"],
    ["--kills", "0"],
    ["--kill-every", "soon"],
    ["--duration", "-1s"],
    ["--spawn", "thread"],
    ["--self-kill-fraction", "2"],
    ["bad/name"],
    ["a", "--name", "b"],
])
def test_usage_errors_are_one_line_exit_2(args):
    r = chaos(*args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("ipcsem"), r.stderr
    assert r.stdout == ""


def test_help_has_examples_and_exit_codes():
    r = chaos("--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and "exit status:" in r.stdout
    assert "ipcsem chaos soak --workers 8 --kill-every 10ms --duration 60s" in r.stdout
    for code in ("0   pass", "1   fail", "2   usage", "130 interrupted"):
        assert code in r.stdout
    assert all(len(line) <= 80 for line in r.stdout.splitlines()), r.stdout
    assert "--oracle-slots" not in r.stdout and "--name" not in r.stdout


def test_sigterm_interrupts_and_cleans_up(name):
    p = subprocess.Popen([IPCSEM, "chaos", name, "--duration", "60s", "--workers", "3",
                          "--spawn", "fork", "-q"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 20
        while name not in ipcsem.names():         # the storm has begun
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read()
            time.sleep(0.02)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (out, err)
    assert err.strip() == "chaos: interrupted" and out == ""
    assert name not in ipcsem.names()
    assert not [f for f in os.listdir("/dev/shm") if f"ipcsem.{name}" in f]
