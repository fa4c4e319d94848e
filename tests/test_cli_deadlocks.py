"""`ipcsem-status --deadlocks` (issue #9): each deadlock with who holds what
and who waits for what, exit 1 when there is one and 0 when none (--json
too); the list and detail views mark deadlocked semaphores.  Two real
processes each hold one semaphore and wait for the other's; the
non-deadlock shape next to it is a wait on a holder that is not waiting.
Other tests may make deadlocks of their own meanwhile: every look here
names its semaphores."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cli import IPCSEM, STATUS, needs_scripts, run, sem_json, wait_for

pytestmark = needs_scripts

CROSS = textwrap.dedent("""
    import ipcsem, sys
    mine, theirs = ipcsem.Semaphore(sys.argv[1]), ipcsem.Semaphore(sys.argv[2])
    mine.acquire()
    print("holding", flush=True)
    sys.stdin.readline()            # both hold before either waits
    theirs.acquire()
    print("got it", flush=True)
""")


def list_flags(name: str, text: str) -> list[str]:
    for line in text.splitlines():
        if line.split()[:1] == [name]:
            return line.split()[7:]
    raise AssertionError(f"{name} not listed in:\n{text}")


def test_deadlock_is_printed_marked_and_exits_1(names, procs):
    a, b, c = names(), names(), names()
    for n in (a, b, c):
        assert run(IPCSEM, "create", n, "--capacity", "1").returncode == 0
    p = procs([sys.executable, "-c", CROSS, a, b], stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, text=True)
    q = procs([sys.executable, "-c", CROSS, b, a], stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == q.stdout.readline() == "holding\n"
    # Not a deadlock: r waits for c, whose holder is not waiting for anything.
    holder = procs([IPCSEM, "run", c, "--", "sleep", "60"])
    wait_for(lambda: sem_json(c)["holders"], what="c's holder")
    waiter = procs([IPCSEM, "run", c, "--", "true"])
    wait_for(lambda: sem_json(c)["waiters"], what="c's waiter")
    r = run(STATUS, "--deadlocks", c)
    assert (r.returncode, r.stdout.strip()) == (0, "no deadlocks"), r.stderr

    for x in (p, q):
        x.stdin.write("go\n")
        x.stdin.flush()
    wait_for(lambda: sem_json(a)["waiters"] and sem_json(b)["waiters"], what="both to wait")
    r = run(STATUS, "--deadlocks", a, b)
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert out.startswith(f"deadlock 1: 2 processes ({min(p.pid, q.pid)}, {max(p.pid, q.pid)})")
    assert f"pid {p.pid} holds 1 of {a!r}" in out and f"pid {q.pid} holds 1 of {b!r}" in out
    assert f"pid {p.pid} (thread {p.pid}) waits for 1 of {b!r}" in out
    assert f"pid {q.pid} (thread {q.pid}) waits for 1 of {a!r}" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    r = run(STATUS, "--deadlocks", "--json", a, b)
    assert r.returncode == 1
    (dl,) = json.loads(r.stdout)["deadlocks"]
    assert dl["processes"] == sorted([p.pid, q.pid]) and dl["semaphores"] == sorted([a, b])
    assert len(dl["edges"]) == 4 and dl["description"]

    # The views mark it; c (a plain wait) is not marked.
    r = run(STATUS)
    assert list_flags(a, r.stdout) == ["D"] and list_flags(b, r.stdout) == ["D"]
    assert list_flags(c, r.stdout) == []
    assert "D deadlocked: `ipcsem-status --deadlocks`" in r.stdout
    assert sem_json(a)["deadlocked"] is True and sem_json(c)["deadlocked"] is False
    assert "DEADLOCKED" in run(STATUS, a).stdout

    # One of them dies: its unit comes back, the other goes on, no deadlock.
    p.kill()
    p.wait()
    assert q.stdout.readline() == "got it\n"
    r = run(STATUS, "--deadlocks", a, b)
    assert (r.returncode, r.stdout.strip()) == (0, "no deadlocks")
    r = run(STATUS, "--deadlocks", "--json", a, b)
    assert r.returncode == 0 and json.loads(r.stdout) == {"version": 1, "deadlocks": []}
    holder.kill()
    waiter.kill()


def test_deadlocks_of_a_missing_name(name):
    r = run(STATUS, "--deadlocks", name)
    assert r.returncode == 1 and r.stderr == f"ipcsem-status: no ipcsem semaphore named {name!r}\n"
