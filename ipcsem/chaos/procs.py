"""The storm's child processes: workers (exec'd or forked) and the
supervisor, each killable, reapable and restartable.

No child ever runs the storm's stop-signal handler: forks happen with the
stop signals blocked, and the child resets them to SIG_DFL before it
unblocks them (run_forked, or :func:`child_preexec` before an exec).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import _proc
from .worker import WorkerConfig, run_forked

# What must not reach a forked child before it has reset its handlers.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Around a fork: a stop signal that arrives meanwhile is delivered to
    the parent (whose handler only sets a flag) once this block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def default_stop_signals() -> None:
    """In a new child: the stop signals back to SIG_DFL, then unblocked."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def child_preexec() -> Callable[[], None]:
    """The preexec_fn for a child the storm execs (inside
    stop_signals_blocked()): die with the storm, default stop signals."""
    return _proc.pdeathsig_preexec(then=default_stop_signals)


class WorkerProc:
    """One worker process in counters row ``index``."""

    __slots__ = ("_popen", "index", "pid", "returncode", "self_kill", "started")

    def __init__(self, index: int, pid: int, self_kill: bool,
                 popen: subprocess.Popen[bytes] | None = None) -> None:
        self.index, self.pid, self.self_kill = index, pid, self_kill
        self.started = time.monotonic()
        self.returncode: int | None = None
        self._popen = popen

    @classmethod
    def spawn(cls, cfg: WorkerConfig, err_path: str, how: str) -> WorkerProc:
        """Start a worker: ``how`` "exec" (a fresh interpreter) or "fork"."""
        if how == "exec":
            # Blocked until the exec, as for every child: between fork and
            # exec the child still has the storm's handlers (and its wakeup
            # fd), so a stop signal there would be taken for the storm's.
            with open(err_path, "ab") as err, stop_signals_blocked():
                p = subprocess.Popen([sys.executable, "-m", "ipcsem.chaos", "worker", *cfg.argv()],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=err, start_new_session=True, env=_proc.package_env(),
                                     preexec_fn=child_preexec())
            return cls(cfg.index, p.pid, bool(cfg.self_kill), p)
        with stop_signals_blocked():
            pid = os.fork()
            if pid == 0:  # the child resets the stop signals; never returns
                run_forked(cfg, err_path)
        return cls(cfg.index, pid, bool(cfg.self_kill))

    def poll(self) -> int | None:
        """Exit code (negative: killed by that signal) or None while running."""
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> tuple[int, bool]:
        """SIGKILL and reap: (exit code, whether our signal did it).  A worker
        found already dead (it killed itself) is just reaped."""
        code = self.poll()
        if code is not None:
            return code, False
        os.kill(self.pid, signal.SIGKILL)  # not reaped yet: the pid cannot be reused
        if self._popen is not None:
            code = self._popen.wait()
        else:
            code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        self.returncode = code
        return code, True


class SupervisorProc:
    """``ipcsem supervise [--backend URL] NAME`` (``_proc.launch_supervisor``),
    killable and restartable; its log lines are counted afterwards.  (Both
    backends' supervisors log ``recovered ...`` per recovery.)"""

    def __init__(self, name: str, tmp: str, backend: str = "shm") -> None:
        self.name = name
        self.backend = backend
        self.out_path = os.path.join(tmp, "supervisor.log")
        self.err_path = os.path.join(tmp, "supervisor.err")
        self.proc: subprocess.Popen[Any] | None = None
        self.started = 0.0
        self.starts = 0
        self.unexpected_exits: list[int] = []
        self._recoveries_before = 0

    def start(self) -> None:
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err, \
                stop_signals_blocked():
            self.proc = _proc.launch_supervisor([self.name], extra=["--backend", self.backend],
                                                stdout=out, stderr=err, new_session=True,
                                                preexec_fn=child_preexec())
        self.started = time.monotonic()
        self.starts += 1
        self._recoveries_before = self.recoveries()

    def has_worked(self) -> bool:
        """It has recovered something since it (re)started: it watches.  (On
        a busy machine an interpreter start takes a good part of a second;
        killing it sooner would leave the storm unsupervised.)"""
        return self.recoveries() > self._recoveries_before

    def exited(self) -> int | None:
        """Its exit code if it exited by itself (then it is forgotten)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.unexpected_exits.append(code)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self, wait: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``wait`` s: its exit code (None: none ran)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def recoveries(self) -> int:
        try:
            with open(self.out_path, "rb") as f:
                return sum(1 for line in f if line.startswith(b"recovered "))
        except FileNotFoundError:
            return 0

    def stderr_tail(self, n: int = 600) -> str:
        return tail(self.err_path, n)


def tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
