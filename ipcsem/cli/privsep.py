"""Root's tools change another user's semaphore only as that user.

Root never maps another user's ledger (docs/design.md, "Threat model": a
ledger's writer can turn a pthread mutex in it into a write primitive in
whoever locks it).  When root removes or recovers user X's semaphore, a
forked child drops to X for good (groups, gid, uid: OpenSSH's privilege
separation) and does the work; it reports events, one JSON object per line,
over a pipe.  The parent treats them as untrusted (X could ptrace its own
process): bounded in size and time, checked for type, printable only.
"""
from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from .. import _proc

CHILD_BOUND = 30.0      # seconds the child may take for all its names


become = _proc.become


def needs_drop(owner_uid: int) -> bool:
    """Must a mutation of a semaphore owned by ``owner_uid`` run as its owner?"""
    return os.geteuid() == 0 and owner_uid != 0


def printable(text: object, limit: int = 500) -> str:
    """An untrusted string made safe for a terminal: bounded, no control
    characters (escape sequences could rewrite the operator's screen)."""
    s = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in s)


def as_user(uid: int, job: Callable[[Callable[[dict[str, Any]], None]], int],
            bound: float = CHILD_BOUND,
            drop: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Run ``job(emit)`` in a forked child dropped to ``uid`` (by ``drop``,
    default ``_proc.become``); the events it emitted (parsed JSON objects,
    not yet validated) and its exit code (``job``'s return value; 1 if it
    raised; -1 if it overran ``bound`` and was killed).  The child leaves
    root's session and keeps none of root's descriptors before it drops:
    a user who takes it over can neither type into root's terminal
    (TIOCSTI) nor write into root's streams."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: never returns
        code = 1
        try:
            os.close(r)

            def emit(ev: dict[str, Any]) -> None:
                _proc.write_event(w, ev)

            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _proc.set_pdeathsig(signal.SIGKILL)
                os.setsid()                      # no controlling terminal of root's
                _proc.keep_only_fds(w)
                (drop or become)(uid)
                code = job(emit)
            except BaseException as e:  # noqa: BLE001 - report it, then exit
                emit({"event": "error", "message": f"{e}"})
                code = 1
        finally:
            os._exit(code)
    os.close(w)
    events: list[dict[str, Any]] = []
    buf = bytearray()
    deadline = time.monotonic() + bound
    killed = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            buf += chunk
            for line in _proc.split_lines(buf):
                ev = _proc.read_event(line)
                if ev is not None:
                    events.append(ev)
    finally:
        os.close(r)
        _pid, status = os.waitpid(pid, 0)
    code = -1 if killed else os.waitstatus_to_exitcode(status)
    return events, code


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
