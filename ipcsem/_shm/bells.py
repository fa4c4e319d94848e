"""Notifying event-loop waiters that their queue entry may have changed.

An event loop must never block, so a process's async waiters park nowhere:
their entries are flagged, and whoever grants them rings the holder slot's
*process bell* (one per process and ledger) instead of the entry's own
doorbell.  One thread per process ("ipcsem-bells", started on first use)
sleeps on every process bell of the ledgers with async entries at once
(futex_waitv, no descriptors), then looks at each watched entry without the
lock and calls ``notify()`` for those that may have been granted (or whose
semaphore was unlinked or closed).  ``notify`` hands over to the loop
thread-safely; the task settles its entry itself.

Threads: this one, plus the pidfd watcher (watch.py) — two, whatever the
number of waiting tasks.  File descriptors: none here.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _identity
from . import _ledger

if TYPE_CHECKING:
    from .handle import ShmHandle, ShmPending

_lock = threading.Lock()
_watched: dict[tuple[int, int], tuple[ShmHandle, ShmPending, Callable[[], None]]] = {}
_thread: threading.Thread | None = None
SLICE = 0.5     # the notifier looks at every entry at least this often anyway


def watch(handle: ShmHandle, pending: ShmPending, notify: Callable[[], None]) -> None:
    """Call ``notify()`` whenever ``pending`` (an entry of ``handle``) may
    have been granted, until ``unwatch``."""
    global _thread
    with _lock:
        _watched[(id(handle), pending.entry)] = (handle, pending, notify)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="ipcsem-bells", daemon=True)
            _thread.start()
    _ledger.poke_bells()


def unwatch(handle: ShmHandle, pending: ShmPending) -> None:
    with _lock:
        _watched.pop((id(handle), pending.entry), None)


_cancels: list[tuple[ShmHandle, ShmPending]] = []


def cancel_later(handle: ShmHandle, pending: ShmPending) -> None:
    """Cancel ``pending`` from the notifier thread (the ledger lock was busy:
    an event loop cannot wait for it).  Uninterrupted, so it completes."""
    global _thread
    with _lock:
        _cancels.append((handle, pending))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="ipcsem-bells", daemon=True)
            _thread.start()
    _ledger.poke_bells()


def _finish_cancels() -> None:
    with _lock:
        todo = list(_cancels)
        _cancels.clear()
    for handle, pending in todo:
        try:
            handle.ledger.cancel(pending.entry, _identity.ME.pid, _identity.ME.start,
                                 _ledger.LOCK_UNINTERRUPTED)
        except Exception:  # noqa: BLE001 - closed or corrupt: nothing left to give back
            pass


def _after_fork_in_child() -> None:
    global _thread
    _watched.clear()
    _cancels.clear()
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _name_thread() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, b"ipcsem-bells", 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _run() -> None:
    _name_thread()
    me = _identity.ME
    last: dict[int, int] = {}        # id(ledger) -> its bell when we last looked
    while True:
        if _cancels:
            _finish_cancels()
        seen_notifier = _ledger.notifier_word()
        with _lock:
            items = list(_watched.values())
        bells: dict[int, tuple[_ledger.Ledger, int, int]] = {}
        # Read every bell before looking at any entry: a grant that lands
        # after our look changes a bell we then do not sleep through.
        for handle, _pending, _notify in items:
            ledger = handle.ledger
            if id(ledger) in bells or ledger.closed:
                continue
            try:
                got = ledger.process_bell(me.pid, me.start)
            except (ValueError, OSError):
                got = None
            if got is not None:
                bells[id(ledger)] = (ledger, got[0], got[1])
        rang = {k for k, (_l, _s, v) in bells.items() if last.get(k) != v}
        last = {k: v for k, (_l, _s, v) in bells.items()}
        for handle, pending, notify in items:
            ledger = handle.ledger
            try:
                # fair=False rings a head that fits without granting it: it
                # must try to take the units itself
                ready = (ledger.closed or ledger.unlinked
                         or ledger.state(pending.entry) != _ledger.WAITING
                         or (not handle.params.fair and id(ledger) in rang))
            except (ValueError, OSError):
                ready = True
            if ready:
                try:
                    notify()
                except Exception:  # noqa: BLE001 - a closed loop: its task is gone
                    unwatch(handle, pending)
        _ledger.wait_bells(list(bells.values()), seen_notifier, SLICE)
