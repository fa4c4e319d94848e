"""Figure 6: status over N semaphores (a hook; low priority).

Measures what "look at every semaphore" costs with N of this run's
semaphores on the machine: ipcsem.names(), opening each of the N and
reading stats() (status_snapshot(), THE HOOK to adjust when the library
grows a snapshot API), and `python -m ipcsem status` as a fresh process
(interpreter start-up included).

How: ipcsem only; for each N in cfg.status_ns, create N, time the three,
destroy them. "pending" when the library or the CLI does not offer it yet.

Target: none.

Returns {"status", "rows": [{"n", "names_total", "names_ms",
"snapshot_ms", "cli": {"status", "ms"}}]}; rendered by report._md_status
(no plot).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback

from .. import contenders as C
from .. import procs
from .common import create, destroy, log, watchdog


def status_snapshot(ipcsem):
    """THE HOOK: what "look at every semaphore" costs. Adjust here when the
    library grows a proper status/snapshot API.

    Only this run's semaphores are opened: names() lists every semaphore on
    the machine, and opening somebody else's (a test's, wedged) can block."""
    names = [n for n in ipcsem.names() if n.startswith(C.RUN_TAG + "-")]
    sems = [ipcsem.Semaphore(n) for n in names]
    for s in sems:
        s.stats() if hasattr(s, "stats") else None
        s.close()
    return len(names)


def fig_status(cfg, cs):
    if not any(c.key == "ipcsem" for c in cs):
        return {"status": "n/a"}
    c = C.get("ipcsem")
    reason = c.unavailable()
    if reason:
        return {"status": f"unavailable: {reason}"}
    import ipcsem
    if not hasattr(ipcsem, "names"):
        return {"status": "pending", "why": "ipcsem.names() not implemented yet"}
    rows = []
    with watchdog():
        try:
            for n in cfg.status_ns:
                specs = []
                try:
                    for _ in range(n):
                        specs.append(create(c, 1))
                    row = {"n": n}
                    t = time.perf_counter()
                    row["names_total"] = len(list(ipcsem.names()))
                    row["names_ms"] = (time.perf_counter() - t) * 1e3
                    try:
                        t = time.perf_counter()
                        status_snapshot(ipcsem)
                        row["snapshot_ms"] = (time.perf_counter() - t) * 1e3
                    except Exception as e:
                        row["snapshot_error"] = f"{type(e).__name__}: {e}"
                    row["cli"] = _time_cli()
                    rows.append(row)
                    cli = row["cli"]
                    log(f"  fig6 N={n:5d} names {row['names_ms']:.2f} ms, "
                        f"snapshot {row.get('snapshot_ms', float('nan')):.2f} ms, cli "
                        + (f"{cli['ms']:.0f} ms" if cli.get("status") == "ok" else cli["status"]))
                finally:
                    for s in specs:
                        destroy(c, s)
        except Exception as e:
            return {"status": "error", "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(), "rows": rows}
    return {"status": "ok", "rows": rows}


def _time_cli():
    env = dict(os.environ)
    env["PYTHONPATH"] = procs.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "ipcsem", "status"], cwd=procs.ROOT,
                           env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": "timed out after 60 s"}
    ms = (time.perf_counter() - t) * 1e3
    if p.returncode != 0:
        last = (p.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
        return {"status": "pending", "why": f"rc={p.returncode}: {last[-200:]}"}
    return {"status": "ok", "ms": ms}
