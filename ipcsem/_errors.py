"""Every error ipcsem raises, in one place.

Each error subclasses :class:`IpcsemError` and, where one fits, the nearest
built-in, so callers can catch either (``except TimeoutError`` catches
:class:`Timeout`).  Each carries its facts as attributes (``name`` always:
the semaphore it is about) and builds its message from them in
``__str__``, so a layer that learns a fact later (the name, the path) can
set it and the message follows.  Every error pickles with its facts: it
may cross a process boundary in a pool.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _rebuild(cls: type[IpcsemError], facts: dict[str, Any]) -> IpcsemError:
    err = cls.__new__(cls)
    Exception.__init__(err)
    err.__dict__.update(facts)
    return err


class IpcsemError(Exception):
    """Base of every ipcsem error.  ``name``: the semaphore, if known;
    ``detail``: free text saying what happened."""

    def __init__(self, detail: str | None = None, *, name: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.detail = detail

    def __str__(self) -> str:
        return self.detail or f"ipcsem error on {self.name!r}"

    def __reduce__(self) -> tuple[Callable[..., IpcsemError],
                                  tuple[type[IpcsemError], dict[str, Any]]]:
        # keep every fact across pickling
        return (_rebuild, (type(self), dict(self.__dict__)))

    def with_name(self, name: str) -> IpcsemError:
        """Fill in the semaphore name where the raiser did not know it."""
        if self.name is None:
            self.name = name
        return self


def _remedy(name: str | None) -> str:
    return f"remove it with `ipcsem rm --force {name}`" if name else "remove it"


class NotFound(IpcsemError, FileNotFoundError):
    """No semaphore of that name exists (and nothing asked to create it)."""

    def __init__(self, name: str, *, hint: str | None = None) -> None:
        super().__init__(name=name)
        self.hint = hint

    def __str__(self) -> str:
        return f"no ipcsem semaphore named {self.name!r}" + (f" ({self.hint})" if self.hint else "")


class Timeout(IpcsemError, TimeoutError):
    """A blocking acquire under ``hold()`` (or ``with``) ran out of time."""

    def __init__(self, name: str, units: int, timeout: float | None) -> None:
        super().__init__(name=name)
        self.units = units
        self.timeout = timeout

    def __str__(self) -> str:
        return (f"could not acquire {self.units} unit(s) of {self.name!r} "
                f"within {self.timeout} s")


class PolicyMismatch(IpcsemError, ValueError):
    """The name exists with another creation-time setting than the one asked
    for (``setting``: "capacity", "slots", "fair", "kind", ...)."""

    def __init__(self, name: str, setting: str, existing: Any, requested: Any) -> None:
        super().__init__(name=name)
        self.setting = setting
        self.existing = existing
        self.requested = requested

    def __str__(self) -> str:
        return (f"semaphore {self.name!r} exists with {self.setting} {self.existing!r}, "
                f"not {self.requested!r} (fixed at creation)")


class CapacityMismatch(PolicyMismatch):
    """The name exists with a different capacity than the one asked for."""

    def __init__(self, name: str, existing: int, requested: int) -> None:
        super().__init__(name, "capacity", existing, requested)

    def __str__(self) -> str:
        return f"semaphore {self.name!r} exists with capacity {self.existing}, not {self.requested}"


class Corrupt(IpcsemError):
    """The object under the name is not a usable ipcsem ledger: foreign,
    truncated, of another layout version, or its invariant is broken.
    ``path`` is the object, ``reason`` what is wrong with it."""

    def __init__(self, reason: str, *, name: str | None = None, path: str | None = None) -> None:
        super().__init__(name=name)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        where = self.path or (f"semaphore {self.name!r}" if self.name else "ledger")
        return f"{where}: {self.reason}; {_remedy(self.name)}"


class LedgerFull(IpcsemError):
    """No free holder slot or queue entry, or no room for a new ledger
    (sizes are fixed at creation).  ``what``: "holders", "waiters", "space"."""

    def __init__(self, what: str, limit: int | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.what = what
        self.limit = limit

    def __str__(self) -> str:
        of = f" of {self.name!r}" if self.name else ""
        if self.what == "holders":
            return f"holder table{of} full ({self.limit} processes registered)"
        if self.what == "waiters":
            return f"wait queue{of} full ({self.limit} waiters)"
        return f"no room for the ledger{of}" + (f" ({self.limit} bytes)" if self.limit else "")


class PermissionDenied(IpcsemError, PermissionError):
    """The object under the name is outside the caller's trust or access:
    another user's, writable by users the caller does not trust, or its mode
    does not admit the caller.  ``owner`` and ``mode`` say whose it is."""

    def __init__(self, reason: str, *, name: str | None = None, path: str | None = None,
                 owner: str | None = None, mode: int | None = None) -> None:
        super().__init__(name=name)
        self.reason = reason
        self.path = path
        self.owner = owner
        self.mode = mode

    def __str__(self) -> str:
        where = self.path or f"semaphore {self.name!r}"
        whose = []
        if self.owner is not None:
            whose.append(f"owner {self.owner}")
        if self.mode is not None:
            whose.append(f"mode {self.mode:04o}")
        facts = f" ({', '.join(whose)})" if whose else ""
        fix = ""
        if self.owner is not None and self.name:
            fix = (f"; its owner or root can remove it with `ipcsem rm --force {self.name}`")
        return f"{where}{facts}: {self.reason}{fix}"


class Unlinked(IpcsemError):
    """The name was unlinked: this handle's object is gone for new acquirers."""

    def __str__(self) -> str:
        return self.detail or f"semaphore {self.name!r} was unlinked"


