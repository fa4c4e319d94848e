"""Driven processes: a test's stand-ins for unrelated users of a semaphore.

``Agent`` runs commands one at a time (``python -m ipcsem.testing agent``);
``AsyncAgent`` drives an event loop's tasks by name (``python -m
ipcsem.testing aio-agent``).  Both share ``_DrivenProcess`` (state,
signals, close).  The process side of both is ``_agent_side``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._child import MODULE, LineReader, child_env, pipe_of, reap, stderr_tail
from .assertions import queued_pids, wait_until
from .loop_gaps import Resources

if TYPE_CHECKING:
    from .._base import Opened as _Observable  # any open semaphore or mutex, sync or async


class AgentError(Exception):
    """What a command raised inside an agent process: ``type`` is the
    exception's class name (``"NotOwner"``, ``"KeyboardInterrupt"``, ...),
    ``message`` its text.  ``str()`` is ``"TYPE MESSAGE"``."""

    def __init__(self, type_: str, message: str = "") -> None:
        super().__init__(f"{type_} {message}".rstrip())
        self.type = type_
        self.message = message


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
    _lines: LineReader
    _what = "agent"          # what its messages call it

    def _ready_start(self, line: str, error: type[AgentError]) -> int:
        """Its identity's start, from its first line (``ready PID START``);
        ``error`` if it said anything else."""
        words = line.split()
        if len(words) != 3 or words[0] != "ready" or int(words[1]) != self.pid:
            raise error("AgentError", f"{self._what} {self.pid} said {' '.join(words)!r} "
                                      "instead of ready")
        return int(words[2])

    def _next_line(self, timeout: float) -> str:
        """The next line it says.  TimeoutError if nothing came within
        ``timeout`` seconds; EOFError if it exited (with its exit status and
        stderr's last line)."""
        try:
            line = self._lines.line(timeout)
        except TimeoutError:
            raise TimeoutError(f"{self._what} {self.pid} said nothing for {timeout} s") from None
        if line is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            tail = stderr_tail(self.proc)
            raise EOFError(f"{self._what} {self.pid} exited (rc={self.proc.poll()})"
                           + (f": {tail}" if tail else ""))
        return line

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
        reap(self.proc)

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
                                     stderr=subprocess.PIPE, env=child_env(env))
        self.pid = self.proc.pid
        self.start: int | None = None       # its identity's start, from the ready line
        self._lines = LineReader(self.proc)
        self._pushback: list[str] = []      # lines answered() read ahead
        if wait:
            self.ready()

    # ------------------------------------------------------------ talking
    def ready(self, timeout: float = 30) -> Agent:
        """Wait until it has started (returns self, for chaining)."""
        if self.start is not None:
            return self
        self.start = self._ready_start(self.read(timeout), AgentError)
        return self

    def send(self, line: str) -> None:
        """Send one command line without waiting for the answer."""
        pipe_of(self.proc.stdin).write(line.encode() + b"\n")
        pipe_of(self.proc.stdin).flush()

    def read(self, timeout: float = 10) -> str:
        """The next line it says.  TimeoutError if nothing came within
        ``timeout`` seconds (it is blocked, or stopped); EOFError if it
        exited (the message has its exit status and stderr's last line)."""
        if self._pushback:
            return self._pushback.pop(0)
        return self._next_line(timeout)

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


def _parse_answer(answer: str, error: type[AgentError] = AgentError) -> Any:
    """An agent's ``ok JSON`` answer's value; ``error`` for ``err TYPE MESSAGE``
    (or anything else)."""
    kind, _, rest = answer.partition(" ")
    if kind == "ok":
        return json.loads(rest)
    if kind == "err":
        type_, _, message = rest.partition(" ")
        raise error(type_, message)
    raise error("AgentError", f"unexpected answer {answer!r}")


def _lease(d: Mapping[str, Any]) -> AgentLease:
    return AgentLease(d["units"], tuple(d["slots"]), d["token"], d["previous_owner_died"])


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

    _what = "aio agent"

    def __init__(self, *, backend: str | None = None, loop: str = "asyncio",
                 env: Mapping[str, str] | None = None, wait: bool = True) -> None:
        argv = [sys.executable, "-m", MODULE, "aio-agent", "--loop", loop]
        if backend is not None:
            argv += ["--backend", backend]
        self.backend = backend
        self.loop = loop
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env(env))
        self.pid = self.proc.pid
        self.start_time: int | None = None
        self._lines = LineReader(self.proc)
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
        self.start_time = self._ready_start(self._next_line(timeout), AsyncAgentError)
        return self


    def _read(self, task: str, timeout: float) -> str:
        """The next thing ``task`` said."""
        end = time.monotonic() + timeout
        while not self._answers.get(task):
            line = self._next_line(max(end - time.monotonic(), 0.0))
            who, _, rest = line.partition(" ")
            self._answers.setdefault(who, []).append(rest)
        return self._answers[task].pop(0)

    def send(self, task: str, line: str) -> None:
        pipe_of(self.proc.stdin).write(f"{task} {line}\n".encode())
        pipe_of(self.proc.stdin).flush()

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
        return _parse_answer(self._read(task, timeout), AsyncAgentError)

    def cmd(self, task: str, line: str, timeout: float = 10) -> Any:
        """Run a command in ``task`` and return its result."""
        self.send(task, line)
        said = self._read(task, timeout)
        if said == "queued":
            said = self._read(task, timeout)
        return _parse_answer(said, AsyncAgentError)

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
