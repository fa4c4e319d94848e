"""Plumbing of the kit's child processes: their environment, their pipes,
reading their lines with a timeout, reaping them."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import IO, Any

READY = "holding"          # first word of the holder's ready line
RELEASED = "released"      # the holder's last line after a release request
EXIT_TIMEOUT = 75          # the holder (or the oracle) did not get its units in time
MODULE = "ipcsem.testing"


def pipe_of(f: IO[Any] | None) -> IO[Any]:
    """A child's pipe that we asked for (subprocess types them Optional)."""
    if f is None:
        raise ValueError("the pipe was not requested")
    return f


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a helper process: ours plus ``env``, with
    PYTHONPATH such that it imports this very ipcsem (even when the suite
    found it through sys.path rather than an installation)."""
    from .. import _proc

    return _proc.package_env({**os.environ, **(env or {})})


class LineReader:
    """Lines from a child's stdout with a timeout (select() cannot see a
    text wrapper's buffer, so we keep our own)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._fd = pipe_of(proc.stdout).fileno()
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


def stderr_tail(proc: subprocess.Popen[bytes]) -> str:
    """The last line of an exited child's piped stderr, or ''."""
    if proc.poll() is None or proc.stderr is None:
        return ""
    try:
        err = proc.stderr.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
    return err.splitlines()[-1] if err else ""


def close_pipes(proc: subprocess.Popen[Any]) -> None:
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is None:
            continue
        try:
            f.close()
        except (OSError, ValueError):
            pass


def reap(proc: subprocess.Popen[Any]) -> None:
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
    close_pipes(proc)
