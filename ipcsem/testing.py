"""Test helpers for code that uses ipcsem: real processes, real SIGKILLs.

ipcsem's own suite tests itself with this kit; use it from yours, either as
a plugin (the fixtures appear by themselves)::

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
Names and processes that hold:

``unique_name(prefix="t")``
    a fresh semaphore name; the ``ipcsem_name`` fixture gives one and
    unlinks it after the test.
``spawn_holder(name, units=1, *, capacity=None, timeout=10, wait=True, backend=None)``
    start a *separate* process (``python -m ipcsem.testing hold``) that
    acquires the units and blocks; returns a ``HolderProcess`` once it holds
    them.  ``holder_factory`` is ``spawn_holder`` plus clean-up.
``Agent(backend=None, env=None, wait=True)``
    a separate process driven command by command (``python -m
    ipcsem.testing agent``): open, acquire, release, queue, hold a lease,
    lock a mutex, install signal handlers, fork, arm a crash point.
    ``agent_factory`` is ``Agent`` plus clean-up.
``start_supervisor(*names)``
    ``ipcsem supervise NAME...`` as a child; ``.stop()`` returns its log.

Asserting:

``kill_and_wait_recovered(sem, holder, *, timeout=5.0, recover=True, sig=SIGKILL)``
    SIGKILL the holder and wait until the ledger no longer shows it.
``assert_consistent(sem, *, available=, held=, holders=, waiting=, unowned=)``
    ``sem.check()`` (the ledger invariant) plus exact counts.
``can_take_all(name, units, timeout=5.0, *, backend=None)``
    the independent oracle: can a fresh process take ``units`` units now?
``wait_until(predicate, timeout=5.0, *, interval=0.005, what=None)``
    poll until ``predicate()`` is true; AssertionError on timeout.
``held_by(sem)``, ``queued_pids(sem)``
    ``{pid: units}`` of the holders and the waiters' pids in serving order.

asyncio (see docs/asyncio.md):

``await wait_for_waiters(sem, n)``, ``await wait_until_async(predicate)``
    poll without blocking the event loop.
``watch_loop_gaps(tick=0.001)``, ``run_checked(coro, max_gap=)``, ``ipcsem_loop``
    a ticker task that proves the loop was never held (run-queue delay
    reported apart); a fresh loop (asyncio or uvloop) under it.
``resources(pid=None)``
    a process's threads (by name) and open descriptors.
``AsyncAgent(loop="asyncio")``, ``aio_agent_factory``
    a separate process whose event loop's tasks a test drives by name.

Every helper that starts a process takes ``backend=`` (a backend URL, as
``ipcsem.Semaphore(..., backend=)``; default ``$IPCSEM_BACKEND``, else the
shared-memory backend).  Only the fixtures need pytest; the rest imports and
works without it.  See docs/testing.md.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import argparse

    from ._aio import AsyncMutex, AsyncSemaphore
    from ._base import Opened as _Observable  # any open semaphore or mutex, sync or async
    from ._records import Waiter
    from ._semaphore import Mutex, Semaphore

_T = TypeVar("_T")

__all__ = [
    "Agent", "AgentError", "AgentLease", "HolderError", "HolderProcess", "SupervisorProcess",
    "assert_consistent", "can_take_all", "held_by", "kill_and_wait_recovered", "queued_pids",
    "spawn_holder", "start_supervisor", "unique_name", "wait_until",
]  # + the fixtures "agent_factory", "holder_factory", "ipcsem_name" when pytest is importable

READY = "holding"          # first word of the holder's ready line
RELEASED = "released"      # the holder's last line after a release request
EXIT_TIMEOUT = 75          # the holder (or the oracle) did not get its units in time
MODULE = "ipcsem.testing"


class HolderError(RuntimeError):
    """A holder process could not be started or did not behave: it exited,
    failed to open the semaphore, or said something unexpected.  The message
    carries its exit status and the tail of its stderr."""


class AgentError(Exception):
    """What a command raised inside an agent process: ``type`` is the
    exception's class name (``"NotOwner"``, ``"KeyboardInterrupt"``, ...),
    ``message`` its text.  ``str()`` is ``"TYPE MESSAGE"``."""

    def __init__(self, type_: str, message: str = "") -> None:
        super().__init__(f"{type_} {message}".rstrip())
        self.type = type_
        self.message = message


# ================================================================= names
def unique_name(prefix: str = "t") -> str:
    """A semaphore name no other test (in this or another process) uses:
    ``PREFIX-PID-RANDOM``.  Nothing is created; see the ``ipcsem_name``
    fixture for a name that is also removed after the test.  ValueError if
    the prefix makes an invalid name."""
    from . import _names

    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    _names.validate(name)   # a bad prefix fails here, not at first use
    return name


def _unlink_quietly(name: str, backend: str | None = None) -> None:
    from ._base import unlink
    from ._errors import IpcsemError

    try:
        unlink(name, backend=backend)
    except IpcsemError:
        pass


def _pipe(f: IO[Any] | None) -> IO[Any]:
    """A child's pipe that we asked for (subprocess types them Optional)."""
    if f is None:
        raise ValueError("the pipe was not requested")
    return f


def _child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a helper process: ours plus ``env``, with
    PYTHONPATH such that it imports this very ipcsem (even when the suite
    found it through sys.path rather than an installation)."""
    from . import _proc

    return _proc.package_env({**os.environ, **(env or {})})


class _LineReader:
    """Lines from a child's stdout with a timeout (select() cannot see a
    text wrapper's buffer, so we keep our own)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._fd = _pipe(proc.stdout).fileno()
        self._buffer = b""

    def line(self, timeout: float) -> str | None:
        """One line; None at end of file; TimeoutError when nothing came
        within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = max(0.0, end - time.monotonic())
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                if time.monotonic() >= end:
                    raise TimeoutError
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")


def _stderr_tail(proc: subprocess.Popen[bytes]) -> str:
    """The last line of an exited child's piped stderr, or ''."""
    if proc.poll() is None or proc.stderr is None:
        return ""
    try:
        err = proc.stderr.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
    return err.splitlines()[-1] if err else ""


def _close_pipes(proc: subprocess.Popen[Any]) -> None:
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is None:
            continue
        try:
            f.close()
        except (OSError, ValueError):
            pass


def _reap(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL (after a SIGCONT: it may be stopped) if running, and reap."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
        pass
    _close_pipes(proc)


# ======================================================== holder process
class HolderProcess:
    """A separate process holding units of a semaphore (see spawn_holder).

    ``pid`` and ``start`` are its ipcsem identity; ``units`` what it holds
    (or waits for, before ``wait_holding()`` returned); ``token`` and
    ``slots`` its lease's fencing token and unit numbers once it holds.
    Usable as a context manager: leaving the block SIGKILLs it if it still
    runs, and reaps it.
    """

    def __init__(self, name: str, units: int = 1, *, capacity: int | None = None,
                 timeout: float | None = 10, backend: str | None = None) -> None:
        self.name = name
        self.units = units
        self.backend = backend
        self.timeout = timeout             # how long the holder itself waits for its units
        self.start: int | None = None      # known once it holds (the ready line)
        self.token: int | None = None
        self.slots: tuple[int, ...] = ()
        self.holding = False
        argv = [sys.executable, "-m", MODULE, "hold", name, str(units)]
        if capacity is not None:
            argv += ["--capacity", str(capacity)]
        if timeout is not None:
            argv += ["--timeout", repr(float(timeout))]
        if backend is not None:
            argv += ["--backend", backend]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_child_env())
        self.pid = self.proc.pid
        self._lines = _LineReader(self.proc)

    def _failure(self, what: str) -> HolderError:
        """A HolderError saying ``what`` and, if the holder has exited, how."""
        rc = self.proc.poll()
        tail = _stderr_tail(self.proc)
        how = "still running" if rc is None else f"exit status {rc}"
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
            line = self._lines.line(timeout)
        except TimeoutError:
            self.close()
            raise Timeout(self.name, self.units, timeout) from None
        if line is None:
            self.proc.wait(10)
            if self.proc.returncode == EXIT_TIMEOUT:
                raise Timeout(self.name, self.units, self.timeout)
            raise self._failure("exited before holding its units")
        words = line.split()
        if len(words) != 7 or words[0] != READY:
            self.close()
            raise self._failure(f"unexpected line {line!r}")
        self.start, self.token = int(words[4]), int(words[5])
        self.slots = () if words[6] == "-" else tuple(int(s) for s in words[6].split(","))
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
            _pipe(self.proc.stdin).write(b"release\n")
            _pipe(self.proc.stdin).flush()
        except (BrokenPipeError, OSError):
            raise self._failure("cannot release: it closed its stdin") from None
        try:
            line = self._lines.line(timeout)
        except TimeoutError:
            raise self._failure(f"no answer to release within {timeout} s (stopped?)") from None
        if line != RELEASED:
            raise self._failure(f"answered {line!r} to release")
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"released but did not exit within {timeout} s") from None
        self.holding = False
        _close_pipes(self.proc)
        return rc

    def close(self) -> None:
        """SIGKILL it if it still runs, reap it, close the pipes.  Idempotent."""
        _reap(self.proc)

    def __enter__(self) -> HolderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.proc.returncode}"
        what = "holding" if self.holding else "waiting for"
        return f"<HolderProcess pid {self.pid} {what} {self.units} of {self.name!r}, {state}>"


