"""Fast recovery without a daemon: a waiting process watches the holders.

While any thread of this process is blocked on a semaphore, one thread of
ours ("ipcsem-watch", started on first use) holds a pidfd for every process
that semaphore's ledger names and polls them: the moment one exits (its whole
thread group; a zombie counts) we recover its units, and the ledger grants
them to the queue — a blocked waiter gets a dead holder's unit as fast as
the supervisor would give it, with no supervisor running.

Every waiting process watches (no election): a death is then recovered by
whichever watcher sees it first, and the others find nothing to do
(recovery is idempotent under the ledger lock).  At most WATCH_MAX processes
are watched per process, so a huge table cannot exhaust our descriptors;
beyond that, and on kernels without pidfds, the waiters' half-second healing
slices cover it.

A segment stays watched for LINGER seconds after its last waiter leaves
(its pidfds stay open, its identities stay known), so that a process
taking turns on a contended semaphore -- wait, hold, release, wait again,
hundreds of times a second -- costs the watcher nothing per wait: only a
wait that brings a segment the thread does not watch yet wakes it.
"""
from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _identity, _proc
from .._errors import IpcsemError
from . import recovery

if TYPE_CHECKING:
    from .segment import Segment

WATCH_MAX = 256          # pidfds per process
REFRESH = 0.05           # how often to look for new holders (lock-free counter read)
LINGER = 1.0             # a segment stays watched this long after its last wait ends

_lock = threading.Lock()
# id(segment) -> [segment, waits, seen changes, identities, idle since (monotonic)]
# (the entry holds the segment, so its id is not reused while it is here)
_segments: dict[int, list[Any]] = {}
_thread: threading.Thread | None = None
_wake_r = _wake_w = -1



def prepare() -> None:
    """A thread of ours is about to wait: have the watcher thread running
    before it queues.  (A thread started later would show, for the moment
    between its creation and its naming, as one of the user's threads that
    is not waiting: a deadlock detector reading the process then would
    count it as live.)"""
    if not hasattr(os, "pidfd_open"):
        return
    if _thread is not None and _thread.is_alive():
        return
    with _lock:
        _ensure_thread()


def _ensure_thread() -> bool:
    """With _lock: start the thread unless it runs; True if started."""
    global _thread, _wake_r, _wake_w
    if _thread is not None and _thread.is_alive():
        return False
    if _wake_r < 0:
        _wake_r, _wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _thread = _proc.start_named_thread("ipcsem-watch", _run)
    return True


def watching(segment: Segment) -> None:
    """A thread of ours starts waiting on ``segment``."""
    if not hasattr(os, "pidfd_open"):
        return
    with _lock:
        entry = _segments.get(id(segment))
        new = entry is None
        if entry is None:
            _segments[id(segment)] = [segment, 1, None, set(), 0.0]
        else:
            entry[1] += 1
        if _ensure_thread():
            new = True
    # Only a newly watched segment needs the thread now: another waiter on
    # one it already watches (or still lingers on) changes nothing it looks
    # at, and new holders show in the ledger's change counter, which the
    # thread reads every REFRESH.  (A poke per wait hands the GIL to the
    # thread, a context switch per handoff on a contended semaphore; a poke
    # per waiter would re-read the ledger O(n^2) for n tasks queueing.)
    if new:
        _poke()


def done(segment: Segment) -> None:
    """That thread stopped waiting."""
    with _lock:
        entry = _segments.get(id(segment))
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                entry[1] = 0
                entry[4] = time.monotonic()    # the thread drops it LINGER from now


def _expire(now: float) -> None:
    """Forget segments nobody has waited on for LINGER, or closed ones
    nobody waits on (their pidfds are closed at the refresh).  With _lock."""
    for key in [k for k, v in _segments.items()
                if v[1] == 0 and (now - v[4] >= LINGER or v[0].ledger.closed)]:
        del _segments[key]


def _poke() -> None:
    if _wake_w >= 0:
        try:
            os.write(_wake_w, b"x")
        except (BlockingIOError, OSError):
            pass


