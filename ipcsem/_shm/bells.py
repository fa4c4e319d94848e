"""Notifying event-loop waiters that their queue entry may have changed.

An event loop must never block, so a process's async waiters park nowhere:
their entries are flagged, and whoever grants them rings the holder slot's
*process bell* instead of the entry's own doorbell.  One thread per process
(started on first use) waits for process bells and calls the registered
``notify`` callbacks, which hand over to the loop thread-safely.
"""
from __future__ import annotations

import threading
from typing import Callable

_lock = threading.Lock()
_watched: dict[tuple[int, int], tuple[object, object, Callable[[], None]]] = {}
_thread: threading.Thread | None = None
_wake = threading.Event()


def watch(handle, pending, notify: Callable[[], None]) -> None:
    global _thread
    with _lock:
        _watched[(id(handle), pending.entry)] = (handle, pending, notify)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="ipcsem-bells", daemon=True)
            _thread.start()
    _wake.set()


def unwatch(handle, pending) -> None:
    with _lock:
        _watched.pop((id(handle), pending.entry), None)


def _run() -> None:
    # Interim: poll entry states every 2 ms (replaced by futex waits on the
    # process bells).
    from . import _ledger

    while True:
        with _lock:
            items = list(_watched.values())
        if not items:
            _wake.wait(1.0)
            _wake.clear()
            continue
        for handle, pending, notify in items:
            try:
                state = handle.ledger.state(pending.entry)
                if state != _ledger.WAITING or handle.ledger.unlinked:
                    notify()
            except Exception:  # noqa: BLE001 - a closed handle: tell its waiter
                notify()
        _wake.wait(0.002)
        _wake.clear()