def spawn_holder(name: str, units: int = 1, *, capacity: int | None = None,
                 timeout: float | None = 10, wait: bool = True,
                 backend: str | None = None) -> HolderProcess:
    """Start a separate process that acquires ``units`` of ``name`` and
    blocks holding them, and return once it holds them.

    The process is ``python -m ipcsem.testing hold NAME UNITS`` (started
    with subprocess: its own pid, start time and mapping, like any unrelated
    user of the semaphore).  ``capacity`` creates the semaphore if needed
    (and must match if it exists); without it NAME must exist.  It waits at
    most ``timeout`` seconds for the units (None: forever): ipcsem.Timeout
    if they did not come; HolderError if the process failed (e.g. NotFound).
    With ``wait=False`` it returns at once (the holder may still be queued):
    call ``holder.wait_holding()``.  ``backend``: the backend URL the holder
    opens NAME on.  ValueError for a bad name or unit count.

    The caller owns the process: ``kill()``, ``release()`` or ``close()``
    it, or use it as a context manager, or use the ``holder_factory``
    fixture, which cleans up after the test.
    """
    from . import _names

    _names.validate(name)
    if units.__class__ is not int or units < 1:
        raise ValueError(f"units must be an int >= 1, got {units!r}")
    holder = HolderProcess(name, units, capacity=capacity, timeout=timeout, backend=backend)
    if wait:
        try:
            # The holder itself gives up after `timeout`; allow for its start-up.
            holder.wait_holding(30 if timeout is None else timeout + 10)
        except BaseException:
            holder.close()
            raise
    return holder


# ================================================================= agent
@dataclass(frozen=True)
class AgentLease:
    """A lease an agent holds (``Agent.hold``): as ``ipcsem.Lease``."""

    units: int
    slots: tuple[int, ...]
    token: int
    previous_owner_died: bool


class _DrivenProcess:
    """What a driven child process (Agent, AsyncAgent) offers besides its
    commands: its state, signals, and being closed (also as a context)."""

    proc: subprocess.Popen[bytes]
    pid: int

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; for SIGKILL also wait for it to end and reap it."""
        os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def close(self) -> None:
        """SIGKILL it if it still runs, reap it, close the pipes.  Idempotent."""
        _reap(self.proc)

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_D = TypeVar("_D", bound=_DrivenProcess)


class Agent(_DrivenProcess):
    """A separate process (``python -m ipcsem.testing agent``) that a test
    drives one command at a time, to act as an unrelated user of a
    semaphore: its own pid, start time and mapping; killed with real signals.

    Each command is one line on its stdin; the agent answers one line
    (``ok JSON`` or ``err TYPE MESSAGE``); commands that may block first say
    ``queued`` (they are about to wait).  ``cmd(line)`` sends a command and
    returns its result (or raises AgentError); the methods below are the
    same commands with Python arguments.  Commands (one primitive is open at
    a time: the last ``open`` or ``mutex``)::

        open NAME [CAPACITY] [initial=K slots=1 fair=0 mode=0o660 ...] -> capacity
        mutex NAME [reentrant=1]                   -> 1 (a Mutex is now open)
        acquire UNITS [TIMEOUT|-] [PRIORITY]       -> bool   (says "queued" first)
        try UNITS                                  -> bool
        release UNITS | disown UNITS               -> None
        hold UNITS [TIMEOUT|-] [PRIORITY]          -> {units, slots, token,
                                                       previous_owner_died} ("queued")
        unhold                                     -> None (leaves the latest hold)
        recover -> units | close -> None | pid -> pid | ident -> [pid, start]
        crashpoint N        SIGKILL itself at the Nth crash point inside a
                            ledger transaction (shm backend; -1: off)
        handler SIG         install a handler for SIG that returns (EINTR)
        handler-exit SIG    install a handler that raises SystemExit
        fork-child-release  fork; the child tries to release 1 unit; -> the
                            child's exit code (0: refused, as it owns nothing)
        fork-zombie UNITS   fork a child that takes UNITS and exits unreaped
                            -> its pid (once it is a zombie)
        threads N ROUNDS    N threads each do ROUNDS ``with sem:`` -> [errors]
        admitted DIR ROUNDS [THREADS]  as threads, and while holding each takes
                            one of CAPACITY flocks DIR/0.. -> times none was free
        sleep S | exit

    ``backend`` opens every semaphore on that backend URL; ``env`` adds
    environment variables.  ``wait=False`` returns before it has started
    (start several, then ``ready()`` each).  Kill it with ``kill(sig)``;
    ``close()`` (or the ``agent_factory`` fixture) SIGKILLs and reaps it.
    """

    def __init__(self, env: Mapping[str, str] | None = None, wait: bool = True, *,
                 backend: str | None = None) -> None:
        argv = [sys.executable, "-m", MODULE, "agent"]
        if backend is not None:
            argv += ["--backend", backend]
        self.backend = backend
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_child_env(env))
        self.pid = self.proc.pid
        self.start: int | None = None       # its identity's start, from the ready line
        self._lines = _LineReader(self.proc)
        self._pushback: list[str] = []      # lines answered() read ahead
        if wait:
            self.ready()

    # ------------------------------------------------------------ talking
    def ready(self, timeout: float = 30) -> Agent:
        """Wait until it has started (returns self, for chaining)."""
        if self.start is not None:
            return self
        words = self.read(timeout).split()
        if len(words) != 3 or words[0] != "ready" or int(words[1]) != self.pid:
            raise AgentError("AgentError", f"agent {self.pid} said {' '.join(words)!r} "
                                           "instead of ready")
        self.start = int(words[2])
        return self

    def send(self, line: str) -> None:
        """Send one command line without waiting for the answer."""
        _pipe(self.proc.stdin).write(line.encode() + b"\n")
        _pipe(self.proc.stdin).flush()

    def read(self, timeout: float = 10) -> str:
        """The next line it says.  TimeoutError if nothing came within
        ``timeout`` seconds (it is blocked, or stopped); EOFError if it
        exited (the message has its exit status and stderr's last line)."""
        if self._pushback:
            return self._pushback.pop(0)
        try:
            line = self._lines.line(timeout)
        except TimeoutError:
            raise TimeoutError(f"agent {self.pid} said nothing for {timeout} s") from None
        if line is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            tail = _stderr_tail(self.proc)
            raise EOFError(f"agent {self.pid} exited (rc={self.proc.poll()})"
                           + (f": {tail}" if tail else ""))
        return line

    def answered(self, within: float = 0.3) -> bool:
        """Whether it said something within ``within`` seconds (e.g. the
        answer of a blocked acquire: False means it still waits).  What it
        said is kept for the next ``read()``/``result()``."""
        if self._pushback:
            return True
        try:
            self._pushback.append(self.read(within))
        except TimeoutError:
            return False
        return True

    def result(self, timeout: float = 10) -> Any:
        """The answer of the command in flight (after ``start_acquire``)."""
        return _parse_answer(self.read(timeout))

    def cmd(self, line: str, timeout: float = 10) -> Any:
        """Run a command and return its result; AgentError if it raised."""
        self.send(line)
        answer = self.read(timeout)
        if answer == "queued":
            answer = self.read(timeout)
        return _parse_answer(answer)

    # ------------------------------------------------------ the commands
    def open(self, name: str, capacity: int | None = None, **options: object) -> int:
        """Open (or, with ``capacity``, create) ``name``; options as
        ``ipcsem.Semaphore``'s (initial, slots, fair, mode, max_holders,
        max_waiters).  Returns its capacity."""
        return int(self.cmd(" ".join(["open", name]
                                     + ([str(capacity)] if capacity is not None else [])
                                     + _options(options))))

    def open_mutex(self, name: str, **options: object) -> int:
        """Open (or create) the mutex ``name``; options as ``ipcsem.Mutex``'s."""
        return int(self.cmd(" ".join(["mutex", name, *_options(options)])))

    def try_acquire(self, units: int = 1) -> bool:
        return bool(self.cmd(f"try {units}"))

    def acquire(self, units: int = 1, timeout: float | None = None, priority: int = 0,
                *, answer_within: float = 30) -> bool:
        """A blocking acquire; its result (answered within ``answer_within``)."""
        return bool(self.cmd(_wait_command("acquire", units, timeout, priority), answer_within))

    def start_acquire(self, units: int = 1, timeout: float | None = None, priority: int = 0,
                      *, on: _Observable | None = None) -> None:
        """Begin a blocking acquire and return once the agent is about to
        wait; with ``on=sem``, once ``sem.waiters()`` shows it queued (an
        AssertionError if it never does, e.g. it got the units at once).
        Its answer comes later: ``result()``."""
        self._start(_wait_command("acquire", units, timeout, priority), on)

    def release(self, units: int = 1) -> None:
        self.cmd(f"release {units}")

    def disown(self, units: int = 1) -> None:
        self.cmd(f"disown {units}")

    def hold(self, units: int = 1, timeout: float | None = None, priority: int = 0,
             *, answer_within: float = 30) -> AgentLease:
        """Enter ``with sem.hold(units, ...)`` and stay inside; the lease.
        AgentError("Timeout") if not had in time.  ``unhold()`` leaves it."""
        return _lease(self.cmd(_wait_command("hold", units, timeout, priority), answer_within))

    def start_hold(self, units: int = 1, timeout: float | None = None, priority: int = 0,
                   *, on: _Observable | None = None) -> None:
        """As ``start_acquire``, for ``hold``; then ``lease_result()``."""
        self._start(_wait_command("hold", units, timeout, priority), on)

    def lease_result(self, timeout: float = 10) -> AgentLease:
        return _lease(self.result(timeout))

    def unhold(self) -> None:
        self.cmd("unhold")

    def recover(self) -> int:
        return int(self.cmd("recover"))

    def _start(self, line: str, on: _Observable | None) -> None:
        self.send(line)
        said = self.read()
        if said != "queued":
            raise AgentError("AgentError", f"agent {self.pid} answered {said!r} to {line!r}")
        if on is not None:
            wait_until(lambda: self.pid in queued_pids(on), timeout=10,
                       what=f"agent {self.pid} queued on {on.name!r}")

    # -------------------------------------------------------------- state
    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.proc.returncode}"
        return f"<Agent pid {self.pid} {state}>"


