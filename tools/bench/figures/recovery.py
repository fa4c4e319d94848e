"""Figure 3: recovery latency after SIGKILL of the holder.

Measures how long a waiter blocked in acquire() waits for the unit after
the process holding it is SIGKILLed -- or whether it ever gets it.

How: capacity 1. A "holder" worker acquires and sleeps; a "waiter" worker
blocks in acquire (until /proc shows it asleep); the harness SIGKILLs the
holder and reaps it at once, at a uniformly random phase of any polling the
contender does. Latency = CLOCK_MONOTONIC from os.kill to the waiter's
acquire returning (timestamped in the waiter). Every holder imports every
contender's library first (worker.HOLDER_PRELOAD): a death's kernel teardown
grows with what the process has mapped, and kernel undo waits for it too, so
equal holders compare the mechanisms (docs/perf.md, "Recovery"). cfg.trials trials for the
targeted variants (kernel undo and ipcsem: enough for a p99), cfg.trials_other
for the rest, each with a cfg.recovery_timeout_s timeout; after a timeout the
unit is gone for good, so the semaphore (and supervisor) is replaced, and a
variant stops after cfg.abort_after timeouts with no success. The variants
are RECOVERY_VARIANTS: ipcsem with `python -m ipcsem supervise NAME`
running, and without (the blocked waiter's own watcher thread sees the
holder's pidfd), beside every contender.

Targets (issue #12): without any supervisor median <= 3x sysv_ipc SEM_UNDO's
kernel undo and p99 <= 20 ms; with the supervisor median <= 1.2x, p99 <= 5 ms
(RECOVERY_TARGETS; report.py checks them).

Returns {"trials", "timeout_s", "variants": {id: {"latencies_ns",
"median_ns", "p99_ns", "timeouts", "summary", ...}}}; rendered by
report._md_recovery/_plot_recovery. stop_supervisors() is the harness's
exit cleanup for the supervisors started here.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time

from .. import contenders as C
from .. import procs
from ..stats import summarize
from .common import Unavailable, create, destroy, fmt_status, guarded, log

RECOVERY_VARIANTS = [
    # (row id, contender key, start supervisor?, targeted (cfg.trials)?, label)
    ("sysv", "sysv", False, True, "sysv_ipc SEM_UNDO (kernel undo)"),
    ("flock", "flock", False, False, "fcntl.flock (kernel release)"),
    ("ipcsem+supervisor", "ipcsem", True, True, "ipcsem + supervisor"),
    ("ipcsem", "ipcsem", False, True, "ipcsem, no supervisor (waiters watch pidfds)"),
    ("posix", "posix", False, False, "posix_ipc raw"),
    ("mp", "mp", False, False, "multiprocessing.Semaphore"),
    ("portalocker", "portalocker", False, False, "portalocker.BoundedSemaphore (polls 0.25 s)"),
    ("filelock", "filelock", False, False, "filelock.FileLock (polls 0.05 s)"),
]

# row id -> (max median as a multiple of the kernel undo's, max p99 in ms)
RECOVERY_TARGETS = {"ipcsem": (3.0, 20.0), "ipcsem+supervisor": (1.2, 5.0)}

_SUPERVISORS: list = []


class Supervisor:
    """`python -m ipcsem supervise NAME...` in the foreground; SIGTERM stops it."""

    def __init__(self, names, settle_s=0.3):
        names = [names] if isinstance(names, str) else list(names)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (open until stop())
        env = dict(os.environ)
        env["PYTHONPATH"] = procs.ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ipcsem", "supervise", *names],
            cwd=procs.ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=procs.preexec_term)
        _SUPERVISORS.append(self)
        # No readiness protocol is pinned, so give it a moment and make sure
        # it did not exit (bad CLI, unknown name, ...).
        time.sleep(settle_s)
        if self.proc.poll() is not None:
            rc = self.proc.returncode
            tail = self.tail()
            self.stop()
            raise RuntimeError(f"supervisor exited rc={rc}: {tail}")

    def tail(self):
        try:
            self.log.seek(0)
            return self.log.read()[-800:].decode(errors="replace").strip()
        except Exception:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        if self in _SUPERVISORS:
            _SUPERVISORS.remove(self)
        self.log.close()


def stop_supervisors():
    for s in list(_SUPERVISORS):
        try:
            s.stop()
        except Exception:
            pass


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _wait_blocked(pid, timeout=0.5):
    """Wait until the waiter sleeps in the kernel (blocked in acquire, or in
    a poll-sleep for the polling contenders)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _proc_state(pid) in ("S", "D"):
            return True
        time.sleep(0.0005)
    return False


