"""Leader faults on a real 3-node ensemble on loopback (slower: marked).

Session timeout 4 s here: a leader election must fit inside the lease
margin for the "leases survive where the session survives" half.
"""
from __future__ import annotations

import time

import pytest

from ipcsem._zk import server as zkserver

pytestmark = pytest.mark.ensemble


@pytest.fixture
def ens():
    e = zkserver.Ensemble(3)
    yield e
    for s in e.servers:
        try:
            s.cont()
        except (ProcessLookupError, AssertionError):
            pass
    e.close()


def url_of(servers, chroot="/ipcsem", timeout=4):
    hosts = ",".join(f"127.0.0.1:{s.client_port}" for s in servers)
    return f"zookeeper://{hosts}{chroot}?session_timeout={timeout}"


def test_leader_sigkill_leases_survive(ens, agents):
    url = url_of(ens.servers)
    holder = agents(url, "l", {"capacity": 1, "initial": 1})
    r = holder.call({"op": "take"})
    holder.call({"op": "guard", "lease": r["lease"]})
    leader = ens.leader()
    leader.kill()
    new = ens.wait_leader_among([s for s in ens.servers if s is not leader])
    assert new is not leader
    time.sleep(2.0)        # heartbeats go on through the new leader
    assert holder.call({"op": "valid", "lease": r["lease"]})["valid"]
    assert holder.call({"op": "guarded"})["invalid_at"] is None
    assert holder.call({"op": "release", "lease": r["lease"]}) == {}
    other = agents(url, "l")
    got = other.call({"op": "take"})
    assert got["lease"] is not None and got["token"] > r["token"]


def test_follower_loss_client_reconnects_with_its_session(ens, agents):
    followers = ens.followers()
    url = url_of(followers)
    holder = agents(url, "f", {"capacity": 1, "initial": 1})
    r = holder.call({"op": "take"})
    holder.call({"op": "guard", "lease": r["lease"]})
    # kill each follower in turn: whichever the client used, it reconnects
    # to the other one with the same session
    for f in followers:
        f.kill()
        time.sleep(1.5)
        assert holder.call({"op": "valid", "lease": r["lease"]})["valid"]
        f.start()
        ens.wait_serving(30)
    assert holder.call({"op": "guarded"})["invalid_at"] is None
    assert holder.call({"op": "release", "lease": r["lease"]}) == {}


def test_frozen_leader_busy_holder_notices_before_anyone_else_acquires(ens, agents):
    leader = ens.leader()
    others = [s for s in ens.servers if s is not leader]
    # The holder talks only to the leader: when it freezes, the TCP
    # connection stays open and kazoo alone would stay CONNECTED forever.
    holder = agents(url_of([leader]), "z", {"capacity": 1, "initial": 1})
    r = holder.call({"op": "take"})
    holder.call({"op": "guard", "lease": r["lease"]})
    leader.stop()
    frozen_at = time.time()
    ens.wait_leader_among(others, 60)
    waiter = agents(url_of(others), "z")
    got = waiter.call({"op": "wait", "timeout": 40}, timeout=60)
    assert got["lease"] is not None, got
    g = holder.call({"op": "guarded"})
    assert g["invalid_at"] is not None, "the holder was never told"
    # never two valid holders: the holder's lease was invalid before the grant
    assert g["invalid_at"] < got["at"], (g["invalid_at"] - frozen_at, got["at"] - frozen_at)
    assert g["invalid_at"] - frozen_at < 4.0     # within the session timeout
    assert got["token"] > r["token"]
    assert g["lost"]
    res = holder.call({"op": "release", "lease": r["lease"]})
    assert res.get("error") == "LeaseLost"
    leader.cont()
