"""ipcsem: crash-safe named counting semaphores for unrelated processes.

    import ipcsem
    gpu = ipcsem.Semaphore("gpu", capacity=3)
    with gpu as lease:   # one unit; back to the pool when the block ends
        ...              # ... or when this process dies, however it dies

See README.md for the tools and docs/design.md for how it works.
"""
from typing import TYPE_CHECKING, Any

from ._base import names, unlink
from ._deadlock import find_deadlocks
from ._errors import (
    CapacityMismatch,
    Closed,
    Corrupt,
    DeadlockDetected,
    IpcsemError,
    LeaseLost,
    LedgerFull,
    NotFound,
    NotOwner,
    PermissionDenied,
    PolicyMismatch,
    Timeout,
    Unavailable,
    Unlinked,
    Wedged,
)
from ._records import Deadlock, Holder, Lease, Params, Picture, Stats, Waiter
from ._semaphore import Mutex, Semaphore

if TYPE_CHECKING:
    from ._aio import AsyncMutex, AsyncSemaphore

__all__ = [
    "AsyncMutex", "AsyncSemaphore", "CapacityMismatch", "Closed", "Corrupt", "Deadlock",
    "DeadlockDetected", "Holder", "IpcsemError", "Lease", "LeaseLost", "LedgerFull", "Mutex",
    "NotFound", "NotOwner", "Params", "PermissionDenied", "Picture", "PolicyMismatch", "Semaphore",
    "Stats", "Timeout", "Unavailable", "Unlinked", "Waiter", "Wedged", "find_deadlocks", "names",
    "unlink",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    # The asyncio classes load on first use: a program that never uses them
    # never imports asyncio (and with it ssl and OpenSSL), so every ipcsem
    # process is smaller, starts faster and dies faster (docs/perf.md).
    if name in ("AsyncSemaphore", "AsyncMutex"):
        from . import _aio

        return getattr(_aio, name)
    raise AttributeError(f"module 'ipcsem' has no attribute {name!r}")
