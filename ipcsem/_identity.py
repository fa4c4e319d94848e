"""Process identity and liveness: who is (still) the process that took units.

Identity is (pid, start): the pid plus the process's start time in clock ticks
since boot (field 22 of /proc/PID/stat).  A reused pid has another start, so
it is never mistaken for the old holder.  We read the raw ticks rather than
psutil's ``create_time()``: that float is btime + ticks/HZ, and btime as the
kernel reports it can shift by a second after a clock adjustment, so two
processes could compute different values for one process.  psutil is the
fallback where there is no /proc (macOS), and what the tools use for command
lines and users.

Liveness rules (hazards 5-7): a zombie is dead (it exited; it only waits to be
reaped), a stopped or slow process is alive, and a process we cannot see
(another user's under /proc hidepid) is *unknown*, which we treat as alive:
recovery must never hand out units of a process that may still use them.
"""
from __future__ import annotations

import os
import sys
import threading

ALIVE, STOPPED, ZOMBIE, DEAD, UNKNOWN = "alive", "stopped", "zombie", "dead", "unknown"
_HAVE_PROC = os.path.exists("/proc/self/stat")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of pid, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and ')': split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[19])


def start_of(pid: int) -> int | None:
    """Start time token of pid, or None if it does not exist."""
    if _HAVE_PROC:
        st = _proc_stat(pid)
        return None if st is None else st[1]
    import psutil

    try:
        return int(psutil.Process(pid).create_time() * 1_000_000)
    except psutil.NoSuchProcess:
        return None


def status(pid: int, start: int) -> str:
    """ALIVE, STOPPED, ZOMBIE, DEAD or UNKNOWN for the identity (pid, start)."""
    if pid <= 0:
        return DEAD
    if _HAVE_PROC:
        try:
            st = _proc_stat(pid)
        except PermissionError:
            return UNKNOWN
        if st is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return DEAD
            except PermissionError:
                return UNKNOWN  # exists, hidden from us (hidepid): never recover it
            return UNKNOWN
        state, ticks = st
        if ticks != start:
            return DEAD  # the pid was reused: our process is gone
        if state in ("Z", "X", "x"):
            return ZOMBIE if state == "Z" else DEAD
        if state in ("T", "t"):
            return STOPPED
        return ALIVE
    import psutil

    try:
        p = psutil.Process(pid)
        if int(p.create_time() * 1_000_000) != start:
            return DEAD
        s = p.status()
    except psutil.NoSuchProcess:
        return DEAD
    except psutil.AccessDenied:
        return UNKNOWN
    if s in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return ZOMBIE
    if s == psutil.STATUS_STOPPED:
        return STOPPED
    return ALIVE


def is_dead(pid: int, start: int) -> bool:
    return status(pid, start) in (DEAD, ZOMBIE)


class _Me:
    """This process's identity, recomputed in a forked child (hazard 13:
    the child is another process and holds nothing)."""

    pid: int = 0
    start: int = 0

    def refresh(self) -> None:
        from . import _ledger

        pid = os.getpid()
        start = start_of(pid)
        assert start is not None
        self.pid, self.start = pid, start
        _ledger.set_self_pid(pid)


ME = _Me()
ME.refresh()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ME.refresh)

native_tid = threading.get_native_id if sys.version_info >= (3, 8) else threading.get_ident
