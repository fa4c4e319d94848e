"""The scenarios of tools/scenarios, each run briefly as its own command (a
director process starting real participant processes), with and without
--chaos: exit status 0 means every invariant the scenario checks held.
Each run is short (a few seconds); the seed is fixed so a failure can be
replayed with the same command and `--seed 1`."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow     # whole programs, seconds each (see pyproject markers)

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


def paragraphs(out: str) -> list[str]:
    """The timestamped paragraphs of a run, each joined back into one line
    (say() wraps them at 80 columns with a 9-space indent)."""
    paras: list[str] = []
    for line in out.splitlines():
        if line.startswith(" " * 9) and paras:
            paras[-1] += " " + line.strip()
        else:
            paras.append(line)
    return paras


def count_named(named: str) -> int:
    """Units named in '(its slot, the board lock, 2 tickets)' or '(1 use, 1 empty)'."""
    total = 0
    for part in named.split(", "):
        if part in ("it held none",):
            continue
        m = re.match(r"(\d+) ", part)
        total += int(m[1]) if m else 1          # 'its slot', 'the board lock'
    return total


def assert_kill_lines_agree(out: str) -> int:
    """Every 'N unit(s) recovered (what)' names exactly N units; returns how
    many such lines there were."""
    lines = [p for p in paragraphs(out) if re.search(r"\d+ units? recovered", p)]
    for p in lines:
        m = re.search(r"(\d+) units? recovered(?: \(([^)]*)\))?", p)
        said, named = int(m[1]), m[2]
        if named is None:
            assert said == 0, p
        else:
            assert count_named(named) == said, p
    return len(lines)


def no_leftovers(tag: str) -> None:
    left = [f for f in os.listdir("/dev/shm") if tag in f]
    assert not left, f"left behind in /dev/shm: {left}"


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_server(chaos):
    out = scenario("server", "--seconds", "2", *(["--chaos"] if chaos else []))
    assert "each completed exactly once" in out
    assert "SIGKILL w" in out and "recovered" in out
    assert assert_kill_lines_agree(out) >= 1
    # Each request's start and end are told, so the limit can be followed.
    served = re.findall(r"serves request #(\d+)", out)
    done = re.findall(r"done with request #(\d+)", out)
    assert served and done and set(done) <= set(served)
    if not chaos:  # the worker killed mid-request: its slot comes back, its request is retried
        kill = next(p for p in paragraphs(out) if "in the middle of a request" in p)
        assert "1 unit recovered (its slot)" in kill, kill
        assert "back to the board" in out


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_prodcons(chaos):
    out = scenario("prodcons", "--seconds", "1.5", *(["--chaos"] if chaos else []))
    assert "every one taken exactly once" in out
    told = "\n".join(paragraphs(out))
    assert "the buffer was empty (blocked in full.acquire)" in told    # consumers start first
    assert_kill_lines_agree(out)
    if chaos:
        assert "SIGKILL producer" in out or "SIGKILL consumer" in out
    else:
        assert "0 lost with a consumer" in out
        assert "the buffer was full (blocked in empty.acquire)" in told


def test_prodcons_late_protocol():
    out = scenario("prodcons", "--seconds", "1", "--protocol", "late")
    assert "protocol late" in out and "every one taken exactly once" in out


def test_prodcons_kill_windows():
    out = scenario("prodcons", "--windows")
    # The late order returns a unit that must not come back; the README's never does.
    assert out.count("WRONG RETURN") == 4
    assert all(line.startswith("late") for line in out.splitlines() if "WRONG RETURN" in line)
    assert "UNEXPECTED" not in out


def _prodcons_protocol() -> str:
    sys.path.insert(0, ROOT)
    try:
        from tools.scenarios import prodcons
    finally:
        sys.path.remove(ROOT)
    return prodcons.README_PROTOCOL


def _python_block_after(path: str, marker: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    start = text.index(marker)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, f"no python block after {marker!r} in {path}"
    return block[1]


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def test_docs_scenarios_shows_the_protocol_prodcons_runs():
    """docs/scenarios.md shows the very block `prodcons --protocol readme` runs."""
    shown = _python_block_after("docs/scenarios.md", "## prodcons")
    assert _lines(shown) == _lines(_prodcons_protocol())


def test_readme_producer_consumer_is_what_prodcons_runs():
    """The README's producer/consumer section is the readme protocol."""
    shown = _python_block_after("README.md", "**Producer/consumer.**")
    assert _lines(shown) == _lines(_prodcons_protocol())


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_rooms(chaos):
    out = scenario("rooms", "--seconds", "1.5", "--rooms", "5", "--students", "18",
                   "--pace", "0.6",
                   *(["--chaos"] if chaos else []))
    assert "granted in ticket order: yes" in out
    assert "queues at the desk" in out
    got = re.findall(r"(student\d+) got room (\d) after waiting [\d.]+ s \((\d) of 5 free\)", out)
    back = re.findall(r"(student\d+) returns room (\d) \((\d) of 5 free\)", out)
    assert got and back
    rooms = dict((who, room) for who, room, _free in got)
    assert all(rooms[who] == room for who, room, _free in back)    # gives back what it got
    assert_kill_lines_agree(out)


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_logins(chaos):
    out = scenario("logins", "--seconds", "1.5", "--sessions", "2", "--pace", "0.6",
                   *(["--chaos"] if chaos else []))
    assert "login order == arrival order: yes" in out
    paras = paragraphs(out)

    def first(pattern: str) -> dict[str, int]:
        seen: dict[str, int] = {}
        for i, p in enumerate(paras):
            m = re.search(pattern, p)
            if m:
                seen.setdefault(m[1], i)
        return seen

    arrives, logged_in = first(r"\] (user\d+) arrives"), first(r"\] (user\d+) logged in")
    assert logged_in and set(logged_in) <= set(arrives)
    assert all(arrives[u] < logged_in[u] for u in logged_in), out     # arrival told first
    for i, p in enumerate(paras):       # a killed user comes back, the same user
        m = re.search(r"SIGKILL (user\d+) ", p)
        if m:
            assert any(f"{m[1]} arrives again" in q for q in paras[i + 1:]), p


@pytest.mark.parametrize("chaos", [False, True], ids=["calm", "chaos"])
def test_philosophers(chaos):
    out = scenario("philosophers", "--seconds", "1.5", *(["--chaos"] if chaos else []))
    assert "DEADLOCK found in the ledgers (ipcsem.find_deadlocks)" in out
    deadlock = next(p for p in paragraphs(out) if "DEADLOCK found" in p)
    for i in range(5):     # every philosopher holds its left fork and waits for its right
        assert f"P{i} holds fork {i}, waits for fork {(i + 1) % 5}" in deadlock, deadlock
    assert "ordered: no deadlock" in out and "butler: no deadlock" in out
    assert_kill_lines_agree(out)
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