def fig_recovery(cfg, cs):
    """The targeted variants run in cfg.recovery_rounds interleaved rounds
    (each a share of cfg.trials): the load of a shared machine drifts over
    the minutes this takes, and a ratio between variants measured minutes
    apart would carry that drift.  The other variants run once."""
    keys = {c.key for c in cs}
    out = {"trials": cfg.trials, "timeout_s": cfg.recovery_timeout_s,
           "rounds": cfg.recovery_rounds, "variants": {}}
    todo = [v for v in RECOVERY_VARIANTS if v[1] in keys]
    parts: dict = {}
    for rnd in range(cfg.recovery_rounds):
        for vid, key, supervise, targeted, _label in todo:
            if not targeted and rnd:
                continue
            c = C.get(key)
            n = cfg.trials_other if not targeted else _share(cfg.trials, cfg.recovery_rounds, rnd)
            t = time.monotonic()
            r = guarded(c, lambda c=c, s=supervise, n=n: run_recovery(cfg, c, s, n))
            r["wall_s"] = time.monotonic() - t
            parts.setdefault(vid, []).append(r)
    for vid, key, _supervise, _targeted, label in todo:
        rs = parts.get(vid, [])
        r = _merge(rs) if rs and all(x.get("status") == "ok" for x in rs) else (
            next((x for x in rs if x.get("status") != "ok"), {"status": "error"}))
        r["label"] = label
        r["contender"] = key
        r["wall_s"] = sum(x.get("wall_s", 0) for x in rs)
        out["variants"][vid] = r
        log(f"  fig3 {vid:18s} {r.get('summary') or fmt_status(r, 'status')} "
            f"[{r['wall_s']:.1f} s]")
    return out


def _share(total, rounds, rnd):
    return total // rounds + (1 if rnd < total % rounds else 0)


def _merge(rs):
    """One variant's rounds as one result."""
    lat = [x for r in rs for x in r["latencies_ns"]]
    ex = [x for r in rs for x in r.get("exit_ns", [])]
    maps = [r["holder_maps"] for r in rs if r.get("holder_maps")]
    return _finish(lat, ex, sum(r["timeouts"] for r in rs), sum(r["violations"] for r in rs),
                   [n for r in rs for n in r["notes"]], sum(r["trials"] for r in rs),
                   maps[0] if maps else None,
                   {"kill_phase_jitter_s": rs[0]["kill_phase_jitter_s"],
                    "settle_s": rs[0]["settle_s"], "late_kills": sum(r["late_kills"] for r in rs),
                    "status": "ok"})


def _finish(lat_ns, exit_ns, timeouts, violations, notes, trials, holder_maps, extra):
    n = len(lat_ns) + timeouts
    res = {"latencies_ns": lat_ns, "timeouts": timeouts, "attempted": n, "trials": trials,
           "holder_maps": holder_maps, "violations": violations, "notes": notes, **extra}
    if lat_ns:
        res.update({k + "_ns": v for k, v in summarize(lat_ns).items() if k != "n"})
    if exit_ns:
        res["exit_ns"] = exit_ns
        res["exit_median_ns"] = summarize(exit_ns)["median"]
    if timeouts and not lat_ns:
        res["summary"] = f"never ({timeouts}/{n} timed out)"
    else:
        res["summary"] = (f"median {res['median_ns'] / 1e6:.3g} ms, "
                          f"max {res['max_ns'] / 1e6:.3g} ms"
                          + (f", {timeouts}/{n} timed out" if timeouts else ""))
    if violations:
        res["summary"] += f", {violations} mutual-exclusion violations"
    return res


