"""The backend contract on a real ZooKeeper server, through the seam only."""
from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import wait_until

from ipcsem._errors import (
    CapacityMismatch,
    Corrupt,
    DeadlockDetected,
    NotFound,
    NotOwner,
    PolicyMismatch,
    Unlinked,
)
from ipcsem._records import Params


def req(units=1, priority=0, owner=None):
    """The seam's plain acquire arguments: (units, priority, owner, tid)."""
    tid = threading.get_native_id()
    return (units, priority, tid if owner is None else owner, tid)


def P(capacity, **kw):
    kw.setdefault("initial", capacity)
    return Params(capacity=capacity, **kw)


def test_counting_and_atomic_multi_unit(backend):
    h = backend.open("c", P(3))
    assert h.created and h.available == 3
    a = h.take(*req(2))
    assert a is not None and a.units == 2
    assert h.take(*req(2)) is None          # all or nothing: 1 free, 2 asked
    b = h.take(*req(1))
    assert b is not None and h.available == 0
    h.release(2, 0, a)
    h.release(1, 0, b)
    assert h.available == 3
    h.check()


def test_two_unit_head_is_never_overtaken(backend, agents, url):
    h = backend.open("fifo", P(2))
    mine = h.take(*req(1))
    big = agents(url, "fifo")
    big.send({"op": "wait", "units": 2, "timeout": 20})
    wait_until(lambda: len(h.waiters()) == 1)
    # one unit is free, but taking it would overtake the 2-unit head
    for _ in range(20):
        assert h.take(*req(1)) is None
    h.release(1, 0, mine)
    got = big.reply()
    assert got["lease"] is not None
    assert h.take(*req(1)) is None and h.available == 0


def test_priorities_then_fifo(backend, agents, url):
    h = backend.open("prio", P(1))
    lease = h.take(*req())
    order = []
    ags = []
    for prio in (0, 5, 0, 5):
        a = agents(url, "prio")
        a.send({"op": "wait", "priority": prio, "timeout": 30})
        ags.append((prio, a))
        n = len(ags)
        wait_until(lambda n=n: len(h.waiters()) == n)
    ws = h.waiters()
    assert [w.priority for w in ws] == [5, 5, 0, 0]
    assert [w.pid for w in ws] == [ags[1][1].pid, ags[3][1].pid, ags[0][1].pid, ags[2][1].pid]
    assert all(w.host and w.units == 1 and w.since > 0 for w in ws)
    h.release(1, 0, lease)
    remaining = list(ags)
    tokens = []
    while remaining:
        done = wait_until(lambda: [x for x in remaining if x[1].ready()], 20)
        assert len(done) == 1, "one unit: one grant at a time"
        prio, a = done[0]
        r = a.reply()
        order.append(prio)
        tokens.append(r["token"])
        remaining.remove(done[0])
        assert a.call({"op": "release", "lease": r["lease"]}) == {}
    assert order == [5, 5, 0, 0]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4


def test_token_increases_in_grant_order_even_when_priority_reorders(backend, agents, url):
    """The low-priority request node is created first (smaller czxid) but
    granted last: the token comes from the grant, so it is still larger."""
    h = backend.open("tok", P(1))
    first = h.take(*req())
    low = agents(url, "tok")
    low.send({"op": "wait", "priority": 0, "timeout": 30})
    wait_until(lambda: len(h.waiters()) == 1)
    high = agents(url, "tok")
    high.send({"op": "wait", "priority": 9, "timeout": 30})
    wait_until(lambda: len(h.waiters()) == 2)
    h.release(1, 0, first)
    rh = high.reply()
    assert not low.ready(0.2)
    high.call({"op": "release", "lease": rh["lease"]})
    rl = low.reply()
    assert first.token < rh["token"] < rl["token"]


def test_timeout_leaves_no_queue_entry(backend):
    h = backend.open("to", P(1))
    lease = h.take(*req())
    t0 = time.monotonic()
    assert h.wait(*req(), time.monotonic() + 0.3) is None
    assert 0.25 < time.monotonic() - t0 < 2
    assert h.waiters() == []
    h.release(1, 0, lease)
    assert h.available == 1


def test_wait_exception_leaves_nothing(backend):
    h = backend.open("exc", P(1))
    lease = h.take(*req())

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        h.wait(*req(), None, on_slice=boom)
    assert h.waiters() == []
    h.release(1, 0, lease)


