"""Figure 6: looking at every semaphore, at scale.

Measures what `ipcsem-status` (no NAME: one line per semaphore) costs with
N semaphores on the machine, a share cfg.status_held of them held by a live
process, at the default table sizes (max_holders = max_waiters = 1024) --
and, underneath it, the library's read path: ipcsem.names() and
ipcsem._shm.segment.read_view(name) (a pread() copy, parsed; never maps,
never locks) over all N.

How: for each N in cfg.status_ns, in a child process.  As root the child
runs in its own mount namespace with a private tmpfs on /dev/shm
(`unshare -m`), so only its N semaphores exist there (nobody else's are
counted, none of ours can leak: the tmpfs goes with the namespace);
otherwise in /dev/shm, where the CLI also lists other users' semaphores and
the child removes its own afterwards.  The child creates the N (and closes
them), starts one holder process for the held share, then times names(),
read_view() of every name (best of STATUS_RUNS), and the CLI as a fresh
process (`python -m ipcsem status`, and `--json`; interpreter start-up
included, best of STATUS_RUNS, wall and CPU) next to a bare
`python -c "import ipcsem"` (the start-up floor).

Target (issue #12): `ipcsem-status` of 10,000 semaphores < 1 s
(STATUS_TARGET_S, at the largest N).

Returns {"status", "private_shm", "rows": [{"n", "made_s", "names_ms",
"read_view_ms", "cli": {"list": {"wall_s", "cpu_s", "bytes"}, "json": ...},
"startup_s", "held"}]}; rendered by report._md_status (no plot).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback

from .. import contenders as C
from .. import procs
from .common import log, watchdog

STATUS_TARGET_S = 1.0
STATUS_RUNS = 3
PRIVATE_ENV = "IPCSEM_BENCH_PRIVATE_SHM"

HOLDER = """
import sys, ipcsem
sems = [ipcsem.Semaphore(n) for n in sys.stdin.read().split()]
for s in sems:
    s.acquire()
print("holding", flush=True)
sys.stdin.close()
import time; time.sleep(3600)
"""


def fig_status(cfg, cs):
    if not any(c.key == "ipcsem" for c in cs):
        return {"status": "n/a"}
    private = os.geteuid() == 0 and shutil.which("unshare") is not None
    rows = []
    with watchdog():
        try:
            for n in cfg.status_ns:
                row = measure(n, cfg.status_held, private)
                rows.append(row)
                cli = row.get("cli", {}).get("list", {})
                log(f"  fig6 N={n:6d} names {row.get('names_ms', 0):.1f} ms, read_view all "
                    f"{row.get('read_view_ms', 0):.0f} ms, ipcsem-status "
                    + (f"{cli['wall_s'] * 1e3:.0f} ms" if "wall_s" in cli else
                       row.get("error", "?")))
        except Exception as e:
            return {"status": "error", "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(), "rows": rows}
    return {"status": "ok", "private_shm": private, "target_s": STATUS_TARGET_S, "rows": rows}


def measure(n, held, private, *, formats=("list", "json"), max_holders=None):
    """One row of the figure: N semaphores (``held`` the share with a live
    holder; ``max_holders`` = max_waiters, None: the default table sizes),
    measured in a child process (in a private /dev/shm if ``private``),
    the CLI timed in each of ``formats`` ("list", "json", "prometheus").
    tools/status_scale.py prints one such row."""
    env = dict(os.environ)
    env["PYTHONPATH"] = procs.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # This run's tag in the names: a crash outside a private tmpfs leaves
    # names the harness's leak check finds.
    child = [sys.executable, "-m", "tools.bench.figures.status", "--child", str(n), str(held),
             f"{C.RUN_TAG}-status", ",".join(formats), str(max_holders or 0)]
    if private:
        env[PRIVATE_ENV] = "1"
        script = ("mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "
                  + " ".join(f"'{a}'" for a in child))
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
    else:
        argv = child
    p = subprocess.run(argv, cwd=procs.ROOT, env=env, capture_output=True, text=True, check=False,
                       timeout=900, preexec_fn=procs.preexec_term)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"n": n, "error": f"child rc={p.returncode}: {p.stderr.strip()[-300:]}"}


# ----------------------------------------------------------------- child

def _timed(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    out = p.stdout.read()
    _pid, status, usage = os.wait4(p.pid, 0)
    return {"wall_s": time.monotonic() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "bytes": len(out), "rc": os.waitstatus_to_exitcode(status)}


def _best(runs):
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "cpu_s": min(r["cpu_s"] for r in runs),
            "runs_wall_s": [r["wall_s"] for r in runs]}


CLI_FORMATS = {"list": [], "json": ["--json"], "prometheus": ["--prometheus"]}


def _child(n, held_share, prefix, formats=("list", "json"), max_holders=0):
    import ipcsem
    from ipcsem._shm.segment import read_view

    private = bool(os.environ.get(PRIVATE_ENV))
    names = [f"{prefix}-{i:05d}" for i in range(n)]
    row = {"n": n, "private_shm": private}
    holder = None
    try:
        t = time.monotonic()
        for name in names:
            sizes = {"max_holders": max_holders, "max_waiters": max_holders} if max_holders else {}
            ipcsem.Semaphore(name, capacity=2, **sizes).close()  # default: the default table sizes
        row["made_s"] = time.monotonic() - t
        held = names[:int(n * held_share)]
        row["held"] = len(held)
        if held:
            holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            holder.stdin.write(" ".join(held))
            holder.stdin.close()
            if holder.stdout.readline().strip() != "holding":
                raise RuntimeError("holder did not start")
        best = float("inf")
        for _ in range(STATUS_RUNS):
            t = time.perf_counter()
            listed = ipcsem.names()
            best = min(best, time.perf_counter() - t)
        row["names_ms"] = best * 1e3
        row["names_total"] = len(listed)
        mine = [x for x in listed if x.startswith(prefix)]
        best = float("inf")
        for _ in range(STATUS_RUNS):
            t = time.perf_counter()
            for name in mine:
                read_view(name)
            best = min(best, time.perf_counter() - t)
        row["read_view_ms"] = best * 1e3
        py = sys.executable
        row["startup_s"] = _best([_timed([py, "-c", "import ipcsem"])
                                  for _ in range(STATUS_RUNS)])["wall_s"]
        row["cli"] = {}
        for label in formats:
            runs = [_timed([py, "-m", "ipcsem", "status", *CLI_FORMATS[label]])
                    for _ in range(STATUS_RUNS)]
            row["cli"][label] = _best(runs)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        if not private:
            for name in names:
                try:
                    ipcsem.unlink(name)
                except ipcsem.IpcsemError:
                    pass
    print(json.dumps(row))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], tuple(sys.argv[5].split(",")),
               int(sys.argv[6]))