def run_recovery(cfg, c, supervise, trials):
    """Trials on one semaphore while it keeps recovering; a fresh one (and a
    fresh supervisor) after a timeout, since the lost unit never comes back.

    Process start-up (~0.1 s each on 2 cores) would dominate the figure's
    run time, so the waiter is reused across trials and the next holder is
    started -- and idle -- before the current measurement, never during it."""
    lat_ns, exit_ns, timeouts, violations, notes = [], [], 0, 0, []
    spec = sup = holder = nxt = waiter = None
    jitter = c.phase_jitter()
    rng = random.Random(12345)
    # Covers the start-up of the next holder (fork workers start in ~ms),
    # so that with jitter the kill instant stays uniformly distributed.
    settle = 0.02 if c.inherit_only or not jitter else 0.15
    late = 0  # kills delayed past the planned instant by a slow start-up

    def drop(w):
        if w is not None:
            w.kill()
            w.finish(1.0)

    def teardown():
        nonlocal spec, sup, nxt, waiter
        drop(nxt)
        drop(waiter)
        nxt = waiter = None
        if sup is not None:
            sup.stop()
            sup = None
        if spec is not None:
            destroy(c, spec)
            spec = None

    holder_maps = []

    def start_holder():
        w = procs.spawn(c, "holder", spec)
        holder_maps.append(w.recv(15, "holder ready").get("maps"))
        return w

    try:
        for i in range(trials):
            if spec is None:  # first trial, or the last one lost its unit
                spec = create(c, 1)
                if supervise:
                    try:
                        sup = Supervisor(spec["name"])
                    except RuntimeError as e:
                        raise Unavailable(str(e)) from None
            holder, nxt = (nxt or start_holder()), None
            holder.send({"go": True})
            if not holder.recv(10, "held").get("ok", True):
                raise RuntimeError("holder's acquire returned False")
            if waiter is None:
                waiter = procs.spawn(c, "waiter", spec)
                waiter.recv(15, "waiter ready")
            if sup is not None and sup.proc.poll() is not None:
                raise RuntimeError(f"supervisor died rc={sup.proc.returncode}: {sup.tail()}")
            waiter.send({"go": True})
            waiter.recv(10, "acquiring")
            _wait_blocked(waiter.pid)
            # Kill once the waiter has settled deep into the blocking call,
            # at a uniformly random phase of any polling it does. The next
            # trial's holder starts up meanwhile (the waiter is asleep) and
            # must be idle again before the kill.
            t_kill_at = time.monotonic() + settle + rng.uniform(0, jitter)
            if i + 1 < trials:
                nxt = start_holder()
            left = t_kill_at - time.monotonic()
            if left > 0:
                time.sleep(left)
            else:
                late += 1
            if _poll(waiter, 0) is not None:
                # The waiter got the unit while the holder was alive and
                # holding it: mutual exclusion is broken. Count it, go on.
                violations += 1
                notes.append(f"trial {i}: waiter acquired before kill")
                drop(holder)
                teardown()
                continue
            pidfd = _pidfd(holder.pid)
            t_kill = time.monotonic_ns()
            os.kill(holder.pid, signal.SIGKILL)
            # When the kernel says the holder is gone (its pidfd readable:
            # the thread group has exited): the floor of any recovery that
            # learns of deaths from pidfds, and the teardown part of kernel
            # undo's time.  Then reap at once, as a real parent would: a
            # zombie still passes kill(pid, 0) liveness checks.
            exited_ns = _exited(pidfd, 5.0)
            holder.wait(5)
            msg = _poll(waiter, cfg.recovery_timeout_s)
            drop(holder)
            if msg is None:
                timeouts += 1
                teardown()  # waiter still blocked; unit lost for good
                if not lat_ns and timeouts >= cfg.abort_after:
                    notes.append(f"stopped after {timeouts} timeout(s) with no recovery")
                    break
                continue
            lat_ns.append(msg["acquired_ns"] - t_kill)
            if exited_ns is not None:
                exit_ns.append(exited_ns - t_kill)
            if not msg.get("ok", True):
                raise RuntimeError("waiter's blocking acquire returned False")
    finally:
        drop(holder)
        teardown()
    maps = sorted(m for m in holder_maps if m)
    return _finish(lat_ns, exit_ns, timeouts, violations, notes, trials,
                   maps[len(maps) // 2] if maps else None,
                   {"kill_phase_jitter_s": jitter, "settle_s": settle, "late_kills": late})


def _pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _exited(pidfd, timeout):
    """CLOCK_MONOTONIC ns at which pidfd became readable (None: no pidfd)."""
    if pidfd is None:
        return None
    try:
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        return time.monotonic_ns() if p.poll(timeout * 1000) else None
    finally:
        os.close(pidfd)


def _poll(w, timeout):
    """Next message from a worker, or None on timeout/EOF."""
    try:
        return w.io.recv(timeout)
    except (TimeoutError, EOFError):
        return None
