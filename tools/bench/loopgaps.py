"""Loop gaps with 1,000 waiting tasks: ipcsem.AsyncSemaphore next to
asyncio.Semaphore (issue 10's "a 1 ms ticker sees no gap above 10 ms while
1,000 tasks of the process wait on busy semaphores and others release").

Each contender runs in a fresh process (nothing but asyncio, the contender
and the ticker: no pytest, no bench harness in its heap): 1,000 tasks loop
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
import subprocess
import sys
import time

TASKS = 1000

_CHURN = r"""
import sys, time, ipcsem
s = ipcsem.Semaphore(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < end:
    if s.acquire(timeout=0.5):
        time.sleep(float(sys.argv[3]))
        s.release()
    time.sleep(float(sys.argv[3]))
"""

_MEASURED = r"""
import asyncio, gc, json, sys, time
from ipcsem.testing import watch_loop_gaps
kind, names, tasks = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
hold, seconds = float(sys.argv[4]), float(sys.argv[5])
gc_runs = []
def on_gc(phase, info, _t=[0.0]):
    if phase == "start":
        _t[0] = time.perf_counter()
    else:
        gc_runs.append((info["generation"], time.perf_counter() - _t[0]))

async def main():
    if kind == "ipcsem":
        import ipcsem
        sems = [ipcsem.AsyncSemaphore(n) for n in names]
        async def acquire(s):
            return await s.acquire(timeout=2.0)
    else:
        sems = [asyncio.Semaphore(2) for _ in names]
        async def acquire(s):
            try:
                await asyncio.wait_for(s.acquire(), 2.0)
                return True
            except asyncio.TimeoutError:
                return False
    stop = asyncio.Event()
    grants = [0]

    async def worker(i):
        s = sems[i % len(sems)]
        while not stop.is_set():
            if await acquire(s):
                grants[0] += 1
                await asyncio.sleep(0.001)
                s.release()

    async def churn(s):                  # the anchor's "others" (in-process)
        while not stop.is_set():
            async with s:
                await asyncio.sleep(hold)
            await asyncio.sleep(hold)

    loop = asyncio.get_running_loop()
    before = len(gc.get_objects())
    ts = [] if kind == "ipcsem" else [loop.create_task(churn(s)) for s in sems for _ in range(2)]
    async with watch_loop_gaps(0.001) as gaps:
        for i in range(tasks):
            ts.append(loop.create_task(worker(i)))
            if i % 50 == 49:
                await asyncio.sleep(0)
        await asyncio.sleep(1.0)
        per_task = (len(gc.get_objects()) - before) / tasks
        gaps.reset()
        gc_runs.clear()
        g0 = grants[0]
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        rate = (grants[0] - g0) / (time.monotonic() - t0)
        stop.set()
        await asyncio.gather(*ts)
    d = gaps.to_dict()
    d.update(grants_per_s=rate, objects_per_task=per_task,
             gc_max_ms=max((t for _, t in gc_runs), default=0.0) * 1e3,
             gc_runs=[sum(1 for g, _ in gc_runs if g == k) for k in range(3)],
             summary=gaps.summary())
    print(json.dumps(d))

gc.callbacks.append(on_gc)
asyncio.run(main())
"""


def _one(kind: str, hold: float, seconds: float) -> dict:
    import ipcsem
    from ipcsem.testing import unique_name

    names = [unique_name("lg") for _ in range(4)]
    churners: list[subprocess.Popen[str]] = []
    keep = []
    try:
        if kind == "ipcsem":
            keep = [ipcsem.Semaphore(n, capacity=2) for n in names]
            churners = [subprocess.Popen([sys.executable, "-c", _CHURN, n, str(seconds + 30),
                                          str(hold)], stdout=subprocess.PIPE, text=True)
                        for n in names for _ in range(2)]
            for p in churners:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        out = subprocess.run([sys.executable, "-c", _MEASURED, kind, ",".join(names),
                              str(TASKS), str(hold), str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 120, check=False)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return dict(json.loads(out.stdout))
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
