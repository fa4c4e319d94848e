"""Notifying event-loop waiters that their queue entry may have changed.

An event loop must never block, so a process's async waiters park nowhere:
their entries are flagged, and whoever grants them rings the holder slot's
*process bell* (one per process and ledger) instead of the entry's own
doorbell.  One thread per process ("ipcsem-bells", started on first use)
sleeps on every process bell of the ledgers with async entries at once
(futex_waitv, no descriptors), then looks at each watched entry without the
lock and calls ``notify()`` for those that may have been granted (or whose
semaphore was unlinked or closed).  ``notify`` hands over to the loop
thread-safely; the task settles its entry itself.  Every SLICE it looks at
every entry (a missed ring costs at most that) and heals the watched ledgers
if it is this process's turn (so waiting tasks never do).

Threads: this one, plus the pidfd watcher (watch.py) — two, whatever the
number of waiting tasks.  File descriptors: none here.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _identity, _proc
from . import _ledger

if TYPE_CHECKING:
    from .handle import ShmHandle, ShmPending

_lock = threading.Lock()
_thread: threading.Thread | None = None
SLICE = 0.5     # the notifier looks at every entry at least this often anyway
# A full look at 1,000 entries is ~1-3 ms of Python: let go of the GIL between
# chunks, or a loop thread waiting for it waits the whole switch interval
# (5 ms).  A real sleep, not sleep(0): releasing and at once re-taking the
# GIL hands it to nobody (the waiting thread is still waking up, finds it
# taken and waits out the interval again).
YIELD_EVERY = 32
YIELD_FOR = 20e-6


class _Group:
    """The watched entries of one ledger, in this process's serving order
    (a fair ledger grants in it: what a ring granted is a prefix)."""

    __slots__ = ("entries", "fair", "ledger", "ordered")

    def __init__(self, ledger: _ledger.Ledger, fair: bool) -> None:
        self.ledger, self.fair = ledger, fair
        self.entries: dict[_Key, _Watch] = {}
        self.ordered: list[tuple[tuple[int, int], _Key]] = []   # (pending.order, key), sorted


_Key = tuple[int, int]                   # (id(handle), entry)
_Watch = tuple["ShmHandle", "ShmPending", Callable[[], None]]
_groups: dict[int, _Group] = {}          # id(ledger) -> its group


def _start() -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = _proc.start_named_thread("ipcsem-bells", _run)


def watch(handle: ShmHandle, pending: ShmPending, notify: Callable[[], None]) -> None:
    """Call ``notify()`` whenever ``pending`` (an entry of ``handle``) may
    have been granted, until ``unwatch``."""
    key = (id(handle), pending.entry)
    with _lock:
        found = _groups.get(id(handle.ledger))
        new = found is None
        g = found if found is not None else _Group(handle.ledger, handle.params.fair)
        _groups[id(handle.ledger)] = g
        g.entries[key] = (handle, pending, notify)
        bisect.insort(g.ordered, (pending.order, key))
        _start()
    if new:          # a bell the notifier does not sleep on yet
        _ledger.poke_bells()
    # A grant between queueing and here rang a bell before we watched the
    # entry: look once now (lock-free), so the waiter need not settle first.
    try:
        granted = handle.ledger.state(pending.entry) != _ledger.WAITING
    except (ValueError, OSError):
        granted = True   # closed or gone: let the waiter find out
    if granted:
        notify()


def unwatch(handle: ShmHandle, pending: ShmPending) -> bool:
    """Stop notifying ``pending``; False if it was not watched (any more)."""
    key = (id(handle), pending.entry)
    with _lock:
        g = _groups.get(id(handle.ledger))
        if g is None or g.entries.pop(key, None) is None:
            return False
        g.ordered.remove((pending.order, key))
        last = not g.entries
        if last:
            del _groups[id(handle.ledger)]
    if last:         # let go of the ledger now (close() waits for wait_bells)
        _ledger.poke_bells()
    return True


_later: list[Callable[[], None]] = []


def later(job: Callable[[], None]) -> None:
    """Run ``job()`` on the notifier thread soon: a ledger call an event
    loop could not wait for (a cancel, a release: the lock was busy), which
    there may wait for the lock as long as it takes, and so completes."""
    with _lock:
        _later.append(job)
        _start()
    _ledger.poke_bells()


def _run_later() -> None:
    with _lock:
        todo = list(_later)
        _later.clear()
    for job in todo:
        try:
            job()
        except Exception:  # noqa: BLE001 - a job reports its own failures
            pass


def _after_fork_in_child() -> None:
    global _thread
    _groups.clear()
    _later.clear()
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)



def _look(g: _Group, prefix: bool, key_rang: bool = False) -> None:
    """Notify the entries of ``g`` that may have been granted: with
    ``prefix``, only up to the first still waiting (notified too on an
    unfair ledger: a head that fits takes its units itself)."""
    with _lock:
        ordered = list(g.ordered)
    ledger = g.ledger
    for i, (_order, key) in enumerate(ordered):
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            time.sleep(YIELD_FOR)   # hand the GIL to an event loop that wants it
        item = g.entries.get(key)
        if item is None:
            continue
        handle, pending, notify = item
        try:
            gone = ledger.closed or ledger.unlinked
            waiting = not gone and ledger.state(pending.entry) == _ledger.WAITING
        except (ValueError, OSError):
            waiting = False
        if not waiting or (not g.fair and key_rang):
            try:
                notify()
            except Exception:  # noqa: BLE001 - a closed loop: its task is gone
                unwatch(handle, pending)
        if waiting and prefix:
            break


def _heal(groups: list[tuple[int, _Group]]) -> None:
    """Recover the dead holders of the watched ledgers if it is our turn
    (rate-limited across processes): here rather than in each waiting task,
    so a loop with 1,000 waiting tasks does none of it."""
    for _key, g in groups:
        with _lock:
            first = next(iter(g.entries.values()), None)
        if first is None:
            continue
        try:
            first[0].recover_if_due()
        except Exception:  # noqa: BLE001 - closed or corrupt: the waiters' own calls say so
            pass


def _run() -> None:
    me = _identity.ME
    last: dict[int, int] = {}        # id(ledger) -> its bell when we last looked
    next_full = 0.0
    while True:
        if _later:
            _run_later()
        seen_notifier = _ledger.notifier_word()
        with _lock:
            groups = list(_groups.items())
        now = time.monotonic()
        full = now >= next_full
        if full:
            next_full = now + SLICE
        bells, look = [], []
        # Read every bell before looking at any entry: a grant that lands
        # after our look changes a bell we then do not sleep through.
        for key, g in groups:
            got = None
            if not g.ledger.closed:
                try:
                    got = g.ledger.process_bell(me.pid, me.start)
                except (ValueError, OSError):
                    got = None
            if got is not None:
                bells.append((g.ledger, got[0], got[1]))
                rang = last.get(key) != got[1]
                if full or rang:
                    look.append((g, g.fair and not full, rang))
                last[key] = got[1]
            else:
                look.append((g, False, False))     # no bell to sleep on: look at all, each slice
        for g, prefix, rang in look:
            _look(g, prefix, rang)
        if full:
            _heal(groups)
        live = {k for k, _g in groups}
        for k in list(last):
            if k not in live:
                del last[k]
        _ledger.wait_bells(bells, seen_notifier, SLICE)
