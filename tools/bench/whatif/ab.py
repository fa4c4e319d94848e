"""Interleaved A/B rounds of figure-2 cells under per-configuration
environment settings (the what-ifs' switches), run from the current tree.

    python -m tools.bench.whatif.ab CONFIGS CELLS ROUNDS DURATION_S

CONFIGS: JSON list of [label, contender key, {env}]; CELLS: P:cap:hold_us,...
Each round runs every configuration over every cell (one pool of workers
per configuration and round, started with that environment), so the load's
drift spreads over all of them; the medians over rounds are printed last.
CPU per op (the workers' getrusage) is the column the load moves least.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

from .. import contenders as C
from .. import procs
from ..figures.common import destroy_all
from ..figures.contended import _drain_pool, run_contended

SWITCHES = ("IPCSEM_BENCH_EXPERIMENT", "IPCSEM_EXP_CWAIT", "IPCSEM_EXP_LFSETTLE",
            "IPCSEM_EXP_ENQFIRST")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configs = json.loads(argv[0])
    cells = [tuple(map(int, c.split(":"))) for c in argv[1].split(",")]
    rounds, dur = int(argv[2]), float(argv[3])
    res: dict = {}
    saved = {k: os.environ.pop(k, None) for k in SWITCHES}
    try:
        for rnd in range(rounds):
            for lab, key, env in configs:
                os.environ.update(env)   # inherited by the workers started below
                pool: list = []
                try:
                    for cell in cells:
                        r = run_contended(C.get(key), *cell, dur, 20_000, pool)
                        res.setdefault((lab, cell), []).append(r)
                        print(f"r{rnd} {lab:22s} {cell} {r['ops_per_s'] / 1e3:8.1f}k/s "
                              f"J={r['jain']:.3f} cpu={r['cpu_us_per_op']:.2f}us "
                              f"vcsw={r['vcsw_per_op']:.2f} ivcsw={r['ivcsw_per_op']:.2f} "
                              f"load={os.getloadavg()[0]:.1f}", flush=True)
                finally:
                    _drain_pool(pool)
                    for k in env:
                        os.environ.pop(k, None)
    finally:
        procs.kill_all()
        destroy_all()
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
    print("\nmedian over rounds:")
    for (lab, cell), rs in res.items():
        def med(f, rs=rs):
            return statistics.median(r[f] for r in rs)
        print(f"{lab:22s} {cell} {med('ops_per_s') / 1e3:8.1f}k/s J={med('jain'):.3f} "
              f"cpu={med('cpu_us_per_op'):.2f}us vcsw={med('vcsw_per_op'):.2f} "
              f"ivcsw={med('ivcsw_per_op'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
