"""`make demo | head -3` (issue #13): the demo must notice the reader left,
stop at once, clean up (workers, supervisor, its semaphore) and print no
BrokenPipeError traceback.  And read to the end, it passes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                    "demo.py")


def demo_files() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("ipcsem.demo-")}


def test_demo_into_head_stops_quietly():
    before = demo_files()
    for lines in (3, 12):
        t0 = time.monotonic()
        r = subprocess.run(f"'{sys.executable}' '{DEMO}' | head -{lines}", shell=True,
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert r.returncode == 0
        assert len(r.stdout.splitlines()) == lines
        assert r.stderr == "", r.stderr                 # no BrokenPipeError, no traceback
        assert took < 8, took       # it used to wait 10 s for a supervisor line never printed
        assert demo_files() <= before


def test_demo_read_to_the_end_passes():
    r = subprocess.run([sys.executable, DEMO], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("demo OK") and "Traceback" not in r.stderr
