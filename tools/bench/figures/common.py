"""What the figures share.

* Config: every figure's knobs, with the full-run defaults and the --quick
  values side by side (the harness writes it to results.json as "config").
* create() / destroy() / semaphore(): semaphores that destroy_all() removes
  at exit whatever happened; figures create every semaphore through these.
* guarded(): runs one contender's measurement and turns every failure --
  including a call that blocks forever in the harness (a SIGALRM watchdog)
  -- into a "status", so one contender failing never stops the run.
  Raise Unavailable inside it for "cannot be measured here".
* time_pairs() / best_pair_ns(): the uncontended acquire+release loop
  (figures 1 and 4).
* fmt_status(), file_sizes(), log(): progress lines and /dev/shm sizes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

from .. import procs

# ---------------------------------------------------------------------------
# Run configuration


@dataclass
class Config:
    quick: bool = False
    # fig 1, uncontended.py (reps and pairs: holders.py too)
    reps: int = 5
    pairs: int = 100_000
    pairs_slow: int = 2_000        # portalocker / filelock: ~50-100 us a pair
    # fig 2, contended.py: every cell of procs_list x caps x holds_us (issue #12)
    procs_list: list = field(default_factory=lambda: [2, 4, 8])
    caps: list = field(default_factory=lambda: [1, 2])
    holds_us: list = field(default_factory=lambda: [0, 50])
    # extra (P, cap, hold) cells run even if not in the product above
    extra_cells: list = field(default_factory=list)
    duration_s: float = 2.0
    sample_cap: int = 200_000      # wait-time samples kept per cell (all workers together)
    # fig 3, recovery.py: the targeted variants (kernel undo, ipcsem) get
    # `trials` so a p99 means something (nearest rank: the 99th of 100);
    # the others, which only show "polls" or "never", get trials_other.
    trials: int = 100
    trials_other: int = 30
    recovery_rounds: int = 4       # the targeted variants interleave in this many rounds
    recovery_timeout_s: float = 2.0
    abort_after: int = 5           # stop a variant after this many timeouts with no success
    # fig 4, holders.py
    ks: list = field(default_factory=lambda: [1, 10, 100, 1000])
    holders_capacity: int = 2000
    # fig 6, status.py (fig 5, memory.py, has no knobs)
    status_ns: list = field(default_factory=lambda: [100, 1000, 10_000])
    status_held: float = 0.1       # share of them with a live holder
    # fig 9, idle.py: an idle supervisor over registered holders
    idle_sems: int = 100
    idle_holders: int = 1000
    idle_s: float = 30.0

    @classmethod
    def make(cls, quick: bool) -> Config:
        global WATCHDOG_S
        WATCHDOG_S = 90 if quick else 300
        if not quick:
            return cls()
        # Budget: ~2 min on 2 cores, dominated by fig 2 cells (~0.5 s run +
        # process start-up each), fig 3's trials and fig 9's idle window.
        return cls(quick=True, pairs=20_000, pairs_slow=300,
                   procs_list=[2, 8], caps=[1], holds_us=[0],
                   extra_cells=[(8, 2, 0), (8, 1, 50)], duration_s=0.5,
                   sample_cap=50_000,
                   trials=20, trials_other=5, abort_after=1, recovery_rounds=2,
                   ks=[1, 10, 100], status_ns=[100, 1000],
                   idle_sems=10, idle_holders=100, idle_s=5.0)


# ---------------------------------------------------------------------------
# Helpers

_CREATED: dict = {}  # id(spec) -> (contender, spec): destroyed at exit no matter what


def create(c, capacity):
    spec = c.create(capacity)
    _CREATED[id(spec)] = (c, spec)
    return spec


def destroy(c, spec):
    _CREATED.pop(id(spec), None)
    c.destroy(spec)


@contextlib.contextmanager
def semaphore(c, capacity):
    spec = create(c, capacity)
    try:
        yield spec
    finally:
        destroy(c, spec)


def destroy_all() -> list:
    errors = []
    for c, spec in list(_CREATED.values()):
        try:
            destroy(c, spec)
        except Exception as e:
            errors.append(f"{c.key}: {e}")
    return errors


class Watchdog(Exception):
    pass


def _on_alarm(signum, frame):
    raise Watchdog(f"gave up after {WATCHDOG_S} s (something blocked in the harness itself?)")


WATCHDOG_S = 300  # per contender per figure cell; Config.make(quick) lowers it


@contextlib.contextmanager
def watchdog():
    """Raise Watchdog in the harness if the body takes over WATCHDOG_S."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(WATCHDOG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Unavailable(Exception):
    """The contender cannot be measured here (e.g. the ipcsem supervisor
    would not start): guarded() reports "unavailable: <why>", not "error"."""


def guarded(c, fn, *, capacity=1):
    """Run fn() for one contender, turning every failure -- including a call
    that blocks forever inside the harness process -- into a status."""
    reason = c.unavailable()
    if reason:
        return {"status": f"unavailable: {reason}"}
    if not c.applies(capacity):
        return {"status": "n/a", "why": f"capacity {capacity} > {c.max_capacity}"}
    with watchdog():
        try:
            out = fn()
            out.setdefault("status", "ok")
            return out
        except Unavailable as e:
            procs.kill_all()
            return {"status": f"unavailable: {e}"}
        except Exception as e:
            procs.kill_all()
            return {"status": "error", "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def time_pairs(acquire, release, n) -> int:
    """ns for n acquire+release pairs; the loop is kept minimal on purpose."""
    r = range(n)
    t = time.perf_counter_ns()
    for _ in r:
        acquire()
        release()
    return time.perf_counter_ns() - t


def timed_run(h, n) -> int:
    """ns for n pairs with gc off (one of best_pair_ns's runs)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        return time_pairs(h.acquire, h.release, n)
    finally:
        if gc_was:
            gc.enable()


def best_pair_ns(h, reps, n) -> dict:
    time_pairs(h.acquire, h.release, max(1, n // 10))  # warm-up
    gc_was = gc.isenabled()
    gc.disable()
    try:
        runs = [time_pairs(h.acquire, h.release, n) / n for _ in range(reps)]
    finally:
        if gc_was:
            gc.enable()
    return {"ns": min(runs), "runs_ns": runs, "pairs": n, "reps": reps}


def fmt_status(r, k, unit=""):
    if r.get("status") == "ok":
        v = r[k]
        return f"{v:,.0f} {unit}" if isinstance(v, (int, float)) else str(v)
    return r.get("status") + (f" {r.get('error', '')}" if r.get("error") else "")


def file_sizes(paths):
    files = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        files.append({"path": p, "st_size": st.st_size,
                      "allocated": st.st_blocks * 512})
    return {"files": files, "st_size": sum(f["st_size"] for f in files),
            "allocated": sum(f["allocated"] for f in files)}
