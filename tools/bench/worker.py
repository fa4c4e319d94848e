"""Code that runs inside worker processes.

Started as ``python -m tools.bench.worker ROLE CONTENDER SPEC_JSON PARAMS_JSON``
(unrelated processes opening the semaphore by name), or called through
run_forked() in a multiprocessing 'fork' child for contenders that need
inheritance. Protocol: newline-delimited JSON; see procs.py.

Roles:
    loop    figure 2: acquire/release in a loop from a shared start time for a
            fixed duration, timing every acquire
    holder  figure 3: acquire one unit, report, then sleep until SIGKILLed
    waiter  figure 3: on "go", block in acquire; report a CLOCK_MONOTONIC
            timestamp (system-wide on Linux) the moment it returns
    forker  figures 4 and 7: fork K children that each open the semaphore
            themselves (child i the i % n-th of params["specs"] when given),
            acquire one unit and pause; report how many got ready
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import sys
import time
import traceback
from array import array

from . import contenders


class Chan:
    def __init__(self, rfile, out_fd):
        self.rfile = rfile
        self.out_fd = out_fd

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(self.out_fd, data):]

    def recv(self):
        line = self.rfile.readline()
        if not line:
            raise SystemExit(0)  # harness went away
        return json.loads(line)


def _sleep_until(t_ns: int) -> None:
    """Coarse sleep then spin, so all workers leave the barrier within a few
    microseconds of the shared start time."""
    now = time.monotonic_ns
    left = t_ns - now()
    if left > 2_000_000:
        time.sleep((left - 1_000_000) / 1e9)
    while now() < t_ns:
        pass


# ---------------------------------------------------------------------------


def role_loop(c, spec, params, ch):
    """A pool worker: serves one contended-loop job after another, so a
    figure-2 cell does not pay Python start-up for each of its processes.
    A job without "spec" uses the spec given at start (forked workers)."""
    ch.send({"ready": True, "pid": os.getpid()})
    while True:
        job = ch.recv()  # EOF -> exit
        if job.get("quit"):
            return
        _loop_job(c, job.get("spec") or spec, job, ch)


def _loop_job(c, spec, job, ch):
    duration_ns = int(job["duration_s"] * 1e9)
    warmup_ns = int(job.get("warmup_s", 0) * 1e9)
    hold_ns = int(job.get("hold_us", 0) * 1000)
    h = c.open(spec)
    acq, rel = h.acquire, h.release
    now = time.monotonic_ns
    waits = array("q")
    app = waits.append
    ch.send({"opened": True})
    t0 = ch.recv()["t0"]
    t_measure = t0 + warmup_ns
    t_end = t_measure + duration_ns
    gc.disable()
    _sleep_until(t0)
    # The warm-up: the same loop, not counted.  With more processes than
    # CPUs they cannot all leave the barrier at t0 -- those on a CPU start
    # while the rest wait to be scheduled -- and a contender whose
    # uncontended pair is fast runs thousands of pairs alone meanwhile
    # (ipcsem at P=8 capacity 1: up to 70k ops, Jain 0.35-0.96, counted with
    # temporary counters in the ledger: docs/perf.md, "The latest full
    # run").  By t_measure every process is in its loop.
    while now() < t_measure:
        acq()
        if hold_ns:
            until = now() + hold_ns
            while now() < until:
                pass
        rel()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    # Two clock reads + one array append per op: ~100 ns of instrumentation,
    # visible only for the very fastest contenders (see figure 1 for the
    # uninstrumented cost).
    if hold_ns:
        while True:
            t = now()
            if t >= t_end:
                break
            acq()
            t2 = now()
            app(t2 - t)
            until = t2 + hold_ns
            while now() < until:  # busy hold: sleep() granularity is ~60 us
                pass
            rel()
    else:
        while True:
            t = now()
            if t >= t_end:
                break
            acq()
            app(now() - t)
            rel()
    t_last = now()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    gc.enable()
    h.close()
    n = len(waits)
    ch.send({"n": n, "max_wait_ns": max(waits) if n else 0,
             "sum_wait_ns": sum(waits), "t_last": t_last, "rusage": _rusage_delta(ru0, ru1)})
    # The harness picks one stride for all workers once it knows every
    # count, so each kept sample stands for the same number of ops and the
    # merged percentiles need no weighting.
    stride = ch.recv()["stride"]
    ch.send({"waits": waits[::stride].tolist()})
    del waits


def _rusage_delta(a, b):
    """What the loop cost this process (every thread of it: a library's
    helper threads count): CPU seconds and context switches."""
    return {"utime_s": b.ru_utime - a.ru_utime, "stime_s": b.ru_stime - a.ru_stime,
            "nvcsw": b.ru_nvcsw - a.ru_nvcsw, "nivcsw": b.ru_nivcsw - a.ru_nivcsw}


# Every holder imports every contender's library before it acquires, so that
# all holders cost the kernel the same to tear down: a process's death takes
# longer the more it has mapped (a Python process that imported asyncio or
# hashlib's OpenSSL takes ~4 ms more to die than a bare one, and kernel undo
# waits for that too: it runs after the address space is gone). Figure 3
# compares recovery mechanisms, not the weight of their imports.
HOLDER_PRELOAD = ("ipcsem", "sysv_ipc", "posix_ipc", "portalocker", "filelock", "asyncio")


def _preload():
    import importlib
    for mod in HOLDER_PRELOAD:
        try:
            importlib.import_module(mod)
        except Exception:
            pass
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def role_holder(c, spec, params, ch):
    maps = _preload()
    h = c.open(spec)
    ch.send({"ready": True, "pid": os.getpid(), "maps": maps})
    ch.recv()  # go: started ahead of time, acquires only when told
    r = h.acquire()
    ch.send({"held": True, "ok": r is not False})
    while True:
        ch.recv()  # hold until SIGKILLed (or exit on EOF if the harness dies)


def role_waiter(c, spec, params, ch):
    """Reused across trials: each "go" is one blocking acquire."""
    h = c.open(spec)
    acq, rel = h.acquire, h.release
    now = time.monotonic_ns
    ch.send({"ready": True, "pid": os.getpid()})
    while True:
        ch.recv()  # go: the holder holds the unit now (EOF -> exit)
        ch.send({"acquiring": True})
        r = acq()
        t = now()
        ch.send({"acquired_ns": t, "ok": r is not False})
        rel()


def role_forker(c, spec, params, ch):
    k = int(params["k"])
    specs = params.get("specs") or [spec]
    reason = c.unavailable()  # also imports the library before forking
    if reason:
        raise RuntimeError(reason)
    from .procs import die_with_parent  # imported once, not in each child
    gc.collect()
    gc.freeze()  # fewer copy-on-write faults in the K children
    r, w = os.pipe()
    pids = []
    t_fork = time.monotonic()
    for i in range(k):
        pid = os.fork()
        if pid == 0:
            _forked_holder(c, specs[i % len(specs)], r, w, die_with_parent)  # never returns
        pids.append(pid)
    os.close(w)
    t_forked = time.monotonic()
    ok = bad = 0
    deadline = time.monotonic() + float(params.get("ready_timeout_s", 120))
    while ok + bad < k and time.monotonic() < deadline:
        import select
        rl, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not rl:
            break
        data = os.read(r, 65536)
        if not data:
            break
        ok += data.count(b"+")
        bad += data.count(b"!")
    ch.send({"ready": ok, "failed": bad, "fork_s": t_forked - t_fork,
             "ready_s": time.monotonic() - t_fork})
    ch.recv()  # stop
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)  # children release, then exit
        except ProcessLookupError:
            pass
    reaped = 0
    deadline = time.monotonic() + 30
    while reaped < len(pids) and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            reaped += 1
        else:
            time.sleep(0.005)
    ch.send({"stopped": reaped})


def _forked_holder(c, spec, r, w, die_with_parent):
    try:
        die_with_parent()  # forker gone (harness died) -> holders go too
        if os.getppid() == 1:
            os._exit(1)
        os.close(r)
        h = c.open(spec)  # each child opens by name itself
        h.acquire()
    except BaseException:
        traceback.print_exc()
        os.write(w, b"!")
        os._exit(1)

    def on_term(signum, frame):
        try:
            h.release()
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    os.write(w, b"+")
    os.close(w)
    try:
        while True:
            signal.pause()
    finally:
        os._exit(0)


ROLES = {"loop": role_loop, "holder": role_holder, "waiter": role_waiter,
         "forker": role_forker}


def _run(role, key, spec, params, ch):
    try:
        ROLES[role](contenders.get(key), spec, params, ch)
    except SystemExit:
        raise
    except BaseException as e:
        try:
            ch.send({"error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()})
        except OSError:
            pass
        raise


def run_forked(role, key, spec, params, rfd, wfd, parent_fds):
    """multiprocessing 'fork' entry point (inherit-only contenders)."""
    for fd in parent_fds:
        os.close(fd)
    _run(role, key, spec, params, Chan(os.fdopen(rfd, "rb"), wfd))


def main(argv):
    role, key, spec, params = argv[1], argv[2], json.loads(argv[3]), json.loads(argv[4])
    if os.environ.get("IPCSEM_BENCH_EXPERIMENT"):  # docs/perf.md's what-ifs, never make bench
        from . import experiments
        experiments.apply_from_env()
    # Keep the protocol channel private: whatever a library prints to stdout
    # goes to stderr instead of corrupting our JSON lines.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        _run(role, key, spec, params, Chan(sys.stdin.buffer, out_fd))
    except SystemExit as e:
        return e.code or 0
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
