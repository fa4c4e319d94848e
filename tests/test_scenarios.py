"""The scenarios of tools/scenarios, each run briefly as its own command (a
director process starting real participant processes), with and without
--chaos: exit status 0 means every invariant the scenario checks held.
Each run is short (a few seconds); the seed is fixed so a failure can be
replayed with the same command and `--seed 1`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scenario(name: str, *args: str, timeout: float = 90) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"tools.scenarios.{name}", *args, "--seed", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} {' '.join(args)} exited {proc.returncode}:\n{out}"
    assert "OK: every invariant held" in out, out
    assert "Traceback" not in out, out
    assert all(len(line) <= 80 for line in proc.stdout.splitlines()), out
    return out


def no_leftovers(tag: str) -> None:
    left = [f for f in os.listdir("/dev/shm") if tag in f]
    assert not left, f"left behind in /dev/shm: {left}"


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_server(chaos):
    out = scenario("server", "--seconds", "2", *(["--chaos"] if chaos else []))
    assert "each completed exactly once" in out
    assert "SIGKILL w" in out and "recovered" in out
    if not chaos:  # the worker killed mid-request: its request is retried
        assert "in the middle of a request" in out and "back to the board" in out


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_prodcons(chaos):
    out = scenario("prodcons", "--seconds", "1.5", *(["--chaos"] if chaos else []))
    assert "every one taken exactly once" in out
    if chaos:
        assert "SIGKILL producer" in out or "SIGKILL consumer" in out
    else:
        assert "0 lost with a consumer" in out


def test_prodcons_kill_windows():
    out = scenario("prodcons", "--windows")
    # The README's order returns a unit that must not come back; the safe one never does.
    assert out.count("WRONG RETURN") == 4
    assert "UNEXPECTED" not in out


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_rooms(chaos):
    out = scenario("rooms", "--seconds", "1.5", "--rooms", "5", "--students", "18",
                   "--pace", "0.6",
                   *(["--chaos"] if chaos else []))
    assert "granted in ticket order: yes" in out
    assert "queues at the desk" in out


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_logins(chaos):
    out = scenario("logins", "--seconds", "1.5", "--sessions", "2", "--pace", "0.6",
                   *(["--chaos"] if chaos else []))
    assert "login order == arrival order: yes" in out


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_philosophers(chaos):
    out = scenario("philosophers", "--seconds", "1.5", *(["--chaos"] if chaos else []))
    assert "DEADLOCK found in the ledgers" in out
    assert "ordered: no deadlock" in out and "butler: no deadlock" in out
    if chaos:
        assert "SIGKILL philosopher" in out


def test_no_leftovers_after_interrupt():
    """SIGINT to the director mid-run: children killed, names unlinked."""
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "tools.scenarios.rooms", "--seconds", "5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "interrupted: cleaning up" in out
    no_leftovers(f"rooms-{proc.pid}")
