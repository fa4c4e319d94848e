"""A per-user worker of the root supervisor, and its events.

The worker (``main``) runs as the user it serves, a Supervisor over that
user's semaphores, and reports on a pipe, one JSON line per event.  Root
trusts none of it: ``validate_event`` is the only way a worker's bytes
become an event (bounded, the expected keys and types; anything else is
dropped).
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .. import _names, _proc
from .supervisor import Supervisor

# worker_main(fd, uid, names, sweep, poll) -> exit status
WorkerMain = Callable[[int, int, "list[str] | None", float, float], int]


def prepare() -> None:
    """Import what a worker uses before it drops privileges: after the drop
    the interpreter's own files may not be readable (installed under a
    private home)."""
    import ctypes  # noqa: F401  (set_pdeathsig, the watcher's pidfd_open)

    import psutil  # noqa: F401  (command lines)


def validate_event(line: bytes) -> dict[str, Any] | None:
    """A worker's event, or None: an event line (``_proc.read_event``) of a
    kind root knows, with the expected keys and types."""
    ev = _proc.read_event(line)
    if ev is None:
        return None
    kind = ev["event"]
    if kind == "recovered":
        ints = ("pid", "start", "units", "entries")
        if not all(isinstance(ev.get(k), int) and not isinstance(ev.get(k), bool) for k in ints):
            return None
        if not isinstance(ev.get("name"), str) or not _names.is_valid(ev["name"]):
            return None
        after = ev.get("after_ms")
        if after is not None and not isinstance(after, (int, float)):
            return None
        cmd = ev.get("cmd")
        if cmd is not None and not isinstance(cmd, str):
            return None
        return {k: ev.get(k) for k in ("event", "name", *ints, "after_ms", "cmd")}
    if kind == "warning":
        if not isinstance(ev.get("name"), str) or not isinstance(ev.get("error"), str):
            return None
        return {"event": "warning", "name": ev["name"][:256], "error": ev["error"][:1000]}
    return None


def main(fd: int, uid: int, names: list[str] | None, sweep: float, poll: float) -> int:
    """A per-user worker: a Supervisor over ``uid``'s semaphores, events on ``fd``."""

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands = _proc.CommandLines()

    def send(ev: dict[str, Any]) -> None:
        _proc.write_event(fd, ev)

    def on_recover(name: str, pid: int, start: int, units: int, entries: int,
                   died_ns: int | None) -> None:
        after = None if died_ns is None else round((time.time_ns() - died_ns) / 1e6, 3)
        send({"event": "recovered", "name": name, "pid": pid, "start": start, "units": units,
              "entries": entries, "after_ms": after, "cmd": commands.pop(pid, start)})

    def on_error(name: str, message: str) -> None:
        if message:
            send({"event": "warning", "name": name, "error": message})

    sup = Supervisor(names, sweep=sweep, poll=poll, on_recover=on_recover, on_error=on_error,
                     on_watch=commands.note, owner_uid=uid)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        sup.stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        sup.run()
    finally:
        sup.close()
    return 0
