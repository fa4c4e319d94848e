"""Figure 9: what an idle supervisor costs.

Measures the CPU time of `python -m ipcsem supervise NAME...` watching
cfg.idle_semaphores semaphores with cfg.idle_holders registered holders
between them, while nothing happens (nobody dies, nobody waits).

How: a "forker" worker forks the holders in its own session; child i opens
the (i % idle_sems)-th semaphore by name and holds one unit.  Then the
supervisor starts on those names; once it has settled (its process tree's
open file descriptors, pidfds included, stop growing, or 20 s), its tree's
utime+stime (/proc/PID/stat of the supervisor and every descendant, reaped
children's included) is read, again after cfg.idle_s, and divided by the
wall time between the two reads.  Also: its threads, descriptors, RSS and
voluntary context switches per second (how often it wakes up).  As root
the supervisor forks one worker per owning user: the tree counts them.

Target (issue #12): < 1 % of one core with 1,000 holders over 100
semaphores (IDLE_TARGET_PCT).

Returns {"status", "semaphores", "holders", "cpu_pct", "wakeups_per_s",
"fds", "threads", "rss_kib", "settle_s", "window_s"}; rendered by
report._md_idle (no plot).
"""
from __future__ import annotations

import os
import time
import traceback

from .. import contenders as C
from .. import procs
from .common import create, destroy, log, watchdog
from .recovery import Supervisor

IDLE_TARGET_PCT = 1.0
HZ = os.sysconf("SC_CLK_TCK")


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def tree_usage(pid) -> dict:
    """CPU seconds (own + reaped children), fds, threads, RSS, voluntary
    context switches of pid's process tree."""
    cpu = 0.0
    fds = threads = rss = vcsw = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17
            cpu += sum(int(x) for x in fields[11:15]) / HZ
            threads += int(fields[17])
            fds += len(os.listdir(f"/proc/{p}/fd"))
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vcsw += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return {"cpu_s": cpu, "fds": fds, "threads": threads, "rss_kib": rss, "vcsw": vcsw}


def fig_idle(cfg, cs):
    if not any(c.key == "ipcsem" for c in cs):
        return {"status": "n/a"}
    c = C.get("ipcsem")
    reason = c.unavailable()
    if reason:
        return {"status": f"unavailable: {reason}"}
    with watchdog():
        try:
            return run_idle(cfg, c)
        except Exception as e:
            procs.kill_all()
            return {"status": "error", "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()}


def run_idle(cfg, c, observe=None):
    """observe(supervisor pid) -> finish, if given, runs over the idle
    window (profile_idle's py-spy); what finish() returns lands under
    "observed"."""
    n, k = cfg.idle_sems, cfg.idle_holders
    per = -(-k // n)
    specs = [create(c, per) for _ in range(n)]
    forker = sup = None
    try:
        forker = procs.SubprocWorker("forker", c.key, specs[0],
                                     {"k": k, "specs": specs, "ready_timeout_s": 180},
                                     new_session=True)
        ready = forker.recv(240, "ready")
        if ready["ready"] != k:
            raise RuntimeError(f"only {ready['ready']}/{k} holders got ready")
        t = time.monotonic()
        sup = Supervisor([s["name"] for s in specs], settle_s=0.5)
        # Settled: its descriptors (a pidfd per holder) stop growing.
        last, stable = -1, 0
        while time.monotonic() - t < 20 and stable < 4:
            time.sleep(0.5)
            fds = tree_usage(sup.proc.pid)["fds"]
            stable = stable + 1 if fds == last else 0
            last = fds
        settle = time.monotonic() - t
        finish = observe(sup.proc.pid) if observe else None
        u0, t0 = tree_usage(sup.proc.pid), time.monotonic()
        time.sleep(cfg.idle_s)
        u1, t1 = tree_usage(sup.proc.pid), time.monotonic()
        observed = finish() if finish else None
        if sup.proc.poll() is not None:
            raise RuntimeError(f"supervisor exited rc={sup.proc.returncode}: {sup.tail()}")
        window = t1 - t0
        res = {"status": "ok", "semaphores": n, "holders": k, "settle_s": settle,
               "window_s": window,
               "cpu_pct": (u1["cpu_s"] - u0["cpu_s"]) / window * 100,
               "wakeups_per_s": (u1["vcsw"] - u0["vcsw"]) / window,
               "fds": u1["fds"], "threads": u1["threads"], "rss_kib": u1["rss_kib"],
               "processes": len(tree(sup.proc.pid)), "target_pct": IDLE_TARGET_PCT,
               "clock_tick_s": 1 / HZ}
        if observed is not None:
            res["observed"] = observed
        log(f"  fig9 supervisor over {k} holders / {n} semaphores: "
            f"{res['cpu_pct']:.2f}% of a core, {res['wakeups_per_s']:.0f} wake-ups/s, "
            f"{res['fds']} fds, {res['threads']} threads")
        forker.send({"stop": True})
        forker.recv(60, "stopped")
        return res
    finally:
        if sup is not None:
            sup.stop()
        if forker is not None:
            forker.killpg()
            forker.finish(5.0)
        for s in specs:
            destroy(c, s)