def test_over_release_and_unowned_posts(backend):
    h = backend.open("post", P(2, initial=0))    # producer/consumer: starts empty
    assert h.available == 0
    h.release(2, 0)                              # a producer posts two items
    assert h.available == 2
    with pytest.raises(ValueError):
        h.release(1, 0)                          # beyond the capacity
    a = h.take(*req(2))
    h.disown(2)                                  # consumer keeps the items: no owner
    assert h.available == 0 and h.stats().unowned == 2
    h.release(1, 0)                              # an unowned post returns one
    assert h.available == 1
    assert a.valid


def test_settings_fixed_at_creation(backend):
    backend.open("cap", P(2))
    with pytest.raises(CapacityMismatch) as e:
        backend.open("cap", P(3))
    assert e.value.existing == 2 and e.value.requested == 3
    with pytest.raises(PolicyMismatch) as e:
        backend.open("cap", P(2, slots=True))
    assert e.value.setting == "slots"
    with pytest.raises(NotFound):
        backend.open("nope", None)
    again = backend.open("cap", None)
    assert again.params.capacity == 2 and not again.created


def test_racing_creators_exactly_one_creates(backend, url, agents):
    ags = [agents() for _ in range(4)]
    for a in ags:
        a.send({"op": "open", "url": url, "name": "race", "params": {"capacity": 2,
                                                                     "initial": 2}})
    created = [a.reply()["created"] for a in ags]
    assert created.count(True) == 1


def test_holders_and_names_and_unlink(backend, agents, url):
    h = backend.open("u", P(2))
    a = agents(url, "u")
    assert a.call({"op": "take", "units": 2})["lease"] is not None
    hs = h.holders()
    assert len(hs) == 1 and hs[0].pid == a.pid and hs[0].units == 2 and hs[0].host
    w = agents(url, "u")
    w.send({"op": "wait", "timeout": 30})
    wait_until(lambda: len(h.waiters()) == 1)
    assert "u" in backend.names()
    backend.unlink("u")
    assert w.reply()["error"] == "Unlinked"
    assert "u" not in backend.names()
    with pytest.raises(Unlinked):
        h.take(*req())
    with pytest.raises(NotFound):
        backend.unlink("u")
    fresh = backend.open("u", P(1))            # a new semaphore under the old name
    assert fresh.created and fresh.available == 1


def test_slots_lowest_free_first(backend):
    h = backend.open("gpu", P(4, slots=True))
    a = h.take(*req(2))
    b = h.take(*req(1))
    assert a.slots == (0, 1) and b.slots == (2,)
    h.release(2, 0, a)
    c = h.take(*req(3))
    assert c.slots == (0, 1, 3)
    assert sorted(s for x in h.holders() for s in x.slots) == [0, 1, 2, 3]
    h.release(1, 0, b)
    h.release(3, 0, c)
    h.check()


def test_mutex_owner_and_reentrancy(backend):
    m = backend.open("mx", Params(capacity=1, initial=1, kind="mutex"))
    lease = m.take(*req(owner=1))
    assert lease is not None and not lease.previous_owner_died
    with pytest.raises(NotOwner):
        m.release(1, 2)                       # another owner
    with pytest.raises(DeadlockDetected):
        m.take(*req(owner=1))                  # not reentrant: a deadlock of one thread
    m.release(1, 1)
    r = backend.open("rmx", Params(capacity=1, initial=1, kind="mutex", reentrant=True))
    a = r.take(*req(owner=7))
    b = r.take(*req(owner=7))
    assert a is b
    r.release(1, 7)
    assert r.available == 0                   # still held at depth 1
    r.release(1, 7)
    assert r.available == 1


def test_mutex_previous_owner_died(backend, agents, url):
    m = backend.open("died", Params(capacity=1, initial=1, kind="mutex"))
    a = agents(url, "died")
    assert a.call({"op": "take", "owner": 5})["lease"] is not None
    w = agents(url, "died")
    w.send({"op": "wait", "owner": 6, "timeout": 20})
    wait_until(lambda: len(m.waiters()) == 1)
    a.kill()
    r = w.reply()
    assert r["died"] is True
    w.call({"op": "release", "lease": r["lease"], "owner": 6})   # repaired
    lease = m.take(*req(owner=1))
    assert not lease.previous_owner_died


