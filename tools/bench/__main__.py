"""python -m tools.bench [--quick] [--out DIR] [--only FIGURE,...] [--contenders KEY,...]"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

from . import contenders as C
from . import figures, procs, report

FIG_NAMES = [name for name, _ in figures.FIGURES]


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Benchmark ipcsem against other cross-process semaphores.")
    ap.add_argument("--quick", action="store_true",
                    help="smaller iteration counts / durations (< 60 s on 2 cores)")
    ap.add_argument("--out", default=os.path.join(procs.ROOT, "tools", "bench", "out"),
                    help="output directory (default: tools/bench/out)")
    ap.add_argument("--only", default="",
                    help="comma-separated figures to run, by name or number: "
                         + ", ".join(f"{i + 1}={n}" for i, n in enumerate(FIG_NAMES)))
    ap.add_argument("--contenders", default="",
                    help="comma-separated contender keys (default: all): "
                         + ", ".join(c.key for c in C.ALL))
    args = ap.parse_args(argv)
    if args.only:
        sel = []
        for raw in args.only.split(","):
            tok = raw.strip()
            if tok.isdigit() and 1 <= int(tok) <= len(FIG_NAMES):
                tok = FIG_NAMES[int(tok) - 1]
            if tok not in FIG_NAMES:
                ap.error(f"unknown figure {tok!r}; choose from {FIG_NAMES}")
            sel.append(tok)
        args.only = sel
    else:
        args.only = FIG_NAMES
    if args.contenders:
        keys = [k.strip() for k in args.contenders.split(",")]
        bad = [k for k in keys if k not in C.BY_KEY]
        if bad:
            ap.error(f"unknown contender(s) {bad}; choose from {list(C.BY_KEY)}")
        # The reference stays in so every ratio has a denominator.
        if C.REFERENCE not in keys:
            keys.insert(0, C.REFERENCE)
        args.contenders = [C.BY_KEY[k] for k in C.BY_KEY if k in keys]
    else:
        args.contenders = list(C.ALL)
    return args


def machine_info(argv, quick):
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    cpu = next((ln.split(":", 1)[1].strip() for ln in read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor() or "?")
    mem_kb = next((int(ln.split()[1]) for ln in read("/proc/meminfo").splitlines()
                   if ln.startswith("MemTotal")), 0)
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=procs.ROOT, check=False,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        git = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.path.basename(sys.executable), "-m", "tools.bench", *argv]),
        "argv": argv,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "executable": sys.executable,
        "cpu": cpu,
        "ncpu": len(os.sched_getaffinity(0)),
        "mem_gib": round(mem_kb / 1024 ** 2, 1),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "git": git,
        "quick": quick,
    }


class LoadMeter:
    """How much CPU *other* processes used while we measured.

    busy jiffies of the whole machine (/proc/stat) minus our own CPU time
    (this process + every child we reaped), as a % of wall time x cores.
    On a 2-core box another job's test suite can easily double a latency;
    this makes that visible next to the numbers instead of silently wrong.
    Also reports hypervisor steal."""

    HZ = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _sample():
        import resource
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
        own = sum(r.ru_utime + r.ru_stime for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN)))
        return time.monotonic(), busy, v[7] if len(v) > 7 else 0, own

    def __init__(self):
        self.t0 = self._sample()

    def read(self):
        t1 = self._sample()
        if not self.t0 or not t1 or t1[0] <= self.t0[0]:
            return {}
        wall = t1[0] - self.t0[0]
        cap = wall * os.cpu_count()
        busy = (t1[1] - self.t0[1]) / self.HZ
        steal = (t1[2] - self.t0[2]) / self.HZ
        own = t1[3] - self.t0[3]
        # Jiffies are 10 ms and children are counted only once reaped, so a
        # window of a second or two can read high: clamp, and say how long.
        return {"foreign_cpu_pct": round(min(100.0, max(0.0, busy - steal - own) / cap * 100), 1),
                "window_s": round(wall, 1),
                "steal_pct": round(steal / cap * 100, 1),
                "own_cpu_pct": round(own / cap * 100, 1),
                "loadavg_end": os.getloadavg()[0]}


def leak_check():
    """Anything this run created that is still around after cleanup."""
    left = sorted(glob.glob(f"/dev/shm/*{C.RUN_TAG}-*"))
    return [f"LEAK: {p}" for p in left]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cfg = figures.Config.make(args.quick)
    os.makedirs(args.out, exist_ok=True)

    # SIGTERM/SIGHUP -> SystemExit, so cleanup still runs and whatever was
    # measured so far is still written out.
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    t_start = time.monotonic()
    run_load = LoadMeter()
    results = {"meta": machine_info(argv, args.quick), "config": vars(cfg),
               "contenders": {}, "figures": {}}
    results["meta"]["loadavg_start"] = os.getloadavg()[0]
    for c in args.contenders:
        reason = c.unavailable()
        results["contenders"][c.key] = {
            "label": c.label, "version": c.version() if not reason else None,
            "status": "ok" if not reason else f"unavailable: {reason}"}
        if reason:
            figures.log(f"{c.label}: unavailable: {reason}")
    if results["meta"]["loadavg_start"] > 1.0:
        figures.log(f"warning: load average is {results['meta']['loadavg_start']:.1f} "
                    "before we start: numbers will be noisy")

    rc = 0
    try:
        for name, fn in figures.FIGURES:
            if name not in args.only:
                continue
            figures.log(f"== {name}")
            t = time.monotonic()
            load = LoadMeter()
            try:
                results["figures"][name] = fn(cfg, args.contenders)
            except Exception as e:  # a bug in the figure itself, not a contender
                import traceback
                procs.kill_all()
                results["figures"][name] = {"status": "error", "error": f"{type(e).__name__}: {e}",
                                            "traceback": traceback.format_exc()}
                figures.log(f"   {name} failed: {e}")
            results["figures"][name]["wall_s"] = time.monotonic() - t
            results["figures"][name]["load"] = lr = load.read()
            if lr.get("foreign_cpu_pct", 0) > 10:
                figures.log(f"   warning: other processes used {lr['foreign_cpu_pct']}% of the "
                            f"CPU during {name}")
    except (KeyboardInterrupt, SystemExit) as e:
        rc = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
        results["interrupted"] = f"{type(e).__name__} during the run; partial results"
        figures.log("interrupted: writing partial results")
    finally:
        procs.kill_all()
        figures.stop_supervisors()
        cleanup = [f"destroy failed: {e}" for e in figures.destroy_all()]
        C.cleanup_tmpdir()
        cleanup += leak_check()
        results["cleanup"] = cleanup
        results["meta"]["wall_s"] = time.monotonic() - t_start
        results["meta"]["load"] = run_load.read()

    plots = report.write_plots(results, args.out)
    results["plots"] = plots
    jpath = report.write_json(results, args.out)
    mpath = report.write_md(results, args.out, plots)
    for line in cleanup:
        figures.log(line)
    figures.log(f"wrote {jpath}, {mpath}" + (f", {len(plots)} plots" if plots else "")
                + f" in {results['meta']['wall_s']:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
