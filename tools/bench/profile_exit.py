"""How long a process takes to die, by what it imported -- the floor under
every recovery (docs/perf.md, "Recovery").

    .venv/bin/python -m tools.bench.profile_exit [--rounds 15]

1. SIGKILL of a sleeping `python -c "import X"` -> its pidfd readable, as
   the killer sees it, for a few X (and its /proc/PID/maps lines and RSS).
2. Kernel undo with a light and a heavy holder: a sysv_ipc SEM_UNDO holder
   that imported only sysv_ipc, and one that also imported ipcsem; the time
   from SIGKILL to a blocked sysv_ipc waiter holding the unit.

Rounds interleave the variants (the load drifts). Not part of
``make bench``.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import time

PY = sys.executable
SLEEP = "; print('r', flush=True); time.sleep(100)"
VICTIMS = {
    "import time": "import time",
    "import ssl": "import ssl, time",
    "import asyncio": "import asyncio, time",
    "import ipcsem, ipcsem._aio stubbed out": (
        "import sys, types; sys.modules['ipcsem._aio'] = types.SimpleNamespace("
        "AsyncSemaphore=None, AsyncMutex=None); import ipcsem, time"),
    "import ipcsem": "import ipcsem, time",
}


def _kill_and_time(p) -> float:
    fd = os.pidfd_open(p.pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        t = time.monotonic_ns()
        os.kill(p.pid, signal.SIGKILL)
        poller.poll(5000)
        return (time.monotonic_ns() - t) / 1e6
    finally:
        os.close(fd)
        p.wait()


def _facts(pid):
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for _ in f)
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))
    return maps, rss


def deaths(rounds):
    res, facts = {k: [] for k in VICTIMS}, {}
    for _ in range(rounds):
        for k, code in VICTIMS.items():
            p = subprocess.Popen([PY, "-c", code + SLEEP], stdout=subprocess.PIPE)
            p.stdout.readline()
            time.sleep(0.05)
            facts.setdefault(k, _facts(p.pid))
            res[k].append(_kill_and_time(p))
    print("SIGKILL -> pidfd readable, by what the victim imported:")
    for k, v in res.items():
        maps, rss = facts[k]
        print(f"  {k:40s} {maps:4d} maps {rss / 1024:5.1f} MB RSS   median "
              f"{statistics.median(v):5.2f} ms  max {max(v):5.2f} ms")


def kernel_undo(rounds):
    import sysv_ipc
    sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600, initial_value=1)
    waiter = None
    try:
        waiter = subprocess.Popen([PY, "-c", (
            "import sysv_ipc, time, sys\n"
            f"s = sysv_ipc.Semaphore({sem.key}); s.undo = True\n"
            "print('r', flush=True)\n"
            "while sys.stdin.readline():\n"
            "    s.acquire(); print(time.monotonic_ns(), flush=True); s.release()\n")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        waiter.stdout.readline()
        res = {"light (sysv_ipc only)": [], "heavy (also import ipcsem)": []}
        for _ in range(rounds):
            for k in res:
                extra = "import ipcsem; " if k.startswith("heavy") else ""
                h = subprocess.Popen([PY, "-c", extra + (
                    f"import sysv_ipc, time; s = sysv_ipc.Semaphore({sem.key}); s.undo = True; "
                    "s.acquire()") + SLEEP], stdout=subprocess.PIPE)
                h.stdout.readline()
                waiter.stdin.write("go\n")
                waiter.stdin.flush()
                time.sleep(0.1)   # the waiter is blocked in semop by now
                t = time.monotonic_ns()
                os.kill(h.pid, signal.SIGKILL)
                got = int(waiter.stdout.readline())
                res[k].append((got - t) / 1e6)
                h.wait()
        print("kernel undo: SIGKILL of a sysv_ipc SEM_UNDO holder -> the blocked waiter holds:")
        for k, v in res.items():
            print(f"  holder {k:28s} median {statistics.median(v):5.2f} ms  max {max(v):5.2f} ms")
    finally:
        if waiter is not None:
            waiter.kill()
            waiter.wait()
        sem.remove()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.profile_exit")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    deaths(args.rounds)
    try:
        kernel_undo(args.rounds)
    except ImportError:
        print("sysv_ipc not installed: kernel undo part skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
