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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import _proc
from .._errors import IpcsemError
from . import _codec
from ._codec import HeldNode, ReqNode
from ._local import HAVE_PIDFD, MACHINE_KEY, ME, Reaper
from ._session import error_name

log = logging.getLogger("ipcsem.zk")

RESCAN = 5.0      # seconds between full rescans (a safety net for lost watches)
RETRY = 0.5       # after a failed scan (the servers unreachable, failing over)


@dataclass(frozen=True)
class Recovery:
    """One dead local process's nodes deleted by the supervisor."""

    name: str | None      # the semaphore (None: its name was unlinked meanwhile)
    pid: int
    start: int
    units: int            # units of the holds deleted
    entries: int          # nodes deleted (holds and queued requests)
    died_at: float        # time.monotonic() when its death was seen
    recovered_at: float   # time.monotonic() when its nodes were gone


class LocalSupervisor:
    """Watch the local holders and waiters of ``names`` (None: every
    semaphore under the URL) and reap the dead at once.

    Hooks: ``on_recovered(Recovery)`` after each dead process whose nodes
    this supervisor deleted; ``on_watching()`` once the first scan armed
    every watch; ``on_error(message)`` when a scan fails (the servers
    unreachable: it retries every half second).  ``start()`` runs it in a
    daemon thread, ``run()`` in the caller's, ``stop()`` ends it.  Raises
    OSError without pidfds (Linux < 5.3), ValueError for a bad URL or name."""

    def __init__(self, url: str, names: Iterable[str] | None = None, *,
                 on_recovered: Callable[[Recovery], None] | None = None,
                 on_watching: Callable[[], None] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        if not HAVE_PIDFD:
            raise OSError("the local supervisor needs os.pidfd_open (Linux >= 5.3)")
        from ._backend import ZkBackend
        self.names = None if names is None else {_codec.check_name(n) for n in names}
        self.backend = ZkBackend(url)      # its own session: independent of the user's
        self.on_recovered = on_recovered
        self.on_watching = on_watching
        self.on_error = on_error
        self.reaper = Reaper(self._delete, name="ipcsem-zk-super")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gens: dict[str, str] = {}    # gen -> name

    @property
    def reaped(self) -> int:
        """Dead processes handled so far."""
        return self.reaper.reaped

    def _delete(self, paths: list[str], pid: int, start: int) -> object:
        died_at = time.monotonic()
        reaped = self.backend.reap(paths)
        if reaped.deleted and self.on_recovered is not None:
            gen = paths[0].rsplit("/", 3)[-3]
            rec = Recovery(self._gens.get(gen), pid, start, reaped.units, len(reaped.deleted),
                           died_at, time.monotonic())
            try:
                self.on_recovered(rec)
            except Exception:  # the caller's hook: log it, keep supervising
                log.exception("on_recovered failed")
        return reaped

    def _kick(self, *_a: object) -> None:
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
            try:
                data, _ = client.get(f"{root}/names/{name}")
                meta = _codec.decode_meta(data, f"{root}/names/{name}")
            except IpcsemError as e:
                log.warning("skipping %s: %s", name, e)
                continue
            except Exception as e:
                if error_name(e) == "NoNodeError":
                    continue
                raise
            self._gens[meta.gen] = name
            q = f"{root}/gens/{meta.gen}/q"
            try:
                children = client.get_children(q, watch=self._kick)
            except Exception as e:
                if error_name(e) == "NoNodeError":
                    continue
                raise
            try:
                reqs, held = _codec.parse_children(children, meta.params.capacity, q)
            except IpcsemError as e:
                log.warning("skipping %s: %s", name, e)
                continue
            nodes: list[HeldNode | ReqNode] = [*held, *reqs]
            for n in nodes:
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
            except Exception as e:  # noqa: BLE001 - unreachable or failing over: told, retried
                msg = str(e) if isinstance(e, IpcsemError) else f"{type(e).__name__}: {e}"
                log.warning("supervisor scan: %s", msg)
                if self.on_error is not None:
                    self.on_error(msg)
                self._stop.wait(RETRY)
                continue
            if first:
                first = False
                if self.on_watching is not None:
                    self.on_watching()
            self._wake.wait(RESCAN)

    def start(self) -> LocalSupervisor:
        self._thread = _proc.start_named_thread("ipcsem-zk-scan", self.run)
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

    def __exit__(self, *exc: object) -> None:
        self.stop()


def watch_local_holders(url: str, names: Iterable[str] | None = None, *,
                        on_recovered: Callable[[Recovery], None] | None = None,
                        on_watching: Callable[[], None] | None = None,
                        on_error: Callable[[str], None] | None = None) -> LocalSupervisor:
    """Start a :class:`LocalSupervisor` in a background thread and return it."""
    return LocalSupervisor(url, names, on_recovered=on_recovered, on_watching=on_watching,
                           on_error=on_error).start()
