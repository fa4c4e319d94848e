"""The ``zookeeper://`` backend: names, creation, unlink, reaping."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from typing import Any, NamedTuple

from .._backend import Backend
from .._errors import CapacityMismatch, IpcsemError, NotFound, PolicyMismatch, Unavailable
from .._records import Params
from . import _codec
from ._handle import Client, ZkHandle, unsupported
from ._lease import Book, OnLost
from ._local import HAVE_PIDFD, HOSTNAME, ME, Reaper
from ._session import Connection, Options, Session, error_name
from ._stepper import Stepper

log = logging.getLogger("ipcsem.zk")

# Settings fixed at creation and compared on re-open.  ``initial`` applies
# only when creating (like O_CREAT), ``mode``/``max_*`` are sizes and
# permissions of the shared-memory ledger with no meaning here.
COMPARED = ("kind", "slots", "fair", "reentrant", "priority_inheritance")
#: BadVersion retries of a best-effort counter update on the gate
COUNTER_RACES = 20


class Reaped(NamedTuple):
    """What one reap did: the nodes it deleted, the units of those holds."""

    deleted: list[str]
    units: int


class ZkBackend(Backend):
    """Semaphores in a ZooKeeper ensemble (``zookeeper://host:port,.../chroot``),
    shared by processes on any machine that reaches it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.options = Options(url)
        self.conn = Connection(self.options)
        self.conn.on_loss(self._session_lost)
        self._books: dict[str, Book] = {}
        self._lock = threading.Lock()
        self._reaper: Reaper | None = None
        self._stepper: Stepper | None = None

    # ------------------------------------------------------------ paths
    def _meta_path(self, name: str) -> str:
        return f"{self.conn.root}/names/{name}"

    def book(self, gen: str) -> Book:
        with self._lock:
            b = self._books.get(gen)
            if b is None:
                b = self._books[gen] = Book()
            return b

    def stepper(self) -> Stepper:
        """The thread that steps event-loop waiters' requests (made on first use)."""
        with self._lock:
            if self._stepper is None:
                self._stepper = Stepper()
            return self._stepper

    # ------------------------------------------------------------ open
    def open(self, name: str, params: Params | None, *, on_lost: OnLost | None = None,
             group: int | None = None, **options: Any) -> ZkHandle:
        """Open ``name``; with ``params`` create it if absent.  Raises
        NotFound, CapacityMismatch/PolicyMismatch, Corrupt, Unavailable;
        IpcsemError for what this backend cannot honour (``group=``,
        ``priority_inheritance=True``); TypeError for an unknown option.
        ``on_lost(lease, reason)`` runs (on a background thread) for each
        lease of this handle whose session is lost."""
        if options:
            raise TypeError(f"the zookeeper backend takes no option {sorted(options)[0]!r}")
        if on_lost is not None and not callable(on_lost):
            raise TypeError(f"on_lost must be callable(lease, reason), not {on_lost!r}")
        _codec.check_name(name)
        if group is not None:
            raise unsupported("group= (who may use a semaphore is whoever may reach the "
                              "ensemble and its chroot: ZooKeeper's ACLs, not file modes)", name)
        if params is not None:
            _check_params(params, name)
        client, _ = self.conn.current()
        path = self._meta_path(name)
        created = False
        for _ in range(50):
            try:
                data, _stat = client.get(path)
            except Exception as e:  # noqa: BLE001 - kazoo's errors, told apart by name
                if error_name(e) != "NoNodeError":
                    raise Unavailable(f"reading {path}: {e!r}", name=name, url=self.url) from None
                if params is None:
                    raise NotFound(name, hint=f"on {self.url}") from None
                if self._create(client, name, params):
                    created = True
                continue
            meta = _codec.decode_meta(data, path)
            if params is not None and not created:
                _compare(name, meta.params, params)
            return ZkHandle(self.conn, self, name, meta, created, on_lost)
        raise Unavailable(f"{name!r} keeps appearing and vanishing", name=name, url=self.url)

    def _create(self, client: Client, name: str, params: Params) -> bool:
        """Create the whole semaphore in one transaction (no one ever sees
        half of it); False if another creator won."""
        gen = uuid.uuid4().hex
        base = f"{self.conn.root}/gens/{gen}"
        gate = _codec.Gate(unowned=params.capacity - params.initial)
        t = client.transaction()
        t.create(base, b"")
        t.create(f"{base}/gate", _codec.encode_gate(gate))
        t.create(f"{base}/q", b"")
        t.create(f"{base}/posts", b"")
        t.create(self._meta_path(name), _codec.encode_meta(params, gen, time.time(), ME.pid,
                                                           HOSTNAME))
        results = t.commit()
        errors = [error_name(r) for r in results if isinstance(r, Exception)]
        if not errors:
            return True
        if "NodeExistsError" in errors:
            return False
        raise Unavailable(f"creating {name!r}: {errors}", name=name, url=self.url)

    def names(self) -> list[str]:
        client, _ = self.conn.current()
        try:
            children = client.get_children(f"{self.conn.root}/names")
        except Exception as e:  # noqa: BLE001 - kazoo's errors, told apart by name
            raise Unavailable(f"listing names: {e!r}", url=self.url) from None
        return sorted(n for n in children if _codec.NAME_RE.fullmatch(n))

    def unlink(self, name: str) -> None:
        """Remove the name at once (meta and gate in one transaction, so no
        grant can commit after it); waiters wake on the gate and fail with
        Unlinked; then the queue is swept."""
        _codec.check_name(name)
        client, _ = self.conn.current()
        path = self._meta_path(name)
        for _ in range(50):
            try:
                data, stat = client.get(path)
            except Exception as e:  # noqa: BLE001 - kazoo's errors, told apart by name
                if error_name(e) == "NoNodeError":
                    raise NotFound(name, hint=f"on {self.url}") from None
                raise Unavailable(f"reading {path}: {e!r}", name=name, url=self.url) from None
            try:
                gen = _codec.decode_meta(data, path).gen
            except IpcsemError:
                client.delete(path, version=stat.version)   # not ours to parse: just remove
                return
            base = f"{self.conn.root}/gens/{gen}"
            t = client.transaction()
            t.delete(path, version=stat.version)
            t.delete(f"{base}/gate")
            t.delete(f"{base}/posts")        # heads watch it: they wake and see Unlinked
            errors = [error_name(r) for r in t.commit() if isinstance(r, Exception)]
            if not errors:
                self._sweep(client, base)
                return
            if "BadVersionError" in errors:
                continue
            if "NoNodeError" in errors[1:] and errors[0] == "RolledBackError":
                # the generation is gone or half gone (not made by this
                # version, or swept by hand): remove the name alone
                client.delete(path, version=stat.version)
                self._sweep(client, base)
                return
            if "NoNodeError" in errors:
                continue
            raise Unavailable(f"unlinking {name!r}: {errors}", name=name, url=self.url)
        raise Unavailable(f"unlinking {name!r}: too many concurrent changes", url=self.url)

    @staticmethod
    def _sweep(client: Client, base: str) -> None:
        try:
            client.delete(base, recursive=True)
        except Exception as e:  # noqa: BLE001 - a waiter re-queued meanwhile: its node goes with it
            log.debug("sweeping %s: %s", base, e)

    # ------------------------------------------------------------ loss
    def _session_lost(self, session: Session, reason: str) -> None:
        with self._lock:
            books = list(self._books.values())
        for b in books:
            for h in b.of_session(session):
                h.tell_lost(reason)

    # ------------------------------------------------------------ reaping
    def reaper(self) -> Reaper | None:
        """The shared pidfd watcher of this process (None without pidfds)."""
        if not HAVE_PIDFD:
            return None
        with self._lock:
            if self._reaper is None:
                self._reaper = Reaper(lambda paths, pid, start: self.reap(paths))
            return self._reaper

    def reap(self, paths: list[str]) -> Reaped:
        """Delete the nodes of one dead local process (others may race: a
        waiter, a supervisor; a node already gone is skipped): which this
        call deleted, and the units of those holds.  Per semaphore, the
        nodes go in one transaction with the count of the recovery on its
        gate, so whoever sees the units back sees the recovery counted."""
        client, _ = self.conn.current()
        by_gate: dict[str, list[str]] = {}
        for path in paths:
            by_gate.setdefault(path.rsplit("/", 2)[0] + "/gate", []).append(path)
        deleted: list[str] = []
        for gate_path, group in by_gate.items():
            deleted += self._reap_counted(client, gate_path, group)
        return Reaped(deleted, sum(_hold_units(p) for p in deleted))

    def _reap_counted(self, client: Client, gate_path: str, paths: list[str]) -> list[str]:
        """Delete ``paths`` (of one queue) and count one recovery on the gate
        in the same transaction; the paths this call deleted.  A node gone
        meanwhile (another reaper) is left out and the rest retried; after
        COUNTER_RACES lost races on the gate, or without a readable gate
        (unlinked, corrupt), the nodes are deleted uncounted: units must come
        back, counters are only counters."""
        left = list(paths)
        for _ in range(COUNTER_RACES):
            if not left:
                return []
            try:
                data, stat = client.get(gate_path)
                g = _codec.decode_gate(data, _codec.MAX_CAPACITY, gate_path)
            except IpcsemError as e:
                log.debug("counting a recovery: %s", e)
                break
            except Exception as e:
                if error_name(e) != "NoNodeError":
                    raise
                break
            g = dataclasses.replace(g, recoveries=g.recoveries + 1,
                                    recovered_units=g.recovered_units
                                    + sum(_hold_units(p) for p in left))
            t = client.transaction()
            for path in left:
                t.delete(path)
            t.set_data(gate_path, _codec.encode_gate(g), version=stat.version)
            results = t.commit()
            failed = [(op, r) for op, r in zip([*left, gate_path], results, strict=False)
                      if isinstance(r, Exception)
                      and error_name(r) not in ("RolledBackError", "RuntimeInconsistency")]
            if not failed:
                return left
            op, err = failed[0]
            if error_name(err) == "NoNodeError" and op != gate_path:
                left.remove(op)          # reaped by someone else meanwhile
            elif error_name(err) not in ("BadVersionError", "NoNodeError"):
                raise err
        return self._delete_each(client, left)

    @staticmethod
    def _delete_each(client: Client, paths: list[str]) -> list[str]:
        deleted: list[str] = []
        for path in paths:
            try:
                client.delete(path)
            except Exception as e:
                if error_name(e) == "NoNodeError":
                    continue
                raise
            deleted.append(path)
        return deleted

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
        self.conn.close()


def _check_params(p: Params, name: str) -> None:
    cap = p.capacity
    if cap.__class__ is not int or not 1 <= cap <= _codec.MAX_CAPACITY:
        raise ValueError(f"capacity must be in 1..{_codec.MAX_CAPACITY} on ZooKeeper, "
                         f"got {cap!r}")
    if p.slots and cap > _codec.MAX_SLOTTED_CAPACITY:
        raise ValueError(f"a slotted semaphore on ZooKeeper has at most "
                         f"{_codec.MAX_SLOTTED_CAPACITY} units")
    if p.initial.__class__ is not int or not 0 <= p.initial <= cap:
        raise ValueError(f"initial must be in 0..{cap}, got {p.initial!r}")
    if p.kind == "mutex" and cap != 1:
        raise ValueError("a mutex has capacity 1")
    if p.priority_inheritance:
        raise unsupported("priority_inheritance=True (a holder on another machine cannot "
                          "be boosted)", name)


def _compare(name: str, existing: Params, asked: Params) -> None:
    if existing.capacity != asked.capacity:
        raise CapacityMismatch(name, existing.capacity, asked.capacity)
    for field in COMPARED:
        a, b = getattr(existing, field), getattr(asked, field)
        if a != b:
            raise PolicyMismatch(name, field, a, b)


def _hold_units(path: str) -> int:
    """The units of a hold node (``h_<units>_...``); 0 for a request."""
    node = path.rsplit("/", 1)[1]
    if not node.startswith("h_"):
        return 0
    try:
        return int(node.split("_", 2)[1])
    except ValueError:      # not one of ours: nothing to count
        return 0
