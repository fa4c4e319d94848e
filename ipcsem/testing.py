"""Test helpers for code that uses ipcsem: real processes, real SIGKILLs.

Use it from your own pytest suite, either as a plugin (the fixtures appear
by themselves)::

    # conftest.py
    pytest_plugins = ["ipcsem.testing"]

or by importing what you need::

    from ipcsem.testing import (assert_consistent, holder_factory, ipcsem_name,
                                kill_and_wait_recovered, spawn_holder, unique_name)

A test::

    import ipcsem
    from ipcsem.testing import assert_consistent, kill_and_wait_recovered

    def test_units_of_a_killed_worker_come_back(ipcsem_name, holder_factory):
        sem = ipcsem.Semaphore(ipcsem_name, capacity=3)
        worker = holder_factory(ipcsem_name, units=2)     # another process holds 2
        assert_consistent(sem, available=1, held=2, holders=1, waiting=0)
        kill_and_wait_recovered(sem, worker)               # SIGKILL, then recovered
        assert_consistent(sem, available=3, held=0, holders=0, waiting=0)

What is here
------------
``unique_name(prefix="t")``
    a fresh semaphore name; the ``ipcsem_name`` fixture gives one and
    unlinks it after the test.
``spawn_holder(name, units=1, *, capacity=None, timeout=10) -> HolderProcess``
    start a *separate* process (``python -m ipcsem.testing hold NAME UNITS``)
    that acquires the units and blocks; returns once it holds them.  The
    ``holder_factory`` fixture is ``spawn_holder`` plus clean-up: every
    holder still running at teardown is SIGKILLed and reaped.
``kill_and_wait_recovered(sem, holder, *, timeout=5.0, recover=True) -> float``
    SIGKILL the holder and wait until the ledger no longer shows it; with
    ``recover=False`` only wait (something else must recover: a supervisor,
    a blocked waiter).  Returns the seconds it took; AssertionError if it
    did not happen in time.
``assert_consistent(sem, *, available=None, held=None, holders=None, waiting=None, unowned=None)``
    ``sem.check()`` (the ledger invariant) plus exact counts; an
    AssertionError lists every expected vs actual value.
``wait_until(predicate, timeout=5.0, *, what=None)``
    poll until ``predicate()`` is true (e.g. a holder started with
    ``wait=False`` is queued); AssertionError on timeout.

Only the fixtures need pytest; the rest imports and works without it.
See docs/testing.md.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping

__all__ = [
    "HolderError", "HolderProcess", "assert_consistent", "kill_and_wait_recovered",
    "spawn_holder", "unique_name", "wait_until",
]  # + the fixtures "holder_factory", "ipcsem_name" when pytest is importable

READY = "holding"          # first word of the holder's ready line
RELEASED = "released"      # the holder's last line after a release request
EXIT_TIMEOUT = 75          # the holder did not get its units in time


class HolderError(RuntimeError):
    """A holder process could not be started or did not behave: it exited,
    failed to open the semaphore, or said something unexpected.  The message
    carries its exit status and the tail of its stderr."""


# ================================================================= names
def unique_name(prefix: str = "t") -> str:
    """A semaphore name no other test (in this or another process) uses:
    ``PREFIX-PID-RANDOM``.  Nothing is created; see the ``ipcsem_name``
    fixture for a name that is also removed after the test."""
    from . import _names

    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    _names.validate(name)   # a bad prefix fails here, not at first use
    return name


def _unlink_quietly(name: str) -> None:
    from ._errors import IpcsemError
    from ._semaphore import unlink

    try:
        unlink(name)
    except IpcsemError:
        pass


# ======================================================== holder process
class HolderProcess:
    """A separate process holding units of a semaphore (see spawn_holder).

    ``pid`` and ``start`` are its ipcsem identity; ``units`` what it holds
    (or waits for, before ``wait_holding()`` returned).  Usable as a context
    manager: leaving the block SIGKILLs it if it still runs, and reaps it.
    """

    def __init__(self, name: str, units: int = 1, *, capacity: int | None = None,
                 timeout: float | None = 10) -> None:
        self.name = name
        self.units = units
        self.start: int | None = None      # known once it holds (the ready line)
        self.holding = False
        argv = [sys.executable, "-m", "ipcsem.testing", "hold", name, str(units)]
        if capacity is not None:
            argv += ["--capacity", str(capacity)]
        if timeout is not None:
            argv += ["--timeout", repr(float(timeout))]
        # The child must import this very ipcsem, even when the suite found it
        # through sys.path rather than an installation.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.pid = self.proc.pid
        self._buffer = b""

    # ------------------------------------------------------------ talking
    def _read_line(self, timeout: float) -> str | None:
        """One line from the holder's stdout; None at end of file; raises
        TimeoutError when nothing came within ``timeout`` seconds."""
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def _failure(self, what: str) -> HolderError:
        """A HolderError saying ``what`` and, if the holder has exited, how."""
        rc = self.proc.poll()
        err = ""
        if rc is not None:
            try:
                err = self.proc.stderr.read().decode(errors="replace").strip()
            except (OSError, ValueError):
                pass
        how = "still running" if rc is None else f"exit status {rc}"
        tail = err.splitlines()[-1] if err else ""
        return HolderError(f"holder process {self.pid} for {self.name!r}: {what} ({how})"
                           + (f": {tail}" if tail else ""))

    def wait_holding(self, timeout: float = 10) -> HolderProcess:
        """Wait until the holder says it holds its units (spawn_holder does
        this unless ``wait=False``).  ipcsem.Timeout if it did not get them
        in time; HolderError if it failed."""
        if self.holding:
            return self
        from ._errors import Timeout

        try:
            line = self._read_line(timeout)
        except TimeoutError:
            self.close()
            raise Timeout(f"holder process {self.pid} did not get {self.units} unit(s) of "
                          f"{self.name!r} within {timeout} s", self.name) from None
        if line is None:
            self.proc.wait(10)
            if self.proc.returncode == EXIT_TIMEOUT:
                raise Timeout(f"holder process {self.pid} did not get {self.units} unit(s) of "
                              f"{self.name!r} in time", self.name)
            raise self._failure("exited before holding its units")
        words = line.split()
        if len(words) != 5 or words[0] != READY:
            self.close()
            raise self._failure(f"unexpected line {line!r}")
        self.start = int(words[4])
        self.holding = True
        return self

    # -------------------------------------------------------------- state
    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code (negative: killed by that signal)."""
        return self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    # ------------------------------------------------------------ actions
    def send_signal(self, sig: int) -> None:
        """Send ``sig`` and return at once (nothing if it has been reaped:
        its pid may belong to someone else by now)."""
        self.proc.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10) -> None:
        """Send ``sig``; for SIGKILL also wait for the process to end and
        reap it.  (SIGSTOP leaves it stopped: alive, still holding.)"""
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout)

    def release(self, timeout: float = 10) -> int:
        """Ask the holder to release its units and exit; returns its exit
        status (0) once it has.  HolderError if it cannot (not running,
        stopped past ``timeout``, failed).  A holder started with
        ``wait=False`` is first waited for (``wait_holding(timeout)``)."""
        if not self.running:
            raise self._failure("cannot release: not running")
        if not self.holding:
            self.wait_holding(timeout)
        try:
            self.proc.stdin.write(b"release\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._failure("cannot release: it closed its stdin") from None
        try:
            line = self._read_line(timeout)
        except TimeoutError:
            raise self._failure(f"no answer to release within {timeout} s (stopped?)") from None
        if line != RELEASED:
            raise self._failure(f"answered {line!r} to release")
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"released but did not exit within {timeout} s") from None
        self.holding = False
        self._close_pipes()
        return rc

    def close(self) -> None:
        """SIGKILL it if it still runs, reap it, close the pipes.  Idempotent."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
            pass
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> HolderProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.proc.returncode}"
        what = "holding" if self.holding else "waiting for"
        return f"<HolderProcess pid {self.pid} {what} {self.units} of {self.name!r}, {state}>"


def spawn_holder(name: str, units: int = 1, *, capacity: int | None = None,
                 timeout: float | None = 10, wait: bool = True) -> HolderProcess:
    """Start a separate process that acquires ``units`` of ``name`` and
    blocks holding them, and return once it holds them.

    The process is ``python -m ipcsem.testing hold NAME UNITS`` (started
    with subprocess: its own pid, start time and mapping, like any unrelated
    user of the semaphore).  ``capacity`` creates the semaphore if needed
    (and must match if it exists); without it NAME must exist.  It waits at
    most ``timeout`` seconds for the units (None: forever): ipcsem.Timeout
    if they did not come; HolderError if the process failed (e.g. NotFound).
    With ``wait=False`` it returns at once (the holder may still be queued):
    call ``holder.wait_holding()``.

    The caller owns the process: ``kill()``, ``release()`` or ``close()``
    it, or use it as a context manager, or use the ``holder_factory``
    fixture, which cleans up after the test.
    """
    from . import _names

    _names.validate(name)
    if units.__class__ is not int or units < 1:
        raise ValueError(f"units must be an int >= 1, got {units!r}")
    holder = HolderProcess(name, units, capacity=capacity, timeout=timeout)
    if wait:
        try:
            # The holder itself gives up after `timeout`; allow for its start-up.
            holder.wait_holding(30 if timeout is None else timeout + 10)
        except BaseException:
            holder.close()
            raise
    return holder


# =================================================== asserting on a ledger
def wait_until(predicate, timeout: float = 5.0, *, interval: float = 0.005,
               what: str | None = None):
    """Call ``predicate()`` until it returns something true, and return that;
    AssertionError after ``timeout`` seconds, naming ``what`` is awaited.
    ``wait_until(lambda: len(sem.waiters()) == 1, what="a queued waiter")``"""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(interval)


def _presence(sem, pid: int, start: int | None) -> tuple[int, int]:
    """(units held, queue entries) of the identity per the ledger now."""
    def me(p, s):
        return p == pid and (start is None or s == start)

    units = sum(h.units for h in sem.holders() if me(h.pid, h.start))
    queued = sum(1 for w in sem.waiters() if me(w.pid, w.start))
    return units, queued


def _describe_ledger(sem) -> str:
    try:
        holders = ", ".join(f"pid {h.pid}: {h.units}" for h in sem.holders()) or "none"
        waiters = ", ".join(f"pid {w.pid}: {w.units}" for w in sem.waiters()) or "none"
        return (f"ledger of {sem.name!r}: {sem.available} of {sem.capacity} available; "
                f"holders {holders}; waiters {waiters}")
    except Exception as e:  # noqa: BLE001 - only a diagnostic
        return f"ledger of {sem.name!r} unreadable: {e}"


def kill_and_wait_recovered(sem, holder, *, timeout: float = 5.0, recover: bool = True,
                            sig: int = signal.SIGKILL) -> float:
    """SIGKILL ``holder`` and wait until ``sem``'s ledger no longer shows it
    (no units, no queue entry): its units are back in the pool, or already
    granted to a waiter.  Returns the seconds from the signal to that.

    ``recover=True`` calls ``sem.recover()`` while waiting, as a program's
    own code might; ``recover=False`` only watches, to test that something
    else recovers (``ipcsem supervise``, a blocked waiter healing).
    ``sig`` sends another signal instead (a process stopped by SIGSTOP is
    alive and is never recovered: that times out).

    ``holder`` is a HolderProcess, or any process handle with ``pid`` and
    ``send_signal(sig)`` (a ``subprocess.Popen`` of your own worker; it is
    reaped after a SIGKILL).  AssertionError if it holds nothing and waits for
    nothing before the signal, or if it is still in the ledger after
    ``timeout`` seconds; the message says what the process is (alive,
    stopped, zombie) and what the ledger holds.
    """
    from . import _identity

    pid, start = holder.pid, getattr(holder, "start", None)
    if start is None:
        start = _identity.start_of(pid)
    units, queued = _presence(sem, pid, start)
    if not units and not queued:
        raise AssertionError(f"pid {pid} holds no units of {sem.name!r} and waits for none: "
                             "nothing to recover (did it acquire?)")
    signame = signal.Signals(sig).name
    t0 = time.monotonic()
    holder.send_signal(sig)
    deadline = t0 + timeout
    while True:
        if recover:
            sem.recover()
        now = time.monotonic()
        left = _presence(sem, pid, start)
        if left == (0, 0):
            taken = now - t0
            break
        if now >= deadline:
            state = _identity.status(pid, start)
            why = {
                _identity.STOPPED: "it is stopped, i.e. alive: a stopped process keeps its units",
                _identity.ALIVE: "it is alive (the signal did not end it)",
                _identity.UNKNOWN: "it is hidden from us, so treated as alive",
            }.get(state, f"it is {state}"
                  + ("" if recover else ": nothing recovered it (recover=False: is a "
                                        "supervisor or a blocked waiter running?)"))
            raise AssertionError(
                f"pid {pid} still has {left[0]} unit(s) and {left[1]} queue entr"
                f"{'y' if left[1] == 1 else 'ies'} in {sem.name!r} {timeout} s after "
                f"{signame}; {why}. {_describe_ledger(sem)}")
        time.sleep(0.002)
    if sig == signal.SIGKILL:  # reap our own child: no zombie left behind
        proc = holder if isinstance(holder, subprocess.Popen) else getattr(holder, "proc", None)
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
    if hasattr(holder, "holding"):
        holder.holding = False
    return taken


def assert_consistent(sem, *, available: int | None = None, held: int | None = None,
                      holders=None, waiting: int | None = None,
                      unowned: int | None = None) -> None:
    """Run ``sem.check()`` (the ledger invariant) and compare exact counts.

    ``available``: units free; ``held``: units owned by processes;
    ``holders``: how many processes hold units, or a mapping
    ``{pid (or HolderProcess): units}`` that must be exactly who holds what;
    ``waiting``: queued requests; ``unowned``: units out without an owner.
    None skips a count.  AssertionError listing each mismatch as expected
    vs actual, with the ledger's holders and waiters.
    """
    from ._errors import Corrupt

    try:
        sem.check()
    except Corrupt as e:
        raise AssertionError(f"check() of {sem.name!r} failed: {e}") from e
    st = sem.stats()
    actual = {"available": st.available, "held": st.held, "waiting": st.waiting,
              "unowned": st.unowned}
    expected = {"available": available, "held": held, "waiting": waiting, "unowned": unowned}
    wrong = [f"{k}: expected {expected[k]}, actual {actual[k]}"
             for k in expected if expected[k] is not None and expected[k] != actual[k]]
    if holders is not None:
        if isinstance(holders, Mapping):
            want = {getattr(k, "pid", k): v for k, v in holders.items()}
            got = {h.pid: h.units for h in sem.holders()}
            if want != got:
                wrong.append(f"holders: expected {_pids(want)}, actual {_pids(got)}")
        elif holders != st.holders:
            wrong.append(f"holders: expected {holders}, actual {st.holders}")
    if wrong:
        raise AssertionError(f"{sem.name!r}: " + "; ".join(wrong) + f". {_describe_ledger(sem)}")


def _pids(d: dict) -> str:
    return "{" + ", ".join(f"pid {p}: {u}" for p, u in sorted(d.items())) + "}"


# ============================================================== fixtures
def _define_fixtures(pytest) -> None:
    global ipcsem_name, holder_factory

    @pytest.fixture
    def ipcsem_name():
        """A fresh semaphore name (nothing created); unlinked after the test."""
        name = unique_name("t")
        yield name
        _unlink_quietly(name)

    @pytest.fixture
    def holder_factory():
        """``spawn_holder`` that remembers its processes: each still running
        at teardown is SIGKILLed and reaped."""
        made: list[HolderProcess] = []

        def factory(name: str, units: int = 1, **kw) -> HolderProcess:
            holder = spawn_holder(name, units, **kw)
            made.append(holder)
            return holder

        yield factory
        for holder in made:
            holder.close()


# pytest is imported only to define the fixtures, and not at all in the
# holder process (`python -m ipcsem.testing hold`), which must start fast.
if __name__ != "__main__":
    try:
        import pytest as _pytest
    except ImportError:  # the helpers work without pytest; the fixtures need it
        _pytest = None
    if _pytest is not None:
        _define_fixtures(_pytest)
        __all__ += ["holder_factory", "ipcsem_name"]


# ===================================================== the holder process
HOLD_USAGE = "python -m ipcsem.testing hold NAME UNITS [--capacity N] [--timeout S]"


def hold_main(argv: list[str]) -> int:
    """The holder process: acquire UNITS of NAME, print
    ``holding NAME UNITS PID START``, then block until stdin says
    ``release`` (or closes): release, print ``released``, exit 0.
    Exit 75 if the units did not come within --timeout, 1 on an ipcsem
    error (one line on stderr), 2 on bad arguments."""
    import argparse

    from ._errors import IpcsemError
    from ._identity import ME
    from ._semaphore import Semaphore

    p = argparse.ArgumentParser(prog="python -m ipcsem.testing hold",
                                description="Hold units of a semaphore until told to "
                                            "release (a helper process for tests).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("units", metavar="UNITS", type=int)
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="create NAME with N units if it does not exist")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up (exit 75) if the units are not had within S seconds")
    args = p.parse_args(argv)
    try:
        sem = Semaphore(args.name, args.capacity)
        if not sem.acquire(args.units, timeout=args.timeout):
            print(f"hold: {args.units} unit(s) of {args.name!r} not acquired within "
                  f"{args.timeout} s", file=sys.stderr, flush=True)
            return EXIT_TIMEOUT
        try:
            print(f"{READY} {args.name} {args.units} {ME.pid} {ME.start}", flush=True)
            for line in sys.stdin:       # blocks; end of file: our parent is gone
                if line.strip() == "release":
                    break
        except OSError:                  # our parent is gone (broken pipe)
            pass
        sem.release(args.units)
        sem.close()
    except (IpcsemError, ValueError) as e:
        print(f"hold: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:            # Ctrl-C in the test's terminal
        return 130
    try:
        print(RELEASED, flush=True)
    except BrokenPipeError:
        pass
    return 0


def _main(argv: list[str]) -> int:
    if argv[:1] == ["hold"]:
        return hold_main(argv[1:])
    print(f"usage: {HOLD_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
