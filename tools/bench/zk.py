"""ipcsem's ZooKeeper backend side by side with kazoo's ``Semaphore``, same run,
same servers (a standalone server and a 3-node ensemble on loopback).

    python -m tools.bench.zk [--quick] [--out results.json] [--only pair,contended,kill,pause]

Measures (ratios are ipcsem / kazoo):
  pair       acquire+release of one unit, one process, median of N pairs
  contended  acquisitions/s with P = 1, 2, 4, 8 processes looping, capacity 1 and 2
  kill       SIGKILL of a holder -> a waiter in another process (its own
             session) holds the unit; ipcsem with a host supervisor running
  pause      a holder SIGSTOPped past its session timeout: when its lease
             stops being guaranteed, and whether it is told after SIGCONT
  freeze     (ensemble) a busy holder talking to the leader, which is
             SIGSTOPped: how long until the holder's lease says invalid

Contended figures are the best of --rounds interleaved rounds (the machine
may be shared: the best round is the least disturbed one, for both).

Prints a markdown table and writes every number to ``--out`` (JSON).
Needs java + Debian's zookeeper package and kazoo (pip install kazoo).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from ipcsem._zk import server as zkserver  # noqa: E402


# ------------------------------------------------------------------ contenders
def _ipcsem_open(url: str, name: str, capacity: int):
    import ipcsem._zk  # noqa: F401
    from ipcsem._backend import resolve
    from ipcsem._records import Params
    h = resolve(url).open(name, Params(capacity=capacity, initial=capacity))
    tid = threading.get_native_id()

    def acquire():
        # A blocking acquire: wait() tries the last known state first and
        # queues at once if busy (a take() first would add a read).
        lease = h.wait(1, 0, tid, tid, time.monotonic() + 60)
        assert lease is not None
        return lease

    def release(lease):
        h.release(1, tid, lease)
    return acquire, release, h


def _kazoo_open(url: str, name: str, capacity: int, timeout: float = 10.0):
    from kazoo.client import KazooClient
    from kazoo.recipe.lock import Semaphore
    hosts = url.split("://", 1)[1].split("/", 1)[0].split("?")[0]
    c = KazooClient(hosts=hosts, timeout=timeout)
    c.start()
    s = Semaphore(c, f"/kazoo-bench/{name}", max_leases=capacity)

    def acquire():
        assert s.acquire(timeout=60)
        return s

    def release(_lease):
        s.release()
    return acquire, release, (c, s)


OPENERS = {"ipcsem": _ipcsem_open, "kazoo": _kazoo_open}


def worker(argv: list[str]) -> None:
    """--worker KIND URL NAME CAPACITY START_AT DURATION: loop, print the count."""
    kind, url, name, cap, start_at, duration = argv
    acquire, release, _ = OPENERS[kind](url, name, int(cap))
    delay = float(start_at) - time.time()
    if delay > 0:
        time.sleep(delay)
    end = time.monotonic() + float(duration)
    n = 0
    cpu0 = time.process_time()
    while time.monotonic() < end:
        release(acquire())
        n += 1
    print(json.dumps({"count": n, "cpu": time.process_time() - cpu0}), flush=True)
    os._exit(0)


def holder(argv: list[str]) -> None:
    """--holder KIND URL NAME TIMEOUT: take the unit, say so, then sleep; on
    SIGCONT-after-pause (a line on stdin) report what it believes."""
    kind, url, name, timeout = argv
    if kind == "ipcsem":
        session_url = url.replace("session_timeout=10", f"session_timeout={timeout}")
        acquire, release, _h = _ipcsem_open(session_url, name, 1)
        lease = acquire()
        print(json.dumps({"held": time.time(), "deadline_in": lease.deadline - time.monotonic()}),
              flush=True)
        sys.stdin.readline()
        told, err = (not lease.valid), None
        try:
            release(lease)
        except Exception as e:
            err = type(e).__name__
        print(json.dumps({"told": told, "release": err}), flush=True)
    else:
        acquire, release, (_c, s) = _kazoo_open(url, name, 1, float(timeout))
        acquire()
        print(json.dumps({"held": time.time()}), flush=True)
        sys.stdin.readline()
        time.sleep(1.0)   # let kazoo reconnect after the pause
        told = not s.is_acquired
        rel = s.release()
        print(json.dumps({"told": told, "release": repr(rel)}), flush=True)
    sys.stdin.readline()
    os._exit(0)


def freezer(argv: list[str]) -> None:
    """--freezer KIND URL NAME: hold the unit, print when the holder can
    tell it may have lost it (ipcsem: lease.valid; kazoo: is_acquired or the
    connection state), or null after 15 s.  The holder stays busy (kazoo
    counts its requests as pings) the way a worker would."""
    kind, url, name = argv
    if kind == "ipcsem":
        acquire, _release, _h = _ipcsem_open(url, name, 1)
        lease = acquire()
        told = lambda: not lease.valid  # noqa: E731
    else:
        acquire, _release, (c, s) = _kazoo_open(url, name, 1, 4.0)
        acquire()
        told = lambda: (not s.is_acquired) or c.state != "CONNECTED"  # noqa: E731
        def busy():
            while True:
                c.exists_async("/")
                time.sleep(0.05)
        threading.Thread(target=busy, daemon=True).start()
    print(json.dumps({"held": time.time()}), flush=True)
    end = time.monotonic() + 1e9
    while not told():
        time.sleep(0.005)
        if sys.stdin in select.select([sys.stdin], [], [], 0)[0]:
            end = min(end, time.monotonic())
        if time.monotonic() > end:
            break
    print(json.dumps({"invalid": time.time() if told() else None}), flush=True)
    sys.stdin.readline()
    os._exit(0)


def waiter(argv: list[str]) -> None:
    """--waiter KIND URL NAME TIMEOUT: block for the unit, print the grant time."""
    kind, url, name, timeout = argv
    if kind == "ipcsem":
        acquire, _release, _ = _ipcsem_open(url, name, 1)
    else:
        acquire, _release, _ = _kazoo_open(url, name, 1, float(timeout))
    print(json.dumps({"ready": True}), flush=True)
    acquire()
    print(json.dumps({"granted": time.time()}), flush=True)
    sys.stdin.readline()
    os._exit(0)


def spawn(mode: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.bench.zk", mode, *map(str, args)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, bufsize=1)


def line(p: subprocess.Popen) -> dict:
    out = p.stdout.readline()
    if not out:
        raise RuntimeError(f"benchmark child exited ({p.args})")
    return json.loads(out)


# ----------------------------------------------------------------- figures
def bench_pair(url: str, n: int) -> dict:
    """Both contenders in alternating blocks of 50 pairs after a warm-up of
    the server (a fresh JVM is slower for whoever goes first)."""
    opened = {k: OPENERS[k](url, f"pair-{k}", 1) for k in ("ipcsem", "kazoo")}
    for acquire, release, _ in opened.values():
        for _ in range(300):
            release(acquire())
    times: dict = {k: [] for k in opened}
    for _ in range(max(1, n // 50)):
        for k, (acquire, release, _) in opened.items():
            for _ in range(50):
                t = time.perf_counter()
                release(acquire())
                times[k].append(time.perf_counter() - t)
    opened["kazoo"][2][0].stop()
    from ipcsem import _backend
    _backend.resolve(url).close()
    _backend.forget(url)
    return {k: {"median_ms": statistics.median(v) * 1e3,
                "p90_ms": sorted(v)[int(0.9 * len(v))] * 1e3} for k, v in times.items()}


def received(group) -> int:
    """Requests the servers received so far (the ``srvr`` counters)."""
    n = 0
    for s in group.servers:
        for ln in zkserver.four_letter(s.client_port).splitlines():
            if ln.startswith("Received:"):
                n += int(ln.split(":", 1)[1])
    return n


def bench_contended(url: str, kind: str, procs: int, cap: int, duration: float,
                    group=None) -> float:
    name = f"cont-{kind}-{procs}-{cap}-{time.monotonic_ns()}"
    start_at = time.time() + 1.5 + 0.15 * procs     # everyone connected first
    ps = [spawn("--worker", kind, url, name, cap, start_at, duration) for _ in range(procs)]
    before = received(group) if group is not None else 0
    total = 0
    cpu = 0.0
    for p in ps:
        got = line(p)
        total += got["count"]
        cpu += got["cpu"]
        p.wait(30)
    LAST_CPU[kind] = cpu / max(1, total)
    if group is not None:
        # includes each worker's connect and open: a few dozen requests
        LAST_REQUESTS[kind] = (received(group) - before) / max(1, total)
    return total / duration


LAST_CPU: dict[str, float] = {}   # client CPU seconds per acquisition, last contended run
LAST_REQUESTS: dict[str, float] = {}   # server requests per acquisition, last contended run


def bench_kill(url: str, kind: str, rounds: int, session: float) -> list[float]:
    out = []
    sup = None
    if kind == "ipcsem":
        from ipcsem._zk import LocalSupervisor
        ready = threading.Event()
        sup = LocalSupervisor(url, on_watching=ready.set).start()
        ready.wait(10)
    for i in range(rounds):
        name = f"kill-{kind}-{i}-{time.monotonic_ns()}"
        h = spawn("--holder", kind, url, name, session)
        line(h)
        w = spawn("--waiter", kind, url, name, session)
        line(w)
        time.sleep(0.5)       # the waiter is queued and watching
        t0 = time.time()
        h.kill()
        h.wait()
        got = line(w)["granted"]
        out.append((got - t0) * 1e3)
        w.kill()
        w.wait()
    if sup is not None:
        sup.stop()
    return out


def bench_pause(url: str, kind: str, session: float) -> dict:
    name = f"pause-{kind}-{time.monotonic_ns()}"
    h = spawn("--holder", kind, url, name, session)
    first = line(h)
    w = spawn("--waiter", kind, url, name, session)
    line(w)
    stopped = time.time()
    os.kill(h.pid, signal.SIGSTOP)
    got = line(w)["granted"]
    os.kill(h.pid, signal.SIGCONT)
    h.stdin.write("\n")
    h.stdin.flush()
    after = line(h)
    res = {"other_granted_after_s": got - stopped, "told": after["told"],
           "release": after["release"]}
    if kind == "ipcsem":
        # the lease stopped being guaranteed this long after the pause began
        res["guaranteed_for_s"] = first["deadline_in"] - (stopped - first["held"])
    for p in (h, w):
        p.kill()
        p.wait()
    return res


# ------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--worker", "--holder", "--waiter", "--freezer"):
        {"--worker": worker, "--holder": holder, "--waiter": waiter,
         "--freezer": freezer}[argv[0]](argv[1:])
        return 0
    ap = argparse.ArgumentParser(prog="python -m tools.bench.zk",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer pairs, shorter runs (about 6 min instead of 14)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tools", "bench", "out", "zk.json"))
    ap.add_argument("--only", default="pair,contended,kill,pause,freeze")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per contended figure (default 2, --quick 1)")
    ap.add_argument("--setups", default="standalone,ensemble")
    ap.add_argument("--fsync", action="store_true",
                    help="servers fsync their transaction log (off by default: the figures "
                         "are then about the protocol, not a shared disk)")
    args = ap.parse_args(argv)
    why = zkserver.missing()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    pairs = 300 if args.quick else 1000
    duration = 1.5 if args.quick else 3.0
    rounds = 3 if args.quick else 7
    crounds = args.rounds or (1 if args.quick else 2)
    results: dict = {"quick": args.quick, "fsync": args.fsync, "setups": {}}
    rows: list[str] = []
    for setup in args.setups.split(","):
        group = (zkserver.Standalone(fsync=args.fsync) if setup == "standalone"
                 else zkserver.Ensemble(3, fsync=args.fsync))
        try:
            url = group.url("/bench", session_timeout=10)
            r: dict = results["setups"].setdefault(setup, {})
            if "pair" in only:
                r["pair"] = bench_pair(url, pairs)
                a, b = r["pair"]["ipcsem"]["median_ms"], r["pair"]["kazoo"]["median_ms"]
                rows.append(f"| {setup} | acquire+release pair, median | {a:.2f} ms | {b:.2f} ms "
                            f"| {a / b:.2f}x |")
            if "contended" in only:
                r["contended"] = {}
                for k in ("ipcsem", "kazoo"):          # warm the server up (not recorded)
                    bench_contended(url, k, 2, 1, 1.0, group)
                for cap in (1, 2):
                    for procs in (1, 2, 4, 8):
                        runs: dict = {"ipcsem": [], "kazoo": []}
                        reqs: dict = {"ipcsem": [], "kazoo": []}
                        cpus: dict = {"ipcsem": [], "kazoo": []}
                        for i in range(crounds):
                            order = ("ipcsem", "kazoo") if i % 2 == 0 else ("kazoo", "ipcsem")
                            for k in order:
                                runs[k].append(bench_contended(url, k, procs, cap, duration,
                                                               group))
                                reqs[k].append(LAST_REQUESTS[k])
                                cpus[k].append(LAST_CPU[k] * 1e3)
                        v = {k: max(x) for k, x in runs.items()}
                        rq = {k: min(x) for k, x in reqs.items()}
                        cp = {k: min(x) for k, x in cpus.items()}
                        r["contended"][f"cap{cap}-P{procs}"] = {
                            **v, "rounds": runs, "requests_per_acquisition": reqs,
                            "client_cpu_ms_per_acquisition": cpus}
                        rows.append(f"| {setup} | contended, capacity {cap}, P={procs} "
                                    f"| {v['ipcsem']:.0f}/s ({rq['ipcsem']:.1f} req, "
                                    f"{cp['ipcsem']:.1f} ms CPU /acq) "
                                    f"| {v['kazoo']:.0f}/s ({rq['kazoo']:.1f} req, "
                                    f"{cp['kazoo']:.1f} ms CPU /acq) "
                                    f"| {v['ipcsem'] / v['kazoo']:.2f}x |")
            if "kill" in only:
                sess = 2.0
                kurl = group.url("/bench", session_timeout=sess)
                v = {k: bench_kill(kurl, k, rounds, sess) for k in ("ipcsem", "kazoo")}
                r["kill_ms"] = v
                a, b = statistics.median(v["ipcsem"]), statistics.median(v["kazoo"])
                rows.append(f"| {setup} | SIGKILLed holder -> waiter holds (2 s session), median "
                            f"| {a:.1f} ms | {b:.0f} ms | {a / b:.3f}x |")
            if "pause" in only and setup == "standalone":
                sess = 2.0
                purl = group.url("/bench", session_timeout=sess)
                v = {k: bench_pause(purl, k, sess) for k in ("ipcsem", "kazoo")}
                r["pause"] = v
                rows.append(f"| {setup} | SIGSTOPped holder (2 s session): lease guaranteed for "
                            f"| {v['ipcsem']['guaranteed_for_s']:.2f} s | - | |")
                rows.append(f"| {setup} | ... told after SIGCONT (release raises) "
                            f"| {v['ipcsem']['told']} ({v['ipcsem']['release']}) "
                            f"| {v['kazoo']['told']} (release -> {v['kazoo']['release']}) | |")
            if "freeze" in only and setup == "ensemble":
                leader = group.leader()
                lurl = (f"zookeeper://127.0.0.1:{leader.client_port}/bench"
                        "?session_timeout=4")
                fs = {k: spawn("--freezer", k, lurl, f"freeze-{k}-{time.monotonic_ns()}")
                      for k in ("ipcsem", "kazoo")}
                for f in fs.values():
                    line(f)
                time.sleep(1.0)
                t0 = time.time()
                leader.stop()
                waited = {}
                inv = line(fs["ipcsem"])["invalid"]
                waited["ipcsem"] = inv - t0
                time.sleep(max(0.0, 15 - (time.time() - t0)))   # kazoo: give it 15 s
                fs["kazoo"].stdin.write("\n")
                fs["kazoo"].stdin.flush()
                kinv = line(fs["kazoo"])["invalid"]
                waited["kazoo"] = None if kinv is None else kinv - t0
                r["freeze_s"] = waited
                kz = "not within 15 s" if kinv is None else f"{kinv - t0:.2f} s"
                rows.append(f"| {setup} | frozen leader (4 s session): busy holder told after "
                            f"| {waited['ipcsem']:.2f} s | {kz} | |")
                leader.cont()
                for f in fs.values():
                    f.kill()
                    f.wait()
        finally:
            group.close()
    print("| setup | measure | ipcsem | kazoo Semaphore | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n(all numbers: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
