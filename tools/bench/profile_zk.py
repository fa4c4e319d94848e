"""Where a contended acquisition's ZooKeeper requests and client CPU go.

    python -m tools.bench.profile_zk [--procs 8] [--capacity 1] [--duration 3]
                                     [--kind ipcsem|kazoo] [--cprofile]

Starts a standalone server, runs P processes looping acquire+release on one
semaphore (as ``tools.bench.zk``'s contended figure does), each counting the
requests its kazoo client sends, by type and by target (gate, queue
listing, a request node, a hold node, the posts node, the heartbeat), and
the watch events it receives.  Prints the per-acquisition totals, and with
``--cprofile`` the top functions of worker 0 by cumulative client CPU.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _target(path: str | None) -> str:
    if not path:
        return "-"
    last = path.rsplit("/", 1)[-1]
    if last.startswith(("r_", "h_", "lock-", "__lock__")):
        return last.split("_", 1)[0] if last[1] == "_" else "lock"
    return last if last in ("gate", "q", "posts", "leases", "lock") else "other"


def _op(req: object) -> str:
    kind = type(req).__name__
    if kind == "Transaction":
        ops = req.operations  # type: ignore[attr-defined]
        return "multi(" + ",".join(f"{type(o).__name__}:{_target(o.path)}" for o in ops) + ")"
    return f"{kind}:{_target(getattr(req, 'path', None))}"


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by thread name."""
    import threading
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        name = names.get(int(tid), name).split(" (")[0]
        fields = raw[raw.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def worker(kind: str, url: str, name: str, cap: int, start_at: float, duration: float,
           profile: bool) -> None:
    profs = []
    if profile:
        import cProfile
        import threading
        run = threading.Thread.run

        def profiled(self: threading.Thread) -> None:
            prof = cProfile.Profile()
            profs.append(prof)
            prof.enable()
            run(self)
        threading.Thread.run = profiled  # type: ignore[method-assign]
    from kazoo.client import KazooClient

    counts: collections.Counter[str] = collections.Counter()
    events: collections.Counter[str] = collections.Counter()
    original = KazooClient._call

    def counted(self: KazooClient, request: object, async_object: object) -> object:
        counts[_op(request)] += 1
        return original(self, request, async_object)
    KazooClient._call = counted  # type: ignore[method-assign]
    from tools.bench.zk import OPENERS
    acquire, release, _ = OPENERS[kind](url, name, cap)
    # watch events delivered, by target
    if kind == "ipcsem":
        from ipcsem._zk import _handle
        fire = _handle._Queued._fire

        def fired(self: object, event: object = None) -> None:
            events[f"{getattr(event, 'type', None)}:{_target(getattr(event, 'path', None))}"] += 1
            fire(self, event)  # type: ignore[arg-type]
        _handle._Queued._fire = fired  # type: ignore[method-assign]
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    counts.clear()
    threads0 = _thread_cpu()
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    end = time.monotonic() + duration
    n = 0
    cpu0 = time.process_time()
    while time.monotonic() < end:
        release(acquire())
        n += 1
    cpu = time.process_time() - cpu0
    threads = _thread_cpu()
    for k, v in threads0.items():
        threads[k] = threads.get(k, 0.0) - v
    if prof is not None:
        prof.disable()
        import pstats
        st = pstats.Stats(prof)
        for p in profs:
            p.create_stats()
            st.add(p)
        st.dump_stats(f"/tmp/profile_zk.{os.getpid()}.prof")
    print(json.dumps({"count": n, "cpu": cpu, "requests": dict(counts), "threads": threads,
                      "events": dict(events),
                      "profile": f"/tmp/profile_zk.{os.getpid()}.prof" if prof else None}),
          flush=True)
    os._exit(0)


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        a = sys.argv[2:]
        worker(a[0], a[1], a[2], int(a[3]), float(a[4]), float(a[5]), a[6] == "1")
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=1)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--kind", default="ipcsem")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--url")
    args = ap.parse_args()
    from ipcsem._zk import server as zkserver
    srv = None
    url = args.url
    if url is None:
        srv = zkserver.Standalone()
        url = srv.url()
    try:
        name = f"prof-{args.kind}-{time.monotonic_ns()}"
        start_at = time.time() + 1.5 + 0.15 * args.procs
        ps = [subprocess.Popen(
            [sys.executable, "-m", "tools.bench.profile_zk", "--worker", args.kind, url, name,
             str(args.capacity), str(start_at), str(args.duration),
             "1" if args.cprofile and i == 0 else "0"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True) for i in range(args.procs)]
        outs = [json.loads(p.stdout.readline()) for p in ps]   # type: ignore[union-attr]
        for p in ps:
            p.wait(30)
    finally:
        if srv is not None:
            srv.close()
    total = sum(o["count"] for o in outs)
    cpu = sum(o["cpu"] for o in outs)
    req: collections.Counter[str] = collections.Counter()
    ev: collections.Counter[str] = collections.Counter()
    for o in outs:
        req.update(o["requests"])
        ev.update(o["events"])
    print(f"{args.kind} P={args.procs} capacity={args.capacity}: {total / args.duration:.0f}/s, "
          f"{sum(req.values()) / total:.2f} requests/acq, {cpu / total * 1e3:.2f} ms CPU/acq")
    for k, v in req.most_common():
        print(f"  {v / total:6.2f}  {k}")
    th: collections.Counter[str] = collections.Counter()
    for o in outs:
        th.update(o["threads"])
    print("  client CPU per acquisition by thread (ms):")
    for k, v in th.most_common():
        print(f"  {v / total * 1e3:6.2f}  {k}")
    if ev:
        print("  watch events per acquisition:")
        for k, v in ev.most_common():
            print(f"  {v / total:6.2f}  {k}")
    prof = outs[0].get("profile")
    if prof:
        import pstats
        st = pstats.Stats(prof)
        print(f"worker 0: {outs[0]['count']} acquisitions")
        st.sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
