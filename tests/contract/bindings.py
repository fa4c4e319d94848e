"""The bindings of the contract suite: how its tests reach each backend.

A *binding* says how to reach one implementation: a backend URL, how to
start and stop what it needs for a test session (a server), which optional
facets its classes have, and how long a dead holder's units may take to
come back without anyone calling ``recover()``.  Every test gets a
:class:`Backend` (the ``backend`` fixture) built on one binding; it creates
the semaphores, processes and names a test uses and removes them after it.

Binding a new backend is adding a binding to ``BINDINGS``; the ZooKeeper
ones below (``zookeeper``, ``zookeeper-async``) start one real standalone
server for the session (``ipcsem._zk.server``) on a free loopback port.

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

import os
import uuid

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
    #: acquisitions per thread in the contention tests: enough for every
    #: interleaving of a local ledger (microseconds each); a server round
    #: trip per acquire (milliseconds) makes fewer prove the same
    contention_rounds = 300

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


class _LoopThread:
    """A private event loop in a daemon thread.  Each thread that calls an
    adapter gets its own long-lived task on that loop, and every call of
    that thread runs inside it: a task owns what it acquires, so a mutex
    is owned per calling thread, as the sync classes own it."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self._servers: dict[int, tuple] = {}      # calling thread id -> (task, queue)
        self._lock = threading.Lock()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="contract-aio-loop", daemon=True)
        self.thread.start()
        ready.wait()

    async def _serve(self, queue) -> None:
        me = self._asyncio.current_task()
        while True:
            make, fut = await queue.get()
            try:
                result = await make()
            except BaseException as e:  # noqa: BLE001 - every outcome goes to the caller
                if isinstance(e, self._asyncio.CancelledError) and hasattr(me, "uncancel"):
                    while me.uncancel():
                        pass
                fut.set_exception(e)
            else:
                fut.set_result(result)

    def _server(self):
        import threading

        key = threading.get_ident()
        with self._lock:
            got = self._servers.get(key)
            if got is None:
                async def start():
                    q = self._asyncio.Queue()
                    return self.loop.create_task(self._serve(q)), q

                got = self._servers[key] = self._asyncio.run_coroutine_threadsafe(
                    start(), self.loop).result()
        return got

    def call(self, make):
        """Run ``await make()`` in the calling thread's task and return its
        result (or raise what it raised).  If the calling thread is
        interrupted while it waits (a signal handler raising), the call is
        cancelled and finished first, so it leaves nothing behind."""
        import concurrent.futures

        task, queue = self._server()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(queue.put_nowait, (make, fut))
        try:
            return fut.result()
        except BaseException:
            if not fut.done():
                self.loop.call_soon_threadsafe(task.cancel)
                try:
                    fut.result(30)
                except BaseException:  # noqa: BLE001 - the caller's exception wins
                    pass
            raise


class _SyncHold:
    """``with adapter.hold(...)``/``with adapter`` over an async context."""

    def __init__(self, runner: _LoopThread, make_ctx) -> None:
        self._runner, self._make_ctx, self._ctx = runner, make_ctx, None

    def __enter__(self):
        self._ctx = self._make_ctx()
        return self._runner.call(self._ctx.__aenter__)

    def __exit__(self, *exc):
        ctx, self._ctx = self._ctx, None
        return self._runner.call(lambda: ctx.__aexit__(*exc))


def _blocking_to_timeout(blocking, timeout):
    """The adapter's one threading form: ``blocking=False`` is ``timeout=0``."""
    if blocking is None:
        return timeout
    if blocking.__class__ is not bool:
        raise TypeError(f"blocking must be True or False, not {blocking!r}")
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking acquire")
        return 0
    return timeout


class SyncOverAsync:
    """The synchronous interface the contract tests call, over an
    ``ipcsem.AsyncSemaphore``/``AsyncMutex``: each call that needs a task
    runs on the binding's loop thread, in the calling thread's task;
    observation (holders, waiters, stats, check, recover, close, ...) is
    plain, as on the async class."""

    def __init__(self, runner: _LoopThread, prim, url: str | None = None) -> None:
        self._runner = runner
        self._prim = prim
        self._prim_url = url

    def __getattr__(self, attr):
        return getattr(self._prim, attr)

    def __repr__(self) -> str:
        return f"<SyncOverAsync {self._prim!r}>"

    async def _in_task(self, fn, *args, **kw):
        return fn(*args, **kw)

    def try_acquire(self, units: int = 1) -> bool:
        return self._runner.call(lambda: self._in_task(self._prim.try_acquire, units))

    def release(self, *args, **kw):
        return self._runner.call(lambda: self._in_task(self._prim.release, *args, **kw))

    def __enter__(self):
        return self._runner.call(self._prim.__aenter__)

    def __exit__(self, *exc):
        return self._runner.call(lambda: self._prim.__aexit__(*exc))


