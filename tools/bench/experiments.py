"""What-if experiments for docs/perf.md: a proposed change to the library,
emulated inside the benchmark's worker processes only, so its effect can be
measured before anyone changes the library.

    IPCSEM_BENCH_EXPERIMENT=nowatch .venv/bin/python -m tools.bench.profile_handoff ...

The worker (tools/bench/worker.py) applies the named experiment (several:
comma-separated) at start-up.  Each one replaces a private function of the
library: these are measurements of a design, not code to ship, and they
break as soon as the library changes -- which is fine, they are re-done
against the change itself then.  Never set in ``make bench``.

    nowatch    the waiters' pidfd watcher is off (watch.watching/done do
               nothing): the upper bound of what the watcher costs a
               handoff.  Recovery without a supervisor falls back to the
               half-second healing slices.
    (lazywatch, the watcher kept across waits, is the library's own
    behaviour since watch.LINGER: no longer an experiment.)
"""
from __future__ import annotations

import os


def _nowatch():
    from ipcsem._shm import watch

    watch.watching = lambda segment: None
    watch.done = lambda segment: None


EXPERIMENTS = {"nowatch": _nowatch}


def apply_from_env() -> list[str]:
    names = [n for n in os.environ.get("IPCSEM_BENCH_EXPERIMENT", "").split(",") if n]
    for n in names:
        EXPERIMENTS[n]()
    return names