def _options(options: Mapping[str, object]) -> list[str]:
    out = []
    for key, value in options.items():
        if value is None:
            continue
        out.append(f"{key}={int(value) if isinstance(value, bool) else value}")
    return out


def _wait_command(verb: str, units: int, timeout: float | None, priority: int) -> str:
    return f"{verb} {units} {'-' if timeout is None else repr(float(timeout))} {priority}"


def _parse_answer(answer: str) -> Any:
    kind, _, rest = answer.partition(" ")
    if kind == "ok":
        return json.loads(rest)
    if kind == "err":
        type_, _, message = rest.partition(" ")
        raise AgentError(type_, message)
    raise AgentError("AgentError", f"unexpected answer {answer!r}")


def _lease(d: Mapping[str, Any]) -> AgentLease:
    return AgentLease(d["units"], tuple(d["slots"]), d["token"], d["previous_owner_died"])


# ================================================== oracle and supervisor
def can_take_all(name: str, units: int, timeout: float = 5.0, *,
                 backend: str | None = None) -> bool:
    """The independent oracle: a fresh process (``python -m ipcsem.testing
    take``) tries to acquire ``units`` units of ``name`` within ``timeout``
    seconds; True if it got them (it releases them and exits).  It trusts
    no count in this process: only whether another process is admitted.
    AssertionError if that process failed (e.g. NotFound)."""
    argv = [sys.executable, "-m", MODULE, "take", name, str(units), "--timeout", repr(timeout)]
    if backend is not None:
        argv += ["--backend", backend]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                         env=_child_env(), check=False)   # its exit status is read below
    if out.returncode not in (0, EXIT_TIMEOUT):
        raise AssertionError(f"oracle process for {name!r} failed with exit status "
                             f"{out.returncode}: {out.stderr.strip()}")
    return out.returncode == 0


class SupervisorProcess:
    """A running ``ipcsem supervise`` (see start_supervisor).  ``stop()``
    ends it with SIGTERM and returns everything it logged."""

    def __init__(self, proc: subprocess.Popen[str], first_line: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.first_line = first_line

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL it (as a crash would) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10) -> str:
        """SIGTERM (if it still runs), wait, and return its whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        except ValueError:       # already communicated
            out = ""
        return self.first_line + (out or "")

    def __enter__(self) -> SupervisorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_supervisor(*names: str, extra: tuple[str, ...] = (),
                     timeout: float = 30) -> SupervisorProcess:
    """Start ``ipcsem supervise [EXTRA...] [NAME...]`` (the shared-memory
    supervisor; no NAME: every semaphore) as a child that dies with us, and
    return once it says it is supervising.  Stop it with ``stop()`` (which
    returns its log) or use it as a context manager.  AssertionError if it
    does not start."""
    from . import _proc

    proc = _proc.launch_supervisor(list(names), extra=list(extra), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
    out = _pipe(proc.stdout)
    ready, _, _ = select.select([out], [], [], timeout)
    first = out.readline() if ready else ""
    if not first.startswith("supervising"):
        _reap(proc)
        raise AssertionError(f"ipcsem supervise did not start: {first!r}")
    return SupervisorProcess(proc, first)


# =================================================== asserting on a ledger
def wait_until(predicate: Callable[[], _T], timeout: float = 5.0, *, interval: float = 0.005,
               what: str | None = None) -> _T:
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


def held_by(sem: _Observable) -> dict[int, int]:
    """``{pid: units}`` of every process holding units of ``sem`` now."""
    return {h.pid: h.units for h in sem.holders()}


def queued_pids(sem: _Observable) -> list[int]:
    """The pids of ``sem``'s waiters, in the order they will be served."""
    return [w.pid for w in sem.waiters()]


def _presence(sem: _Observable, pid: int, start: int | None) -> tuple[int, int]:
    """(units held, queue entries) of the identity per the ledger now."""
    def me(p: int, s: int) -> bool:
        return p == pid and (start is None or s == start)

    units = sum(h.units for h in sem.holders() if me(h.pid, h.start))
    queued = sum(1 for w in sem.waiters() if me(w.pid, w.start))
    return units, queued


def _describe_ledger(sem: _Observable) -> str:
    try:
        holders = ", ".join(f"pid {h.pid}: {h.units}" for h in sem.holders()) or "none"
        waiters = ", ".join(f"pid {w.pid}: {w.units}" for w in sem.waiters()) or "none"
        return (f"ledger of {sem.name!r}: {sem.available} of {sem.capacity} available; "
                f"holders {holders}; waiters {waiters}")
    except Exception as e:  # noqa: BLE001 - only a diagnostic
        return f"ledger of {sem.name!r} unreadable: {e}"


class _Signallable(Protocol):
    """What kill_and_wait_recovered needs of a process: its pid, a signal."""

    @property
    def pid(self) -> int: ...
    def send_signal(self, sig: int, /) -> None: ...


def kill_and_wait_recovered(sem: _Observable, holder: _Signallable, *, timeout: float = 5.0,
                            recover: bool = True,
                            sig: int = signal.SIGKILL) -> float:
    """SIGKILL ``holder`` and wait until ``sem``'s ledger no longer shows it
    (no units, no queue entry): its units are back in the pool, or already
    granted to a waiter.  Returns the seconds from the signal to that.

    ``recover=True`` calls ``sem.recover()`` while waiting, as a program's
    own code might; ``recover=False`` only watches, to test that something
    else recovers (``ipcsem supervise``, a blocked waiter healing).
    ``sig`` sends another signal instead (a process stopped by SIGSTOP is
    alive and is never recovered: that times out).

    ``holder`` is a HolderProcess, an Agent, or any process handle with
    ``pid`` and ``send_signal(sig)`` (a ``subprocess.Popen`` of your own
    worker; it is reaped after a SIGKILL).  AssertionError if it holds
    nothing and waits for nothing before the signal, or if it is still in
    the ledger after ``timeout`` seconds; the message says what the process
    is (alive, stopped, zombie) and what the ledger holds.
    """
    from . import _identity

    pid: int = holder.pid
    start: int | None = getattr(holder, "start", None)
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
            state = _identity.status(pid, start or 0)
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
        proc: object = holder if isinstance(holder, subprocess.Popen) \
            else getattr(holder, "proc", None)
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
    if isinstance(holder, HolderProcess):
        holder.holding = False
    return taken


def assert_consistent(sem: _Observable, *, available: int | None = None,
                      held: int | None = None,
                      holders: int | Mapping[Any, int] | None = None, waiting: int | None = None,
                      unowned: int | None = None) -> None:
    """Run ``sem.check()`` (the ledger invariant) and compare exact counts.

    ``available``: units free; ``held``: units owned by processes;
    ``holders``: how many processes hold units, or a mapping
    ``{pid (or HolderProcess, Agent): units}`` that must be exactly who
    holds what; ``waiting``: queued requests; ``unowned``: units out without
    an owner.  None skips a count.  AssertionError listing each mismatch as
    expected vs actual, with the ledger's holders and waiters.
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
            want = {k if isinstance(k, int) else int(k.pid): v for k, v in holders.items()}
            got = held_by(sem)
            if want != got:
                wrong.append(f"holders: expected {_pids(want)}, actual {_pids(got)}")
        elif holders != st.holders:
            wrong.append(f"holders: expected {holders}, actual {st.holders}")
    if wrong:
        raise AssertionError(f"{sem.name!r}: " + "; ".join(wrong) + f". {_describe_ledger(sem)}")


def _pids(d: Mapping[int, int]) -> str:
    return "{" + ", ".join(f"pid {p}: {u}" for p, u in sorted(d.items())) + "}"


# ============================================================== fixtures
def _define_fixtures() -> None:
    global ipcsem_name, holder_factory, agent_factory
    import pytest

    @pytest.fixture
    def ipcsem_name() -> Iterator[str]:
        """A fresh semaphore name (nothing created); unlinked after the test."""
        name = unique_name("t")
        yield name
        _unlink_quietly(name)

    @pytest.fixture
    def holder_factory() -> Iterator[Callable[..., HolderProcess]]:
        """``spawn_holder`` that remembers its processes: each still running
        at teardown is SIGKILLed and reaped."""
        made: list[HolderProcess] = []

        def factory(name: str, units: int = 1, **kw: Any) -> HolderProcess:
            holder = spawn_holder(name, units, **kw)
            made.append(holder)
            return holder

        yield factory
        for holder in made:
            holder.close()

    @pytest.fixture
    def agent_factory() -> Iterator[Callable[..., Agent]]:
        """``Agent(...)`` that remembers its processes: each still running at
        teardown is SIGKILLed (after a SIGCONT) and reaped."""
        made: list[Agent] = []

        def factory(**kw: Any) -> Agent:
            agent = Agent(**kw)
            made.append(agent)
            return agent

        yield factory
        for agent in made:
            agent.close()


# The fixtures are defined here when pytest is already loaded (a conftest,
# a plugin list: the only places fixtures are of use), else on first access
# by name (module __getattr__ below).  A program that only uses the helpers
# -- the helper processes (`python -m ipcsem.testing ...`), which must start
# fast, or a measured program such as the loop-gap one, whose every garbage
# collection would otherwise walk pytest's heap too -- never imports pytest.
_FIXTURES = ("agent_factory", "holder_factory", "ipcsem_name")
if __name__ != "__main__" and sys.modules.get("pytest") is not None:
    _define_fixtures()
    __all__ += list(_FIXTURES)


# ================================================ the helper processes
USAGE = ("usage: python -m ipcsem.testing hold NAME UNITS [--capacity N] [--timeout S] "
         "[--backend URL]\n"
         "       python -m ipcsem.testing take NAME UNITS [--timeout S] [--backend URL]\n"
         "       python -m ipcsem.testing agent [--backend URL]\n"
         "       python -m ipcsem.testing aio-agent [--loop asyncio|uvloop] [--backend URL]")


def _argparser(prog: str, description: str) -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m ipcsem.testing {prog}",
                                description=description)
    p.add_argument("--backend", default=None, metavar="URL",
                   help="the backend URL (default: $IPCSEM_BACKEND, else shm)")
    return p


def hold_main(argv: list[str]) -> int:
    """The holder process: acquire UNITS of NAME, print
    ``holding NAME UNITS PID START TOKEN SLOTS`` (SLOTS: comma-separated
    unit numbers, or ``-``), then block until stdin says ``release`` (or
    closes): release, print ``released``, exit 0.  Exit 75 if the units did
    not come within --timeout, 1 on an ipcsem error (one line on stderr), 2
    on bad arguments."""
    from ._errors import IpcsemError, Timeout
    from ._identity import ME
    from ._semaphore import Semaphore

    p = _argparser("hold", "Hold units of a semaphore until told to release "
                           "(a helper process for tests).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("units", metavar="UNITS", type=int)
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="create NAME with N units if it does not exist")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up (exit 75) if the units are not had within S seconds")
    args = p.parse_args(argv)
    try:
        sem = Semaphore(args.name, args.capacity, backend=args.backend)
        try:
            with sem.hold(args.units, timeout=args.timeout) as lease:
                slots = ",".join(map(str, lease.slots)) or "-"
                try:
                    print(f"{READY} {args.name} {args.units} {ME.pid} {ME.start} "
                          f"{lease.token} {slots}", flush=True)
                    for line in sys.stdin:       # blocks; end of file: our parent is gone
                        if line.strip() == "release":
                            break
                except OSError:                  # our parent is gone (broken pipe)
                    pass
        except Timeout:
            print(f"hold: {args.units} unit(s) of {args.name!r} not acquired within "
                  f"{args.timeout} s", file=sys.stderr, flush=True)
            return EXIT_TIMEOUT
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


def take_main(argv: list[str]) -> int:
    """The oracle process: acquire UNITS of NAME within --timeout, release
    them, exit 0; exit 75 if they did not come, 1 on an ipcsem error."""
    from ._errors import IpcsemError
    from ._semaphore import Semaphore

    p = _argparser("take", "Take units of a semaphore and give them back "
                           "(the independent oracle of tests).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("units", metavar="UNITS", type=int)
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    args = p.parse_args(argv)
    try:
        sem = Semaphore(args.name, backend=args.backend)
        if not sem.acquire(args.units, timeout=args.timeout):
            return EXIT_TIMEOUT
        sem.release(args.units)
        sem.close()
    except (IpcsemError, ValueError) as e:
        print(f"take: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


class _AgentLoop:
    """The agent process's side of the Agent protocol (see Agent)."""

    def __init__(self, backend: str | None) -> None:
        self.backend = backend
        self.prim: Semaphore | Mutex | None = None     # the open Semaphore or Mutex
        self.holds: list[Any] = []           # entered hold() contexts, newest last

    @staticmethod
    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def serve(self) -> None:
        from ._identity import ME

        self.say(f"ready {ME.pid} {ME.start}")
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            try:
                result = self.run(parts[0], parts[1:])
                self.say("ok " + json.dumps(result))
            except BaseException as e:  # noqa: BLE001 - every outcome goes back to the test
                text = " ".join(str(e).split())
                self.say(f"err {type(e).__name__} {text}")

    def run(self, cmd: str, args: list[str]) -> object:
        handler = getattr(self, "do_" + cmd.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {cmd!r}")
        result: object = handler(*args)     # a do_* method, found by name
        return result

    def _open(self) -> Semaphore | Mutex:
        if self.prim is None:
            raise ValueError("nothing is open (open or mutex first)")
        return self.prim

    # ----------------------------------------------------------- opening
    def do_open(self, name: str, *rest: str) -> int:
        from ._semaphore import Semaphore

        capacity: int | None = None
        if rest and "=" not in rest[0]:
            capacity, rest = int(rest[0]), rest[1:]
        sem = self.prim = Semaphore(name, capacity, backend=self.backend,
                                    **_parse_options(rest))
        self.holds = []
        return sem.capacity

    def do_mutex(self, name: str, *rest: str) -> int:
        from ._semaphore import Mutex

        self.prim = Mutex(name, backend=self.backend, **_parse_options(rest))
        self.holds = []
        return 1

    # --------------------------------------------------------- acquiring
    def do_acquire(self, units: str, timeout: str = "-", priority: str = "0") -> bool:
        from ._semaphore import Mutex

        p = self._open()
        t = None if timeout == "-" else float(timeout)
        self.say("queued")       # the test may now watch the ledger for our entry
        if isinstance(p, Mutex):
            _one(units)
            return p.acquire(timeout=t, priority=int(priority))
        return p.acquire(int(units), timeout=t, priority=int(priority))

    def do_try(self, units: str) -> bool:
        from ._semaphore import Mutex

        p = self._open()
        if isinstance(p, Mutex):
            _one(units)
            return p.acquire(False)
        return p.try_acquire(int(units))

    def do_hold(self, units: str, timeout: str = "-", priority: str = "0") -> dict[str, object]:
        from ._semaphore import Mutex

        p = self._open()
        t = None if timeout == "-" else float(timeout)
        ctx: Any
        if isinstance(p, Mutex):
            _one(units)
            ctx = p.hold(timeout=t, priority=int(priority))
        else:
            ctx = p.hold(int(units), timeout=t, priority=int(priority))
        self.say("queued")
        lease = ctx.__enter__()
        self.holds.append(ctx)
        return {"units": lease.units, "slots": list(lease.slots), "token": lease.token,
                "previous_owner_died": bool(lease.previous_owner_died)}

    def do_unhold(self) -> None:
        if not self.holds:
            raise ValueError("no hold() to leave")
        self.holds.pop().__exit__(None, None, None)

    def do_release(self, units: str = "1") -> None:
        from ._semaphore import Mutex

        p = self._open()
        if isinstance(p, Mutex):
            _one(units)
            p.release()
        else:
            p.release(int(units))

    def do_disown(self, units: str) -> None:
        from ._semaphore import Mutex

        p = self._open()
        if isinstance(p, Mutex):
            raise ValueError("a mutex cannot be disowned")
        p.disown(int(units))

    def do_recover(self) -> int:
        return self._open().recover()

    def do_close(self) -> None:
        self._open().close()

    # ----------------------------------------------------------- process
    def do_pid(self) -> int:
        return os.getpid()

    def do_ident(self) -> list[int]:
        from ._identity import ME

        return [ME.pid, ME.start]

    def do_crashpoint(self, n: str) -> int:
        from ._shm import _ledger

        _ledger.set_crash_point(int(n))
        return int(n)

    def do_handler(self, sig: str) -> int:
        # a handler that returns: a blocked acquire must go on waiting (EINTR)
        signal.signal(int(sig), lambda signum, frame: None)
        return int(sig)

    def do_handler_exit(self, sig: str) -> int:
        # a handler that raises, like most SIGTERM handlers (sys.exit)
        def leave(signum: int, frame: object) -> None:
            raise SystemExit(f"signal {signum}")

        signal.signal(int(sig), leave)
        return int(sig)

    def do_fork_child_release(self) -> int:
        # hazard 13: the child of a holder is another process and holds nothing
        from ._semaphore import Mutex

        p = self._open()
        pid = os.fork()
        if pid == 0:
            try:
                if isinstance(p, Mutex):
                    p.release()
                else:
                    p.release(1)
                os._exit(3)  # must not happen: the child owns nothing
            except ValueError:
                os._exit(0)
            except BaseException:  # noqa: BLE001 - a forked child: any failure is exit status 4
                os._exit(4)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def do_fork_zombie(self, units: str) -> int:
        # hazard 6: a child that takes units and exits; we never reap it
        from . import _proc
        from ._semaphore import Semaphore

        pid = os.fork()
        if pid == 0:
            try:
                Semaphore(self._open().name, backend=self.backend).acquire(int(units))
            finally:
                os._exit(0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # until it is a zombie (holding its units)
            st = _proc.stat(pid)
            if st is not None and st.state == "Z":
                return pid
            time.sleep(0.005)
        raise RuntimeError(f"child {pid} did not become a zombie in 10 s")

    def do_threads(self, n: str, rounds: str) -> list[str]:
        import threading

        errors: list[str] = []
        p = self._open()

        def work() -> None:
            try:
                for _ in range(int(rounds)):
                    with p:
                        pass
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(repr(e))

        ts = [threading.Thread(target=work) for _ in range(int(n))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return errors

    def do_admitted(self, directory: str, rounds: str, threads: str = "1") -> int:
        """THREADS threads each take one unit ROUNDS times; while holding,
        each must get one of CAPACITY flocks on DIRECTORY/0..CAPACITY-1
        (the kernel's count, not ipcsem's).  -> how often none was free:
        more holders than capacity (0 when the semaphore is right)."""
        import fcntl
        import threading

        p = self._open()
        paths = [os.path.join(directory, str(i)) for i in range(p.capacity)]
        over: list[int] = []
        errors: list[str] = []

        def work() -> None:
            # Each thread opens its own descriptions: flocks of two threads conflict.
            fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) for p in paths]
            try:
                for _ in range(int(rounds)):
                    with p:
                        for fd in fds:
                            try:
                                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            except BlockingIOError:
                                continue
                            fcntl.flock(fd, fcntl.LOCK_UN)
                            break
                        else:
                            over.append(1)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(repr(e))
            finally:
                for fd in fds:
                    os.close(fd)

        ts = [threading.Thread(target=work) for _ in range(int(threads))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise RuntimeError("; ".join(errors))
        return len(over)

    def do_sleep(self, seconds: str) -> None:
        time.sleep(float(seconds))

    def do_exit(self) -> None:
        self.say("ok null")
        os._exit(0)


def _one(units: str) -> None:
    if int(units) != 1:
        raise ValueError(f"a mutex has 1 unit, not {units}")


def _parse_options(words: Iterable[str]) -> dict[str, Any]:
    """``key=value`` words of ``open``/``mutex``: ints (0o660 too), booleans."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, not {word!r}")
        low = value.lower()
        out[key] = (True if low == "true" else False if low == "false" else
                    None if low == "none" else int(value, 0))
    for key in ("slots", "fair", "reentrant", "priority_inheritance"):
        if key in out and out[key] is not None:
            out[key] = bool(out[key])
    return out


def agent_main(argv: list[str]) -> int:
    """The agent process: answer commands on stdin (see Agent) until end of
    file or ``exit``."""
    p = _argparser("agent", "A process driven command by command over stdin "
                            "(the Agent of ipcsem.testing).")
    args = p.parse_args(argv)
    try:
        _AgentLoop(args.backend).serve()
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    return 0


# ================================================================ asyncio
# What async users need to test their own code (docs/asyncio.md):
#
# ``await wait_for_waiters(sem, n)``, ``await wait_until_async(pred)``
#     poll a semaphore (sync or async class) without blocking the loop.
# ``async with watch_loop_gaps() as gaps``
#     a 1 ms ticker task: ``gaps.check(0.010)`` fails if the loop was held
#     longer (the kernel's run-queue delay is reported apart: on a loaded
#     machine a descheduled thread is not a blocked loop).
# ``run_checked(coro, max_gap=...)``, the ``ipcsem_loop`` fixture
#     run a coroutine on a fresh loop (asyncio or uvloop) under that ticker.
# ``resources(pid=None)``
#     the threads (by name) and file descriptors of a process.
# ``AsyncAgent``, the ``aio_agent_factory`` fixture
#     a separate process whose *event loop* is driven task by task.

import asyncio as _asyncio  # noqa: E402 - the async section of the kit
import gc as _gc  # noqa: E402


@dataclass(frozen=True)
class Resources:
    """What a process uses (``resources()``): its threads' names (as
    ``/proc/PID/task/*/comm`` says) and how many descriptors it has open."""

    threads: tuple[str, ...]
    fds: int

    @property
    def ipcsem_threads(self) -> tuple[str, ...]:
        """The threads ipcsem started (named ``ipcsem-*``)."""
        return tuple(t for t in self.threads if t.startswith("ipcsem-"))


def resources(pid: int | None = None) -> Resources:
    """The threads and open file descriptors of ``pid`` (default: this
    process), counted from ``/proc``.  ProcessLookupError if it is gone."""
    base = "/proc/self" if pid is None else f"/proc/{pid}"
    try:
        tids = os.listdir(f"{base}/task")
        fds = os.listdir(f"{base}/fd")
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    names = []
    for t in sorted(tids, key=int):
        try:
            with open(f"{base}/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue               # the thread ended meanwhile
    # listdir of /proc/self/fd holds one descriptor of its own while it runs
    return Resources(tuple(names), len(fds) - (1 if pid is None else 0))


async def wait_until_async(predicate: Callable[[], Any], timeout: float = 5.0, *,
                           interval: float = 0.002, what: str | None = None) -> Any:
    """``wait_until`` for coroutines: call ``predicate()`` (a plain call, or
    one returning an awaitable) every ``interval`` seconds, sleeping on the
    loop in between, until it gives something true, and return that.
    AssertionError after ``timeout`` seconds, naming ``what``."""
    loop = _asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if _asyncio.iscoroutine(value) or isinstance(value, _asyncio.Future):
            value = await value
        if value:
            return value
        if loop.time() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        await _asyncio.sleep(interval)


async def wait_for_waiters(sem: _Observable, n: int, timeout: float = 5.0, *,
                           pid: int | None = None, interval: float = 0.002) -> list[Waiter]:
    """Wait, without blocking the loop, until ``sem.waiters()`` shows exactly
    ``n`` queued requests (of ``pid`` only, if given), and return them in
    serving order.  For tests that must know a task is *queued* before
    they release, cancel or kill something.  AssertionError on timeout,
    saying how many there were."""
    seen: list[Waiter] = []

    def queued() -> bool:
        nonlocal seen
        seen = [w for w in sem.waiters() if pid is None or w.pid == pid]
        return len(seen) == n

    try:
        await wait_until_async(queued, timeout, interval=interval)
    except AssertionError:
        raise AssertionError(f"{sem.name!r}: expected {n} waiter(s)"
                             f"{'' if pid is None else f' of pid {pid}'} within {timeout} s, "
                             f"saw {len(seen)}. {_describe_ledger(sem)}") from None
    return seen


def _runqueue_ns() -> int | None:
    """Nanoseconds this thread has spent runnable but not running (the
    kernel's schedstat), or None where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


class LoopGaps:
    """What a ticker task saw (``watch_loop_gaps``): the gap between each
    of its ticks, how much of each gap the kernel kept the loop's thread
    runnable but off a CPU (run-queue delay: the machine was busy, not the
    loop), and how much of it the interpreter's garbage collector ran (a
    collection stops every thread of the process, whatever code allocated
    last).  Seconds throughout."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.samples: list[float] = []      # wall time between ticks
        self.queued: list[float] = []       # run-queue delay within each gap (0 if unknown)
        self.collected: list[float] = []    # garbage-collector time within each gap
        self.queued_others: list[float] = []  # the process's other threads' run-queue delay
        self.cpu: list[float] = []          # CPU time the loop's thread used within each gap
        self.schedstat = _runqueue_ns() is not None

    @property
    def max(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def blocked(self) -> list[float]:
        """Each gap less its run-queue delay: the time the loop's thread was
        running something else, or sleeping, instead of the loop (a call
        that blocks, a lock, the GIL held by another thread, a collection)."""
        return [max(g - q, 0.0) for g, q in zip(self.samples, self.queued, strict=True)]

    @property
    def max_blocked(self) -> float:
        return max(self.blocked, default=0.0)

    @property
    def held(self) -> list[float]:
        """Each gap less what the machine and the interpreter took: the
        run-queue delay of the loop's thread and of the process's other
        threads (one of them waiting for a CPU while it holds the GIL keeps
        the loop waiting too) and the garbage collector's runs.  What is
        left is code keeping the loop from running: a call that blocks or
        burns CPU, a lock, the GIL held by a thread that is running."""
        return [max(g - q - o - c, 0.0)
                for g, q, o, c in zip(self.samples, self.queued, self.queued_others,
                                      self.collected, strict=True)]

    @property
    def max_held(self) -> float:
        return max(self.held, default=0.0)

    def quantile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        s = sorted(self.samples)
        return s[min(int(q * len(s)), len(s) - 1)]

    def reset(self) -> None:
        """Forget what was seen so far (e.g. a set-up phase)."""
        self.samples.clear()
        self.queued.clear()
        self.collected.clear()
        self.queued_others.clear()
        self.cpu.clear()

    def over(self, limit: float) -> list[tuple[float, float]]:
        """(gap, run-queue delay) of every gap above ``limit``."""
        return [(g, q) for g, q in zip(self.samples, self.queued, strict=True) if g > limit]

    def summary(self) -> str:
        ms = 1e3
        worst = sorted(zip(self.samples, self.queued, self.queued_others, self.collected,
                           strict=True), reverse=True)[:5]
        rows = zip(self.held, self.samples, self.cpu, strict=True)
        most_held = sorted(rows, reverse=True)[:3]
        return (f"{len(self.samples)} ticks of {self.tick * ms:g} ms: p50 "
                f"{self.quantile(0.5) * ms:.2f} ms, p99 {self.quantile(0.99) * ms:.2f} ms, "
                f"p99.9 {self.quantile(0.999) * ms:.2f} ms, max {self.max * ms:.2f} ms "
                f"(less run-queue delay {self.max_blocked * ms:.2f} ms"
                f"{'' if self.schedstat else ': no schedstat here'}; also less the other threads' "
                f"and garbage collection {self.max_held * ms:.2f} ms); worst (gap, queued, "
                "others queued, collecting): "
                + ", ".join(f"({g * ms:.1f}, {q * ms:.1f}, {o * ms:.1f}, {c * ms:.1f})"
                            for g, q, o, c in worst)
                + "; most held (held, gap, the loop thread's CPU): "
                + ", ".join(f"({h * ms:.1f}, {g * ms:.1f}, {c * ms:.1f})"
                            for h, g, c in most_held))

    def check(self, limit: float, *, allow_runqueue: bool = False,
              allow_machine: bool = False) -> None:
        """AssertionError (with the distribution) if a gap exceeded
        ``limit`` seconds.  ``allow_runqueue=True`` forgives the part of a
        gap the kernel says the loop's thread spent waiting for a CPU (use
        it on a loaded machine: it still fails whenever the loop itself was
        held); ``allow_machine=True`` forgives all of ``held``'s exclusions
        (the other threads' run-queue delay, garbage collection) too."""
        worst = self.max_held if allow_machine else \
            self.max_blocked if allow_runqueue else self.max
        if worst > limit:
            raise AssertionError(f"the event loop was held {worst * 1e3:.2f} ms > "
                                 f"{limit * 1e3:g} ms: {self.summary()}")

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A summary that JSON can carry; with ``samples``, every gap too
        (``LoopGaps.from_dict`` rebuilds the whole)."""
        d: dict[str, Any] = {
            "ticks": len(self.samples), "p50_ms": self.quantile(0.5) * 1e3,
            "p99_ms": self.quantile(0.99) * 1e3, "max_ms": self.max * 1e3,
            "max_blocked_ms": self.max_blocked * 1e3, "max_held_ms": self.max_held * 1e3,
            "over_10ms": [(g * 1e3, q * 1e3) for g, q in self.over(0.010)]}
        if samples:
            d.update(tick=self.tick, schedstat=self.schedstat, samples=self.samples,
                     queued=self.queued, queued_others=self.queued_others,
                     collected=self.collected, cpu=self.cpu)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoopGaps:
        """The LoopGaps another process measured (``to_dict(samples=True)``)."""
        gaps = cls(float(d["tick"]))
        gaps.schedstat = bool(d["schedstat"])
        for field in ("samples", "queued", "queued_others", "collected", "cpu"):
            getattr(gaps, field).extend(float(x) for x in d[field])
        return gaps


class _Ticker:
    def __init__(self, tick: float) -> None:
        self.gaps = LoopGaps(tick)
        self._task: _asyncio.Task[None] | None = None
        self._paused = False
        self._gc_runs: list[tuple[float, float]] = []    # (start, end), monotonic
        self._gc_start = 0.0
        self._others: dict[str, int] = {}                 # tid -> its run-queue ns so far
        self._fds: dict[str, int] = {}                    # tid -> its schedstat, open
        self._calls = 0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Called by the collector in whichever thread it runs, GIL held.
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self._gc_runs.append((self._gc_start, time.monotonic()))

    def _collecting(self, start: float, end: float) -> float:
        """Garbage-collector time within [start, end]; forgets runs before."""
        runs = self._gc_runs
        total = sum(min(e, end) - max(s, start) for s, e in runs if e > start and s < end)
        runs[:] = [r for r in runs if r[1] > end]
        return total

    def _others_queued(self) -> float:
        """Run-queue delay of this process's other threads since the last
        call (seconds; a thread new since then counts from its start).
        Descriptors stay open and the thread list is re-read every 64th
        call: each system call lets go of the GIL, and taking it back can
        cost the loop a switch interval while another thread computes."""
        self._calls += 1
        if self._calls % 64 == 1:
            me = str(threading.get_native_id())
            try:
                tids = [t for t in os.listdir("/proc/self/task") if t != me]
            except OSError:
                tids = []
            for tid in tids:
                if tid not in self._fds:
                    try:
                        self._fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
                    except OSError:
                        continue
        total = 0
        for tid, fd in list(self._fds.items()):
            try:
                ns = int(os.pread(fd, 64, 0).split()[1])
            except (OSError, ValueError, IndexError):
                ns = None              # it ended
            if ns is None:
                os.close(fd)
                del self._fds[tid]
                self._others.pop(tid, None)
                continue
            total += ns - self._others.get(tid, 0)
            self._others[tid] = ns
        return total / 1e9

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    async def _run(self) -> None:
        loop = _asyncio.get_running_loop()
        try:       # this thread's schedstat, kept open (see _others_queued)
            own = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            own = -1

        def queued() -> int:
            try:
                return int(os.pread(own, 64, 0).split()[1])
            except (OSError, ValueError, IndexError):
                return 0

        try:
            await self._tick(loop, queued)
        finally:
            if own >= 0:
                os.close(own)

    async def _tick(self, loop: _asyncio.AbstractEventLoop,
                    queued: Callable[[], int]) -> None:
        last, last_q = loop.time(), queued()
        last_cpu = time.thread_time()
        self._others_queued()
        while True:
            await _asyncio.sleep(self.gaps.tick)
            now, q, cpu = loop.time(), queued(), time.thread_time()
            collecting = self._collecting(last, now)
            others = self._others_queued()
            if not self._paused:
                self.gaps.samples.append(now - last)
                self.gaps.queued.append((q - last_q) / 1e9)
                self.gaps.queued_others.append(others)
                self.gaps.collected.append(collecting)
                self.gaps.cpu.append(cpu - last_cpu)
            last, last_q, last_cpu = now, q, cpu

    def start(self) -> None:
        _gc.callbacks.append(self._on_gc)
        self._task = _asyncio.get_running_loop().create_task(self._run(), name="ipcsem-ticker")

    async def stop(self) -> LoopGaps:
        if self._on_gc in _gc.callbacks:
            _gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except _asyncio.CancelledError:
                pass
            self._task = None
        self._close_fds()
        return self.gaps


class watch_loop_gaps:
    """``async with watch_loop_gaps(tick=0.001) as gaps:`` runs a ticker
    task for the block; afterwards ``gaps`` (a LoopGaps) holds every gap
    between its ticks: ``gaps.check(0.010)``, ``gaps.summary()``.
    ``gaps.reset()`` inside the block forgets a set-up phase."""

    def __init__(self, tick: float = 0.001) -> None:
        self._ticker = _Ticker(tick)

    async def __aenter__(self) -> LoopGaps:
        self._ticker.start()
        return self._ticker.gaps

    async def __aexit__(self, *exc: object) -> None:
        await self._ticker.stop()


def new_event_loop(loop: str = "asyncio") -> _asyncio.AbstractEventLoop:
    """A fresh event loop: ``"asyncio"`` (the default policy's) or
    ``"uvloop"`` (ImportError if uvloop is not installed)."""
    if loop == "asyncio":
        return _asyncio.new_event_loop()
    if loop == "uvloop":
        import uvloop

        ev: _asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return ev
    raise ValueError(f"unknown loop {loop!r}: 'asyncio' or 'uvloop'")


def run_checked(coro: Coroutine[Any, Any, _T], *, max_gap: float | None = None,
                loop: str = "asyncio", tick: float = 0.001,
                allow_runqueue: bool = True) -> tuple[_T, LoopGaps]:
    """Run ``coro`` to completion on a fresh ``loop`` under a ticker and
    return ``(result, gaps)``; with ``max_gap``, AssertionError if the loop
    was held longer than that (see ``LoopGaps.check``; on a loaded machine
    run-queue delay is forgiven unless ``allow_runqueue=False``).  Tasks
    the coroutine left running are cancelled and reported (AssertionError):
    a task still waiting on a semaphore after the test is a leak."""
    ev = new_event_loop(loop)

    async def main() -> tuple[_T, LoopGaps]:
        async with watch_loop_gaps(tick) as gaps:
            result = await coro
        return result, gaps

    try:
        result, gaps = ev.run_until_complete(main())
        left = [t for t in _asyncio.all_tasks(ev) if not t.done()]
        for t in left:
            t.cancel()
        if left:
            ev.run_until_complete(_asyncio.gather(*left, return_exceptions=True))
            raise AssertionError(f"{len(left)} task(s) still running after the coroutine "
                                 f"returned: {sorted(t.get_name() for t in left)}")
    finally:
        ev.run_until_complete(ev.shutdown_asyncgens())
        ev.close()
    if max_gap is not None:
        gaps.check(max_gap, allow_runqueue=allow_runqueue)
    return result, gaps


class AsyncAgentError(AgentError):
    """What a command raised inside an AsyncAgent's task (``type``,
    ``message``), as AgentError."""


class AsyncAgent(_DrivenProcess):
    """A separate process (``python -m ipcsem.testing aio-agent``) running
    an event loop whose *tasks* a test drives, to act as an unrelated async
    user of semaphores: its own pid, start time and mapping; killed with
    real signals while its tasks hold and wait.

    Every command goes to a named task of the agent's loop (created on
    first use; a task runs its commands one after the other, so it stays
    the same task: what it acquires it owns).  ``cmd(task, line)`` runs a
    command and returns its result (AsyncAgentError if it raised,
    ``"CancelledError"`` as its type when cancelled); ``start(task, line)``
    returns once the task is about to wait, ``result(task)`` later.
    Semaphores are opened by name and shared by the process's tasks::

        open NAME [CAPACITY] [k=v ...]          -> capacity (AsyncSemaphore)
        mutex NAME [k=v ...]                    -> 1 (AsyncMutex)
        acquire NAME UNITS [TIMEOUT|- [PRIORITY [wait|raise]]]  -> bool ("queued" first)
        hold NAME UNITS [TIMEOUT|- [PRIORITY [wait|raise]]]     -> lease dict ("queued")
        unhold NAME | try NAME UNITS | release NAME [UNITS] | disown NAME [UNITS]
        owner-died NAME | close NAME | sleep S

    Process-wide commands (the methods below send them)::

        cancel TASK        task.cancel() of its command in flight -> bool
        swarm NAME N [TIMEOUT|- [wait|raise]]   N tasks each acquire 1 unit and
                           give it back at once -> N; swarm-state -> counts;
                           swarm-cancel -> how many were still running
        ticker-start [TICK] / ticker-stop -> LoopGaps.to_dict()
        resources -> {"threads": [...], "fds": n} | ident -> [pid, start] | exit

    ``loop="uvloop"`` runs the agent on uvloop.
    """

    def __init__(self, *, backend: str | None = None, loop: str = "asyncio",
                 env: Mapping[str, str] | None = None, wait: bool = True) -> None:
        argv = [sys.executable, "-m", MODULE, "aio-agent", "--loop", loop]
        if backend is not None:
            argv += ["--backend", backend]
        self.backend = backend
        self.loop = loop
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_child_env(env))
        self.pid = self.proc.pid
        self.start_time: int | None = None
        self._lines = _LineReader(self.proc)
        self._answers: dict[str, list[str]] = {}
        if wait:
            self.ready()

    @property
    def start(self) -> int | None:       # the ipcsem identity's start
        """Its identity's start time (for kill_and_wait_recovered)."""
        return self.start_time

    def ready(self, timeout: float = 30) -> AsyncAgent:
        if self.start_time is not None:
            return self
        words = self._read_line(timeout).split()
        if len(words) != 3 or words[0] != "ready" or int(words[1]) != self.pid:
            raise AsyncAgentError("AgentError", f"aio agent {self.pid} said "
                                                f"{' '.join(words)!r} instead of ready")
        self.start_time = int(words[2])
        return self

    def _read_line(self, timeout: float) -> str:
        try:
            line = self._lines.line(timeout)
        except TimeoutError:
            raise TimeoutError(f"aio agent {self.pid} said nothing for {timeout} s") from None
        if line is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            tail = _stderr_tail(self.proc)
            raise EOFError(f"aio agent {self.pid} exited (rc={self.proc.poll()})"
                           + (f": {tail}" if tail else ""))
        return line

    def _read(self, task: str, timeout: float) -> str:
        """The next thing ``task`` said."""
        end = time.monotonic() + timeout
        while not self._answers.get(task):
            line = self._read_line(max(end - time.monotonic(), 0.0))
            who, _, rest = line.partition(" ")
            self._answers.setdefault(who, []).append(rest)
        return self._answers[task].pop(0)

    def send(self, task: str, line: str) -> None:
        _pipe(self.proc.stdin).write(f"{task} {line}\n".encode())
        _pipe(self.proc.stdin).flush()

    def start_cmd(self, task: str, line: str, timeout: float = 10) -> None:
        """Send a blocking command (acquire, hold) and return once the task
        says it is about to wait; its answer: ``result(task)``."""
        self.send(task, line)
        said = self._read(task, timeout)
        if said != "queued":
            raise AsyncAgentError("AgentError", f"task {task} answered {said!r} to {line!r}")

    def answered(self, task: str, within: float = 0.3) -> bool:
        """Whether ``task`` answered within ``within`` seconds (kept for
        ``result``)."""
        try:
            said = self._read(task, within)
        except TimeoutError:
            return False
        self._answers.setdefault(task, []).insert(0, said)
        return True

    def result(self, task: str, timeout: float = 10) -> Any:
        return _parse_async_answer(self._read(task, timeout))

    def cmd(self, task: str, line: str, timeout: float = 10) -> Any:
        """Run a command in ``task`` and return its result."""
        self.send(task, line)
        said = self._read(task, timeout)
        if said == "queued":
            said = self._read(task, timeout)
        return _parse_async_answer(said)

    def ctl(self, line: str, timeout: float = 30) -> Any:
        """A process-wide command (cancel, swarm, ticker-..., resources)."""
        return self.cmd("-", line, timeout)

    # ------------------------------------------------------ conveniences
    def cancel(self, task: str) -> bool:
        return bool(self.ctl(f"cancel {task}"))

    def resources(self) -> Resources:
        d = self.ctl("resources")
        return Resources(tuple(d["threads"]), d["fds"])

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.proc.returncode}"
        return f"<AsyncAgent pid {self.pid} ({self.loop}) {state}>"


def _parse_async_answer(answer: str) -> Any:
    kind, _, rest = answer.partition(" ")
    if kind == "ok":
        return json.loads(rest)
    if kind == "err":
        type_, _, message = rest.partition(" ")
        raise AsyncAgentError(type_, message)
    raise AsyncAgentError("AgentError", f"unexpected answer {answer!r}")


def _define_async_fixtures() -> None:
    global aio_agent_factory, ipcsem_loop
    import pytest

    @pytest.fixture
    def aio_agent_factory() -> Iterator[Callable[..., AsyncAgent]]:
        """``AsyncAgent(...)`` that remembers its processes: each still
        running at teardown is SIGKILLed and reaped."""
        made: list[AsyncAgent] = []

        def factory(**kw: Any) -> AsyncAgent:
            agent = AsyncAgent(**kw)
            made.append(agent)
            return agent

        yield factory
        for agent in made:
            agent.close()

    @pytest.fixture
    def ipcsem_loop() -> Callable[[Coroutine[Any, Any, Any]], Any]:
        """Runs coroutines for a sync test: ``ipcsem_loop(coro)`` is
        ``run_checked(coro, max_gap=ipcsem_loop.max_gap)`` (default 0.1 s:
        set ``ipcsem_loop.max_gap`` or ``.loop = "uvloop"`` first) and
        returns the coroutine's result; ``ipcsem_loop.gaps`` is the last
        run's LoopGaps."""

        class Runner:
            max_gap: float | None = 0.1
            loop = "asyncio"
            gaps: LoopGaps | None = None

            def __call__(self, coro: Coroutine[Any, Any, Any]) -> Any:
                result, self.gaps = run_checked(coro, max_gap=self.max_gap, loop=self.loop)
                return result

        return Runner()


_ASYNC_FIXTURES = ("aio_agent_factory", "ipcsem_loop")
if __name__ != "__main__" and sys.modules.get("pytest") is not None:
    _define_async_fixtures()
    __all__ += list(_ASYNC_FIXTURES)


def __getattr__(name: str) -> Any:
    """The fixtures, for an import by name before pytest was loaded
    (AttributeError, so ImportError from ``from ... import``, if pytest
    cannot be imported)."""
    if name in _FIXTURES or name in _ASYNC_FIXTURES:
        try:
            _define_fixtures()
            _define_async_fixtures()
        except ImportError as e:
            raise AttributeError(f"{name!r} is a pytest fixture and pytest cannot be "
                                 f"imported: {e}") from e
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__all__ += ["AsyncAgent", "AsyncAgentError", "LoopGaps", "Resources", "new_event_loop",
            "resources", "run_checked", "wait_for_waiters", "wait_until_async",
            "watch_loop_gaps"]


class _AioAgentLoop:
    """The aio agent process's side of the AsyncAgent protocol."""

    def __init__(self, backend: str | None) -> None:
        self.backend = backend
        self.prims: dict[str, AsyncSemaphore | AsyncMutex] = {}
        self.holds: dict[tuple[str, str], list[Any]] = {}     # (task, name) -> entered holds
        self.queues: dict[str, _asyncio.Queue[tuple[str, list[str]]]] = {}
        self.tasks: dict[str, _asyncio.Task[None]] = {}
        self.busy: set[str] = set()
        self.swarm: list[_asyncio.Task[None]] = []
        self.errors: list[str] = []
        self.swarm_counts: dict[str, Any] = {"granted": 0, "timeouts": 0, "cancelled": 0,
                                             "errors": self.errors}
        self.ticker: _Ticker | None = None
        self.done: _asyncio.Future[None] | None = None
        self._buffer = b""

    @staticmethod
    def say(who: str, text: str) -> None:
        sys.stdout.write(f"{who} {text}\n")
        sys.stdout.flush()

    async def serve(self) -> None:
        from ._identity import ME

        loop = _asyncio.get_running_loop()
        self.done = loop.create_future()
        os.set_blocking(0, False)
        loop.add_reader(0, self._readable)
        sys.stdout.write(f"ready {ME.pid} {ME.start}\n")
        sys.stdout.flush()
        try:
            await self.done
        finally:
            loop.remove_reader(0)

    def _readable(self) -> None:
        try:
            chunk = os.read(0, 65536)
        except BlockingIOError:
            return
        if not chunk:
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            parts = line.decode().split()
            if len(parts) >= 2:
                self._dispatch(parts[0], parts[1], parts[2:])

    def _dispatch(self, who: str, cmd: str, args: list[str]) -> None:
        if who == "-":
            try:
                self._answer(who, self._control(cmd, args))
            except BaseException as e:  # noqa: BLE001 - every outcome goes back
                self._fail(who, e)
            return
        q = self.queues.get(who)
        if q is None:
            q = self.queues[who] = _asyncio.Queue()
            self.tasks[who] = _asyncio.get_running_loop().create_task(self._serve_task(who, q),
                                                                       name=f"agent-{who}")
        q.put_nowait((cmd, args))

    def _answer(self, who: str, result: object) -> None:
        self.say(who, "ok " + json.dumps(result))

    def _fail(self, who: str, e: BaseException) -> None:
        text = " ".join(str(e).split())
        self.say(who, f"err {type(e).__name__} {text}")

    async def _serve_task(self, who: str, q: _asyncio.Queue[tuple[str, list[str]]]) -> None:
        me = _asyncio.current_task()
        while True:
            cmd, args = await q.get()
            self.busy.add(who)
            try:
                handler = getattr(self, "t_" + cmd.replace("-", "_"), None)
                if handler is None:
                    raise ValueError(f"unknown command {cmd!r}")
                self._answer(who, await handler(who, *args))
            except _asyncio.CancelledError as e:
                self._fail(who, e)
                if me is not None and hasattr(me, "uncancel"):   # 3.11+
                    while me.uncancel():
                        pass
            except BaseException as e:  # noqa: BLE001
                self._fail(who, e)
            finally:
                self.busy.discard(who)

    # ----------------------------------------------------- task commands
    async def t_open(self, who: str, name: str, *rest: str) -> int:
        from ._aio import AsyncSemaphore

        capacity: int | None = None
        if rest and "=" not in rest[0]:
            capacity, rest = int(rest[0]), rest[1:]
        sem = self.prims[name] = AsyncSemaphore(name, capacity, backend=self.backend,
                                                **_parse_options(rest))
        return sem.capacity

    async def t_mutex(self, who: str, name: str, *rest: str) -> int:
        from ._aio import AsyncMutex

        self.prims[name] = AsyncMutex(name, backend=self.backend, **_parse_options(rest))
        return 1

    def _prim(self, name: str) -> AsyncSemaphore | AsyncMutex:
        try:
            return self.prims[name]
        except KeyError:
            raise ValueError(f"{name!r} is not open (open or mutex it first)") from None

    @staticmethod
    def _wait_args(timeout: str = "-", priority: str = "0",
                   deadlock: str = "wait") -> tuple[float | None, int, str]:
        return (None if timeout == "-" else float(timeout)), int(priority), deadlock

    async def t_acquire(self, who: str, name: str, units: str = "1", *rest: str) -> bool:
        from ._aio import AsyncMutex

        p = self._prim(name)
        timeout, priority, deadlock = self._wait_args(*rest)
        self.say(who, "queued")
        if isinstance(p, AsyncMutex):
            _one(units)
            return await p.acquire(timeout=timeout, priority=priority, deadlock=deadlock)
        return await p.acquire(int(units), timeout=timeout, priority=priority,
                               deadlock=deadlock)

    async def t_hold(self, who: str, name: str, units: str = "1",
                     *rest: str) -> dict[str, object]:
        from ._aio import AsyncMutex

        p = self._prim(name)
        timeout, priority, deadlock = self._wait_args(*rest)
        ctx: Any
        if isinstance(p, AsyncMutex):
            _one(units)
            ctx = p.hold(timeout=timeout, priority=priority, deadlock=deadlock)
        else:
            ctx = p.hold(int(units), timeout=timeout, priority=priority, deadlock=deadlock)
        self.say(who, "queued")
        lease = await ctx.__aenter__()
        self.holds.setdefault((who, name), []).append(ctx)
        return {"units": lease.units, "slots": list(lease.slots), "token": lease.token,
                "previous_owner_died": bool(lease.previous_owner_died)}

    async def t_unhold(self, who: str, name: str) -> None:
        held = self.holds.get((who, name))
        if not held:
            raise ValueError(f"task {who} holds no hold() of {name!r}")
        await held.pop().__aexit__(None, None, None)

    async def t_try(self, who: str, name: str, units: str = "1") -> bool:
        from ._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            _one(units)
            return await p.acquire(timeout=0)
        return p.try_acquire(int(units))

    async def t_release(self, who: str, name: str, units: str = "1") -> None:
        from ._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            _one(units)
            p.release()
        else:
            p.release(int(units))

    async def t_disown(self, who: str, name: str, units: str = "1") -> None:
        from ._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            raise ValueError("a mutex cannot be disowned")
        p.disown(int(units))

    async def t_owner_died(self, who: str, name: str) -> bool:
        from ._aio import AsyncMutex

        p = self._prim(name)
        if not isinstance(p, AsyncMutex):
            raise ValueError(f"{name!r} is not a mutex")
        return bool(p.previous_owner_died)

    async def t_close(self, who: str, name: str) -> None:
        self.prims.pop(name).close()

    async def t_sleep(self, who: str, seconds: str) -> None:
        await _asyncio.sleep(float(seconds))

    # -------------------------------------------------- process commands
    def _control(self, cmd: str, args: list[str]) -> object:
        handler = getattr(self, "c_" + cmd.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {cmd!r}")
        result: object = handler(*args)     # a c_* method, found by name
        return result

    def c_cancel(self, who: str) -> bool:
        task = self.tasks.get(who)
        if task is None or who not in self.busy:
            raise ValueError(f"task {who} runs no command")
        return task.cancel()

    def c_ident(self) -> list[int]:
        from ._identity import ME

        return [ME.pid, ME.start]

    def c_resources(self) -> dict[str, object]:
        r = resources()
        return {"threads": list(r.threads), "fds": r.fds}

    def c_swarm(self, name: str, n: str, timeout: str = "-", deadlock: str = "wait") -> int:
        from ._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            raise ValueError("swarm takes a semaphore")
        t = None if timeout == "-" else float(timeout)
        counts, errors = self.swarm_counts, self.errors

        async def one() -> None:
            try:
                if await p.acquire(1, timeout=t, deadlock=deadlock):
                    p.release(1)
                    counts["granted"] += 1
                else:
                    counts["timeouts"] += 1
            except _asyncio.CancelledError:
                counts["cancelled"] += 1
                raise
            except Exception as e:  # noqa: BLE001 - reported by swarm-state
                errors.append(f"{type(e).__name__} {e}")

        loop = _asyncio.get_running_loop()
        self.swarm += [loop.create_task(one()) for _ in range(int(n))]
        return int(n)

    def c_swarm_state(self) -> dict[str, object]:
        return {**self.swarm_counts, "running": sum(not t.done() for t in self.swarm)}

    def c_swarm_cancel(self) -> int:
        live = [t for t in self.swarm if not t.done()]
        for t in live:
            t.cancel()
        return len(live)

    def c_ticker_start(self, tick: str = "0.001") -> bool:
        self.ticker = _Ticker(float(tick))
        self.ticker.start()
        return True

    def c_ticker_stop(self) -> dict[str, Any]:
        if self.ticker is None:
            raise ValueError("no ticker running")
        ticker, self.ticker = self.ticker, None
        # we are inside a reader callback: the ticker task ends on the loop
        _asyncio.get_running_loop().create_task(ticker.stop())
        return ticker.gaps.to_dict()

    def c_exit(self) -> None:
        self.say("-", "ok null")
        os._exit(0)


def aio_agent_main(argv: list[str]) -> int:
    """The aio agent process: an event loop serving AsyncAgent commands on
    stdin until end of file or ``exit``."""
    p = _argparser("aio-agent", "An event loop driven task by task over stdin "
                                "(the AsyncAgent of ipcsem.testing).")
    p.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = p.parse_args(argv)
    ev = new_event_loop(args.loop)
    try:
        ev.run_until_complete(_AioAgentLoop(args.backend).serve())
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    return 0


def _main(argv: list[str]) -> int:
    # A test's Ctrl-C (SIGINT) must reach a kit process even when the test
    # run was started in the background: a shell starts background jobs with
    # SIGINT ignored, and that disposition survives exec, so Python would
    # never raise KeyboardInterrupt in it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    commands = {"hold": hold_main, "take": take_main, "agent": agent_main,
                "aio-agent": aio_agent_main}
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
