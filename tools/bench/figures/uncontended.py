"""Figure 1: uncontended acquire+release pair, one process.

Measures what every critical section pays when nobody else wants the unit:
one acquire() + release() of a capacity-1 semaphore, ownership recorded
(ipcsem registers the holder in its ledger on every acquire).

How: in the harness process, per contender, a warm-up of pairs/10, then the
best of cfg.reps runs of cfg.pairs pairs (cfg.pairs_slow for the slow
file-lock contenders) with gc off, in the minimal loop of
common.time_pairs(). The same loop around two no-op C calls is reported as
"loop_overhead_ns": the floor, included in every number.

Target (issue #2): ipcsem <= 1.0x sysv_ipc SEM_UNDO; must be <= 1.5x.

Returns {"loop_overhead_ns", "contenders": {key: {"ns", "runs_ns", "pairs",
"reps", "status"}}}; rendered by report._md_uncontended/_plot_uncontended.
"""

from __future__ import annotations

from .common import best_pair_ns, fmt_status, guarded, log, semaphore, time_pairs


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

