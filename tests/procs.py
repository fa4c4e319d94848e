"""Process helpers shared by the tests: real, separately started processes
that the test drives, kills and inspects.  No mocks: kills are real SIGKILLs,
liveness is the kernel's."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent.py")


class Agent:
    """A live process running tests/agent.py."""

    def __init__(self, env: dict | None = None, wait: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1, env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        self._fd = self.proc.stdout.fileno()
        self._buffer = b""  # our own: select() cannot see a text wrapper's buffer
        if wait:
            self.ready()

    def ready(self) -> "Agent":
        """Wait for start-up (start many with wait=False, then ready() each)."""
        assert self.read(20) == "ready"
        return self

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 10) -> str:
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"agent {self.pid} said nothing for {timeout} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise EOFError(f"agent {self.pid} exited (rc={self.proc.poll()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def cmd(self, line: str, timeout: float = 10):
        """Run a command and return its result (eval'd repr) or raise."""
        self.send(line)
        answer = self.read(timeout)
        if answer == "queued":
            answer = self.read(timeout)
        kind, _, rest = answer.partition(" ")
        if kind == "err":
            raise AgentError(rest)
        return eval(rest)  # our own agent's repr of bool/int/None/list

    def start_acquire(self, units: int = 1, timeout: float | None = None, priority: int = 0) -> None:
        """Begin a blocking acquire; returns once the agent is about to wait."""
        self.send(f"acquire {units} {'-' if timeout is None else timeout} {priority}")
        assert self.read() == "queued"

    def result(self, timeout: float = 10):
        kind, _, rest = self.read(timeout).partition(" ")
        if kind == "err":
            raise AgentError(rest)
        return eval(rest)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class AgentError(Exception):
    pass


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def queued_pids(sem) -> list[int]:
    return [w.pid for w in sem.waiters()]


def held_by(sem) -> dict[int, int]:
    return {h.pid: h.units for h in sem.holders()}


def start_supervisor(*names: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipcsem", "supervise", *names],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    first = proc.stdout.readline()
    assert first.startswith("supervising"), first
    return proc


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def can_take_all(name: str, units: int, timeout: float = 5.0) -> bool:
    """Independent oracle: a fresh process tries to take `units` units and
    reports whether it got them (it exits right after: they come back)."""
    code = (
        "import ipcsem,sys;s=ipcsem.Semaphore(sys.argv[1]);"
        "ok=s.acquire(int(sys.argv[2]),timeout=float(sys.argv[3]));"
        "ok and s.release(int(sys.argv[2]));sys.exit(0 if ok else 7)"
    )
    rc = subprocess.run([sys.executable, "-c", code, name, str(units), str(timeout)],
                        timeout=timeout + 20).returncode
    assert rc in (0, 7), f"oracle process failed with {rc}"
    return rc == 0
