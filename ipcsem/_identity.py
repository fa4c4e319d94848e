"""Process identity and liveness: who is (still) the process that took units.

Identity is (pid, start): the pid plus the process's start time in clock ticks
since boot (field 22 of /proc/PID/stat).  A reused pid has another start, so
it is never mistaken for the old holder.  We read the raw ticks rather than
psutil's ``create_time()``: that float is btime + ticks/HZ, and btime as the
kernel reports it can shift by a second after a clock adjustment, so two
processes could compute different values for one process.

Liveness rules (hazards 5-7): a zombie is dead (it exited; it only waits to
be reaped) — but only if its whole thread group exited: /proc/PID/stat shows
the *leader's* state, which is Z as soon as the main thread has exited while
other threads still run and use their units, so a Z with live threads is
alive; a stopped or slow process is alive; a process we cannot see (another
user's under /proc hidepid) is *unknown*, which we treat as alive: recovery
must never hand out units of a process that may still use them.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable

from . import _proc

ALIVE, STOPPED, ZOMBIE, DEAD, UNKNOWN = "alive", "stopped", "zombie", "dead", "unknown"

start_of = _proc.start_of


def status(pid: int, start: int) -> str:
    """ALIVE, STOPPED, ZOMBIE, DEAD or UNKNOWN for the identity (pid, start)."""
    if pid <= 0:
        return DEAD
    if not _proc.HAVE_PROC:
        return _status_psutil(pid, start)
    try:
        st = _proc.stat(pid)
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
    if st.start != start:
        return DEAD  # the pid was reused: our process is gone
    if st.state in ("Z", "X", "x"):
        # The leader's state.  Other threads of the group may still run.
        if st.threads > 1:
            return ALIVE
        return ZOMBIE if st.state == "Z" else DEAD
    if st.state in ("T", "t"):
        return STOPPED
    return ALIVE


def _status_psutil(pid: int, start: int) -> str:
    import psutil

    try:
        p = psutil.Process(pid)
        if int(p.create_time() * 1_000_000) != start:
            return DEAD
        s = p.status()
        threads = p.num_threads()
    except psutil.NoSuchProcess:
        return DEAD
    except psutil.AccessDenied:
        return UNKNOWN
    if s in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return ALIVE if threads > 1 else ZOMBIE
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

    def __init__(self) -> None:
        self._listeners: list[Callable[[int], object]] = []

    def refresh(self) -> None:
        pid = os.getpid()
        start = start_of(pid)
        assert start is not None
        self.pid, self.start = pid, start
        for listener in self._listeners:
            listener(pid)

    def on_change(self, listener: Callable[[int], object]) -> None:
        """Call ``listener(pid)`` now and after every fork (in the child)."""
        self._listeners.append(listener)
        listener(self.pid)


ME = _Me()
ME.refresh()
os.register_at_fork(after_in_child=ME.refresh)

_tls = threading.local()


def native_tid() -> int:
    """The calling thread's native id, cached per thread (gettid() is a
    system call; a forked child's thread gets its own, new id)."""
    try:
        tid: int = _tls.tid
        return tid
    except AttributeError:
        tid = _tls.tid = threading.get_native_id()
        return tid


def _forget_tid() -> None:
    # In the child, after fork: the forking thread's own dict (looked up
    # now, not when this module was imported by some other thread).
    _tls.__dict__.clear()


os.register_at_fork(after_in_child=_forget_tid)
