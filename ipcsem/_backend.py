"""The seam between the public classes and the engines that keep a ledger.

The public :class:`ipcsem.Semaphore` (and Mutex, AsyncSemaphore, ...) is a
facade: it validates arguments, speaks the threading/multiprocessing calling
conventions, builds leases and context managers.  Everything that decides
who holds what lives behind a :class:`Backend`:

* ``shm`` (the default): a ledger in POSIX shared memory on this machine
  (``ipcsem/_shm/``);
* ``zookeeper://host:port,.../chroot``: the same contract on Apache ZooKeeper
  for processes on several machines (``ipcsem/_zk/``).

A backend is chosen by URL: ``Semaphore(name, backend=URL)``, else the
``IPCSEM_BACKEND`` environment variable, else ``shm``.  A new backend is a new
module that registers a scheme here; nothing in the facade changes.

THE CONTRACT every backend keeps (``tests/contract/`` checks it through the
public API only):

* counting: units granted never exceed the capacity; a grant of k units is
  all or nothing;
* strict order: waiters are served highest priority first, FIFO within a
  priority; nobody behind the head is granted before it (fair semaphores),
  so a 2-unit head is never overtaken by a stream of 1-unit requests;
* ownership: units belong to the acquiring process (a mutex: to its thread
  or task); when the process dies, its units come back exactly once;
* a handle's ``take`` never waits for units; ``wait`` returns at its
  deadline; both raise only the errors of ``ipcsem._errors``.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ._records import Holder, Lease, Params, Picture, Stats, Waiter

DEFAULT_URL = "shm"
ENV = "IPCSEM_BACKEND"


# An ABC with no abstract methods on purpose: an opaque token, each backend
# has its own kind.
class Pending(ABC):  # noqa: B024
    """A queued request of an event-loop caller (``Handle.enqueue``)."""


class Handle(ABC):
    """One process's open semaphore on some backend."""

    name: str
    params: Params           # as found (or as created)
    created: bool            # this open created it

    # ----------------------------------------------------------- reading
    @property
    @abstractmethod
    def available(self) -> int:
        """Units free now."""

    @abstractmethod
    def holders(self) -> list[Holder]: ...

    @abstractmethod
    def waiters(self) -> list[Waiter]:
        """In serving order."""

    @abstractmethod
    def stats(self) -> Stats: ...

    @abstractmethod
    def picture(self) -> Picture:
        """Stats, holders and waiters from one reading: they agree with each
        other (three separate calls may each see a different moment)."""

    # ----------------------------------------------------------- acquiring
    # ``owner`` identifies the thread (its native id) or task (a negative key)
    # the units are for: mutexes are owned by it, semaphores by the process.
    # ``tid`` is the native id of the asking thread (shown by tools).  Plain
    # arguments, no request object: this is the hot path.
    @abstractmethod
    def take(self, units: int, priority: int, owner: int, tid: int) -> Lease | None:
        """The units now if that overtakes nobody, else None.  Never waits
        for units (nor longer than a short bound for a backend lock); when
        refused, may first recover dead holders (rate-limited) so that a
        non-blocking caller is not locked out by a dead process."""

    @abstractmethod
    def wait(self, units: int, priority: int, owner: int, tid: int, deadline: float | None,
             deadlock_raise: bool = False,
             on_slice: Callable[[], None] | None = None) -> Lease | None:
        """Queue the request and block until granted (the Lease) or until the
        monotonic ``deadline`` (None: no deadline) passes (None).  Any
        exception while waiting (a signal handler's, ``on_slice``'s, which is
        called about every half second) leaves no queue entry and no units
        behind, then propagates."""

    # Event-loop callers never block: they enqueue, are notified (from any
    # thread) when the request may have changed, and settle or cancel.
    # None of these may block the caller for more than a few milliseconds.
    def take_now(self, units: int, priority: int, owner: int, tid: int) -> Lease | None:
        """``take`` bounded for an event loop's thread: the Lease if it can
        be had at once without waiting for a backend lock longer than a loop
        may (1 ms), else None -- also when that cannot be known that fast;
        the caller then queues (``enqueue``), which decides.  The default
        (a backend whose take needs the network): always None."""
        return None

    @abstractmethod
    def enqueue(self, units: int, priority: int, owner: int, tid: int, deadlock_raise: bool,
                notify: Callable[[], None]) -> Lease | Pending | None:
        """The Lease at once if it can be had now (like ``take``), else a
        Pending entry in the queue; ``notify()`` is called, possibly from
        another thread, whenever it may have been granted.  None: the
        backend is momentarily busy; try again shortly."""

    @abstractmethod
    def settle(self, pending: Pending) -> Lease | None:
        """The Lease once granted (the entry is gone then), else None."""

    @abstractmethod
    def cancel(self, pending: Pending) -> None:
        """Leave the queue; a grant that raced in is given back (possibly a
        moment later, by the backend, if it is busy now)."""

    def recover_if_due(self) -> None:
        """Recover dead holders if it is this process's turn (rate-limited
        across processes); event-loop waiters call it every slice."""
        return None     # optional: a backend may have nothing to do

    def park(self, pending: Pending, parked: bool) -> None:
        """Tell deadlock detectors whether the waiter's event loop has
        nothing else to run (optional)."""
        return None     # optional: a backend may have no detectors to tell

    # ----------------------------------------------------------- returning
    @abstractmethod
    def release(self, units: int, owner: int, lease: Lease | None = None) -> None:
        """Give back ``units``: the lease's slots first where given; owned
        units first, the rest an unowned post (ValueError beyond capacity);
        a mutex only by its owner (NotOwner)."""

    def release_soon(self, units: int, owner: int) -> None:
        """``release`` for an event loop's thread, which must not wait: a
        backend that would wait (a busy lock) may finish it a moment later
        itself, in order with this handle's later acquires and releases.
        Raises as ``release`` does when done at once."""
        self.release(units, owner)      # a backend whose release never waits long

    @abstractmethod
    def disown(self, units: int) -> None: ...

    def owner_died(self, owner: int) -> bool:
        """Mutexes: ``owner`` owns it and its previous owner died holding it
        (not yet repaired by a normal release)."""
        return False

    # ----------------------------------------------------------- upkeep
    @abstractmethod
    def recover(self, timeout: float | None = None) -> int:
        """Return dead holders' units now; how many.  Wedged if the backend's
        lock is not had within ``timeout`` seconds (None: as long as it takes)."""

    @abstractmethod
    def check(self, timeout: float | None = None) -> None:
        """Verify the invariant; Corrupt if broken; Wedged as for recover."""

    @abstractmethod
    def close(self) -> None: ...


