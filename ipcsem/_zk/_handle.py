"""One open semaphore on ZooKeeper: the recipe.

Every request is an ephemeral-sequential node ``r_...`` under the
semaphore's queue; every grant is an ephemeral node ``h_...`` beside it,
created by the grantee's own session, so a dead session's units go with it.
A request becomes a hold in ONE conditional transaction::

    multi(create h_..., delete r_..., set_data(gate, version=v))

where ``v`` is the gate version read *before* the children listing that
decided the admission (``_admission.decide``).  Every grant bumps the gate,
so two grants decided from the same state cannot both commit: the second
fails with BadVersion and decides again.  Releases and deaths only delete
nodes, which can only make a stale decision more conservative.  The zxid of
the transaction (the gate's ``mzxid`` in the reply) is the lease's fencing
token: transactions are totally ordered, so tokens increase in grant order.

``take`` is the same transaction without a request node (it never waits:
refused when it would overtake anyone queued ahead of it).  ``wait`` queues a
node and watches only what can change its admission: the queue and the gate
when it is the head, the node just ahead of it otherwise (no herd).
Event-loop callers (``enqueue``/``settle``/``cancel``) never do network I/O
on the loop's thread: their requests are stepped by one thread per backend
(:class:`Stepper`), woken by the same watches.

What a read shows users (``holders()``, ``waiters()``, ``stats()``) is made
from the view in ``_view``; this module does the reading.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .._backend import Handle, Pending
from .._errors import (
    Closed,
    Corrupt,
    DeadlockDetected,
    IpcsemError,
    LeaseLost,
    NotOwner,
    Unavailable,
    Unlinked,
)
from .._records import Holder, Lease, Params, Picture, Stats, Waiter
from . import _codec, _multiread, _view
from ._admission import TAKE, Decision, decide, head_of
from ._codec import HeldNode, Meta, ReqNode
from ._lease import Book, Hold, OnLost, ZkLease
from ._local import HOSTNAME, MACHINE_KEY, ME, is_dead
from ._session import Connection, Session, error_name
from ._stepper import Stepper
from ._view import View

if TYPE_CHECKING:
    from ._backend import ZkBackend

log = logging.getLogger("ipcsem.zk")

SLICE = 0.5            # wait(): on_slice cadence and the re-read safety net
MAX_RACES = 200        # BadVersion retries of one take() before it gives up (never waits)
HEAL_EVERY = 0.25      # take(): at most this often, look for dead local holders
CONTENDED_FOR = 0.5    # wait(): so long after queueing, skip the optimistic take
RETRY_AFTER = 0.05     # the server is busy or failing over: try again after this long

# kazoo's objects (the client, its async results, watch events): kazoo is
# imported lazily and ships no type information.
Client = Any
Future = Any
Watch = Callable[..., None]
T = TypeVar("T")

# kazoo errors that mean "no answer now" (the server may yet answer or fail over)
_TRANSIENT = ("ConnectionLoss", "ConnectionClosedError", "SessionExpiredError",
              "KazooTimeoutError", "TimeoutError", "OperationTimeoutError", "SessionMovedError")


class Req(NamedTuple):
    """One acquire call, as the seam passes it (plain arguments)."""

    units: int
    priority: int
    owner: int
    tid: int


def unsupported(what: str, name: str) -> IpcsemError:
    """What the ZooKeeper backend cannot honour (docs/zookeeper.md, "Same and
    different"): a plain IpcsemError naming the feature and why."""
    # SEAM REQUEST: a dedicated ipcsem._errors.Unsupported(IpcsemError,
    # ValueError) with .feature and .backend would let callers catch exactly
    # this; until then the base class, with a message that says it all.
    return IpcsemError(f"the zookeeper backend cannot honour {what}", name=name)


class _Retry(Exception):
    """Internal: the backend could not answer now; try again if time allows."""


class _Vanished(Exception):
    """Internal: our request node is gone."""


class Reads(NamedTuple):
    """The reads of one decision in flight: the gate and the listing as one
    multiRead (``listing`` None), or as two pipelined requests; the posts
    exists-watch, if one was set."""

    gate: Future
    listing: Future | None
    posts: Future | None


# Readings a picture() makes while listed nodes leave before their data is read.
PICTURE_TRIES = 8


class ZkHandle(Handle):
    """A Handle on a semaphore kept in ZooKeeper (see the module docstring)."""

    def __init__(self, conn: Connection, backend: ZkBackend, name: str, meta: Meta,
                 created: bool, on_lost: OnLost | None) -> None:
        self.name = name
        self.params: Params = meta.params
        self.created = created
        self.meta = meta
        self._conn = conn
        self._backend = backend
        base = f"{conn.root}/gens/{meta.gen}"
        self._gate = f"{base}/gate"
        self._q = f"{base}/q"
        self._posts = f"{base}/posts"
        # One posts watch per handle and session, fanned out to its waiters
        # (a watch stays registered until it fires: no need to re-arm it on
        # every read, nor once per waiter).
        self._posts_lock = threading.Lock()
        self._posts_session: Session | None = None
        self._posts_waiters: set[Watch] = set()
        self._posts_fire = self._on_posts
        # The last state this process saw (and what its own grants and
        # releases did to it since): take() tries it first, conditional on
        # both versions, so an uncontended take is one transaction.
        self._cache: View | None = None
        self._book: Book = backend.book(meta.gen)
        self._on_lost = on_lost
        self._closed = False
        self._waits: set[_Queued] = set()      # close() wakes them (they raise Closed)
        self._last_heal = 0.0
        self._queued_at = float("-inf")
        # whether a waiter watches the holds of the requests that left ahead
        # of it before it reads (they were still held when it last looked)
        self._prearm_holds = True
        self._timeout = conn.options.connect_timeout

    @property
    def queue_path(self) -> str:
        """The znode under which requests and holds live (tools, tests)."""
        return self._q

    # ================================================================ I/O
    def _client(self) -> tuple[Client, Session]:
        if self._closed:
            raise Closed(name=self.name)
        return self._conn.current()

    def _get(self, result: Future, what: str) -> Any:
        """The value of a kazoo async result; kazoo errors mapped."""
        try:
            return result.get(timeout=self._timeout)
        except Exception as e:
            n = error_name(e)
            if n == "NoNodeError":
                raise
            if n in _TRANSIENT:
                raise _Retry(f"{what}: {n}") from None
            raise

    def _read(self, client: Client, watch: Watch | None = None,
              children_watch: Watch | None = None) -> View:
        return self._read_finish(self._read_start(client, watch, children_watch))

    def _read_start(self, client: Client, watch: Watch | None = None,
                    children_watch: Watch | None = None) -> Reads:
        """Send the reads of one decision: gate first, then the listing (on
        one connection, so the listing is at least as new as the gate
        version we will condition on).  ``watch`` goes on the posts node
        (what a head waits for besides holds leaving: posts and unlink; not
        the gate, which every grant changes and would wake every head),
        ``children_watch`` on the queue."""
        posts = None if watch is None else client.exists_async(self._posts, watch=watch)
        if children_watch is None and self._conn.multiread is not False:
            # gate, then the queue's version (arrivals), then its children:
            # in this order, each at least as new as the one before
            return Reads(_multiread.send(client, [_multiread.Op(_multiread.GET_DATA, self._gate),
                                                  _multiread.Op(_multiread.GET_DATA, self._q),
                                                  _multiread.Op(_multiread.GET_CHILDREN,
                                                                self._q)]),
                         None, posts)
        return Reads(client.get_async(self._gate),
                     client.get_children_async(self._q, watch=children_watch, include_data=True),
                     posts)

    def _on_posts(self, event: object = None) -> None:
        with self._posts_lock:
            self._posts_session = None
            waiters = list(self._posts_waiters)
        for w in waiters:
            w(event)

    def posts_watch(self, session: Session) -> Watch | None:
        """The watch to pass to the next read, or None if one is registered
        for this session already."""
        with self._posts_lock:
            if self._posts_session is session:
                return None
            self._posts_session = session
            return self._posts_fire

    def _read_finish(self, futures: Reads) -> View:
        g, c, p = futures.gate, futures.listing, futures.posts
        if p is not None:
            try:
                there = self._get(p, "watching the posts")
            except BaseException:
                self._posts_session = None
                raise
            if there is None:
                raise Unlinked(name=self.name)
        try:
            if c is None:
                data, stat, names, qstat = self._multiread_finish(g)
            else:
                data, stat = self._get(g, "reading the gate")
                names, qstat = self._get(c, "listing the queue")
        except _Retry:
            raise
        except Exception as e:
            if error_name(e) == "NoNodeError":
                raise Unlinked(name=self.name) from None
            raise
        gate = _codec.decode_gate(data, self.params.capacity, self._gate)
        reqs, held = _codec.parse_children(names, self.params.capacity, self._q)
        view = View(gate, stat.version, qstat.version, reqs, held)
        self._cache = view
        return view

    def _multiread_finish(self, f: Future) -> tuple[bytes, Any, list[str], Any]:
        """The gate's data and stat, the queue's children and stat, from
        one multiRead; a server that does not know multiRead (before 3.6)
        is read with two requests from then on."""
        try:
            results = self._get(f, "reading the gate and the queue")
        except _Retry:
            if self._conn.multiread is None:
                # never answered: an old server may drop the connection
                # for an opcode it does not know
                self._conn.multiread = False
            raise
        except Exception as e:
            if error_name(e) == "NoNodeError":
                raise
            log.info("ipcsem: the ZooKeeper server refused multiRead (%s): two reads per "
                     "decision from now on", error_name(e))
            self._conn.multiread = False
            raise _Retry("multiRead refused") from None
        self._conn.multiread = True
        for r in results:
            if isinstance(r, Exception):
                raise r
        if len(results) != 3:
            raise _Retry(f"multiRead: {len(results)} results for 3 reads")
        (data, stat), (_qdata, qstat), names = results
        return data, stat, names, qstat

    def _decide(self, view: View, take: tuple[int, int] | None = None) -> Decision:
        return decide(self.params.capacity, view.gate.unowned, view.held, view.reqs,
                      fair=self.params.fair, take=take, slotted=self.params.slots)

    @staticmethod
    def _who(req: Req) -> bytes:
        return _codec.encode_who(_codec.Who(HOSTNAME, MACHINE_KEY, ME.pid, ME.start, req.tid,
                                            req.owner, time.time()))

    # ============================================================ grants
    def _grant(self, client: Client, session: Session, view: View, req: Req,
               free_slots: list[int], rnode: ReqNode | None, ident: str,
               track: list[str] | None = None, check_arrivals: bool = False) -> ZkLease | None:
        """The conditional transaction; None when another grant won the race."""
        units = req.units
        slots = tuple(free_slots[:units]) if self.params.slots else ()
        hname = _codec.held_name(units, slots, MACHINE_KEY, ME.pid, ME.start, ident)
        path = f"{self._q}/{hname}"
        gate = view.gate
        died = False
        if self.params.kind == "mutex":
            live = {h.name for h in view.held}
            died = gate.dirty or (gate.held_by is not None and gate.held_by not in live)
            gate = dataclasses.replace(gate, dirty=died, held_by=hname)
        gate = dataclasses.replace(gate, grants=gate.grants + 1)
        if track is not None:
            track.append(path)
        t = client.transaction()
        if check_arrivals:
            # nobody may have queued since the listing we decided on
            t.check(self._q, view.arrivals)
        t.create(path, self._who(req), ephemeral=True)
        if rnode is not None:
            t.delete(f"{self._q}/{rnode.name}")
        t.set_data(self._gate, _codec.encode_gate(gate), version=view.version)
        try:
            results = t.commit_async().get(timeout=self._timeout)
        except Exception as e:  # noqa: BLE001 - whatever kazoo raised, the outcome is unknown
            # The outcome is unknown: the hold may exist or appear later.
            # Abandon the session (its nodes die with it) rather than guess.
            self._conn.lose(session, f"a grant's outcome is unknown ({error_name(e)})")
            raise _Retry("grant outcome unknown") from None
        errors = [r for r in results if isinstance(r, Exception)]
        if not errors:
            stat = results[-1]
            mine = HeldNode(hname, units, slots, MACHINE_KEY, ME.pid, ME.start, ident)
            self._cache = View(gate, stat.version, view.arrivals,
                               [r for r in view.reqs if r is not rnode], [*view.held, mine])
            hold = Hold(path, hname, units, slots, req.owner, stat.mzxid, session,
                        self._on_lost)
            hold.lease = ZkLease(units, slots, stat.mzxid, died, hold)
            self._book.add(hold)
            return hold.lease
        names = [error_name(e) for e in results]
        self._cache = None
        if "BadVersionError" in names:
            return None
        if names[-1] == "NoNodeError":
            raise Unlinked(name=self.name)
        if "NoNodeError" in names:
            # Our request node is gone (its session was lost, or the queue
            # was removed): the caller re-queues or reports.
            raise _Vanished()
        if names[0] == "NodeExistsError":
            raise Corrupt(f"hold node {hname} exists already", name=self.name, path=path)
        if any(n in ("ConnectionLoss", "SessionExpiredError") for n in names):
            raise _Retry("connection lost during a grant")
        raise IpcsemError(f"unexpected reply to a grant: {names}", name=self.name)

    # ============================================================ reading
    @property
    def available(self) -> int:
        return self._retrying(lambda: max(0, self._decide(self._read(self._client()[0])).free))

    def _retrying(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """``fn()``, tried again while the server does not answer, for up to
        ``timeout`` seconds (default: the URL's connect_timeout); then
        Unavailable."""
        end = time.monotonic() + (self._timeout if timeout is None else timeout)
        while True:
            try:
                return fn()
            except _Retry as e:
                if time.monotonic() >= end:
                    raise Unavailable(str(e), name=self.name, url=self._conn.options.url) \
                        from None
                time.sleep(RETRY_AFTER)

    def _datas(self, client: Client, names: list[str]) -> dict[str, _codec.Who]:
        futures = [(n, client.get_async(f"{self._q}/{n}")) for n in names]
        out = {}
        for n, f in futures:
            try:
                data, _ = self._get(f, "reading a node")
            except _Retry:
                raise
            except Exception as e:
                if error_name(e) == "NoNodeError":
                    continue  # left meanwhile
                raise
            out[n] = _codec.decode_who(data, f"{self._q}/{n}")
        return out

    def holders(self) -> list[Holder]:
        def go() -> list[Holder]:
            client, _ = self._client()
            view = self._read(client)
            whos = self._datas(client, [h.name for h in view.held])
            return _view.holders(view, whos, mutex=self.params.kind == "mutex")
        return self._retrying(go)

    def waiters(self) -> list[Waiter]:
        def go() -> list[Waiter]:
            client, _ = self._client()
            view = self._read(client)
            order = self._decide(view).order
            return _view.waiters(order, self._datas(client, [r.name for r in order]))
        return self._retrying(go)

    def stats(self) -> Stats:
        def go() -> Stats:
            return _view.stats(self.name, self.params, self.meta, self._read(self._client()[0]))
        return self._retrying(go)

    def picture(self) -> Picture:
        # The listing and the gate come from one multiRead: one moment.  The
        # nodes' data (who, since) is written once at creation and never
        # changed, so reading it afterwards describes that moment too --
        # unless a listed node left meanwhile.  Then read again; under a
        # churn that outruns PICTURE_TRIES readings, the nodes that left are
        # described by their names alone (host unknown unless it is this
        # machine, since = the reading's time), so the lists still match
        # the counters.
        def go() -> Picture:
            client, _ = self._client()
            for _ in range(PICTURE_TRIES):
                view = self._read(client)
                order = self._decide(view).order
                nodes: list[HeldNode | ReqNode] = [*view.held, *order]
                whos = self._datas(client, [n.name for n in nodes])
                if len(whos) == len(nodes):
                    break
            now = time.time()
            for n in nodes:
                if n.name not in whos:
                    host = HOSTNAME if n.mkey == MACHINE_KEY else ""
                    whos[n.name] = _codec.Who(host, n.mkey, n.pid, n.start, 0, 0, now)
            return Picture(_view.stats(self.name, self.params, self.meta, view),
                           _view.holders(view, whos, mutex=self.params.kind == "mutex"),
                           _view.waiters(order, whos))
        return self._retrying(go)

    # ========================================================= acquiring
    def _check_req(self, req: Req) -> None:
        if req.units.__class__ is not int or not 1 <= req.units <= self.params.capacity:
            raise ValueError(f"units must be in 1..{self.params.capacity}, got {req.units!r}")
        if req.priority.__class__ is not int or not (
                -_codec.MAX_PRIORITY - 1 <= req.priority <= _codec.MAX_PRIORITY):
            raise ValueError(f"priority must be a 32-bit int, got {req.priority!r}")

    def _no_deadlock_detection(self, deadlock_raise: bool) -> None:
        if deadlock_raise:
            # Deadlock detection reduces a graph of every process's threads
            # (/proc); holders on other machines are out of its sight.
            raise unsupported("deadlock='raise' (no deadlock detection across machines)",
                              self.name)

    def _reenter(self, req: Req) -> ZkLease | None:
        """Mutex: the owner's nested acquire (reentrant) or its error."""
        if self.params.kind != "mutex":
            return None
        self._book.fresh()
        with self._book.lock:
            for h in self._book.holds:
                if h.owner == req.owner and h.session.valid():
                    if not self.params.reentrant:
                        # a deadlock of one thread (the facade describes it)
                        raise DeadlockDetected(
                            f"mutex {self.name!r} is already owned by this owner and is not "
                            "reentrant", name=self.name)
                    h.depth += 1
                    return h.lease
        return None

    def take(self, units: int, priority: int, owner: int, tid: int) -> Lease | None:
        req = Req(units, priority, owner, tid)
        self._check_req(req)
        again = self._reenter(req)
        if again is not None:
            return again

        def go() -> ZkLease | None:
            healed = False
            for _ in range(MAX_RACES):
                client, session = self._client()
                # Optimistic: the state as we last knew it.  Safe because the
                # transaction is conditional on the gate and arrivals versions
                # of that state; a refusal from it proves nothing, so read.
                lease = self._take_cached(req)
                if lease is not None:
                    return lease
                view = self._read(client)
                dec = self._decide(view, take=(req.units, req.priority))
                if TAKE not in dec.admissible:
                    if not healed and self._heal_due() and self._heal(client, view):
                        healed = True
                        continue
                    return None
                lease = self._grant(client, session, view, req, dec.free_slots, None,
                                    "t" + secrets.token_hex(6), check_arrivals=True)
                if lease is not None:
                    return lease
            return None  # lost every race: "not now" (take never waits)
        return self._retrying(go)

    def _take_cached(self, req: Req) -> ZkLease | None:
        """take() from the cached view only (no read): the lease, or None
        when the cache is absent, says busy, or is stale (BadVersion)."""
        view = self._cache if not self.params.slots else None
        if view is None:
            return None
        self._cache = None
        dec = self._decide(view, take=(req.units, req.priority))
        if TAKE not in dec.admissible:
            return None
        client, session = self._client()
        return self._grant(client, session, view, req, dec.free_slots, None,
                           "t" + secrets.token_hex(6), check_arrivals=True)

    def _heal_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_heal < HEAL_EVERY:
            return False
        self._last_heal = now
        return True

    def _heal(self, client: Client, view: View) -> int:
        """Delete the nodes of dead processes of this machine; units freed."""
        dead: dict[tuple[int, int], list[str]] = {}
        nodes: list[HeldNode | ReqNode] = [*view.held, *view.reqs]
        for n in nodes:
            if n.mkey != MACHINE_KEY or n.pid == ME.pid or not is_dead(n.pid, n.start):
                continue
            dead.setdefault((n.pid, n.start), []).append(f"{self._q}/{n.name}")
        return sum(self._backend.reap(paths).units for paths in dead.values())

    def wait(self, units: int, priority: int, owner: int, tid: int, deadline: float | None,
             deadlock_raise: bool = False,
             on_slice: Callable[[], None] | None = None) -> Lease | None:
        req = Req(units, priority, owner, tid)
        self._check_req(req)
        self._no_deadlock_detection(deadlock_raise)
        again = self._reenter(req)
        if again is not None:
            return again
        # A blocking caller needs no proof that the units are busy before it
        # queues: try the last known state (one transaction when nobody
        # competes), else queue at once, without the read take() would do.
        # Under contention (this handle's last optimistic try failed, or its
        # last queued request had to wait, a moment ago) the cached state is
        # almost surely stale: queue at once instead of losing a round trip.
        # A queued request granted from its first look is no such sign: a
        # process that always finds the units free would otherwise queue
        # (four requests) for ever instead of taking (one).
        lease = None
        if time.monotonic() - self._queued_at > CONTENDED_FOR:
            tried = self._cache is not None
            try:
                lease = self._take_cached(req)
            except _Retry:
                lease = None
            if lease is None and tried:
                self._queued_at = time.monotonic()
        if lease is not None:
            return lease
        w = _Queued(self, req, None)
        try:
            got = w.run(deadline, on_slice)
            if w.waited:
                self._queued_at = time.monotonic()
            return got
        except BaseException:
            w.abandon()
            raise
        finally:
            w.done()

    def enqueue(self, units: int, priority: int, owner: int, tid: int, deadlock_raise: bool,
                notify: Callable[[], None]) -> Lease | Pending | None:
        """A Pending at once: queueing, deciding and granting happen on the
        backend's stepper thread (the event loop never waits for a server),
        which calls ``notify()`` once the entry is granted or failed."""
        req = Req(units, priority, owner, tid)
        self._check_req(req)
        self._no_deadlock_detection(deadlock_raise)
        if self._closed:
            raise Closed(name=self.name)
        if self.params.kind == "mutex":
            again = self._reenter(req)     # no I/O: the book of this process
            if again is not None:
                return again
        w = _Queued(self, req, notify, self._backend.stepper())
        w.schedule()
        return ZkPending(w)

    def settle(self, pending: Pending) -> Lease | None:
        assert isinstance(pending, ZkPending)
        return pending.queued.settle()

    def cancel(self, pending: Pending) -> None:
        assert isinstance(pending, ZkPending)
        pending.queued.cancel()

    def owner_died(self, owner: int) -> bool:
        if self.params.kind != "mutex":
            return False
        self._book.fresh()
        with self._book.lock:
            for h in self._book.holds:
                if h.owner == owner and h.lease is not None:
                    return h.lease.previous_owner_died
        return False

    # ========================================================= returning
    def _mine(self, lease: Lease | None, owner: int | None = None) -> list[Hold]:
        """This process's holds in the order a release returns them: the
        lease's, then the owner's (the calling thread's or task's) latest
        grant first, then the others, latest first (as on shm: a bare
        release on a slotted semaphore gives back the caller's latest
        unit numbers)."""
        self._book.fresh()
        with self._book.lock:
            holds = list(reversed(self._book.holds))
            first = self._book.by_lease.get(id(lease)) if lease is not None else None
        holds.sort(key=lambda h: (h is not first, h.owner != owner))    # stable: latest first
        return holds

    def _claim(self, units: int, lease: Lease | None, owner: int | None = None
               ) -> list[tuple[Hold, int]]:
        """Choose the holds that return ``units`` (the lease's first) and mark
        them as being released, so that a concurrent release by another
        thread of this process picks others (units are the process's: any
        will do, but never the same one twice)."""
        with self._book.lock:
            chosen: list[tuple[Hold, int]] = []
            need = units
            for h in self._mine(lease, owner):
                if need == 0:
                    break
                if h.releasing:
                    continue
                k = min(h.units, need)
                chosen.append((h, k))
                need -= k
            for h, _ in chosen:
                h.releasing = True
            return chosen

    @staticmethod
    def _unclaim(chosen: list[tuple[Hold, int]]) -> None:
        for h, _ in chosen:
            h.releasing = False

    def release(self, units: int, owner: int, lease: Lease | None = None) -> None:
        if units.__class__ is not int or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        if self.params.kind == "mutex":
            return self._release_mutex(owner, lease)
        if lease is not None and not lease.valid and self._book.by_lease.get(id(lease)) is None:
            raise LeaseLost("the lease is no longer valid", name=self.name)
        chosen = self._claim(units, lease, owner)
        try:
            lost = [h for h, _ in chosen if not h.session.valid()]
            if lost:
                for h in lost:
                    self._forget_lost(h)
                raise LeaseLost(lost[0].session.lost_reason or "session lost", name=self.name)
            post = units - sum(k for _, k in chosen)
            self._retrying(lambda: self._give_back(chosen, post=post, disown=0))
        finally:
            self._unclaim(chosen)
        return None

    def _forget_lost(self, h: Hold) -> None:
        h.tell_lost(h.session.lost_reason or "session lost")
        self._book.drop(h)
        self._conn.doom(h.path)

    def _give_back(self, chosen: list[tuple[Hold, int]], post: int, disown: int) -> None:
        """Delete or shrink the chosen holds; move ``post`` units out of (or
        ``disown`` units into) the unowned count; all in one transaction."""
        client, session = self._client()
        for _attempt in range(MAX_RACES):
            gate_version, gate = None, None
            if post or disown:
                try:
                    data, stat = self._get(client.get_async(self._gate), "reading the gate")
                except Exception as e:
                    if error_name(e) == "NoNodeError":
                        for h, _ in chosen:
                            self._book.drop(h)
                        raise Unlinked(name=self.name) from None
                    raise
                gate = _codec.decode_gate(data, self.params.capacity, self._gate)
                gate_version = stat.version
                if post > gate.unowned:
                    raise ValueError(
                        f"release of {post} unit(s) of {self.name!r} that this process does "
                        f"not hold would exceed the capacity {self.params.capacity} "
                        f"({gate.unowned} unit(s) out without an owner)")
                if gate.unowned + disown - post > self.params.capacity:
                    raise ValueError("disown beyond capacity")
            t = client.transaction()
            shrunk: list[tuple[Hold, str, str, tuple[int, ...], int]] = []
            for h, k in chosen:
                t.delete(h.path)
                if k < h.units:
                    keep = h.units - k
                    slots = h.slots[:keep] if h.slots else ()
                    name = _codec.held_name(keep, slots, MACHINE_KEY, ME.pid, ME.start,
                                            "t" + secrets.token_hex(6))
                    path = f"{self._q}/{name}"
                    who = _codec.encode_who(_codec.Who(HOSTNAME, MACHINE_KEY, ME.pid, ME.start,
                                                       0, h.owner, time.time()))
                    t.create(path, who, ephemeral=True)
                    shrunk.append((h, path, name, slots, keep))
            if gate is not None:
                g = dataclasses.replace(gate, unowned=gate.unowned + disown - post)
                t.set_data(self._gate, _codec.encode_gate(g), version=gate_version)
                if post:
                    t.set_data(self._posts, b"")     # wakes the head: units came free
            if not chosen and gate is None:
                return
            single = gate is None and not shrunk and len(chosen) == 1
            results: list[Any]
            try:
                if single:   # the common release: one plain delete
                    try:
                        results = [client.delete_async(chosen[0][0].path).get(
                            timeout=self._timeout)]
                    except Exception as e:
                        if error_name(e) != "NoNodeError":
                            raise
                        results = [e]
                else:
                    results = t.commit_async().get(timeout=self._timeout)
            except Exception as e:  # noqa: BLE001 - whatever kazoo raised, the outcome is unknown
                self._conn.lose(session, f"a release's outcome is unknown ({error_name(e)})")
                for h, _ in chosen:
                    self._book.drop(h)
                raise LeaseLost("the release's outcome is unknown; the session was abandoned "
                                "so its holds are gone", name=self.name) from None
            names = [error_name(r) for r in results if isinstance(r, Exception)]
            if not names:
                with self._book.lock:
                    for h, k in chosen:
                        if k == h.units:
                            self._book.drop(h)
                    for h, path, name, slots, keep in shrunk:
                        h.path, h.name, h.slots, h.units = path, name, slots, keep
                cache = self._cache
                if cache is not None and gate is None and not shrunk:
                    gone = {h.name for h, _ in chosen}
                    self._cache = dataclasses.replace(
                        cache, held=[x for x in cache.held if x.name not in gone])
                else:
                    self._cache = None
                return
            if "BadVersionError" in names:
                continue
            if "NoNodeError" in names:
                return self._vanished(client, session, chosen, post)
            raise IpcsemError(f"unexpected reply to a release: {names}", name=self.name)
        raise Unavailable("too many concurrent changes to the gate", name=self.name)

    def _vanished(self, client: Client, session: Session, chosen: list[tuple[Hold, int]],
                  post: int) -> None:
        """A hold we meant to return is gone: unlinked, or lost with its session."""
        if client.exists(self._gate) is None:
            for h, _ in chosen:
                self._book.drop(h)
            if post:
                raise Unlinked(name=self.name)
            return
        missing = [h for h, _ in chosen if client.exists(h.path) is None]
        for h in missing:
            self._book.drop(h)
        if not session.valid():
            raise LeaseLost(session.lost_reason or "session lost", name=self.name)
        raise LeaseLost("a hold node of this process was deleted by someone else "
                        "(an operator, or the semaphore was recreated)", name=self.name)

    def _release_mutex(self, owner: int, lease: Lease | None) -> None:
        holds = self._mine(lease)
        mine = [h for h in holds if h.owner == owner]
        if not mine:
            raise NotOwner(f"mutex {self.name!r} is not held by this owner", name=self.name)
        h = mine[0]
        if not h.session.valid():
            self._forget_lost(h)
            raise LeaseLost(h.session.lost_reason or "session lost", name=self.name)
        if h.depth > 1:
            h.depth -= 1
            return

        def go() -> None:
            client, session = self._client()
            for _ in range(MAX_RACES):
                try:
                    data, stat = self._get(client.get_async(self._gate), "reading the gate")
                except Exception as e:
                    if error_name(e) == "NoNodeError":
                        self._book.drop(h)
                        return
                    raise
                gate = _codec.decode_gate(data, 1, self._gate)
                # A normal release repairs the state: the next owner is not told of a death.
                g = dataclasses.replace(gate, dirty=False, held_by=None)
                t = client.transaction()
                t.delete(h.path)
                t.set_data(self._gate, _codec.encode_gate(g), version=stat.version)
                try:
                    results = t.commit_async().get(timeout=self._timeout)
                except Exception as e:  # noqa: BLE001 - whatever kazoo raised: unknown outcome
                    self._conn.lose(session, f"a release's outcome is unknown ({error_name(e)})")
                    self._book.drop(h)
                    raise LeaseLost("the release's outcome is unknown", name=self.name) from None
                names = [error_name(r) for r in results if isinstance(r, Exception)]
                if not names:
                    self._book.drop(h)
                    self._cache = None
                    return
                if "BadVersionError" in names:
                    continue
                if "NoNodeError" in names:
                    return self._vanished(client, session, [(h, 1)], 0)
                raise IpcsemError(f"unexpected reply to a release: {names}", name=self.name)
        self._retrying(go)

    def disown(self, units: int) -> None:
        if units.__class__ is not int or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        chosen = self._claim(units, None)
        try:
            have = sum(k for _, k in chosen)
            if have < units:
                raise ValueError(f"cannot disown {units} unit(s) of {self.name!r}: this process "
                                 f"holds {have}")
            lost = [h for h, _ in chosen if not h.session.valid()]
            if lost:
                for h in lost:
                    self._forget_lost(h)
                raise LeaseLost(lost[0].session.lost_reason or "session lost", name=self.name)
            self._retrying(lambda: self._give_back(chosen, post=0, disown=units))
        finally:
            self._unclaim(chosen)

    # ============================================================ upkeep
    def recover(self, timeout: float | None = None) -> int:
        """Delete the nodes of this machine's dead processes now; the units
        that freed.  (Other machines' dead go when their sessions expire,
        or sooner with ``ipcsem supervise --backend URL`` running there.)
        ``timeout``: how long to retry an unreachable server (default: the
        URL's connect_timeout), then Unavailable.  There is no lock to
        wedge on ZooKeeper."""
        return self._retrying(lambda: self._heal(self._client()[0],
                                                 self._read(self._client()[0])), timeout)

    def check(self, timeout: float | None = None) -> None:
        """Verify the invariant from one quiet snapshot (the gate's version
        unchanged around the listing); Corrupt if broken."""
        def go() -> None:
            client, _ = self._client()
            for _ in range(20):
                view = self._read(client)
                _, after = self._get(client.get_async(self._gate), "reading the gate")
                if after.version == view.version:
                    break
            else:
                return  # too busy to get a quiet snapshot: nothing proven either way
            held = sum(h.units for h in view.held)
            cap = self.params.capacity
            if held + view.gate.unowned > cap:
                raise Corrupt(f"{held} units held + {view.gate.unowned} unowned > capacity {cap}",
                              name=self.name, path=self._q)
            if self.params.slots:
                seen: set[int] = set()
                for h in view.held:
                    if len(h.slots) != h.units or seen & set(h.slots):
                        raise Corrupt(f"slots of {h.name} overlap or are missing",
                                      name=self.name, path=self._q)
                    seen |= set(h.slots)
            elif any(h.slots for h in view.held):
                raise Corrupt("slot numbers on a semaphore without slots", name=self.name,
                              path=self._q)
        self._retrying(go, timeout)

    def close(self) -> None:
        """Stop using this handle: blocked waits on it end with Closed (their
        queue entries removed).  Units this process holds stay held."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._waits):
            w.wake()

    @property
    def closed(self) -> bool:
        return self._closed


class ZkPending(Pending):
    __slots__ = ("queued",)

    def __init__(self, queued: _Queued) -> None:
        self.queued = queued


class _Queued:
    """One queued request: its node, its watches, its admission.  A blocking
    caller runs it in its own thread (``run``); an event-loop caller's is
    stepped by the backend's :class:`Stepper` (``work``)."""

    def __init__(self, handle: ZkHandle, req: Req, notify: Callable[[], None] | None,
                 stepper: Stepper | None = None) -> None:
        self.h = handle
        self.req = req
        self.notify = notify
        self.stepper = stepper
        self.path: str | None = None          # our r_ node
        self.rname: str | None = None
        self.session: Session | None = None
        self.event = threading.Event()
        self.finished = False
        self.waited = False                   # run(): it had to wait for a watch
        self.granting: list[str] | None = None  # hold path of a grant in flight
        # Watches (one-shot exists-watches, by path): requests ahead of us
        # (their ReqNode) and holds (None).  A hold's DELETED lets us grant
        # ourselves from our last view minus that hold, in one round trip,
        # conditional on that view's gate version; a request's DELETED means
        # it was most likely granted, and its hold's name follows from its
        # own, so the next read watches that hold in the same round trip.
        self.last: View | None = None
        self.nodes = handle._q + "/"          # events on paths below it are node watches
        self.watched: dict[str, ReqNode | None] = {}
        self.departed: set[str] = set()
        self.left: list[ReqNode] = []
        self.stale = True
        self.watch_posts = False             # the head also waits for posts (and unlink)
        self.local_watched: set[str] = set()  # nodes of local processes the reaper watches for us
        # event-loop callers: the outcome, handed over under the lock
        self.lock = threading.Lock()
        self.result: ZkLease | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.last_step = 0.0
        self._kick = self._fire               # one bound method: kazoo keeps a set
        handle._conn.add_waker(self._kick)
        with handle._posts_lock:
            handle._posts_waiters.add(self._kick)
        handle._waits.add(self)

    def wake(self) -> None:
        """Make the waiter look again now (close(), session loss)."""
        self._fire(None)

    def _fire(self, event: object = None) -> None:
        # kazoo's thread (or the connection's, on session loss): note what
        # changed, wake the waiter.
        path = getattr(event, "path", None)
        kind = getattr(event, "type", None)
        node = None
        if path is not None and path.startswith(self.nodes):
            if path not in self.watched:
                # A node watch we no longer rely on (a guessed predecessor
                # that was not ours, a hold no longer in our way): waking
                # for it would cost a read for nothing.
                return
            node = self.watched.pop(path, None)
        if kind == "DELETED" and path is not None and path.rsplit("/", 1)[-1].startswith("h_"):
            self.departed.add(path)
        else:
            self.stale = True
            if kind == "DELETED" and node is not None:
                self.left.append(node)
                self.watch_posts = True      # one ahead left: we may be the head now
        self.event.set()
        if self.stepper is not None:
            self.schedule()

    def _hold_path(self, r: ReqNode) -> str | None:
        """The name a request's hold will have (None on slotted semaphores:
        the slots are in the name and not known in advance)."""
        if self.h.params.slots:
            return None
        return f"{self.h._q}/" + _codec.held_name(
            r.units, (), r.mkey, r.pid, r.start, "q" + format(r.seq & 0xFFFFFFFF, "x"))

    def _arm(self, client: Client, paths: dict[str, ReqNode | None]
             ) -> list[tuple[str, ReqNode | None, Future]]:
        """Send exists-watches for paths not watched yet; (path, node, future)."""
        out = []
        for p, node in paths.items():
            if p not in self.watched:
                self.watched[p] = node
                out.append((p, node, client.exists_async(p, watch=self._kick)))
        return out

    def _armed(self, sent: list[tuple[str, ReqNode | None, Future]]) -> bool:
        """Wait for the exists replies; False if some node was gone already."""
        return not self._gone(sent)

    def _gone(self, sent: list[tuple[str, ReqNode | None, Future]]
              ) -> list[tuple[str, ReqNode | None]]:
        """Wait for the exists replies; the (path, node) of those gone already
        (their watch then waits for a creation that never comes: names are
        unique, so gone is gone for good)."""
        gone = []
        for p, node, f in sent:
            if self.h._get(f, "watching") is None:
                self.watched.pop(p, None)
                gone.append((p, node))
        return gone

    def _keep_watching(self, paths: dict[str, ReqNode | None]) -> None:
        """Rely on the watches of ``paths`` only: events of the others are
        ignored from now on (see _fire)."""
        for p in list(self.watched):      # one C call: kazoo's thread pops meanwhile
            if p not in paths:
                self.watched.pop(p, None)

    def _enqueue(self, client: Client, session: Session) -> Reads:
        """Queue a request node; returns the reads sent right behind it (one
        round trip for both: the listing is processed after the create)."""
        h = self.h
        if self.path is not None:
            h._conn.doom(self.path)        # a node of a lost session: gone soon anyway
            self.path = None
        prefix = _codec.request_prefix(self.req.priority, self.req.units, MACHINE_KEY, ME.pid,
                                       ME.start)
        gate = None
        if self.req.priority > 0:
            # may go ahead of queued requests: bump the gate too, so that
            # none of them grants itself from a view without us
            data, stat = h._get(client.get_async(h._gate), "reading the gate")
            gate = (data, stat.version)
        # One transaction: the request and a bump of the arrivals counter
        # (the queue node's version), so a take() deciding from an older
        # listing cannot overtake us.
        t = client.transaction()
        t.create(f"{h._q}/{prefix}", h._who(self.req), ephemeral=True, sequence=True)
        t.set_data(h._q, b"")
        if gate is not None:
            t.set_data(h._gate, gate[0], version=gate[1])
        queued = t.commit_async()
        self.watched, self.departed, self.left = {}, set(), []
        guess, likely_head = self._guess_pred()
        sent = self._arm(client, guess) if guess else []
        # Nobody ahead of us in the last listing we saw: we are likely the
        # head, so the first read already watches the posts.
        self.watch_posts = likely_head
        reads = h._read_start(client, watch=h.posts_watch(session) if self.watch_posts else None)
        results = h._get(queued, "queueing")
        if any(isinstance(r, Exception) for r in results):
            names = [error_name(r) for r in results]
            if "NoNodeError" in names:
                raise Unlinked(name=h.name)
            if "BadVersionError" in names:
                h._read_finish(reads)
                return self._enqueue(client, session)
            raise _Retry(f"queueing: {names}")
        path: str = results[0]
        self.path, self.rname, self.session = path, path.rsplit("/", 1)[1], session
        self._armed(sent)    # processed before the listing: what they found is what it shows
        return reads

    def _guess_pred(self) -> tuple[dict[str, ReqNode | None], bool]:
        """The request we will most likely stand behind (the last one of our
        priority or above in the last listing this handle saw): watched in
        the queueing round trip, under contention this saves the round trip
        of finding and watching it afterwards.  (Not its future hold: a
        watch on a node not yet created fires when it is, a wake-up for
        nothing.)  Only when one stood ahead of us: behind a longer queue
        the guess is mostly wrong (requests queued since that listing stand
        between), a request for nothing, and the round trip it saves is
        hidden in the wait anyway.  Also: whether we are likely the head."""
        h = self.h
        cache = h._cache
        if cache is None:
            return {}, True
        ahead = [r for r in h._decide(cache).order if r.priority >= self.req.priority]
        if len(ahead) != 1:
            return {}, not ahead
        pred = ahead[-1]
        return {f"{h._q}/{pred.name}": pred}, False

    def step(self) -> ZkLease | None:
        """Queue if needed, decide, grant if admissible, else arm the watches."""
        h = self.h
        while True:
            client, session = h._client()
            self.event.clear()
            # Only holds left since our last view: grant from that view minus
            # them (the grant is conditional on the view's gate version).
            optimistic = (self.path is not None and self.session is session
                          and self.last is not None and bool(self.departed) and not self.left)
            if optimistic:
                assert self.last is not None
                gone, self.departed = self.departed, set()
                view = dataclasses.replace(
                    self.last, held=[x for x in self.last.held if f"{h._q}/{x.name}" not in gone])
            else:
                self.departed, self.stale = set(), False
                if self.session is not session or self.path is None:
                    view = h._read_finish(self._enqueue(client, session))
                else:
                    # the holds of requests that left ahead of us, watched
                    # before the read: a hold it finds is in the listing, one
                    # it misses is not (one connection: requests in order).
                    # Only while such holds were still there last time: when
                    # they are short (gone before we read) the watch is a
                    # request for nothing, and a hold the listing does show
                    # is watched after it anyway (head branch below).
                    left, self.left = self.left, []
                    hps = [hp for hp in map(self._hold_path, left) if hp is not None]
                    holds: dict[str, ReqNode | None] = dict.fromkeys(
                        hps if h._prearm_holds else [])
                    sent = self._arm(client, holds)
                    w = h.posts_watch(session) if self.watch_posts else None
                    many = self.last is not None and len(self.last.held) > 32
                    view = h._read_finish(h._read_start(
                        client, watch=w,
                        children_watch=self._kick if many and self.watch_posts else None))
                    self._armed(sent)
                    if hps:
                        listed = {f"{h._q}/{x.name}" for x in view.held}
                        h._prearm_holds = any(hp in listed for hp in hps)
            self.last = view
            me = next((r for r in view.reqs if r.name == self.rname), None)
            if me is None:
                if not optimistic:
                    # Our node is gone though our session lives (an operator,
                    # a mistaken cleanup): queue again rather than wait forever.
                    self.path = None
                self.stale = True
                continue
            dec = h._decide(view)
            if any(a is me for a in dec.admissible):
                ident = "q" + format(me.seq & 0xFFFFFFFF, "x")
                track: list[str] = []
                self.granting = track
                try:
                    # From a view patched with departures only, nobody may have
                    # queued since that view either (a higher priority would
                    # have to go first): the arrivals version is checked too.
                    lease = h._grant(client, session, view, self.req, dec.free_slots, me, ident,
                                     track, check_arrivals=optimistic and me.priority < 0)
                except _Vanished:
                    self.path = None
                    continue
                self.granting = None
                if lease is not None:
                    self.path = None
                    return lease
                self.stale = True
                continue
            if optimistic:
                self.stale = True     # not enough from departures alone: read for real
                continue
            i = next(i for i, r in enumerate(dec.order) if r is me)
            head = head_of(dec.order, dec.admissible)
            if head is me:
                if not self.watch_posts:
                    self.watch_posts = True
                    if h._posts_session is not session:
                        continue   # read again, this time leaving a watch on the posts
                # What admits us: holds leaving, and the requests ahead of us
                # (all admissible, granting themselves) leaving the queue.
                want: dict[str, ReqNode | None] = {f"{h._q}/{r.name}": r for r in dec.order[:i]}
                if len(view.held) <= 32:
                    want.update({f"{h._q}/{x.name}": None for x in view.held})
                elif not self.stale:
                    self.stale = True     # a children watch instead (set by the next read)
                    continue
                self._keep_watching(want)
                missing = self._gone(self._arm(client, want))
                if missing:
                    # one left already: a hold gone is a departure (grant
                    # from this view minus it, as on its DELETED event); a
                    # request gone ahead of us, a reason to read again
                    for p, node in missing:
                        if node is None:
                            self.departed.add(p)
                        else:
                            self.left.append(node)
                    continue
            else:
                self.watch_posts = False
                pred = dec.order[i - 1]
                only: dict[str, ReqNode | None] = {f"{h._q}/{pred.name}": pred}
                self._keep_watching(only)
                if not self._armed(self._arm(client, only)):
                    self.left.append(pred)    # its hold is watched by the next read
                    continue
            self._watch_local(view, me, dec.order)
            return None

    def _watch_local(self, view: View, me: ReqNode, order: list[ReqNode]) -> None:
        """Let the reaper watch the local processes that stand before us."""
        reaper = self.h._backend.reaper()
        if reaper is None:
            return
        ahead = order[:next(i for i, r in enumerate(order) if r is me)]
        before: list[HeldNode | ReqNode] = [*view.held, *ahead]
        now = {f"{self.h._q}/{n.name}": n for n in before
               if n.mkey == MACHINE_KEY and n.pid != ME.pid}
        # New ones first: a process that left one node for another keeps
        # its pidfd (forgetting first would close it and open it again)
        for path in now.keys() - self.local_watched:
            reaper.watch(path, now[path].pid, now[path].start, self)
        for path in self.local_watched - now.keys():
            reaper.forget(path, self)
        self.local_watched = set(now)

    def _unwatch_local(self) -> None:
        if self.local_watched:
            reaper = self.h._backend.reaper()
            if reaper is not None:
                for path in self.local_watched:
                    reaper.forget(path, self)
            self.local_watched = set()

    # ------------------------------------------------------------ blocking
    def run(self, deadline: float | None, on_slice: Callable[[], None] | None
            ) -> ZkLease | None:
        next_slice = time.monotonic() + SLICE
        while True:
            try:
                got = self.step()
            except _Retry:
                got = None
                if deadline is not None and time.monotonic() >= deadline:
                    self.abandon()
                    return None
                time.sleep(RETRY_AFTER)      # the server is busy or failing over
                continue
            if got is not None:
                return got
            self.waited = True
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.abandon()
                    return None
                until = next_slice if deadline is None else min(next_slice, deadline)
                if self.event.wait(max(0.0, until - now)):
                    break
                if time.monotonic() >= next_slice:
                    next_slice = time.monotonic() + SLICE
                    if on_slice is not None:
                        on_slice()
                    break  # re-read: a safety net for a lost watch

    # ---------------------------------------------------------- event loop
    def schedule(self, after: float = 0.0) -> None:
        assert self.stepper is not None
        self.stepper.schedule(self, after)

    def work(self) -> None:
        """One step on the stepper's thread: grant, fail, or arm watches;
        a cancelled entry leaves the queue (and gives back a grant that
        raced in)."""
        with self.lock:
            cancelled, outcome = self.cancelled, self.result is not None or self.error is not None
        if cancelled:
            self._give_up()
            return
        if outcome or self.finished:
            return
        self.last_step = time.monotonic()
        try:
            got = self.step()
        except _Retry:
            self.schedule(RETRY_AFTER)
            return
        except BaseException as e:  # noqa: BLE001 - every outcome goes to the task that waits
            self.abandon()
            self.done()
            with self.lock:
                self.error = e
            self._tell()
            return
        if got is None:
            return
        self.done()
        with self.lock:
            if not self.cancelled:
                self.result = got
                got = None
        if got is not None:
            self._give_back(got)     # cancelled while we granted: not the caller's
        else:
            self._tell()

    def _tell(self) -> None:
        if self.notify is not None:
            try:
                self.notify()
            except Exception:  # the caller's callback: log, never break the stepper
                log.exception("ipcsem: notify() failed")

    def _give_back(self, lease: ZkLease) -> None:
        try:
            self.h.release(lease.units, self.req.owner, lease)
        except IpcsemError as e:     # lost meanwhile, or unlinked: nothing left to give
            log.debug("ipcsem: giving back a cancelled grant: %s", e)

    def _give_up(self) -> None:
        self.abandon()
        self.done()
        with self.lock:
            lease, self.result = self.result, None
        if lease is not None:
            self._give_back(lease)

    def settle(self) -> ZkLease | None:
        """The lease once granted (the entry is gone then), else None; the
        error the request ended with, raised.  Never does network I/O: a
        settle long after the last step asks the stepper to look again (the
        safety net for a lost watch)."""
        with self.lock:
            if self.result is not None:
                lease, self.result = self.result, None
                self.finished = True
                return lease
            if self.error is not None:
                raise self.error
        if not self.finished and time.monotonic() - self.last_step > SLICE:
            self.stale = True
            self.schedule()
        return None

    def cancel(self) -> None:
        """Leave the queue (on the stepper's thread, a moment later); a
        grant not yet settled is given back."""
        with self.lock:
            if self.cancelled:
                return
            self.cancelled = True
        self.schedule()

    # ------------------------------------------------------------- leaving
    def abandon(self) -> None:
        """Leave the queue (and drop a grant whose reply we did not wait for)."""
        self.finished = True
        paths = [p for p in [self.path, *(self.granting or [])] if p]
        self.path = self.granting = None
        if not paths:
            return
        try:
            client, _session = self.h._conn.current()
        except IpcsemError:
            for p in paths:
                self.h._conn.doom(p)
            return
        for p in paths:
            try:
                client.delete(p)
            except Exception as e:  # noqa: BLE001 - any kazoo error: the node dies with the session
                if error_name(e) != "NoNodeError":
                    self.h._conn.doom(p)
        # a grant that raced in: never seen by the caller, so not ours
        with self.h._book.lock:
            for hold in list(self.h._book.holds):
                if hold.path in paths:
                    self.h._book.drop(hold)

    def done(self) -> None:
        self.finished = True
        self.h._conn.remove_waker(self._kick)
        with self.h._posts_lock:
            self.h._posts_waiters.discard(self._kick)
        self.h._waits.discard(self)
        self._unwatch_local()


__all__ = ["Req", "ZkHandle", "ZkPending", "unsupported"]
