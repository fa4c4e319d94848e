"""The bindings of the contract suite: how its tests reach each backend.

A *binding* says how to reach one implementation: a backend URL, how to
start and stop what it needs for a test session (a server), which optional
facets its classes have, and how long a dead holder's units may take to
come back without anyone calling ``recover()``.  Every test gets a
:class:`Backend` (the ``backend`` fixture) built on one binding; it creates
the semaphores, processes and names a test uses and removes them after it.

Binding a new backend is adding a binding to ``BINDINGS``, e.g. for the
ZooKeeper backend (a standalone test server per session)::

    class ZooKeeperBinding(Binding):
        id = "zookeeper"
        recovery_timeout = 15.0        # session timeout + a margin

        def start(self):
            from ipcsem._zk import server
            self.server = server.start()          # whatever its API is
            self.url = f"zookeeper://{self.server.address}/ipcsem-contract"

        def stop(self):
            self.server.stop()

An event-loop class (``ipcsem.AsyncSemaphore``) is bound the same way: its
binding's ``semaphore()`` returns an adapter with the synchronous interface
the tests call (running each call on an event loop in a helper thread), and
its ``features`` leave out what an adapter cannot offer (``threading-forms``:
the threading/multiprocessing calling conventions; ``threads``: use from
several threads of the test process, a mutex owned per thread).  Other
processes of a test (holders, agents) always use the synchronous classes
on the binding's URL: it is the same semaphore either way.
"""
from __future__ import annotations

import pytest

import ipcsem
from ipcsem import testing

#: Optional facets of the classes under test.  The core contract needs none.
FEATURES = frozenset({
    "threading-forms",   # acquire(False), acquire(True, 2.0), block=, timeout=-1, release(n=)
    "threads",           # callable from several threads; a Mutex is owned per thread
})


class Binding:
    """One backend's way into the contract suite (see the module docstring)."""

    id = "base"
    url: str | None = None
    features: frozenset[str] = FEATURES
    #: seconds within which a dead holder's units come back to a blocked
    #: waiter without anyone calling recover()
    recovery_timeout = 5.0

    def start(self) -> None:
        """Start what the backend needs (once per test session)."""

    def stop(self) -> None:
        """Stop it again."""

    def available(self) -> str | None:
        """None if the backend can run here, else why not (the tests skip)."""
        return None

    # The classes under test.
    def semaphore(self, name: str, capacity: int | None = None, **kw):
        return ipcsem.Semaphore(name, capacity, backend=self.url, **kw)

    def mutex(self, name: str, **kw):
        return ipcsem.Mutex(name, backend=self.url, **kw)


class ShmBinding(Binding):
    """The shared-memory backend, the default."""

    id = "shm"
    url = "shm"
    # A blocked waiter looks for dead holders every half second.
    recovery_timeout = 5.0


BINDINGS: list[Binding] = [ShmBinding()]


class Backend:
    """What a contract test drives: one binding, plus the clean-up of
    everything the test made through it (semaphores closed, names unlinked,
    processes killed and reaped)."""

    def __init__(self, binding: Binding) -> None:
        self.binding = binding
        self._names: list[str] = []
        self._handles: list = []
        self._processes: list = []

    # ---------------------------------------------------------- identity
    @property
    def id(self) -> str:
        return self.binding.id

    @property
    def url(self) -> str | None:
        return self.binding.url

    @property
    def recovery_timeout(self) -> float:
        return self.binding.recovery_timeout

    def has(self, feature: str) -> bool:
        assert feature in FEATURES, f"unknown feature {feature!r}"
        return feature in self.binding.features

    def require(self, feature: str) -> None:
        """Skip the test unless the binding's classes have ``feature``."""
        if not self.has(feature):
            pytest.skip(f"backend {self.id} has no {feature}")

    # ------------------------------------------------------------- names
    def name(self, prefix: str = "c") -> str:
        """A fresh name, unlinked after the test."""
        n = testing.unique_name(prefix)
        self._names.append(n)
        return n

    def names(self) -> list[str]:
        return ipcsem.names(backend=self.url)

    def unlink(self, name: str) -> None:
        ipcsem.unlink(name, backend=self.url)

    # -------------------------------------------------------- primitives
    def open(self, name: str, capacity: int | None = None, **kw):
        """``ipcsem.Semaphore(name, capacity, **kw)`` on this backend."""
        sem = self.binding.semaphore(name, capacity, **kw)
        self._handles.append(sem)
        return sem

    def mutex(self, name: str, **kw):
        """``ipcsem.Mutex(name, **kw)`` on this backend."""
        m = self.binding.mutex(name, **kw)
        self._handles.append(m)
        return m

    # ---------------------------------------------------------- processes
    def spawn_holder(self, name: str, units: int = 1, **kw) -> testing.HolderProcess:
        """``ipcsem.testing.spawn_holder`` on this backend."""
        h = testing.spawn_holder(name, units, backend=self.url, **kw)
        self._processes.append(h)
        return h

    def agent(self, **kw) -> testing.Agent:
        """An ``ipcsem.testing.Agent`` whose semaphores are on this backend."""
        a = testing.Agent(backend=self.url, **kw)
        self._processes.append(a)
        return a

    def agents(self, n: int) -> list[testing.Agent]:
        """``n`` agents, started in parallel."""
        made = [self.agent(wait=False) for _ in range(n)]
        return [a.ready() for a in made]

    def can_take_all(self, name: str, units: int, timeout: float = 5.0) -> bool:
        """The independent oracle: can a fresh process take ``units`` now?"""
        return testing.can_take_all(name, units, timeout, backend=self.url)

    # ------------------------------------------------------------ cleanup
    def close(self) -> None:
        for p in self._processes:
            p.close()
        for h in self._handles:
            try:
                h.close()
            except ipcsem.IpcsemError:
                pass
        for n in self._names:
            try:
                self.unlink(n)
            except ipcsem.IpcsemError:
                pass
