"""ipcsem: crash-safe named counting semaphores for unrelated processes.

    import ipcsem
    gpu = ipcsem.Semaphore("gpu", capacity=3)
    with gpu as lease:   # one unit; back to the pool when the block ends
        ...              # ... or when this process dies, however it dies

See README.md for the tools and docs/design.md for how it works.
"""
from ._aio import AsyncMutex, AsyncSemaphore
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
from ._records import Deadlock, Holder, Lease, Params, Stats, Waiter
from ._semaphore import Mutex, Semaphore

__all__ = [
    "AsyncMutex", "AsyncSemaphore", "CapacityMismatch", "Closed", "Corrupt", "Deadlock",
    "DeadlockDetected", "Holder", "IpcsemError", "Lease", "LeaseLost", "LedgerFull", "Mutex",
    "NotFound", "NotOwner", "Params", "PermissionDenied", "PolicyMismatch", "Semaphore", "Stats",
    "Timeout", "Unavailable", "Unlinked", "Waiter", "Wedged", "find_deadlocks", "names", "unlink",
]
__version__ = "0.2.0"
