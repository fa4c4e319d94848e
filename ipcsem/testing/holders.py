"""A separate process that holds units of a semaphore (spawn_holder)."""
from __future__ import annotations

import signal
import subprocess
import sys

from ._child import (
    EXIT_TIMEOUT,
    MODULE,
    READY,
    RELEASED,
    LineReader,
    child_env,
    close_pipes,
    pipe_of,
    reap,
    stderr_tail,
)


class HolderError(RuntimeError):
    """A holder process could not be started or did not behave: it exited,
    failed to open the semaphore, or said something unexpected.  The message
    carries its exit status and the tail of its stderr."""


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
                                     stderr=subprocess.PIPE, env=child_env())
        self.pid = self.proc.pid
        self._lines = LineReader(self.proc)

    def _failure(self, what: str) -> HolderError:
        """A HolderError saying ``what`` and, if the holder has exited, how."""
        rc = self.proc.poll()
        tail = stderr_tail(self.proc)
        how = "still running" if rc is None else f"exit status {rc}"
        return HolderError(f"holder process {self.pid} for {self.name!r}: {what} ({how})"
                           + (f": {tail}" if tail else ""))

    def wait_holding(self, timeout: float = 10) -> HolderProcess:
        """Wait until the holder says it holds its units (spawn_holder does
        this unless ``wait=False``).  ipcsem.Timeout if it did not get them
        in time; HolderError if it failed."""
        if self.holding:
            return self
        from .._errors import Timeout

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
            pipe_of(self.proc.stdin).write(b"release\n")
            pipe_of(self.proc.stdin).flush()
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
        close_pipes(self.proc)
        return rc

    def close(self) -> None:
        """SIGKILL it if it still runs, reap it, close the pipes.  Idempotent."""
        reap(self.proc)

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
    from .. import _names

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
