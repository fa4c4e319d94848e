"""Where an idle supervisor's CPU goes: figure 9's set-up (1,000 holders over
100 semaphores, `python -m ipcsem supervise NAME...`, nothing happening),
sampled by py-spy over the idle window, every process of its tree.

    .venv/bin/python -m tools.bench.profile_idle [--seconds 30] [--top 25]
    (py-spy: .venv/bin/pip install py-spy)

Prints the CPU figure 9 measures and the functions with the most samples,
self and inclusive (py-spy's --idle is off: only samples on CPU count).
Not part of ``make bench``; docs/perf.md quotes it.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from . import contenders as C
from . import procs
from .figures.common import Config, destroy_all
from .figures.idle import run_idle


def py_spy() -> str | None:
    return shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")


def observer(seconds, out):
    def observe(pid):
        p = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--subprocesses",
                              "--format", "raw", "--rate", "200", "--duration", str(int(seconds)),
                              "--output", out, "--nonblocking"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def finish():
            try:
                _, err = p.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT)
                _, err = p.communicate()
            return {"rc": p.returncode, "stderr": err.decode(errors="replace")[-300:]}
        return finish
    return observe


def summarize(path, top):
    self_c, incl = collections.Counter(), collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            try:
                n = int(n)
            except ValueError:
                continue
            # a process frame carries its whole command line: keep its head
            frames = [fr if len(fr) < 100 else fr[:96] + " ..." for fr in stack.split(";")]
            total += n
            self_c[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    print(f"\n{total} samples on CPU")
    print("\nself:")
    for fr, n in self_c.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {fr}")
    print("\ninclusive:")
    for fr, n in incl.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {fr}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.profile_idle")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    if not py_spy():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    cfg = Config.make(False)
    cfg.idle_s = args.seconds
    out = tempfile.NamedTemporaryFile(  # noqa: SIM115 (only its name is used)
        prefix="ipcsem-spy-", suffix=".txt", delete=False).name
    try:
        r = run_idle(cfg, C.get("ipcsem"), observe=observer(args.seconds, out))
        print(f"supervisor over {r['holders']} holders / {r['semaphores']} semaphores: "
              f"{r['cpu_pct']:.2f}% of a core, {r['wakeups_per_s']:.0f} wake-ups/s "
              f"(load average {os.getloadavg()[0]:.1f})")
        if r.get("observed", {}).get("rc"):
            print(f"py-spy: {r['observed']}", file=sys.stderr)
        summarize(out, args.top)
    finally:
        procs.kill_all()
        destroy_all()
        os.unlink(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
