#!/usr/bin/env python3
"""How long `ipcsem-status` takes over many semaphores (issue #12: 10,000 in
under a second).  A measurement, not a test: run it, read the figures.

    .venv/bin/python tools/status_scale.py            # 10,000 semaphores
    .venv/bin/python tools/status_scale.py --count 1000 --held 0.5

One row of `make bench`'s figure 6 (tools/bench/figures/status.py does the
measuring): COUNT semaphores (a share --held of them with a live holder,
one process holding a unit of each), then ipcsem.names(), read_view() of
each, and the CLI as a fresh process (list, --json, --prometheus): best of
3, wall and CPU (user+sys of the child), Python start-up included.  As root
it runs in a mount namespace with a private /dev/shm, so nobody else's
semaphores are counted (or disturbed); otherwise it uses /dev/shm and
removes what it made.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--held", type=float, default=0.1, help="share with a holder (0.1)")
    ap.add_argument("--max-holders", type=int, default=16,
                    help="max_holders = max_waiters of each semaphore (16; 0: the defaults)")
    args = ap.parse_args()

    sys.path.insert(0, ROOT)
    from tools.bench.figures import status

    private = os.geteuid() == 0 and shutil.which("unshare") is not None
    row = status.measure(args.count, args.held, private, max_holders=args.max_holders,
                         formats=("list", "json", "prometheus"))
    if "error" in row:
        print(f"failed: {row['error']}", file=sys.stderr)
        return 1
    where = "a private /dev/shm" if private else "/dev/shm"
    print(f"{args.count} semaphores in {where} (made in {row['made_s']:.1f} s), {row['held']} "
          f"held; load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; best of "
          f"{status.STATUS_RUNS}:")
    print(f"  ipcsem.names()              {row['names_ms'] / 1e3:6.3f} s")
    print(f"  read_view() of each         {row['read_view_ms'] / 1e3:6.3f} s")
    for label, r in row["cli"].items():
        flag = "" if label == "list" else f"--{label}"
        print(f"  ipcsem-status {flag:<13} {r['wall_s']:6.3f} s wall  {r['cpu_s']:6.3f} s CPU  "
              f"({r['bytes'] / 1e6:.1f} MB out)")
    print(f"  python -c 'import ipcsem'   {row['startup_s']:6.3f} s (the start-up floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