class Backend(ABC):
    """A place where semaphores live, named by a URL."""

    url: str

    @abstractmethod
    def open(self, name: str, params: Params | None, **options: Any) -> Handle:
        """Open ``name``; with ``params``, create it if absent (and raise
        PolicyMismatch if it exists with other settings).  Without, NotFound
        if absent.

        ``options`` are backend-specific keywords the facade passes through;
        a backend ignores none silently (TypeError for an unknown one).  The
        one defined so far: ``on_lost=callable(lease, reason)``, called (on
        a background thread) for each lease of the handle that a backend can
        no longer prove valid (ZooKeeper session loss); ``shm`` accepts and
        never calls it, since a lease there ends only with its process."""

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def unlink(self, name: str) -> None:
        """Remove the name; queued waiters fail with Unlinked; NotFound if absent."""


_FACTORIES: dict[str, Callable[[str], Backend]] = {}
_CACHE: dict[str, Backend] = {}


def register(scheme: str, factory: Callable[[str], Backend]) -> None:
    """Make ``scheme:...`` URLs open backends made by ``factory(url)``."""
    _FACTORIES[scheme] = factory


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0] if ":" in url else url


def resolve(url: str | None = None) -> Backend:
    """The backend for ``url`` (None: $IPCSEM_BACKEND, else shm); one per
    URL per process, shared by every handle."""
    url = url or os.environ.get(ENV) or DEFAULT_URL
    got = _CACHE.get(url)
    if got is not None:
        return got
    scheme = scheme_of(url)
    if scheme not in _FACTORIES:
        _load(scheme)
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise ValueError(f"unknown ipcsem backend {url!r}: use 'shm' or "
                         "'zookeeper://host:port[,host:port...][/chroot]'")
    backend = _CACHE[url] = factory(url)
    return backend


def _load(scheme: str) -> None:
    # Backends register themselves when imported; only import what is asked
    # for (kazoo is optional).
    if scheme == "shm":
        from . import _shm  # noqa: F401
    elif scheme == "zookeeper":
        from . import _zk  # noqa: F401


def forget(url: str) -> None:
    """Drop a cached backend (tests; after its server went away)."""
    _CACHE.pop(url, None)


# The default backend is always loaded: opening a semaphore must not depend
# on finding modules later (a process may drop privileges or chroot first).
from . import _shm  # noqa: E402,F401
