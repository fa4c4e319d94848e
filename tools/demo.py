#!/usr/bin/env python3
"""ipcsem in 10 seconds: five unrelated processes share a 2-unit semaphore;
one holder is SIGKILLed mid-work and its unit comes back at once.

    make demo        (or: .venv/bin/python tools/demo.py)

Every worker is a separate interpreter (this file run with `worker ...`)
that opens the semaphore by name, takes one unit, works ~1 s, releases.
A supervisor (`python -m ipcsem supervise NAME`) watches the holders.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ipcsem  # noqa: E402

WIDTH = 80
WORKERS = 5
CAPACITY = 2
WORK = 1.0  # seconds each worker holds its unit


class ReaderGone(Exception):
    """Whoever read our output stopped reading (`make demo | head -3`)."""


_reader_gone = threading.Event()


def out(text: str) -> None:
    """Write and flush; ReaderGone once the reader has left (stdout then
    goes to /dev/null, so nothing at exit complains about the pipe)."""
    if _reader_gone.is_set():
        raise ReaderGone
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_gone.set()
        # stdout from now until exit: nothing to close
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise ReaderGone from None


def say(t0: float, text: str, indent: int = 9) -> None:
    """One timestamped line (or a few wrapped ones), written in one go so
    lines of different processes never mix."""
    stamp = f"[{time.monotonic() - t0:5.2f}] "
    body = textwrap.fill(text, WIDTH, initial_indent=stamp, subsequent_indent=" " * indent,
                         break_long_words=True, break_on_hyphens=False)
    out(body + "\n")


def say_if_read(t0: float, text: str) -> None:
    """For the end: say it if anyone still reads."""
    try:
        say(t0, text)
    except ReaderGone:
        pass


# ------------------------------------------------------------------ worker
def worker(n: int, name: str, t0: float) -> int:
    """CLOCK_MONOTONIC is system-wide on Linux: t0 from the parent is valid."""
    sem = ipcsem.Semaphore(name)
    me = f"worker {n} (pid {os.getpid()})"
    if sys.stdin.readline() != "go\n":  # the demo sets the queue order
        return 1

    def tell(text: str) -> None:    # a reader gone is no reason to stop working
        try:
            say(t0, text)
        except ReaderGone:
            pass

    tell(f"{me} wants a unit")
    sem.acquire()
    tell(f"{me} holds a unit")
    time.sleep(WORK)
    sem.release()
    tell(f"{me} released its unit")
    sem.close()
    return 0


# ------------------------------------------------------------------ parent
def table(t0: float, sem, who: dict[int, int], title: str) -> None:
    now = time.time()
    holders, waiters = sem.holders(), sem.waiters()
    lines = [f"{title}: {sem.available} of {sem.capacity} units free"]
    lines.append("    holders   worker   pid      units  held for")
    for h in holders:
        lines.append(f"              {_w(who, h.pid):<8} {h.pid:<8} {h.units:<6} "
                     f"{now - h.since:5.2f} s")
    if not holders:
        lines.append("              (none)")
    lines.append("    waiters   worker   pid      units  waiting for   (in queue order)")
    for i, w in enumerate(waiters, 1):
        lines.append(f"      {i:>2}.     {_w(who, w.pid):<8} {w.pid:<8} {w.units:<6} "
                     f"{now - w.since:5.2f} s")
    if not waiters:
        lines.append("              (none)")
    stamp = f"[{time.monotonic() - t0:5.2f}] "
    out(stamp + ("\n" + " " * len(stamp)).join(lines) + "\n")


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _w(who: dict[int, int], pid: int) -> str:
    return str(who[pid]) if pid in who else "?"


def wait_for(cond, timeout: float, step: float = 0.0002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return None


def main() -> int:
    t0 = time.monotonic()
    name = f"demo-{os.getpid()}"
    try:
        out("ipcsem demo: 5 processes share a semaphore of 2 units; a supervisor\n"
            "watches them. One holder is SIGKILLed mid-work; its unit must come back.\n"
            + "-" * WIDTH + "\n")
    except ReaderGone:
        return 0
    sem = ipcsem.Semaphore(name, capacity=CAPACITY)
    sup_lines: queue.Queue[str] = queue.Queue()
    sup = subprocess.Popen([sys.executable, "-m", "ipcsem", "supervise", name],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)

    def pump():
        # Keeps reading (and handing lines over) after the reader left, so
        # neither the supervisor nor the demo ever waits on a full pipe.
        for raw in sup.stdout:
            line = raw.decode(errors="replace").rstrip()
            try:
                say(t0, f"supervisor: {line}", indent=21)
            except ReaderGone:
                pass
            sup_lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    procs: dict[int, subprocess.Popen] = {}
    who: dict[int, int] = {}
    ok = True
    try:
        say(t0, f"created semaphore {name!r} with {CAPACITY} units")
        first = sup_lines.get(timeout=10)
        if not first.startswith("supervising"):
            raise RuntimeError(f"supervisor did not start: {first}")
        # Start all five at once (an interpreter takes a moment), then let
        # them go one by one so the queue order is 1, 2, 3, 4, 5.
        for n in range(1, WORKERS + 1):
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", str(n),
                                  name], stdin=subprocess.PIPE,
                                 env={**os.environ, "IPCSEM_DEMO_T0": repr(t0)})
            procs[n] = p
            who[p.pid] = n
        say(t0, f"started {WORKERS} worker processes: pids "
                + ", ".join(str(p.pid) for p in procs.values()))
        for n, p in procs.items():
            p.stdin.write(b"go\n")
            p.stdin.close()
            if n <= CAPACITY:
                got = wait_for(lambda p=p: any(h.pid == p.pid for h in sem.holders()), 20, 0.002)
            else:
                got = wait_for(lambda p=p: any(w.pid == p.pid for w in sem.waiters()), 20, 0.002)
            if not got:
                raise RuntimeError(f"worker {n} did not {'hold' if n <= CAPACITY else 'queue'}")
        table(t0, sem, who, "two hold, three wait")

        # Kill the first holder half-way through its work.
        victim = procs[1]
        wait_for(lambda: False, 0.3)
        recovered_before = sem.stats().recovered_units
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        say(t0, f"SIGKILL worker 1 (pid {victim.pid}) while it holds a unit")
        gone = wait_for(lambda: all(h.pid != victim.pid for h in sem.holders())
                        and time.monotonic(), 5)
        nxt = procs[3].pid
        granted = wait_for(lambda: any(h.pid == nxt for h in sem.holders())
                           and time.monotonic(), 5)
        try:  # let the supervisor's own line come first
            while not sup_lines.get(timeout=2).startswith("recovered"):
                pass
        except queue.Empty:
            say(t0, "(no recovery line from the supervisor)")
        units = sem.stats().recovered_units - recovered_before
        if gone is None or granted is None:
            say(t0, "FAILED: the dead holder's unit did not come back within 5 s")
            ok = False
        else:
            say(t0, f"recovered {_n(units, 'unit')} of dead worker 1 in "
                    f"{(gone - killed_at) * 1e3:.1f} ms (from the kill); worker 3, first "
                    f"in the queue, held it {(granted - killed_at) * 1e3:.1f} ms after the "
                    "kill")
        victim.wait()
        wait_for(lambda: False, 0.05)
        table(t0, sem, who, "after the recovery")

        # The rest of the queue drains by itself.
        wait_for(lambda: len(sem.waiters()) == 0 and len(sem.holders()) == 2, 5, 0.005)
        table(t0, sem, who, "the last waiter got its turn")
        for n, p in procs.items():
            code = p.wait(timeout=15)
            if n != 1 and code != 0:
                say(t0, f"FAILED: worker {n} exited with {code}")
                ok = False
        say(t0, "all workers are done")
        table(t0, sem, who, "at the end")
        if sem.available != sem.capacity:
            say(t0, f"FAILED: available {sem.available} != capacity {sem.capacity}")
            ok = False
        sem.check()
        st = sem.stats()
        say(t0, f"check() passed: {st.available}/{st.capacity} units free, "
                f"{st.acquisitions} acquisitions, {_n(st.recovered_units, 'unit')} recovered "
                f"from {_n(st.recoveries, 'dead process', 'dead processes')}")
    except ReaderGone:
        pass    # `make demo | head`: stop at once, clean up, say nothing more
    except Exception as e:  # noqa: BLE001 - say what failed, then clean up
        say_if_read(t0, f"FAILED: {type(e).__name__}: {e}")
        ok = False
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(5)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()
        reader.join(2)
        sup.stdout.close()
        sem.close()
        try:
            ipcsem.unlink(name)
        except ipcsem.NotFound:
            pass
    left = [f for f in os.listdir("/dev/shm")
            if f == f"ipcsem.{name}" or f.startswith(f"sem.ipcsem.{name}:")]
    if left:
        say_if_read(t0, f"FAILED: left in /dev/shm: {left}")
        ok = False
    else:
        say_if_read(t0, f"unlinked {name!r}; nothing left in /dev/shm")
    try:
        out("-" * WIDTH + "\n" + ("demo OK" if ok else "demo FAILED") + "\n")
    except ReaderGone:
        pass
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker(int(sys.argv[2]), sys.argv[3], float(os.environ["IPCSEM_DEMO_T0"])))
    sys.exit(main())
