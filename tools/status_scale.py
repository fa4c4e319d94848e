#!/usr/bin/env python3
"""How long `ipcsem-status` takes over many semaphores (issue #12: 10,000 in
under a second).  A measurement, not a test: run it, read the figures.

    .venv/bin/python tools/status_scale.py            # 10,000 semaphores
    .venv/bin/python tools/status_scale.py --count 1000 --held 0.5

Creates COUNT semaphores (a share --held of them with a live holder, one
process holding a unit of each), then times the list, --json and
--prometheus: best of --runs, wall and CPU (user+sys of the child), Python
start-up included.  As root it runs in a mount namespace with a private
/dev/shm, so nobody else's semaphores are counted (or disturbed); otherwise
it uses /dev/shm and removes what it made.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIVATE = "IPCSEM_SCALE_PRIVATE"

HOLDER = """
import sys, ipcsem
sems = [ipcsem.Semaphore(n) for n in sys.stdin.read().split()]
for s in sems:
    s.acquire()
print("holding", flush=True)
import time; time.sleep(3600)
"""


def timed(args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, bytes of output) of one run."""
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{args} failed")
    return wall, usage.ru_utime + usage.ru_stime, len(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--held", type=float, default=0.1, help="share with a holder (0.1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-holders", type=int, default=16)
    args = ap.parse_args()

    if os.geteuid() == 0 and not os.environ.get(PRIVATE) and shutil.which("unshare"):
        script = (f"mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec {sys.executable} "
                  + " ".join(f"'{a}'" for a in sys.argv))
        return subprocess.call(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                script], env={**os.environ, PRIVATE: "1"})

    sys.path.insert(0, ROOT)
    import ipcsem

    bin_dir = os.path.dirname(sys.executable)
    status = shutil.which("ipcsem-status", path=bin_dir) or "ipcsem-status"
    prefix = f"scale-{os.getpid()}"
    names = [f"{prefix}-{i:05d}" for i in range(args.count)]
    t0 = time.monotonic()
    for n in names:
        ipcsem.Semaphore(n, 2, max_holders=args.max_holders, max_waiters=args.max_holders).close()
    made = time.monotonic() - t0
    held = names[: int(args.count * args.held)]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    holder.stdin.write(" ".join(held))
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "holding"
    try:
        where = "a private /dev/shm" if os.environ.get(PRIVATE) else "/dev/shm"
        print(f"{args.count} semaphores in {where} (made in {made:.1f} s), {len(held)} held; "
              f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; best of {args.runs}:")
        for label, argv in (("list", [status]), ("--json", [status, "--json"]),
                            ("--prometheus", [status, "--prometheus"])):
            runs = [timed(argv) for _ in range(args.runs)]
            wall = min(r[0] for r in runs)
            cpu = min(r[1] for r in runs)
            print(f"  ipcsem-status {label:<13} {wall:6.3f} s wall  {cpu:6.3f} s CPU  "
                  f"({runs[0][2] / 1e6:.1f} MB out)")
    finally:
        holder.kill()
        holder.wait()
        if not os.environ.get(PRIVATE):
            for n in names:
                try:
                    ipcsem.unlink(n)
                except ipcsem.IpcsemError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
