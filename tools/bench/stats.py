"""Small statistics helpers (stdlib only, so the harness runs without numpy)."""

from __future__ import annotations

import math


def percentile(sorted_vals, q):
    """Nearest-rank percentile (q in 0..100) of an already-sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def jain(xs):
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1.0 = perfectly even,
    1/n = one process got everything."""
    xs = list(xs)
    sq = sum(x * x for x in xs)
    if not xs or not sq:
        return None
    return sum(xs) ** 2 / (len(xs) * sq)


def summarize(vals):
    s = sorted(vals)
    return {"n": len(s), "median": percentile(s, 50), "p90": percentile(s, 90),
            "p99": percentile(s, 99), "max": s[-1] if s else None,
            "min": s[0] if s else None}
