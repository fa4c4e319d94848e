"""Figure 1: uncontended acquire+release pair, one process.

Measures what every critical section pays when nobody else wants the unit:
one acquire() + release() of a capacity-1 semaphore, ownership recorded
(ipcsem registers the holder in its ledger on every acquire).

How: in the harness process, per contender, a warm-up of pairs/10, then the
best of cfg.reps runs of cfg.pairs pairs (cfg.pairs_slow for the slow
file-lock contenders) with gc off, in the minimal loop of
common.time_pairs(). The same loop around two no-op C calls is reported as
"loop_overhead_ns": the floor, included in every number.

The ipcsem variants (fair=False, slots=True, Mutex: contenders.py) are
measured the same way, next to the plain semaphore.

Targets (issue #12, PAIR_TARGETS; report.py checks them): ipcsem <= 2.0x
the raw posix_ipc pair; the slotted semaphore's and the mutex's pairs each
<= 1.2x the plain pair; fair=False no slower than the fair pair (<= 1.05x:
best-of-5 readings move by about that much from run to run here).

Returns {"loop_overhead_ns", "contenders": {key: {"ns", "runs_ns", "pairs",
"reps", "status"}}}; rendered by report._md_uncontended/_plot_uncontended.
"""

from __future__ import annotations

from .common import best_pair_ns, fmt_status, guarded, log, semaphore, time_pairs

# (contender, reference, max ratio, what)
PAIR_TARGETS = [
    ("ipcsem", "posix", 2.0, "uncontended pair (ownership recorded) vs the raw posix_ipc pair"),
    ("ipcsem-slots", "ipcsem", 1.2, "slotted semaphore pair vs the plain pair"),
    ("ipcsem-mutex", "ipcsem", 1.2, "mutex pair vs the plain pair"),
    ("ipcsem-unfair", "ipcsem", 1.05, "fair=False pair no slower than the fair pair"),
]


def fig_uncontended(cfg, cs):
    out = {"contenders": {}}
    # What the Python loop + two C calls costs by itself: the floor below
    # which no contender can go in this harness.
    noop = ().__len__
    out["loop_overhead_ns"] = min(time_pairs(noop, noop, cfg.pairs) / cfg.pairs
                                  for _ in range(cfg.reps))
    for c in cs:
        def run(c=c):
            n = cfg.pairs_slow if c.slow else cfg.pairs
            with semaphore(c, 1) as spec:
                h = c.open(spec)
                try:
                    return best_pair_ns(h, cfg.reps, n)
                finally:
                    h.close()
        out["contenders"][c.key] = r = guarded(c, run)
        log(f"  fig1 {c.key:12s} {fmt_status(r, 'ns', 'ns')}")
    return out