class Closed(IpcsemError, ValueError):
    """The handle was closed (possibly by another thread while this one waited)."""

    def __str__(self) -> str:
        return self.detail or f"semaphore {self.name!r} is closed"


class NotOwner(IpcsemError, RuntimeError):
    """A mutex was released by someone who may not: another thread, task or
    process than its owner."""

    def __str__(self) -> str:
        return self.detail or f"not the owner of mutex {self.name!r}"


class DeadlockDetected(IpcsemError):
    """This blocked acquire (``deadlock="raise"``) closed a deadlock; it was
    chosen to give up, so the others can go on.  ``deadlock`` describes it."""

    def __init__(self, deadlock: Any, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.deadlock = deadlock

    def __str__(self) -> str:
        what = getattr(self.deadlock, "description", self.deadlock)
        return f"deadlock while waiting for {self.name!r}: {what}"


class LeaseLost(IpcsemError):
    """A lease can no longer be proven valid (its session ended or could not
    be confirmed in time): others may hold its units.  ``reason`` says why."""

    def __init__(self, reason: str, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.reason = reason

    def __str__(self) -> str:
        return f"lease on {self.name!r} lost: {self.reason}"


class Wedged(IpcsemError, TimeoutError):
    """A ledger's lock was not free within the caller's deadline: its holder
    is stopped or hung inside a transaction (``holder_pid`` names it, as far
    as the ledger says).  Tools report the semaphore and go on with others."""

    def __init__(self, holder_pid: int | None = None, *, name: str | None = None,
                 waited: float | None = None, what: str = "ledger lock") -> None:
        super().__init__(name=name)
        self.holder_pid = holder_pid or None
        self.waited = waited
        self.what = what

    def __str__(self) -> str:
        who = f" by pid {self.holder_pid}" if self.holder_pid else ""
        waited = f" within {self.waited:g} s" if self.waited is not None else " in time"
        return (f"the {self.what} of {self.name!r} is held{who} (stopped or hung?) and was not "
                f"free{waited}")


class Unavailable(IpcsemError, ConnectionError):
    """The backend cannot be reached (e.g. no ZooKeeper server answered)."""

    def __init__(self, reason: str, *, name: str | None = None, url: str | None = None) -> None:
        super().__init__(name=name)
        self.reason = reason
        self.url = url

    def __str__(self) -> str:
        of = f" (semaphore {self.name!r})" if self.name else ""
        return f"{self.url or 'backend'} unavailable{of}: {self.reason}"


__all__ = [
    "CapacityMismatch", "Closed", "Corrupt", "DeadlockDetected", "IpcsemError", "LeaseLost",
    "LedgerFull", "NotFound", "NotOwner", "PermissionDenied", "PolicyMismatch", "Timeout",
    "Unavailable", "Unlinked", "Wedged",
]