def test_enqueue_settle_cancel(backend):
    h = backend.open("ev", P(1))
    first = h.take(*req())
    rang = threading.Event()
    pending = h.enqueue(*req(), False, rang.set)
    assert not hasattr(pending, "token")       # a Pending, not a Lease
    assert h.settle(pending) is None
    h.release(1, 0, first)
    assert rang.wait(5)
    got = wait_until(lambda: h.settle(pending), 5)
    assert got.units == 1
    h.release(1, 0, got)
    other = h.take(*req())
    p2 = h.enqueue(*req(), False, lambda: None)
    wait_until(lambda: len(h.waiters()) == 1)
    h.cancel(p2)                               # never blocks: the stepper leaves the queue
    wait_until(lambda: h.waiters() == [])
    h.release(1, 0, other)


def test_foreign_node_is_corrupt_not_a_crash(backend):
    h = backend.open("bad", P(2))
    client, _ = backend.conn.current()
    q = f"{backend.conn.root}/gens/{h.meta.gen}/q"
    client.create(f"{q}/not-ours", b"junk")
    with pytest.raises(Corrupt):
        h.take(*req())
    client.delete(f"{q}/not-ours")
    client.create(f"{q}/h_999_-_0000000000000000_1_1_x", b"{}")
    with pytest.raises(Corrupt):
        h.stats()


def test_threads_of_one_process_share_its_units(backend):
    h = backend.open("thr", P(2))
    inside = []
    peak = [0]
    lock = threading.Lock()

    def worker():
        for _ in range(15):
            lease = h.wait(*req(), time.monotonic() + 20)
            with lock:
                inside.append(1)
                peak[0] = max(peak[0], len(inside))
            time.sleep(0.001)
            with lock:
                inside.pop()
            h.release(1, 0, lease)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert peak[0] <= 2 and h.available == 2
    assert h.stats().acquisitions == 60


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_child_holds_nothing(backend):
    h = backend.open("fork", P(1))
    lease = h.take(*req())
    pid = os.fork()
    if pid == 0:
        try:
            # the child is another process: releasing is an unowned post
            # beyond capacity, and it must not touch the parent's node
            try:
                h.release(1, 0)
                os._exit(1)
            except ValueError:
                os._exit(0)
        except BaseException:  # noqa: BLE001 - the child's every outcome is its exit status
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lease.valid and h.available == 0
    h.release(1, 0, lease)


def test_a_waiting_consumer_wakes_on_a_post(backend, agents, url):
    """The post wakes the waiter through its watch, not its 0.5 s re-read:
    three rounds, each well under the re-read period."""
    h = backend.open("pc", P(1, initial=0))
    consumer = agents(url, "pc")
    for pause in (0.3, 0.45, 0.15, 0.6):      # posts at different phases of the re-read
        consumer.send({"op": "wait", "timeout": 20})
        wait_until(lambda: len(h.waiters()) == 1)
        time.sleep(pause)
        t0 = time.time()
        h.release(1, 0)                 # the producer's post
        got = consumer.reply()
        assert got["lease"] is not None
        assert got["at"] - t0 < 0.12, got["at"] - t0
        consumer.call({"op": "release", "lease": got["lease"]})
        # the consumer's release returns the unit to the pool: take it back
        # unowned so the next round waits again
        lease = h.take(*req())
        h.disown(1)
        assert lease.valid and h.available == 0


def test_one_multiread_reads_what_two_reads_read(backend, agents, url):
    """A decision's reads are one multiRead (gate, queue version, children);
    a server before 3.6 gets two pipelined reads instead.  Both must see the
    same state, and a handle on the two-read path must decide the same
    (here: a 2-unit head still not overtaken)."""
    h = backend.open("mr", P(2))
    mine = h.take(*req(1))
    big = agents(url, "mr")
    big.send({"op": "wait", "units": 2, "timeout": 20})
    wait_until(lambda: len(h.waiters()) == 1)
    client, _ = h._conn.current()
    assert h._conn.multiread is True            # the test server (3.8) answered one
    one = h._read(client)
    h._conn.multiread = False
    two = h._read(client)
    assert (one.gate, one.version, one.arrivals) == (two.gate, two.version, two.arrivals)
    assert sorted(one.reqs) == sorted(two.reqs) and sorted(one.held) == sorted(two.held)
    assert [r.units for r in one.reqs] == [2] and [x.units for x in one.held] == [1]
    for _ in range(20):
        assert h.take(*req(1)) is None           # decided from two reads
    h.release(1, 0, mine)
    assert big.reply()["lease"] is not None
    assert h.take(*req(1)) is None and h.available == 0
    assert h._conn.multiread is False            # never switched back by itself
