"""Driven processes for the semaphore-family tests (slots, mutex, drop-in,
healing, deadlocks).

A :class:`Child` is a separately exec'd Python process that runs the code
the test sends it, one JSON line per command, in its *main* thread (or, when
asked, in a new thread).  Running in the main thread matters for the
deadlock tests: a process whose every thread is parked in an ipcsem wait is
the only kind that can be deadlocked, so a participant must have no other
thread (not even one reading its commands).

Run as a script, this module is the child's side.
"""
from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


class ChildError(Exception):
    """An exception the child's code raised: ``type`` (class name), ``mro``
    (names of its classes), ``attrs`` (a few of its facts, as reprs)."""

    def __init__(self, type_: str, message: str, mro: list[str], attrs: dict) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message
        self.mro = mro
        self.attrs = attrs


class Child:
    """A live Python process the test drives (see the module docstring)."""

    def __init__(self, setup: str = "", env: dict | None = None, wait: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, HERE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        self._fd = self.proc.stdout.fileno()
        self._buffer = b""
        self._setup = setup
        if wait:
            self.ready()

    def ready(self) -> Child:
        assert self._line(30) == {"ready": True}
        if self._setup:
            self.run(self._setup)
        return self

    # --------------------------------------------------------- the protocol
    def _line(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = end - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"child {self.pid} said nothing for {timeout} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise EOFError(f"child {self.pid} exited (rc={self.proc.poll()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _send(self, op: str, code: str) -> None:
        self.proc.stdin.write((json.dumps({"op": op, "code": code}) + "\n").encode())
        self.proc.stdin.flush()

    def begin(self, code: str) -> None:
        """Start running ``code`` in the child's main thread; collect its
        outcome later with :meth:`result` (meanwhile the child reads nothing)."""
        self._send("run", code)

    def result(self, timeout: float = 10):
        """The value of the code begun last (an expression's value, or the
        variable ``result`` a statement set), or raise ChildError."""
        reply = self._line(timeout)
        if "err" in reply:
            raise ChildError(reply["err"], reply["msg"], reply["mro"], reply["attrs"])
        try:
            return ast.literal_eval(reply["ok"])
        except (ValueError, SyntaxError):
            return reply["ok"]        # not a literal: its repr

    def run(self, code: str, timeout: float = 10):
        """Run ``code`` in the child's main thread and return its value."""
        self.begin(code)
        return self.result(timeout)

    def pending(self, seconds: float = 0.3) -> bool:
        """True if the code begun last has not answered within ``seconds``."""
        end = time.monotonic() + seconds
        while b"\n" not in self._buffer:
            left = max(end - time.monotonic(), 0)
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    return False
                self._buffer += chunk
            elif left == 0:
                return True
        return False

    def thread(self, code: str, name: str = "worker") -> None:
        """Run ``code`` in a new thread of the child (its outcome lands in
        the child's ``threads[name]``: ("ok", value) or ("err", type, msg))."""
        self._send("thread", json.dumps([name, code]))
        self.result()

    # ------------------------------------------------------------- signals
    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def _children():
    """Factory of Child processes; every one is killed at teardown.
    ``children(n=3, setup=...)`` starts several at once (a list)."""
    made: list[Child] = []

    def make(setup: str = "", n: int | None = None, env: dict | None = None):
        if n is None:
            c = Child(setup, env)
            made.append(c)
            return c
        group = [Child(setup, env, wait=False) for _ in range(n)]
        made.extend(group)
        return [c.ready() for c in group]

    yield make
    for c in made:
        c.close()


if __name__ != "__main__":        # the child does not need pytest
    import pytest

    children = pytest.fixture(_children, name="children")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it is truthy (its value) or fail the test."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def queued(sem) -> list[tuple[int, int]]:
    """(pid, units) of each queued acquire, in serving order (the ledger's view)."""
    return [(w.pid, w.units) for w in sem.waiters()]


def wait_queued(sem, child: Child, units: int | None = None, timeout: float = 10.0) -> None:
    """Wait until ``child`` has an acquire queued on ``sem``."""
    wait_until(lambda: any(p == child.pid and (units is None or u == units)
                           for p, u in queued(sem)),
               timeout, what=f"pid {child.pid} queued on {sem.name}")


def ledger_view(name: str):
    """The ledger of ``name`` now (a Snapshot: .header, .holders, .waiters,
    .consistent), read the way status tools do (``read_view``: a pread copy,
    no mapping, no lock) -- the facade has no public snapshot."""
    from ipcsem._shm.segment import read_view

    return read_view(name).snapshot


def state_of(pid: int) -> str:
    """The process state letter of /proc/PID/stat (R, S, T, Z, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stop_holding_the_ledger_lock(sem, child: Child, tries: int = 3000) -> bool:
    """SIGSTOP ``child`` (which must be looping over locked ledger calls on
    ``sem``, e.g. ``while True: s.check()``) at a moment it holds the ledger
    lock; True when caught (it is left stopped), False if it never was."""
    for _ in range(tries):
        os.kill(child.pid, signal.SIGSTOP)
        end = time.monotonic() + 5
        while state_of(child.pid) not in ("T", "t"):
            if time.monotonic() > end:
                raise AssertionError(f"pid {child.pid} did not stop")
            time.sleep(0.0002)
        if ledger_view(sem.name).header.lock_owner == child.pid:
            return True
        os.kill(child.pid, signal.SIGCONT)
    return False


def sweep_crash_points(create, setup: str, op: str, verify, batch: int = 8,
                       max_points: int = 800) -> int:
    """Kill a child at every crash point of ``op`` (the C ledger's fault
    injection: a real SIGKILL at the Nth store of its transactions), one
    fresh semaphore per point.  ``create()`` -> (name, sem, extra children
    or []); the child runs ``setup`` (with ``name`` bound), then ``op`` with
    the crash point armed; ``verify(sem, died, point)`` checks what is left; a child that
    survived (the op completed) is killed before it is called, so its units
    are a dead holder's too.
    Returns the number of crash points ``op`` has (the first it survived)."""
    for first in range(0, max_points, batch):
        cases = []
        try:
            for point in range(first, first + batch):
                name, sem, extra = create()
                child = Child(wait=False)
                cases.append((point, name, sem, child, extra))
            for point, name, _sem, child, _extra in cases:
                child.ready()
                child.run(f"name = {name!r}\n" + setup)
                child.run("from ipcsem._shm import _ledger")
                child.begin(f"_ledger.set_crash_point({point})\n{op}")
            survived = []
            for point, _name, sem, child, _extra in cases:
                try:
                    child.result(20)
                    died = False
                    survived.append(point)
                    child.kill()
                except EOFError:
                    child.proc.wait(10)
                    died = child.proc.returncode == -9
                    assert died, f"crash point {point}: child exited with {child.proc.returncode}"
                verify(sem, died, point)
            if survived:
                assert survived == list(range(survived[0], first + batch)), survived
                assert survived[0] > 3, "the crash points never fired"
                return survived[0]
        finally:
            for _point, name, _sem, child, extra in cases:
                child.close()
                for x in extra:
                    x.close()
                try:
                    import ipcsem

                    ipcsem.unlink(name)
                except Exception:  # noqa: BLE001 - clean-up: gone or never made, either is fine
                    pass
    raise AssertionError("the operation never completed: crash points not exhausted")


def thread_ids(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


# ------------------------------------------------------------ the child side
def _reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _error_reply(e: BaseException) -> dict:
    attrs = {}
    for k in ("name", "setting", "existing", "requested", "deadlock", "units", "timeout"):
        if hasattr(e, k):
            v = getattr(e, k)
            attrs[k] = repr(v)
            if k == "deadlock" and hasattr(v, "processes"):
                attrs["processes"] = list(v.processes)
                attrs["semaphores"] = list(v.semaphores)
    return {"err": type(e).__name__, "msg": str(e), "mro": [c.__name__ for c in type(e).__mro__],
            "attrs": attrs}


def _execute(code: str, ns: dict):
    try:
        compiled = compile(code, "<test>", "eval")
    except SyntaxError:
        ns.pop("result", None)
        exec(compile(code, "<test>", "exec"), ns)
        return ns.get("result")
    return eval(compiled, ns)


def _child_main() -> None:
    import threading

    import ipcsem

    ns: dict = {"ipcsem": ipcsem, "os": os, "time": time, "threading": threading,
                "signal": signal, "threads": {}}

    def in_thread(name: str, code: str) -> None:
        try:
            ns["threads"][name] = ("ok", _execute(code, ns))
        except BaseException as e:  # noqa: BLE001 - the test reads what the thread raised
            ns["threads"][name] = ("err", type(e).__name__, str(e))

    _reply({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["op"] == "thread":
                tname, code = json.loads(cmd["code"])
                ns["threads"][tname] = ("running",)
                t = threading.Thread(target=in_thread, args=(tname, code), name=tname,
                                     daemon=True)
                t.start()
                ns.setdefault("thread_objects", {})[tname] = t
                _reply({"ok": "None"})
                continue
            _reply({"ok": repr(_execute(cmd["code"], ns))})
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which judges it
            _reply(_error_reply(e))


if __name__ == "__main__":
    _child_main()
