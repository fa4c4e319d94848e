"""Every error ipcsem raises, in one place.

Each subclasses IpcsemError and, where one fits, the nearest built-in, so
callers can catch either (``except TimeoutError`` works for Timeout).  Each
carries the semaphore name it is about and pickles (it may cross a process
boundary in a pool).
"""
from __future__ import annotations


class IpcsemError(Exception):
    """Base of every ipcsem error."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name

    def __reduce__(self):  # keep `name` across pickling
        return (type(self), (str(self), self.name))


class NotFound(IpcsemError, FileNotFoundError):
    """No semaphore of that name exists (and no capacity was given to create it)."""


class Timeout(IpcsemError, TimeoutError):
    """A blocking acquire under ``hold()`` ran out of time."""


class CapacityMismatch(IpcsemError, ValueError):
    """The name exists with a different capacity than the one asked for."""


class Corrupt(IpcsemError):
    """The object under the name is not a usable ipcsem ledger: foreign,
    truncated, of another layout version, or its invariant is broken.  The
    message names the object and how to remove it."""


class LedgerFull(IpcsemError):
    """The ledger has no free holder slot or queue entry (sizes are fixed at creation)."""


class PermissionDenied(IpcsemError, PermissionError):
    """The semaphore belongs to another user or its mode does not admit us."""


class Unlinked(IpcsemError):
    """The name was unlinked: this handle's object is gone for new acquirers."""
