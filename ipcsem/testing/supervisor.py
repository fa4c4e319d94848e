"""``ipcsem supervise`` as a child of the test (start_supervisor)."""
from __future__ import annotations

import select
import signal
import subprocess

from ._child import pipe_of, reap


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
    from .. import _proc

    proc = _proc.launch_supervisor(list(names), extra=list(extra), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
    out = pipe_of(proc.stdout)
    ready, _, _ = select.select([out], [], [], timeout)
    first = out.readline() if ready else ""
    if not first.startswith("supervising"):
        reap(proc)
        raise AssertionError(f"ipcsem supervise did not start: {first!r}")
    return SupervisorProcess(proc, first)
