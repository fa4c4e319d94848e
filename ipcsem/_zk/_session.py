"""One ZooKeeper session per URL per process, and the proof that it lives.

A lease on ZooKeeper is only as good as the session whose ephemeral node
carries it: when the session expires, the server deletes the node and grants
the units to someone else.  The client must therefore know, at every
instant, until when its session is *guaranteed* alive — and say "lost" the
moment it cannot prove it, whatever the reason: the server expired it
(LOST), we were cut off or paused (SIGSTOP) longer than the margin, or the
server we talk to froze with the TCP connection still open (kazoo has no
reply deadline: a busy client stays CONNECTED to a frozen leader forever).

The proof is a heartbeat: every T/4 (T = the negotiated session timeout)
this process writes to its own ephemeral ``sessions/<sid>`` node and waits
for the reply.  A write is checked by the *leader* against the session (an
expired session gets SESSIONEXPIRED, or NONODE for the node), so an
acknowledged heartbeat sent at monotonic time ``t`` proves the session was
alive at the leader at some time after ``t``.  The lease deadline is::

    deadline = t_prev + T * (1 - DRIFT) - MARGIN

where ``t_prev`` is the send time of the *second-to-last* acknowledged
heartbeat.  Why the second-to-last: a follower reports its clients' activity
to the leader in its ping replies (every tick/2); a follower cut off from the
leader right after forwarding our write may never report our latest touch,
but by then it had reported the previous one (heartbeats are T/4 >= tick/2
apart with the default session-timeout bounds, T >= 2 ticks).  The leader
expires a session no earlier than its last touch + T, rounded *up* to the
next tick.  DRIFT covers clock-rate differences between this host and the
leader, MARGIN scheduling jitter.  ``docs/zookeeper.md`` has the argument
and what no lock service can promise beyond it (process pauses).

Once the deadline passes, the session is lost for good — a late reply never
revives it (the frozen leader, resumed, answers from its stale state) — and
the connection is abandoned: a fresh client with a new session serves the
next operations, the old one is closed in the background (deleting its
ephemeral nodes if the server still hears it), and the nodes this process
made in the lost session are deleted from the new one.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import _proc
from .._errors import Unavailable
from . import _codec
from ._local import HOSTNAME, MACHINE_KEY, ME

log = logging.getLogger("ipcsem.zk")

DRIFT = 0.05     # clock-rate error allowed between this host and the leader
MARGIN = 0.05    # seconds of scheduling jitter
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_CHROOT = "/ipcsem"
BLATHER = 5      # kazoo's lowest log level; the negotiated timeout is logged there

if hasattr(time, "CLOCK_BOOTTIME"):
    def lease_clock() -> float:
        """Seconds on a clock that keeps counting while the machine is
        suspended (CLOCK_MONOTONIC stops then, while the servers' clocks
        and the session's expiry go on)."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux
    lease_clock = time.monotonic


def _kazoo() -> Any:
    try:
        # kazoo ships no type information: it is Any here
        import kazoo.client  # type: ignore[import-untyped]
        import kazoo.exceptions  # type: ignore[import-untyped]
        import kazoo.protocol.states  # type: ignore[import-untyped]
    except ImportError as e:
        raise ImportError(
            "the ZooKeeper backend needs kazoo: pip install 'ipcsem[zookeeper]' "
            f"(or pip install kazoo); import failed: {e}") from None
    return kazoo


def error_name(e: BaseException) -> str:
    """The class name of a kazoo exception: kazoo is imported lazily, so its
    errors are told apart by name."""
    return type(e).__name__


class Options:
    """What a ``zookeeper://`` URL says.

    ``zookeeper://h1:2181,h2:2181/chroot?session_timeout=10&connect_timeout=15``

    * hosts: comma-separated host:port (port defaults to 2181);
    * chroot: the path under which ipcsem keeps everything (default
      ``/ipcsem``; created if absent);
    * ``session_timeout``: seconds asked of the server (default 10; the
      server clamps it to its [minSessionTimeout, maxSessionTimeout], by
      default [2, 20] x tickTime; the negotiated value is what counts);
    * ``connect_timeout``: seconds an operation waits for a connection
      before ``Unavailable`` (default: the session timeout).
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "zookeeper" or not parts.netloc:
            raise ValueError(f"not a zookeeper URL: {url!r} (zookeeper://host:port[,...][/chroot])")
        hosts = []
        for given in unquote(parts.netloc).split(","):
            host = given.strip()
            if not host:
                continue
            if ":" not in host.rsplit("]", 1)[-1]:
                host += ":2181"
            hosts.append(host)
        if not hosts:
            raise ValueError(f"no hosts in {url!r}")
        self.hosts = ",".join(hosts)
        chroot = parts.path.rstrip("/") or DEFAULT_CHROOT
        if not chroot.startswith("/") or "//" in chroot or any(
                seg in (".", "..") for seg in chroot.split("/")[1:]):
            raise ValueError(f"bad chroot {chroot!r} in {url!r}")
        self.chroot = chroot
        query = parse_qs(parts.query, strict_parsing=False)
        known = {"session_timeout", "connect_timeout"}
        unknown = set(query) - known
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} in {url!r}: "
                             f"use {sorted(known)}")

        def seconds(key: str, default: float) -> float:
            if key not in query:
                return default
            try:
                v = float(query[key][-1])
            except ValueError:
                raise ValueError(f"{key} must be a number of seconds in {url!r}") from None
            if not 0.1 <= v <= 3600:
                raise ValueError(f"{key} must be in 0.1..3600 s in {url!r}")
            return v

        self.session_timeout = seconds("session_timeout", DEFAULT_SESSION_TIMEOUT)
        self.connect_timeout = seconds("connect_timeout", self.session_timeout)
        self.url = url


class _NegotiationLog(logging.Logger):
    """A private logger handed to one KazooClient: it remembers the session
    timeout the server negotiated (kazoo logs it at its BLATHER level and
    keeps it nowhere else), then forwards only what the user's logging
    would show anyway."""

    def __init__(self) -> None:
        super().__init__("kazoo.ipcsem", BLATHER)
        self._forward_to = logging.getLogger("kazoo.protocol.connection")
        self.parent = self._forward_to
        self.negotiated_ms: int | None = None
        self.got = threading.Event()

    def _parent_level(self) -> int:
        return self._forward_to.getEffectiveLevel()

    def isEnabledFor(self, level: int) -> bool:
        # No cache: logging's per-logger cache is cleared only for loggers
        # it manages, and this one raises its level once the timeout is
        # known; a stale "enabled" would build a record for every packet.
        return level >= self.level

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno == BLATHER and self.negotiated_ms is None:
            msg = record.msg if isinstance(record.msg, str) else ""
            if "negotiated session timeout" in msg and isinstance(record.args, tuple) \
                    and len(record.args) >= 3 and isinstance(record.args[2], int):
                self.negotiated_ms = record.args[2]
                self.got.set()
                # stop paying for kazoo's per-packet records
                self.setLevel(max(logging.DEBUG, self._parent_level()))
        # Handlers up the tree do not check their loggers' levels: do it here,
        # so the user's logging shows what it would have shown without us.
        if record.levelno < self._parent_level():
            return
        super().handle(record)


class Session:
    """One ZooKeeper session as this process knows it."""

    def __init__(self, sid: int, timeout: float, connect_sent: float,
                 on_lost: Callable[[Session, str], None] | None = None) -> None:
        self.sid = sid
        self._on_lost = on_lost
        self.timeout = timeout                     # negotiated, seconds
        self._acks: deque[float] = deque([connect_sent], maxlen=2)
        self._lock = threading.Lock()
        self.lost_reason: str | None = None
        self.lost_at: float | None = None

    def _deadline(self) -> float:
        return self._acks[0] + self.timeout * (1 - DRIFT) - MARGIN   # lease_clock time

    def deadline(self) -> float:
        """``time.monotonic()`` time until which the session (and every
        lease in it) is guaranteed alive; -inf once lost."""
        if self.lost_reason is not None:
            return float("-inf")
        return self._deadline() - lease_clock() + time.monotonic()

    def valid(self) -> bool:
        if self.lost_reason is not None:
            return False
        if lease_clock() < self._deadline():
            return True
        self.lose("no acknowledged heartbeat within the lease deadline")
        return False

    def ack(self, sent: float) -> bool:
        """Record the reply to a heartbeat sent at ``sent`` (lease_clock); False if it came
        too late to count (the session was already past its deadline)."""
        with self._lock:
            if self.lost_reason is not None:
                return False
            late = lease_clock() >= self._deadline()
            if not late:
                if sent > self._acks[-1]:
                    self._acks.append(sent)
                return True
        self.lose("no acknowledged heartbeat within the lease deadline")
        return False

    def lose(self, reason: str) -> bool:
        """Mark lost (idempotent); True for the call that did it, which also
        tells the connection (hooks, waiters, a new session)."""
        with self._lock:
            first = self._lose_locked(reason)
        if first and self._on_lost is not None:
            self._on_lost(self, reason)
        return first

    def _lose_locked(self, reason: str) -> bool:
        if self.lost_reason is not None:
            return False
        self.lost_reason = reason
        self.lost_at = time.monotonic()
        return True


class Connection:
    """The kazoo client of one URL in this process, replaced whenever its
    session is lost.  Thread-safe; shared by every handle of the URL."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.root = options.chroot
        self._lock = threading.RLock()
        self._client = None
        self._session: Session | None = None
        self._pid = os.getpid()
        self._loss_hooks: list[Callable[[Session, str], None]] = []
        self._wakers: set[Callable[[], None]] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._monitor: threading.Thread | None = None
        self._kick_monitor = threading.Event()
        self._doomed: list[str] = []       # paths of lost sessions to delete from the next one
        # the servers answer multiRead (ZooKeeper 3.6+): None until one did
        # or refused (then the handles read with two pipelined requests)
        self.multiread: bool | None = None

    # ------------------------------------------------------------- access
    def current(self) -> tuple[Any, Session]:
        """(kazoo client, Session) of a live session, connecting if needed;
        Unavailable if no server answers within connect_timeout."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._lock:
            if self._closed:
                raise Unavailable("connection closed", url=self.options.url)
            s = self._session
            if self._client is not None and s is not None and s.lost_reason is None:
                return self._client, s
            if self._client is not None:
                self._retire_locked()
            return self._connect_locked()

    def session(self) -> Session | None:
        return self._session

    def on_loss(self, hook: Callable[[Session, str], None]) -> None:
        self._loss_hooks.append(hook)

    def add_waker(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._wakers.add(fn)

    def remove_waker(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._wakers.discard(fn)

    def doom(self, path: str) -> None:
        """Delete ``path`` (a node of a lost session) once a new session is up."""
        with self._lock:
            self._doomed.append(path)
        self._kick_monitor.set()

    # --------------------------------------------------------- connecting
    def _connect_locked(self) -> tuple[Any, Session]:
        kz = _kazoo()
        logger = _NegotiationLog()
        client = kz.client.KazooClient(
            hosts=self.options.hosts, timeout=self.options.session_timeout, logger=logger,
            connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 1.5, "max_delay": 1.0},
            command_retry=None)
        sent = lease_clock()
        try:
            client.start(timeout=self.options.connect_timeout)
        except Exception as e:  # noqa: BLE001 - kazoo's TimeoutError and socket errors
            try:
                client.stop()
                client.close()
            except Exception:  # noqa: BLE001
                pass
            raise Unavailable(f"no ZooKeeper server answered within "
                              f"{self.options.connect_timeout} s ({e})",
                              url=self.options.url) from None
        logger.got.wait(1.0)
        negotiated = logger.negotiated_ms
        if negotiated is None:
            # This kazoo did not log it: assume what we asked for, the
            # server's default bounds ([2, 20] x tickTime) keep it.
            log.warning("could not learn the negotiated session timeout; assuming %s s",
                        self.options.session_timeout)
            negotiated = int(self.options.session_timeout * 1000)
        sid = client.client_id[0]
        session = Session(sid, negotiated / 1000.0, sent, self._lost)
        try:
            for sub in ("names", "gens", "sessions"):
                client.ensure_path(f"{self.root}/{sub}")
            client.create(self._hb_path(sid), self._who(), ephemeral=True)
        except Exception as e:  # noqa: BLE001
            _proc.start_named_thread("ipcsem-zk-close", lambda: _close_quietly(client))
            raise Unavailable(f"could not set up the session: {e!r}", url=self.options.url) \
                from None
        client.add_listener(lambda state, s=session: self._state(s, state))
        self._client, self._session = client, session
        if self._monitor is None or not self._monitor.is_alive():
            self._monitor = _proc.start_named_thread("ipcsem-zk-heart", self._run_monitor)
        self._kick_monitor.set()
        return client, session

    @staticmethod
    def _who() -> bytes:
        return _codec.dump({"host": HOSTNAME, "mkey": MACHINE_KEY, "pid": ME.pid,
                            "start": ME.start})

    def _hb_path(self, sid: int) -> str:
        return f"{self.root}/sessions/{sid:016x}"

    def _state(self, session: Session, state: object) -> None:
        # kazoo's thread: never block here.
        if str(state) == "LOST":
            self.lose(session, "the ZooKeeper session expired")
        elif str(state) == "SUSPENDED":
            self._kick_monitor.set()

    # -------------------------------------------------------------- losing
    def lose(self, session: Session, reason: str) -> None:
        """Declare ``session`` lost (idempotent): leases go invalid, hooks
        run, waiters wake, the client is replaced on next use."""
        session.lose(reason)

    def _lost(self, session: Session, reason: str) -> None:
        # Called once per session by Session.lose, from whichever thread
        # noticed (the heartbeat, kazoo's, a caller checking lease.valid):
        # do the work on a thread of our own, never inside kazoo's or a
        # caller's critical path.
        _proc.start_named_thread("ipcsem-zk-lost", lambda: self._after_loss(session, reason))

    def _after_loss(self, session: Session, reason: str) -> None:
        if self._closed:
            log.debug("ipcsem: ZooKeeper session %x closed", session.sid)
        else:
            log.warning("ipcsem: ZooKeeper session %x lost: %s", session.sid, reason)
        with self._lock:
            if self._session is session:
                self._retire_locked()
            wakers = list(self._wakers)
        for hook in list(self._loss_hooks):
            try:
                hook(session, reason)
            except Exception:
                log.exception("ipcsem: a lease-loss hook failed")
        for w in wakers:
            try:
                w()
            except Exception:
                log.exception("ipcsem: waking a waiter failed")
        self._kick_monitor.set()

    def _retire_locked(self) -> None:
        client, session = self._client, self._session
        self._client = self._session = None
        if session is not None:
            session.lose("the session was abandoned")
        if client is not None:
            _proc.start_named_thread("ipcsem-zk-close", lambda: _close_quietly(client))

    # ---------------------------------------------------------- heartbeat
    def _run_monitor(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                client, session = self._client, self._session
                doomed: list[str] = self._doomed if client is not None else []
                if doomed:
                    self._doomed = []
            if client is None or session is None:
                self._kick_monitor.wait(1.0)
                self._kick_monitor.clear()
                continue
            for path in doomed:
                try:
                    client.delete_async(path)
                except Exception:  # noqa: BLE001
                    pass
            interval = session.timeout / 4
            sent = lease_clock()
            done = threading.Event()
            try:
                result = client.set_async(self._hb_path(session.sid), self._who())
                result.rawlink(lambda _r, done=done: done.set())
            except Exception as e:  # noqa: BLE001 - closing client
                log.debug("heartbeat not sent: %s", e)
                self._kick_monitor.wait(0.05)
                self._kick_monitor.clear()
                continue
            while not done.wait(max(0.0, min(interval, session.deadline() - time.monotonic()))):
                if time.monotonic() >= session.deadline():
                    break
            if not done.is_set():
                self.lose(session, "no reply from ZooKeeper within the lease deadline "
                          f"({session.timeout:.1f} s session)")
                continue
            try:
                result.get(0)
            except Exception as e:  # noqa: BLE001
                name = type(e).__name__
                if name in ("NoNodeError", "SessionExpiredError"):
                    self.lose(session, "the ZooKeeper session expired")
                    continue
                # ConnectionLoss while reconnecting: try again soon; the
                # deadline decides, not the number of failures.
                self._kick_monitor.wait(min(0.1, interval))
                self._kick_monitor.clear()
                continue
            session.ack(sent)
            rest = sent + interval - lease_clock()
            if rest > 0:
                self._kick_monitor.wait(rest)
                self._kick_monitor.clear()

    # ----------------------------------------------------------- lifetime
    def _after_fork(self) -> None:
        # The child is another process: it holds nothing, and the parent's
        # client (its threads are gone here) must not be touched.
        self._lock = threading.RLock()
        self._client = None
        self._session = None
        self._pid = os.getpid()
        self._monitor = None
        self._wakers = set()
        self._doomed = []
        self._kick_monitor = threading.Event()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client = self._client
            self._client = None
            s = self._session
            self._session = None
        if s is not None:
            s.lose("the connection was closed")
        self._kick_monitor.set()
        if client is not None:
            _close_quietly(client)


def _close_quietly(client: Any) -> None:
    try:
        client.stop()
    except Exception:  # noqa: BLE001
        pass
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass
