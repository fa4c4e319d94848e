"""Loop gaps with 1,000 waiting tasks: ipcsem.AsyncSemaphore next to
asyncio.Semaphore (issue 10's "a 1 ms ticker sees no gap above 10 ms while
1,000 tasks of the process wait on busy semaphores and others release").

The workload is ``ipcsem.testing.loop_load``'s, the one
tests/test_aio_loop.py runs.  Each contender runs in a fresh process (nothing
but asyncio, the contender and the ticker: no pytest, no bench harness in its
heap): 1,000 tasks loop
``acquire(timeout=2)`` / hold 1 ms / ``release`` over 4 semaphores of
capacity 2, while 8 churners hold a unit for HOLD s and pause as long --
for ipcsem other processes (sync ``ipcsem.Semaphore``), for the anchor
tasks of the same loop (``asyncio.Semaphore`` cannot be shared by
processes).  A 1 ms ticker (``ipcsem.testing.watch_loop_gaps``) records
every gap, the garbage collector's runs and the kernel's run-queue delay
within it.  Also: the tracked objects per waiting task (what each
collection walks).

    python -m tools.bench.loopgaps [--hold 0.002] [--seconds 3] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

TASKS = 1000

def _one(kind: str, hold: float, seconds: float) -> dict:
    import ipcsem
    from ipcsem.testing import unique_name
    from ipcsem.testing.loop_load import run_loop_load, start_churners

    names = [unique_name("lg") for _ in range(4)]
    churners: list = []
    keep = []
    try:
        if kind == "ipcsem":
            keep = [ipcsem.Semaphore(n, capacity=2) for n in names]
            churners = start_churners(names, 2, seconds + 30, hold)
        report = run_loop_load(kind, names, tasks=TASKS, hold=hold, seconds=seconds)
        flat = dict(report.pop("gaps"))        # the gap figures at the top, as before
        flat.update(report)
        return flat
    finally:
        for p in churners:
            p.kill()
            p.wait(10)
        for k in keep:
            try:
                k.unlink()
            except Exception:
                pass
            k.close()


def measure(hold: float = 0.002, seconds: float = 3.0, runs: int = 3) -> dict:
    """{kind: [run, ...]} for kind in ("ipcsem", "asyncio"), interleaved."""
    got: dict[str, list[dict]] = {"ipcsem": [], "asyncio": []}
    for _ in range(runs):
        for kind in got:
            got[kind].append(_one(kind, hold, seconds))
    return got


def table(got: dict) -> list[str]:
    def med(kind: str, key: str) -> float:
        xs = sorted(r[key] for r in got[kind])
        return xs[len(xs) // 2]

    rows = ["| measure (median of runs) | ipcsem.AsyncSemaphore | asyncio.Semaphore | ratio |",
            "| --- | --- | --- | --- |"]
    for label, key, unit in (("grants/s", "grants_per_s", "/s"),
                             ("tracked objects per waiting task", "objects_per_task", ""),
                             ("gap p50", "p50_ms", " ms"), ("gap p99", "p99_ms", " ms"),
                             ("gap max", "max_ms", " ms"),
                             ("longest garbage collection", "gc_max_ms", " ms"),
                             ("gap max less GC and run-queue delay", "max_held_ms", " ms")):
        a, b = med("ipcsem", key), med("asyncio", key)
        rows.append(f"| {label} | {a:,.1f}{unit} | {b:,.1f}{unit} | "
                    f"{a / b if b else float('nan'):.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.loopgaps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hold", type=float, default=0.002)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the runs as JSON here")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    got = measure(a.hold, a.seconds, a.runs)
    for kind, runs in got.items():
        for r in runs:
            print(f"{kind}: {r['grants_per_s']:.0f} grants/s, {r['objects_per_task']:.1f} "
                  f"objects/task, gc runs {r['gc_runs']}: {r['summary']}")
    print("\n".join(table(got)))
    print(f"({time.monotonic() - t0:.0f} s)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(got, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