def _after_fork_in_child() -> None:
    global _lock, _thread, _wake_r, _wake_w
    # The watcher thread may have held the lock at the fork: it is not here
    # to release it.
    _lock = threading.Lock()
    _segments.clear()
    _thread = None
    for fd in (_wake_r, _wake_w):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    _wake_r = _wake_w = -1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run() -> None:
    # No local of this loop refers to a segment while it sleeps: a fork()
    # while it sleeps leaves this thread's frames behind in the child
    # without releasing what they refer to, and a segment referred to there
    # would stay mapped in the child for good (only _segments, which the
    # child clears, holds them).
    poller = select.poll()
    poller.register(_wake_r, select.POLLIN)
    pidfds: dict[tuple[int, int], int] = {}      # identity -> pidfd
    by_fd: dict[int, tuple[int, int]] = {}
    where: dict[tuple[int, int], set[int]] = {}   # identity -> id(segment)s
    next_refresh = 0.0
    while True:
        now = time.monotonic()
        if now >= next_refresh:
            next_refresh = now + REFRESH
            where = _refresh(now, poller, pidfds, by_fd)
        with _lock:
            idle = not _segments
        if idle:
            # Nobody waits, nothing lingers: close everything and sleep
            # until someone waits.
            for fd in list(by_fd):
                poller.unregister(fd)
                os.close(fd)
            pidfds.clear()
            by_fd.clear()
            try:
                select.select([_wake_r], [], [], 5.0)
            except (InterruptedError, OSError):
                pass
            _drain()
            next_refresh = 0.0
            continue
        try:
            events = poller.poll(REFRESH * 1000)
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd == _wake_r:
                _drain()
                next_refresh = 0.0
                continue
            ident = by_fd.pop(fd, None)
            if ident is None:
                continue
            poller.unregister(fd)
            os.close(fd)
            del pidfds[ident]
            for key in where.get(ident, ()):
                _recover(_segment(key), ident)


def _segment(key: int) -> Segment | None:
    with _lock:
        entry = _segments.get(key)
    return None if entry is None else entry[0]


def _refresh(now: float, poller: select.poll, pidfds: dict[tuple[int, int], int],
             by_fd: dict[int, tuple[int, int]]) -> dict[tuple[int, int], set[int]]:
    """Drop expired segments, learn who the watched ones name (only when
    their change counter moved), open pidfds for new identities and close
    those nobody names any more; recover identities already gone.  Returns
    identity -> id(segment)s."""
    with _lock:
        _expire(now)
        segs = {k: v[0] for k, v in _segments.items()}
        entries = dict(_segments)
    wanted: dict[tuple[int, int], set[int]] = {}
    dead: list[tuple[int, tuple[int, int]]] = []
    for key, seg in segs.items():
        entry = entries[key]
        try:
            if seg.ledger.closed:
                continue
            # identities only change when someone registers or leaves
            changes = seg.ledger.changes
            if changes != entry[2]:
                entry[3] = {i for i in recovery.identities(seg.ledger.snapshot())
                            if i[0] != _identity.ME.pid}
                entry[2] = changes
        except (IpcsemError, ValueError, OSError):
            continue
        for ident in entry[3]:
            wanted.setdefault(ident, set()).add(key)
    for ident in list(pidfds):
        if ident not in wanted:
            fd = pidfds.pop(ident)
            by_fd.pop(fd, None)
            poller.unregister(fd)
            os.close(fd)
    for ident, keys in wanted.items():
        if ident in pidfds or len(pidfds) >= WATCH_MAX:
            continue
        try:
            fd = os.pidfd_open(ident[0])
        except ProcessLookupError:
            dead.extend((key, ident) for key in keys)   # gone already
            continue
        except OSError:
            continue          # out of fds: the waiters' slices cover it
        if _identity.start_of(ident[0]) != ident[1]:
            os.close(fd)      # the pid was reused: our holder is gone
            dead.extend((key, ident) for key in keys)
            continue
        pidfds[ident] = fd
        by_fd[fd] = ident
        poller.register(fd, select.POLLIN)
    for key, ident in dead:
        _recover(segs.get(key), ident)
    return wanted


def _recover(seg: Segment | None, ident: tuple[int, int]) -> None:
    if seg is None or not _identity.is_dead(*ident):
        return
    try:
        recovery.recover_identity(seg, *ident, lock=time.monotonic_ns() + 200_000_000)
    except (IpcsemError, ValueError, OSError):
        pass      # closed, wedged, corrupt: the waiters' own slices say so


def _drain() -> None:
    try:
        while os.read(_wake_r, 4096):
            pass
    except (BlockingIOError, OSError):
        pass
