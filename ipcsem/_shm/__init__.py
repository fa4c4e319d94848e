"""The shared-memory backend: a ledger per semaphore in POSIX shared memory
on this machine (``/dev/shm/ipcsem.NAME``), changed only by short C
transactions under a lock that survives its owner's death.

    _ledger.c     the ledger: layout, robust lock, undo log, queue, doorbells (C)
    segment.py    the object: create/open, trust, map, remove; read-only views
    handle.py     one process's open semaphore (the Handle of the backend seam)
    recovery.py   returning dead processes' units (heal)
    bells.py      notifying event-loop waiters (one thread per process)
    supervisor.py the supervisor: pidfds, sweeps, per-user workers for root
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _backend, _identity, _names
from .._records import Lease, Params
from . import _ledger
from .handle import ShmHandle
from .segment import open_segment, unlink

_identity.ME.on_change(lambda pid: _ledger.set_identity(pid, _identity.ME.start))
Lease.register(_ledger.Grant)


class ShmBackend(_backend.Backend):
    """Semaphores in /dev/shm, shared by the processes of this machine."""

    url = "shm"

    def open(self, name: str, params: Params | None, *, group: int | None = None,
             on_lost: Callable[[Lease, str], None] | None = None,
             **options: Any) -> ShmHandle:
        # on_lost is accepted and never called: a lease here ends only with
        # its process (the seam's contract, ipcsem/_backend.py).
        if on_lost is not None and not callable(on_lost):
            raise TypeError(f"on_lost must be callable(lease, reason), not {on_lost!r}")
        if options:
            raise TypeError(f"the shm backend takes no option {sorted(options)[0]!r}")
        return ShmHandle(open_segment(name, params, group=group))

    def names(self) -> list[str]:
        return _names.names()

    def unlink(self, name: str) -> None:
        unlink(name)


_backend.register("shm", lambda url: ShmBackend())
