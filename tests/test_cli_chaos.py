"""`ipcsem chaos` end to end, through the installed console script: a short
storm passes (exit 0) and reports kills, cycles, over-admissions and lost
units; a storm whose oracle has fewer files than units must fail (exit 1),
so the exit status is not a constant; usage and help follow the CLI's
conventions; SIGTERM/SIGINT/SIGHUP, one or a burst, at any moment from the
handler's installation on, end it with every worker killed, NAME removed and
exit status 130.  Storms fork their workers to fit in a few seconds."""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
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
    ["--slots", "--mutex"],
    ["--mutex", "--capacity", "2"],
    ["--oracle-slots", "0"],
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
    assert "--slots" in r.stdout and "--mutex" in r.stdout


def test_mutex_storm_json(name):
    r = chaos(name, "--duration", "1.5s", "--workers", "4", "--spawn", "fork", "--mutex",
              "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    d = rep["details"]
    assert rep["ok"] is True and d["kind"] == "mutex" and d["capacity"] == 1
    assert d["owner_died_failures"] == 0 and d["owner_died_checked"] > 0
    assert d["token_failures"] == 0 and d["tokens_checked"] > 0
    assert name not in ipcsem.names()


def _sigmasks(pid: int) -> dict[str, int]:
    """SigCgt, SigBlk, ... of /proc/PID/status, from one read (one moment)."""
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in text.splitlines())
            if k in ("SigPnd", "SigBlk", "SigIgn", "SigCgt")}


def _catches(pid: int, sig: int) -> bool:
    try:
        return bool(_sigmasks(pid)["SigCgt"] & (1 << (sig - 1)))
    except OSError:
        return False


def _start_storm(name, *extra):
    return subprocess.Popen([IPCSEM, "chaos", name, "--duration", "60s", "--workers", "3",
                             "--spawn", "fork", "-q", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


@contextlib.contextmanager
def _killed_on_failure(p):
    """A failed step must not leave the storm running its 60 s (SIGTERM
    first: a SIGKILLed storm cannot remove its temporary files)."""
    try:
        yield
    except BaseException:
        p.terminate()
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        raise


def _wait_for(p, pred, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        assert p.poll() is None, (what, p.returncode, p.stderr.read())
        time.sleep(0.005)


def _assert_interrupted(p, name, descendants=()):
    try:
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (out, err)
    assert err.strip() == "chaos: interrupted" and out == ""
    assert name not in ipcsem.names()
    assert not [f for f in os.listdir("/dev/shm") if f"ipcsem.{name}" in f]
    # The workers and the supervisor it had are gone.  (Grandchildren, such
    # as a root supervisor's per-user worker, die with their parent and may
    # be zombies of init for a moment.)
    deadline = time.monotonic() + 5
    while alive := [q for q in descendants if _alive(q)]:
        assert time.monotonic() < deadline, alive
        time.sleep(0.02)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_interrupts_and_cleans_up(name):
    p = _start_storm(name)
    with _killed_on_failure(p):
        _wait_for(p, lambda: name in ipcsem.names(), "the storm has begun")
        time.sleep(0.5)
        kids = psutil.Process(p.pid).children(recursive=True)
        p.send_signal(signal.SIGTERM)
    _assert_interrupted(p, name, kids)


def test_forked_workers_do_not_inherit_the_stop_handler(name):
    """The storm catches SIGTERM; no process it starts may run its handler:
    each child has the default disposition, or (just forked, before it reset
    them; a supervisor before its exec) has the signals blocked."""
    p = _start_storm(name)
    with _killed_on_failure(p):
        _wait_for(p, lambda: name in ipcsem.names(), "the storm has begun")
        _wait_for(p, lambda: len(psutil.Process(p.pid).children()) >= 4, "workers started")
        assert _catches(p.pid, signal.SIGTERM)
        checked = 0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:       # many workers: the storm replaces them
            for w in psutil.Process(p.pid).children():
                try:
                    masks = _sigmasks(w.pid)
                    caught, blocked = masks["SigCgt"], masks["SigBlk"]
                    argv = w.cmdline()       # after the masks: an exec in between shows
                    if "supervise" in " ".join(argv):
                        continue             # its own handlers, after its exec
                    if not argv:             # exiting (its memory gone, not yet a zombie:
                        continue             # psutil says [] then), the storm's SIGKILL
                except (OSError, psutil.Error):
                    continue                 # killed meanwhile: the storm's doing
                checked += 1
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    bit = 1 << (sig - 1)
                    assert not caught & bit or blocked & bit, (w.pid, sig, hex(caught),
                                                              hex(blocked))
            time.sleep(0.01)
        assert checked > 0
        p.send_signal(signal.SIGINT)
    _assert_interrupted(p, name)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_burst_of_stop_signals_at_random_moments(name, seed):
    """From the moment the handler is installed (before NAME exists, while
    workers start, mid-storm): several SIGTERM/SIGINT/SIGHUP in a row, the
    first at a random moment.  Always exit 130, everything removed."""
    rng = random.Random(seed)
    p = _start_storm(name)
    kids = []
    with _killed_on_failure(p):
        _wait_for(p, lambda: _catches(p.pid, signal.SIGTERM), "the handler is installed")
        time.sleep(rng.choice([0, 0.001, 0.01, 0.05, 0.2, 0.6]))
        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        for _ in range(rng.randint(2, 6)):
            p.send_signal(rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP]))
            time.sleep(rng.choice([0, 0.0005, 0.005, 0.03]))
    _assert_interrupted(p, name, kids)
