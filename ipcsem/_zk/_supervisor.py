"""A host's watcher of local holders (``ipcsem supervise --backend URL``).

Without it, a SIGKILLed holder's units come back when its ZooKeeper session
expires (the session timeout), or sooner when a waiter on the same machine
notices (waiters watch the local processes ahead of them).  The supervisor
watches *every* local node of the semaphores it is given (all by default)
through pidfds and deletes a dead process's nodes within milliseconds.

Recovery is idempotent (deleting a node twice is a no-op: several
supervisors, or a supervisor and a waiter, may race) and never needs the
supervisor to be up: ZooKeeper's session expiry is the backstop.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from .._errors import IpcsemError
from . import _codec
from ._local import HAVE_PIDFD, MACHINE_KEY, ME, Reaper
from ._session import error_name

log = logging.getLogger("ipcsem.zk")

RESCAN = 5.0      # seconds between full rescans (a safety net for lost watches)


class LocalSupervisor:
    """Watch the local holders and waiters of ``names`` (None: every
    semaphore under the URL) and reap the dead at once.

    ``on_recovered(path)`` runs after each node this supervisor deleted;
    ``on_watching()`` once the first scan armed every watch.  ``start()``
    runs it in a daemon thread, ``run()`` in the caller's, ``stop()`` ends it.
    Raises ``Unavailable`` from ``run`` if the servers cannot be reached."""

    def __init__(self, url: str, names: Iterable[str] | None = None, *,
                 on_recovered: Callable[[str], None] | None = None,
                 on_watching: Callable[[], None] | None = None) -> None:
        if not HAVE_PIDFD:
            raise OSError("the local supervisor needs os.pidfd_open (Linux >= 5.3)")
        from ._backend import ZkBackend
        self.backend = ZkBackend(url)      # its own session: independent of the user's
        self.names = None if names is None else {_codec.check_name(n) for n in names}
        self.on_recovered = on_recovered
        self.on_watching = on_watching
        self.reaper = Reaper(self._delete, name="ipcsem-zk-supervisor")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gens: dict[str, str] = {}    # name -> gen

    @property
    def reaped(self) -> int:
        return self.reaper.reaped

    def _delete(self, path: str, pid: int, start: int) -> bool:
        done = self.backend.reap(path)
        if done and self.on_recovered is not None:
            try:
                self.on_recovered(path)
            except Exception:  # noqa: BLE001
                log.exception("on_recovered failed")
        return done

    def _kick(self, *_a) -> None:
        self._wake.set()

    def scan(self) -> None:
        """List every watched queue once (arming watches) and hand local
        nodes to the reaper."""
        client, _ = self.backend.conn.current()
        root = self.backend.conn.root
        names = client.get_children(f"{root}/names", watch=self._kick)
        wanted = [n for n in names if _codec.NAME_RE.fullmatch(n)
                  and (self.names is None or n in self.names)]
        seen: set[str] = set()
        for name in wanted:
            gen = self._gens.get(name)
            try:
                data, _ = client.get(f"{root}/names/{name}")
                meta = _codec.decode_meta(data, f"{root}/names/{name}")
            except IpcsemError as e:
                log.warning("skipping %s: %s", name, e)
                continue
            except Exception as e:  # noqa: BLE001
                if error_name(e) == "NoNodeError":
                    continue
                raise
            gen = meta.gen
            self._gens[name] = gen
            q = f"{root}/gens/{gen}/q"
            try:
                children = client.get_children(q, watch=self._kick)
            except Exception as e:  # noqa: BLE001
                if error_name(e) == "NoNodeError":
                    continue
                raise
            try:
                reqs, held = _codec.parse_children(children, meta.params.capacity, q)
            except IpcsemError as e:
                log.warning("skipping %s: %s", name, e)
                continue
            for n in [*held, *reqs]:
                if n.mkey == MACHINE_KEY and n.pid != ME.pid:
                    p = f"{q}/{n.name}"
                    seen.add(p)
                    self.reaper.watch(p, n.pid, n.start, self)
        for p in self.reaper.watched() - seen:
            self.reaper.forget(p, self)

    def run(self) -> None:
        first = True
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.scan()
            except IpcsemError as e:
                log.warning("supervisor scan: %s", e)
                self._stop.wait(0.5)
                continue
            except Exception as e:  # noqa: BLE001 - connection trouble: retry
                log.warning("supervisor scan: %r", e)
                self._stop.wait(0.5)
                continue
            if first:
                first = False
                if self.on_watching is not None:
                    self.on_watching()
            self._wake.wait(RESCAN)

    def start(self) -> LocalSupervisor:
        self._thread = threading.Thread(target=self.run, name="ipcsem-zk-supervise", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.reaper.close()
        self.backend.close()

    def __enter__(self) -> LocalSupervisor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def watch_local_holders(url: str, names: Iterable[str] | None = None,
                        **hooks) -> LocalSupervisor:
    """Start a :class:`LocalSupervisor` in a background thread and return it."""
    return LocalSupervisor(url, names, **hooks).start()
