"""What-if experiments for docs/perf.md: a proposed change to the library,
emulated inside the benchmark's worker processes only, so its effect can be
measured before anyone changes the library.

    IPCSEM_BENCH_EXPERIMENT=lazywatch .venv/bin/python -m tools.bench.profile_handoff ...

The worker (tools/bench/worker.py) applies the named experiment (several:
comma-separated) at start-up.  Each one replaces a private function of the
library: these are measurements of a design, not code to ship, and they
break as soon as the library changes -- which is fine, they are re-done
against the change itself then.  Never set in ``make bench``.

    nowatch    the waiters' pidfd watcher is off (watch.watching/done do
               nothing): the upper bound of what the watcher costs a
               handoff.  Recovery without a supervisor falls back to the
               half-second healing slices.
    lazywatch  the proposed watcher: a segment stays watched (pidfds,
               the identities seen) after its last waiter leaves, and a
               new wait pokes the watcher thread only when it brings a
               segment the thread does not watch yet.  (A real version
               would drop a segment after a linger time; here it stays.)
"""
from __future__ import annotations

import os


def _nowatch():
    from ipcsem._shm import watch

    watch.watching = lambda segment: None
    watch.done = lambda segment: None


def _lazywatch():
    import threading

    from ipcsem._shm import watch

    def watching(segment):
        if not hasattr(os, "pidfd_open"):
            return
        new = False
        with watch._lock:
            entry = watch._segments.get(id(segment))
            if entry is None:
                watch._segments[id(segment)] = [segment, 1, None, set()]
                new = True
            else:
                entry[1] += 1
            if watch._thread is None or not watch._thread.is_alive():
                if watch._wake_r < 0:
                    watch._wake_r, watch._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                watch._thread = threading.Thread(target=watch._run, name="ipcsem-watch",
                                                 daemon=True)
                watch._thread.start()
                new = True
        if new:
            watch._poke()

    def done(segment):
        with watch._lock:
            entry = watch._segments.get(id(segment))
            if entry is not None:
                entry[1] -= 1   # stays watched (the real change: until a linger time)

    watch.watching = watching
    watch.done = done


EXPERIMENTS = {"nowatch": _nowatch, "lazywatch": _lazywatch}


def apply_from_env() -> list[str]:
    names = [n for n in os.environ.get("IPCSEM_BENCH_EXPERIMENT", "").split(",") if n]
    for n in names:
        EXPERIMENTS[n]()
    return names
