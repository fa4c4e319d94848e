"""Dead and paused processes, with real SIGKILL and SIGSTOP."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_until

from ipcsem._errors import LeaseLost
from ipcsem._records import Params
from ipcsem._zk import LocalSupervisor


def req(units=1, priority=0):
    """The seam's plain acquire arguments: (units, priority, owner, tid)."""
    tid = threading.get_native_id()
    return (units, priority, tid, tid)


def P(capacity, **kw):
    kw.setdefault("initial", capacity)
    return Params(capacity=capacity, **kw)


def test_sigkilled_holder_units_come_back_to_a_local_waiter_fast(backend, agents, url):
    h = backend.open("k", P(1))
    a = agents(url, "k")
    assert a.call({"op": "take"})["lease"] is not None
    w = agents(url, "k")
    w.send({"op": "wait", "timeout": 20})
    wait_until(lambda: len(h.waiters()) == 1)
    time.sleep(0.2)            # let the waiter arm its pidfd watch
    t0 = time.time()
    a.kill()
    r = w.reply()
    assert r["lease"] is not None
    # A local waiter reaps through the pidfd: far below the 2 s session timeout.
    assert r["at"] - t0 < 0.5, r["at"] - t0


def test_sigkilled_waiter_does_not_block_the_queue(backend, agents, url):
    h = backend.open("kw", P(1))
    first = h.take(*req())
    dead = agents(url, "kw")
    dead.send({"op": "wait", "timeout": 30})
    wait_until(lambda: len(h.waiters()) == 1)
    behind = agents(url, "kw")
    behind.send({"op": "wait", "timeout": 30})
    wait_until(lambda: len(h.waiters()) == 2)
    dead.kill()
    h.release(1, 0, first)
    assert behind.reply()["lease"] is not None
    assert all(w.pid != dead.pid for w in h.waiters())


def test_supervisor_reaps_a_killed_holder_in_milliseconds(backend, agents, url):
    h = backend.open("sup", P(2))
    a = agents(url, "sup")
    assert a.call({"op": "take", "units": 2})["lease"] is not None
    watching = threading.Event()
    recovered = []
    with LocalSupervisor(url, ["sup"], on_watching=watching.set,
                         on_recovered=lambda p: recovered.append(time.monotonic())):
        assert watching.wait(10)
        wait_until(lambda: sup_sees(h), 5)
        t0 = time.monotonic()
        a.kill()
        wait_until(lambda: recovered, 5)
        assert recovered[0] - t0 < 0.25
        assert h.available == 2
    s = h.stats()
    assert s.recovered_units == 2 and s.recoveries == 1


def sup_sees(h) -> bool:
    return h.available == 0


def test_nonblocking_take_heals_a_dead_local_holder(backend, agents, url):
    h = backend.open("heal", P(1))
    a = agents(url, "heal")
    assert a.call({"op": "take"})["lease"] is not None
    a.kill()
    # no waiter, no supervisor: take() itself looks for dead local holders
    lease = wait_until(lambda: h.take(*req()), 2)
    assert lease is not None


def test_sigstopped_holder_loses_its_lease_and_is_told(backend, agents, url):
    h = backend.open("stop", P(1))
    a = agents(url, "stop")
    r = a.call({"op": "take"})
    assert a.call({"op": "valid", "lease": r["lease"]})["valid"]
    a.call({"op": "guard", "lease": r["lease"]})
    a.stop()
    # the session expires at the server (3 s + up to a tick): another process gets the unit
    got = h.wait(*req(), time.monotonic() + 10)
    assert got is not None and got.token > r["token"]
    granted_at = time.time()
    a.cont()
    v = a.call({"op": "valid", "lease": r["lease"]})
    assert v["valid"] is False
    res = a.call({"op": "release", "lease": r["lease"]})
    assert res["error"] == "LeaseLost"
    # the holder's guard thread notices on wake (the lease's deadline,
    # checked lazily, had passed before the grant: "valid" said False above)
    g = wait_until(lambda: (lambda g: g if g["invalid_at"] is not None else None)(
        a.call({"op": "guarded"})), 5, 0.05)
    assert g["lost"], "on_lost ran"
    assert got.valid
    h.release(1, 0, got)
    assert granted_at > 0
    # the resumed process goes on with a new session
    again = a.call({"op": "wait", "timeout": 10})
    assert again["lease"] is not None and again["token"] > got.token
    assert a.call({"op": "valid", "lease": again["lease"]})["valid"]


def test_lease_deadline_is_within_the_session_timeout(backend):
    h = backend.open("dl", P(1))
    lease = h.take(*req())
    left = lease.deadline - time.monotonic()
    assert 0.5 < left < 3.0      # 3 s session timeout, minus the margins
    time.sleep(1.5)              # heartbeats keep extending it
    assert lease.valid and lease.deadline - time.monotonic() > 0.5
    h.release(1, 0, lease)


def test_release_of_a_lost_lease_raises(backend):
    h = backend.open("lost", P(1))
    lease = h.take(*req())
    s = backend.conn.session()
    backend.conn.lose(s, "test: the session was declared lost")
    assert not lease.valid
    with pytest.raises(LeaseLost):
        h.release(1, 0, lease)
    # the process abandoned the session: the unit is free again
    again = wait_until(lambda: h.take(*req()), 5)
    assert again.token > lease.token and again.valid


def test_recover_returns_a_dead_local_holders_units(backend, agents, url):
    h = backend.open("rec", P(3))
    a = agents(url, "rec")
    assert a.call({"op": "take", "units": 2})["lease"] is not None
    a.kill()
    assert h.recover() == 2
    assert h.available == 3 and h.recover() == 0


def test_release_after_unlink_is_quiet(backend):
    h = backend.open("gone", P(1))
    lease = h.take(*req())
    backend.unlink("gone")
    h.release(1, 0, lease)           # the units are moot: nothing to give back to


def test_no_server_is_unavailable_within_the_connect_timeout():
    from ipcsem._backend import forget, resolve
    from ipcsem._errors import Unavailable
    from ipcsem._zk.server import free_ports
    url = f"zookeeper://127.0.0.1:{free_ports(1)[0]}/x?connect_timeout=1"
    t0 = time.monotonic()
    with pytest.raises(Unavailable):
        resolve(url).open("x", P(1))
    assert time.monotonic() - t0 < 5
    forget(url)


def test_a_forked_child_holds_what_it_was_granted(url):
    """The parent has the semaphore open (its backend, and its books, are
    inherited by a fork); the child's first grant is the child's, and its
    release finds it (it used to land in the inherited book, which the
    child's next look emptied)."""
    import os

    import ipcsem

    parent = ipcsem.Semaphore("forked", capacity=2, backend=url)
    pid = os.fork()
    if pid == 0:                      # the child: exit status says what happened
        code = 1
        try:
            s = ipcsem.Semaphore("forked", backend=url)
            if s.acquire(timeout=10):
                s.release()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.available == 2
    parent.close()


def test_unlink_of_a_semaphore_uses_its_backend(url):
    """Semaphore.unlink() removes the name where the semaphore lives (it
    used to ask the shared-memory backend: NotFound, name left)."""
    import ipcsem

    s = ipcsem.Semaphore("unlinked-here", capacity=1, backend=url)
    assert "unlinked-here" in ipcsem.names(url)
    s.unlink()
    assert "unlinked-here" not in ipcsem.names(url)
    s.close()
