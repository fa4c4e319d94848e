#!/usr/bin/env python3
"""Chaos storm: SIGKILL processes that share an ipcsem semaphore, thousands of
times, and check with an independent flock oracle that it never admits more
holders than units and never loses a unit.

    tools/chaos.py --kills 10000 --workers 8 --capacity 3 [--kill-every 10ms]
                   [--duration 60s] [--no-supervisor] [--spawn fork] [--json]

Exit status 0 only when there was no over-admission, no lost unit and every
end check passed.  The engine is ipcsem/_chaos.py (see its docstring).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ipcsem._chaos import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="tools/chaos.py"))
