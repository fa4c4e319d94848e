"""End-to-end tests of `ipcsem run` through the installed console script:
concurrency checked by an independent oracle, exit statuses, timeouts,
signal forwarding, and what a SIGKILL of `ipcsem run` does to CMD and units."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from cli import IPCSEM, isolated, needs_scripts, run, sem_json, wait_for

PY = sys.executable

pytestmark = needs_scripts


def held(name: str) -> bool:
    return os.path.exists(f"/dev/shm/ipcsem.{name}") and bool(sem_json(name)["holders"])


# The oracle knows nothing of ipcsem: two slot files, each taken with a
# non-blocking flock for the whole run of one command.  A third concurrent
# command finds both taken and fails loudly.
ORACLE = """
import fcntl, sys, time
slots = sys.argv[1:3]
for i, path in enumerate(slots):
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        continue
    with open(path + ".log", "a") as log:
        log.write("used\\n")
    time.sleep(0.5)
    sys.exit(0)
print("OVERLAP: more than two commands at once", file=sys.stderr)
sys.exit(3)
"""


def test_six_at_once_never_more_than_two(name, tmp_path, procs):
    slots = [str(tmp_path / "slot-a"), str(tmp_path / "slot-b")]
    t0 = time.monotonic()
    ps = [procs([IPCSEM, "run", name, "--capacity", "2", "--", PY, "-c", ORACLE, *slots],
                stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(60), p.stderr.read()) for p in ps]
    took = time.monotonic() - t0
    assert all(rc == 0 for rc, _ in results), results
    used = [len(Path(s + ".log").read_text().split()) if os.path.exists(s + ".log") else 0
            for s in slots]
    assert sum(used) == 6
    # Two did run at once at least once (the second slot was needed), and
    # the six took at least three rounds of 0.5 s.
    assert used[1] >= 1, used
    assert took >= 1.5
    assert sem_json(name)["available"] == 2


def test_exit_status_passes_through(name):
    cases = [
        (["true"], 0),
        (["sh", "-c", "exit 7"], 7),
        (["sh", "-c", "exit 255"], 255),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
    ]
    for cmd, want in cases:
        r = run(IPCSEM, "run", name, "--capacity", "1", "--", *cmd)
        assert r.returncode == want, (cmd, r.returncode, r.stderr)
    # CMD's own options are CMD's, with or without `--`.
    r = run(IPCSEM, "run", name, "--units", "1", "sh", "-c", "echo $0 $1", "--units", "x")
    assert (r.returncode, r.stdout) == (0, "--units x\n")
    r = run(IPCSEM, "run", name, "--", "/nonexistent/command")
    assert r.returncode == 127 and "command not found" in r.stderr
    assert sem_json(name)["available"] == 1  # released on every path


def test_timeout_has_its_own_status(name, procs):
    holder = procs([IPCSEM, "run", name, "--capacity", "2", "--units", "2", "--",
                    "sleep", "30"])
    wait_for(lambda: held(name), what="holder")
    t0 = time.monotonic()
    r = run(IPCSEM, "run", name, "--timeout", "0.4", "--", "echo", "ran")
    took = time.monotonic() - t0
    assert r.returncode == 75 and r.stdout == ""
    assert r.stderr.strip() == (f"ipcsem run: timed out: 1 unit(s) of {name!r} not "
                                "available within 0.4 s")
    assert took >= 0.4
    r = run(IPCSEM, "run", name, "--timeout", "0", "--", "echo", "ran")
    assert r.returncode == 75 and "not available now" in r.stderr
    assert sem_json(name)["waiters"] == []   # no queue entry left behind
    holder.kill()


def test_missing_semaphore_and_capacity_mismatch(name):
    r = run(IPCSEM, "run", name, "--", "true")
    assert r.returncode == 1 and "give --capacity N" in r.stderr
    assert run(IPCSEM, "run", name, "--capacity", "2", "--", "true").returncode == 0
    r = run(IPCSEM, "run", name, "--capacity", "3", "--", "true")
    assert r.returncode == 1 and "capacity 2, not 3" in r.stderr
    r = run(IPCSEM, "run", name, "--units", "3", "--", "true")
    assert r.returncode == 2 and "exceeds the capacity" in r.stderr


TRAP = """
import os, signal, sys, time
def on(sig, frame):
    print("got", sig, flush=True)
    sys.exit(40 + sig)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, on)
print("ready", os.getpid(), flush=True)
time.sleep(30)
sys.exit(1)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_signals_are_forwarded_to_cmd(name, procs, sig):
    p = procs([IPCSEM, "run", name, "--capacity", "1", "--", PY, "-c", TRAP],
              stdout=subprocess.PIPE, text=True, start_new_session=True)
    word, child = p.stdout.readline().split()
    assert word == "ready"
    assert psutil.Process(int(child)).ppid() == p.pid     # CMD is run's child
    p.send_signal(sig)
    assert p.wait(10) == 40 + sig
    assert p.stdout.read().split() == ["got", str(int(sig))]   # once, not twice
    assert sem_json(name)["available"] == 1


