"""What every scenario shares: output, child processes, shared memory,
checks and clean-up.

A scenario is one module run two ways:

* ``python -m tools.scenarios.NAME [--chaos] [--seconds S] ...`` is the
  *director*: it creates the semaphores, starts the participants, watches,
  kills (with --chaos), checks and cleans up;
* ``python -m tools.scenarios.NAME ROLE ARG...`` is one *participant*, a
  separate interpreter that opens the semaphores by name.

CLOCK_MONOTONIC is system-wide on Linux, so the director's t0 (passed to every
participant) gives one time line for all the processes' output.
"""
from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import ipcsem  # noqa: E402
from ipcsem import _proc  # noqa: E402

WIDTH = 80


def _own_process_group() -> None:
    # A Ctrl-C at the terminal reaches the director only, which then stops
    # everyone in order.
    os.setpgid(0, 0)


def ready() -> None:
    """A participant says it is set up (interpreter started, semaphores
    open): the director starts its clock, and --chaos picks its victims,
    among ready participants only.  (Starting an interpreter that imports
    ipcsem takes 0.1-0.5 s on a busy machine.)"""
    where = os.environ.get("IPCSEM_SCENARIO_DIR")
    if where:
        open(os.path.join(where, f"ready.{os.getpid()}"), "w").close()


def note(key: str, value: str) -> None:
    """A participant leaves a value for the director (``Director.note``)."""
    where = os.environ.get("IPCSEM_SCENARIO_DIR")
    if where:
        with open(os.path.join(where, f"{key}.{os.getpid()}"), "w") as f:
            f.write(value)


def say(t0: float, text: str, indent: int = 9) -> None:
    """One timestamped paragraph, written with one write(2) so the lines of
    different processes never interleave."""
    stamp = f"[{time.monotonic() - t0:6.2f}] "
    body = textwrap.fill(text, WIDTH, initial_indent=stamp, subsequent_indent=" " * indent,
                         break_long_words=True, break_on_hyphens=False)
    os.write(1, (body + "\n").encode())


def raw(text: str) -> None:
    os.write(1, (text + "\n").encode())


def rule(title: str = "") -> None:
    raw(("-- " + title + " " if title else "") + "-" * (WIDTH - (len(title) + 4 if title else 0)))


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


class Words:
    """An array of int64 words in a file under /dev/shm, mapped by every
    process of the scenario.  One element store is one aligned 8-byte store:
    a SIGKILL never leaves half a word."""

    def __init__(self, path: str, count: int | None = None) -> None:
        if count is not None:
            with open(path, "wb") as f:
                f.truncate(count * 8)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.w = memoryview(self._map).cast("q")

    def __getitem__(self, i):
        return self.w[i]

    def __setitem__(self, i, v):
        self.w[i] = v

    def __len__(self):
        return len(self.w)


def sleep_until(cond, timeout: float, step: float = 0.005):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


