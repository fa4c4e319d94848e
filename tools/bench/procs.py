"""Launching and talking to worker processes.

Workers speak newline-delimited JSON: the harness writes commands to the
worker's input, the worker writes messages to its output. Two launchers share
that protocol:

* SubprocWorker: ``python -m tools.bench.worker ROLE CONTENDER SPEC PARAMS``.
  Unrelated processes opening the semaphore by name -- the case ipcsem exists
  for -- so every contender that supports it is measured this way.
* ForkWorker: multiprocessing 'fork' children that inherit the semaphore
  object; only for contenders that cannot be opened by name
  (multiprocessing.Semaphore).

Every worker started is registered in LIVE so kill_all() can reap it even when
a figure fails halfway.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LIVE: set = set()


class WorkerError(RuntimeError):
    pass


try:  # resolved up front: preexec_fn must not import anything
    import ctypes
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except Exception:
    _prctl = None


def die_with_parent(sig=signal.SIGKILL):
    """prctl(PR_SET_PDEATHSIG): if the harness itself is killed, processes
    that never read their stdin (supervisor, paused holders) die too instead
    of holding units forever. Best effort: Linux only."""
    if _prctl is not None:
        _prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def _preexec_kill():
    die_with_parent(signal.SIGKILL)


def preexec_term():
    die_with_parent(signal.SIGTERM)


class _LineIO:
    """Non-blocking-capable line reader on a raw fd (select + os.read), so a
    hung or dead worker turns into a timeout/EOF instead of hanging the run."""

    def __init__(self, rfd: int, wfd: int | None, owns_fds: bool = True):
        self.rfd = rfd
        self.wfd = wfd
        self.owns_fds = owns_fds
        self.buf = b""

    def send(self, obj) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]

    def recv(self, timeout: float | None):
        """Next JSON message, or raise TimeoutError / EOFError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self.rfd], [], [], wait)
            if not r:
                raise TimeoutError
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        for fd in (self.rfd, self.wfd):
            if fd is not None and self.owns_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = self.wfd = None


class _Base:
    pid: int
    io: _LineIO

    def send(self, obj):
        self.io.send(obj)

    def recv(self, timeout: float | None = 10.0, what: str = "message"):
        try:
            msg = self.io.recv(timeout)
        except TimeoutError:
            raise WorkerError(f"{self.desc}: no {what} within {timeout}s"
                              f"{self._stderr_tail()}") from None
        except EOFError:
            self.wait(1.0)
            raise WorkerError(f"{self.desc}: exited (rc={self.returncode()}) "
                              f"before {what}{self._stderr_tail()}") from None
        if isinstance(msg, dict) and "error" in msg:
            raise WorkerError(f"{self.desc}: {msg['error']}")
        return msg

    def _stderr_tail(self) -> str:
        return ""

    def kill(self, sig=signal.SIGKILL):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self, timeout=2.0):
        """Wait for exit, SIGKILL if needed, release fds; idempotent."""
        if not self.wait(timeout):
            self.kill()
            self.wait(5.0)
        self.io.close()
        LIVE.discard(self)


class SubprocWorker(_Base):
    def __init__(self, role, contender_key, spec, params=None, *,
                 new_session=False):
        self.desc = f"worker[{role} {contender_key}]"
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (open until finish())
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.worker", role, contender_key,
             json.dumps(spec), json.dumps(params or {})],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._err, bufsize=0, preexec_fn=_preexec_kill,
            # new_session: the 'forker' helper puts its K children in its own
            # process group so one killpg() takes them all down.
            start_new_session=new_session)
        self.pid = self.proc.pid
        self.new_session = new_session
        # Popen owns these fds (closed in finish()).
        self.io = _LineIO(self.proc.stdout.fileno(), self.proc.stdin.fileno(),
                          owns_fds=False)
        LIVE.add(self)

    def _stderr_tail(self):
        try:
            self._err.seek(0)
            tail = self._err.read()[-1500:].decode(errors="replace").strip()
        except Exception:
            return ""
        return f"\n--- worker stderr ---\n{tail}" if tail else ""

    def wait(self, timeout):
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def returncode(self):
        return self.proc.returncode

    def killpg(self, sig=signal.SIGKILL):
        if not self.new_session:
            return  # its group is the harness's own
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self, timeout=2.0):
        super().finish(timeout)
        for f in (self.proc.stdin, self.proc.stdout, self._err):
            try:
                f.close()
            except Exception:
                pass


class ForkWorker(_Base):
    def __init__(self, role, contender_key, spec, params=None):
        import multiprocessing

        from . import worker
        self.desc = f"worker[{role} {contender_key} fork]"
        c2p_r, c2p_w = os.pipe()
        p2c_r, p2c_w = os.pipe()
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(
            target=worker.run_forked,
            args=(role, contender_key, spec, params or {}, p2c_r, c2p_w,
                  (c2p_r, p2c_w)),
            daemon=True)
        self.proc.start()
        os.close(c2p_w)
        os.close(p2c_r)
        self.pid = self.proc.pid
        self.io = _LineIO(c2p_r, p2c_w)
        LIVE.add(self)

    def wait(self, timeout):
        self.proc.join(timeout)
        return self.proc.exitcode is not None

    def returncode(self):
        return self.proc.exitcode


def spawn(contender, role, spec, params=None, **kw):
    """Start a worker the way the contender allows."""
    if contender.inherit_only:
        return ForkWorker(role, contender.key, spec, params)
    return SubprocWorker(role, contender.key, spec, params, **kw)


def kill_all():
    for w in list(LIVE):
        w.kill()
        if isinstance(w, SubprocWorker):
            w.killpg()  # harmless if it has no group of its own
        try:
            w.finish(1.0)
        except Exception:
            pass
    LIVE.clear()
