"""ipcsem: crash-safe named counting semaphores for unrelated processes.

    import ipcsem
    gpu = ipcsem.Semaphore("gpu", capacity=3)
    with gpu:            # one unit; back to the pool when the block ends
        ...              # ... or when this process dies, however it dies

See README.md for the tools and docs/design.md for how it works.
"""
from ._errors import (
    CapacityMismatch,
    Corrupt,
    IpcsemError,
    LedgerFull,
    NotFound,
    PermissionDenied,
    Timeout,
    Unlinked,
)
from ._names import names
from ._segment import unlink
from ._semaphore import Holder, Semaphore, Stats, Waiter

__all__ = [
    "CapacityMismatch", "Corrupt", "Holder", "IpcsemError", "LedgerFull", "NotFound",
    "PermissionDenied", "Semaphore", "Stats", "Timeout", "Unlinked", "Waiter", "names", "unlink",
]
__version__ = "0.1.0"