class Director:
    """Owns everything a run creates; ``close()`` removes all of it (kills
    the participants, unlinks the semaphores, removes the shared files),
    whether the run passed, failed or was interrupted."""

    def __init__(self, scenario: str, args: argparse.Namespace) -> None:
        self.scenario = scenario
        self.args = args
        self.t0 = time.monotonic()
        self.tag = f"{scenario}-{os.getpid()}"
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix=f"ipcsem-{self.tag}-", dir=base)
        self.names: list[str] = []
        self.procs: dict[int, subprocess.Popen] = {}   # pid -> process
        self.failures: list[str] = []
        self.rng = random.Random(args.seed)
        self.kills = 0
        signal.signal(signal.SIGTERM, _raise_exit)
        signal.signal(signal.SIGHUP, _raise_exit)

    # ------------------------------------------------------------ resources
    def semaphore(self, what: str, capacity: int, initial: int | None = None,
                  slots: bool = False) -> ipcsem.Semaphore:
        name = f"{self.tag}-{what}"
        try:  # a leftover of a killed run with our pid: start clean
            ipcsem.unlink(name)
        except ipcsem.IpcsemError:
            pass
        self.names.append(name)
        return ipcsem.Semaphore(name, capacity=capacity, initial=initial, slots=slots)

    def words(self, what: str, count: int) -> tuple[str, Words]:
        path = os.path.join(self.dir, what)
        return path, Words(path, count)

    def spawn(self, role: str, *args) -> subprocess.Popen:
        cmd = [sys.executable, "-m", f"tools.scenarios.{self.scenario}", role,
               repr(self.t0), *map(str, args)]
        env = {**os.environ, "IPCSEM_SCENARIO_DIR": self.dir,
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # Die with the director, however it dies.
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             preexec_fn=_proc.pdeathsig_preexec(then=_own_process_group))
        self.procs[p.pid] = p
        return p

    def note(self, pid: int, key: str) -> str | None:
        try:
            with open(os.path.join(self.dir, f"{key}.{pid}")) as f:
                return f.read()
        except OSError:
            return None

    def is_ready(self, p: subprocess.Popen) -> bool:
        return os.path.exists(os.path.join(self.dir, f"ready.{p.pid}"))

    def wait_ready(self, procs, timeout: float = 30.0) -> None:
        procs = list(procs)
        if not sleep_until(lambda: all(self.is_ready(p) or p.poll() is not None
                                       for p in procs), timeout, 0.005):
            raise RuntimeError(f"participants not ready after {timeout:g} s")

    def kill(self, p: subprocess.Popen) -> None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        self.kills += 1

    def kill_and_recover(self, p: subprocess.Popen, sems) -> tuple[dict[str, int], list[str]]:
        """SIGKILL ``p`` and return what came back, ``{semaphore name: units}``
        it held, and the names it was queued on.  It is stopped first, so
        what it holds cannot change while we read it; after the kill every
        ledger is recovered until none shows it (a blocked waiter may have
        recovered some first: the count is what it held, whoever returned it)."""
        try:
            os.kill(p.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        sleep_until(lambda: _stopped_or_gone(p.pid), 2.0, 0.001)
        held = {s.name: units for s in sems
                if (units := sum(h.units for h in s.holders() if h.pid == p.pid))}
        queued = [s.name for s in sems if any(w.pid == p.pid for w in s.waiters())]
        self.kill(p)
        self.recover_dead(p.pid, sems)
        return held, queued

    def recover_dead(self, pid: int, sems, timeout: float = 10.0) -> dict[str, int]:
        """For a participant already dead: what the ledgers still show it
        holding, then recover until none shows it (holding or queued)."""
        held = {s.name: units for s in sems
                if (units := sum(h.units for h in s.holders() if h.pid == pid))}

        def gone() -> bool:
            for s in sems:
                s.recover()
            return not any(h.pid == pid for s in sems for h in s.holders()) and \
                not any(w.pid == pid for s in sems for w in s.waiters())

        if not sleep_until(gone, timeout, 0.005):
            self.fail(f"pid {pid} still in the ledgers {timeout:g} s after its death")
        return held

    # --------------------------------------------------------------- output
    def say(self, text: str, indent: int = 9) -> None:
        say(self.t0, text, indent)

    def fail(self, text: str) -> None:
        if text in self.failures:  # a broken invariant stays broken: say it once
            return
        self.failures.append(text)
        if len(self.failures) <= 10:
            self.say(f"FAILED: {text}")

    def check(self, cond: bool, text: str) -> bool:
        if not cond:
            self.fail(text)
        return bool(cond)

    def check_semaphores(self) -> None:
        for name in self.names:
            try:
                ipcsem.Semaphore(name).check()
            except ipcsem.IpcsemError as e:
                self.fail(f"ledger of {name}: {e}")

    def verdict(self) -> int:
        rule()
        if self.failures:
            raw(f"FAIL: {plural(len(self.failures), 'invariant')} broken:")
            for f in self.failures[:10]:
                raw(textwrap.fill(f, WIDTH, initial_indent="  - ", subsequent_indent="    "))
            return 1
        raw(f"OK: every invariant held ({plural(self.kills, 'process', 'processes')} "
            "SIGKILLed)" if self.args.chaos else "OK: every invariant held")
        return 0

    # ------------------------------------------------------------- clean-up
    def close(self) -> None:
        for p in list(self.procs.values()):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in list(self.procs.values()):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for name in self.names:
            try:
                ipcsem.unlink(name)
            except ipcsem.IpcsemError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _stopped_or_gone(pid: int) -> bool:
    st = _proc.stat(pid)
    return st is None or st.state in ("T", "t", "Z", "X")


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def parser(description: str, seconds: float) -> argparse.ArgumentParser:
    module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    p = argparse.ArgumentParser(prog=f"python -m tools.scenarios.{module}",
                                description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chaos", action="store_true",
                   help="SIGKILL random participants (and respawn them)")
    p.add_argument("--seconds", type=float, default=seconds, help=f"how long (default {seconds})")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    return p


def run(scenario: str, parse: argparse.ArgumentParser, direct, roles: dict,
        argv: list[str] | None = None) -> int:
    """Entry point: ``ROLE T0 ARGS...`` runs a participant, anything else the
    director ``direct(director)``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in roles:
        signal.signal(signal.SIGTERM, _raise_exit)
        try:
            return roles[argv[0]](float(argv[1]), *argv[2:]) or 0
        except KeyboardInterrupt:
            return 130
    ns = parse.parse_args(argv)
    if ns.seed is None:
        ns.seed = random.randrange(1 << 30)
    d = Director(scenario, ns)
    try:
        direct(d)
        d.check_semaphores()
        return d.verdict()
    except KeyboardInterrupt:
        d.say("interrupted: cleaning up")
        return 130
    except Exception as e:  # noqa: BLE001 - say what failed, clean up, exit 1
        d.fail(f"{type(e).__name__}: {e}")
        return d.verdict()
    finally:
        d.close()


class QueueWatch:
    """Polls one semaphore's ledger: the ticket each pid had while queued,
    the ledger's grant time (``Holder.since``) of each holder, the queue
    position each pid was first seen at, and the most units ever held."""

    def __init__(self, sem: ipcsem.Semaphore) -> None:
        self.sem = sem
        self.ticket: dict[int, int] = {}
        self.position: dict[int, int] = {}
        self.since: dict[int, float] = {}
        self.max_held = 0
        self.samples = 0

    def poll(self) -> tuple[list, list]:
        waiters = self.sem.waiters()
        holders = self.sem.holders()
        self.samples += 1
        for i, w in enumerate(waiters, 1):
            self.ticket.setdefault(w.pid, w.ticket)
            self.position.setdefault(w.pid, i)
        for h in holders:
            self.since.setdefault(h.pid, h.since)
        self.max_held = max(self.max_held, sum(h.units for h in holders))
        return waiters, holders

    def fifo_violations(self, pids) -> list[tuple[int, int]]:
        """Pairs (a, b) of queued pids where a had the earlier ticket but was
        granted strictly later.  (One release can grant several waiters in
        one ledger transaction: they share a grant time, hence 'strictly'.)"""
        seen = sorted((self.ticket[p], self.since[p], p) for p in pids
                      if p in self.ticket and p in self.since)
        bad = []
        latest = None
        for _t, since, pid in seen:
            if latest is not None and since < latest[0]:
                bad.append((latest[1], pid))
            if latest is None or since > latest[0]:
                latest = (since, pid)
        return bad