class SyncOverAsyncSemaphore(SyncOverAsync):
    def disown(self, units: int = 1) -> None:
        # SEAM REQUEST (bug B9): AsyncSemaphore has no disown(), so the
        # README's producer/consumer protocol cannot be written with it.
        # Units are the process's, so a sync handle of this process on the
        # same name disowns them; remove this when AsyncSemaphore has it.
        sync = ipcsem.Semaphore(self._prim.name, backend=self._prim_url)
        try:
            sync.disown(units)
        finally:
            sync.close()

    def acquire(self, units: int = 1, *, timeout=None, priority: int = 0, deadlock: str = "wait",
                blocking=None) -> bool:
        timeout = _blocking_to_timeout(blocking, timeout)
        return self._runner.call(lambda: self._prim.acquire(units, timeout=timeout,
                                                            priority=priority, deadlock=deadlock))

    def hold(self, units: int = 1, *, timeout=None, priority: int = 0, deadlock: str = "wait"):
        return _SyncHold(self._runner, lambda: self._prim.hold(
            units, timeout=timeout, priority=priority, deadlock=deadlock))


class SyncOverAsyncMutex(SyncOverAsync):
    def acquire(self, blocking=True, timeout=None, *, priority: int = 0,
                deadlock: str = "wait") -> bool:
        timeout = _blocking_to_timeout(blocking, timeout)
        return self._runner.call(lambda: self._prim.acquire(timeout=timeout, priority=priority,
                                                            deadlock=deadlock))

    @property
    def previous_owner_died(self) -> bool:
        return self._runner.call(lambda: self._in_task(lambda: self._prim.previous_owner_died))

    def hold(self, *, timeout=None, priority: int = 0, deadlock: str = "wait"):
        return _SyncHold(self._runner, lambda: self._prim.hold(
            timeout=timeout, priority=priority, deadlock=deadlock))


class AsyncShmBinding(ShmBinding):
    """ipcsem.AsyncSemaphore and AsyncMutex on the shared-memory backend,
    through the synchronous adapter above (other processes of a test use
    the sync classes: it is the same ledger).  Left out: the threading and
    multiprocessing calling forms, which the async classes do not have."""

    id = "shm-async"
    features = FEATURES - {"threading-forms"}

    def start(self) -> None:
        self.runner = _LoopThread()

    def stop(self) -> None:
        self.runner.loop.call_soon_threadsafe(self.runner.loop.stop)
        self.runner.thread.join(10)

    def _make(self, factory):
        async def make():
            return factory()
        return self.runner.call(make)

    def semaphore(self, name: str, capacity: int | None = None, **kw):
        prim = self._make(lambda: ipcsem.AsyncSemaphore(name, capacity, backend=self.url, **kw))
        return SyncOverAsyncSemaphore(self.runner, prim, self.url)

    def mutex(self, name: str, **kw):
        prim = self._make(lambda: ipcsem.AsyncMutex(name, backend=self.url, **kw))
        return SyncOverAsyncMutex(self.runner, prim)


class _ZkServer:
    """The one standalone ZooKeeper server every ZooKeeper binding of a test
    session shares (started by the first binding that needs it, stopped by
    the last), each binding in a chroot of its own."""

    server = None
    users = 0

    @classmethod
    def missing(cls) -> str | None:
        """Why no server can run here, or None.  Under CI (CI=true) a
        missing server is an error, never a skip: CI must run these."""
        from ipcsem._zk import server

        why = server.missing()
        if why is None:
            try:
                import kazoo  # noqa: F401
            except ImportError:
                why = "kazoo is not installed (pip install 'ipcsem[zookeeper]')"
        if why is not None and os.environ.get("CI") == "true":
            raise RuntimeError(f"the ZooKeeper contract bindings cannot run under CI: {why}")
        return why

    @classmethod
    def url(cls, label: str) -> str:
        from ipcsem._zk import server

        if cls.server is None:
            cls.server = server.Standalone()
        cls.users += 1
        # the default 10 s session: a loaded machine's scheduling delays stay
        # far inside a lease's deadline (local deaths are reaped at once anyway)
        return cls.server.url(f"/contract-{label}-{uuid.uuid4().hex[:8]}")

    @classmethod
    def done(cls, url: str) -> None:
        from ipcsem import _backend

        _backend.resolve(url).close()
        _backend.forget(url)
        cls.users -= 1
        if cls.users == 0 and cls.server is not None:
            cls.server.close()
            cls.server = None


class _OnZooKeeper:
    """A binding's semaphores on the shared standalone server, in a chroot
    of its own.  Every process of a test is on this machine, so a dead
    holder's units come back through pidfd reaping (the waiters', or
    recover()) in milliseconds; the session timeout (10 s) is the backstop."""

    id: str
    url: str | None
    recovery_timeout = 12.0
    contention_rounds = 60

    def available(self) -> str | None:
        return _ZkServer.missing()

    def start(self) -> None:
        self.url = _ZkServer.url(self.id)
        super().start()         # (the binding it is mixed into)

    def stop(self) -> None:
        super().stop()
        assert self.url is not None
        _ZkServer.done(self.url)


class ZooKeeperBinding(_OnZooKeeper, Binding):
    """The ZooKeeper backend (``zookeeper://127.0.0.1:PORT/chroot``) on a real
    standalone server."""

    id = "zookeeper"


class AsyncZooKeeperBinding(_OnZooKeeper, AsyncShmBinding):
    """ipcsem.AsyncSemaphore and AsyncMutex on the ZooKeeper backend, through
    the synchronous adapter (as ``shm-async``)."""

    id = "zookeeper-async"


BINDINGS: list[Binding] = [ShmBinding(), AsyncShmBinding(), ZooKeeperBinding(),
                           AsyncZooKeeperBinding()]


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

    @property
    def contention_rounds(self) -> int:
        return self.binding.contention_rounds

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