def test_signal_while_waiting_leaves_nothing(name, procs):
    holder = procs([IPCSEM, "run", name, "--capacity", "1", "--", "sleep", "30"])
    wait_for(lambda: held(name), what="holder")
    waiter = procs([IPCSEM, "run", name, "--", "touch", "/nonexistent/never"],
                   stderr=subprocess.PIPE, text=True)
    wait_for(lambda: sem_json(name)["waiters"], what="waiter")
    waiter.send_signal(signal.SIGTERM)
    assert waiter.wait(10) == 128 + signal.SIGTERM
    assert "Traceback" not in waiter.stderr.read()
    obj = sem_json(name)
    assert obj["waiters"] == [] and [h["pid"] for h in obj["holders"]] == [holder.pid]


def test_sigkill_of_run_kills_cmd_and_units_come_back(name, procs):
    p = procs([IPCSEM, "run", name, "--capacity", "2", "--units", "2", "--", "sleep", "60"])
    wait_for(lambda: held(name), what="holder")
    (child,) = wait_for(lambda: psutil.Process(p.pid).children(), what="CMD")
    assert child.name() == "sleep"
    p.kill()
    p.wait()
    # PR_SET_PDEATHSIG: the kernel kills CMD when `ipcsem run` dies.
    gone, alive = psutil.wait_procs([child], timeout=5)
    assert gone and not alive
    obj = sem_json(name)
    assert obj["dead_holders"] == 1 and obj["holders"][0]["pid"] == p.pid
    # Like any dead holder's: the next acquirer heals and gets them.
    r = run(IPCSEM, "run", name, "--units", "2", "--timeout", "10", "--", "true")
    assert r.returncode == 0, r.stderr
    obj = sem_json(name)
    assert (obj["available"], obj["recovered_units"]) == (2, 2)


COUNT = """
import signal, sys, time
seen = []
signal.signal(signal.SIGINT, lambda s, f: seen.append(s))
print("ready", flush=True)
while not seen:
    time.sleep(0.01)
time.sleep(1.0)                 # a second, forwarded copy would arrive by now
sys.exit(40 + len(seen))
"""


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_ctrl_c_in_a_terminal_reaches_cmd_once(name, tmp_path):
    """Ctrl-C makes the terminal signal the whole foreground group: CMD gets
    it from the kernel, and `ipcsem run` must not forward a second copy."""
    tmux = [shutil.which("tmux"), "-L", f"ipcsem-run-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            "-f", "/dev/null"]
    script = tmp_path / "count.py"
    script.write_text(COUNT)
    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", "r", "-x", "80", "-y", "10",
                        # the shell records the exit status: tmux 3.3
                        # sometimes never does
                        f"{IPCSEM} run {name} --capacity 1 -- {PY} {script}; "
                        f"echo $? > {tmp_path}/exit", ";",
                        "set-option", "-w", "-t", "r", "remain-on-exit", "on"], check=True)
        def screen():
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", "r"],
                                  capture_output=True, text=True).stdout

        wait_for(lambda: "ready" in screen(), timeout=30, what="CMD to start")
        subprocess.run([*tmux, "send-keys", "-t", "r", "C-c"], check=True)

        def exit_status():
            f = tmp_path / "exit"
            return f.exists() and f.read_text().strip()

        assert wait_for(exit_status, timeout=30, what="ipcsem run to exit") == "41", screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert sem_json(name)["available"] == 1


def test_priority_out_of_range_is_refused_up_front(name, tmp_path):
    """Checked before anything: even with a unit free, CMD never runs."""
    marker = tmp_path / "ran"
    for prio in ("99999999999", "-99999999999", "high"):
        r = run(IPCSEM, "run", name, "--capacity", "1", "--priority", prio, "--",
                "touch", str(marker))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not marker.exists() and not os.path.exists(f"/dev/shm/ipcsem.{name}")
    r = run(IPCSEM, "run", name, "--capacity", "1", "--priority", str(2**31 - 1), "--",
            "touch", str(marker))
    assert r.returncode == 0 and marker.exists()


def skip_if_busy_scenario(procs) -> None:
    name = "t-cron"
    p = procs([IPCSEM, "run", name, "--capacity", "1", "--", "sleep", "60"])
    wait_for(lambda: os.path.exists(f"/dev/shm/ipcsem.{name}") and held(name), what="holder")
    assert run(IPCSEM, "run", name, "--timeout", "0", "--", "true").returncode == 75
    p.kill()
    p.wait()
    # No supervisor, nobody blocked: a `--timeout 0` caller must heal by
    # itself, within about a second of the death.
    deadline = time.monotonic() + 5
    while run(IPCSEM, "run", name, "--timeout", "0", "--", "true").returncode != 0:
        assert time.monotonic() < deadline, "the dead holder's unit never came back"
        time.sleep(0.1)
    assert sem_json(name)["recovered_units"] == 1


def test_skip_if_busy_recovers_a_dead_holder_without_a_supervisor():
    # Isolated: another test's supervisor would do the healing for us.
    isolated(skip_if_busy_scenario)
