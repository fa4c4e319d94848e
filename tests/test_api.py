"""The pinned public API of the facade: names, name validation, the errors
and their facts, and the shared-memory backend's fixed table sizes.  What a
semaphore does (on every backend) is tests/contract/."""
import pickle

import pytest

import ipcsem
from ipcsem.testing import assert_consistent

PINNED = {
    "CapacityMismatch", "Closed", "Corrupt", "Deadlock", "DeadlockDetected", "Holder",
    "IpcsemError", "Lease", "LeaseLost", "LedgerFull", "Mutex", "NotFound", "NotOwner", "Params",
    "PermissionDenied", "PolicyMismatch", "Semaphore", "Stats", "Timeout", "Unavailable",
    "Unlinked", "Waiter", "Wedged", "find_deadlocks", "names", "unlink",
}


def test_pinned_names_are_exported():
    assert set(ipcsem.__all__) >= PINNED
    for n in PINNED:
        assert getattr(ipcsem, n) is not None


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "x" * 201, ".", "..", "a:b", "é", "-dash",
                                 "_under"])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        ipcsem.Semaphore(bad, capacity=1)
    with pytest.raises(ValueError):
        ipcsem.Mutex(bad)
    with pytest.raises(ValueError):
        ipcsem.unlink(bad)


def test_name_type():
    with pytest.raises(TypeError):
        ipcsem.Semaphore(b"bytes", capacity=1)


DEADLOCK = ipcsem.Deadlock((11, 12), ("a", "b"), "11 and 12 wait for each other",
                           ("pid 11 holds 1 of 'a'",))

# Each error built from its fields, the built-in it is also, and its facts.
ERRORS = [
    (ipcsem.NotFound("nm", hint="create it first"), FileNotFoundError,
     dict(name="nm", hint="create it first")),
    (ipcsem.Timeout("nm", 2, 0.5), TimeoutError, dict(name="nm", units=2, timeout=0.5)),
    (ipcsem.PolicyMismatch("nm", "slots", False, True), ValueError,
     dict(name="nm", setting="slots", existing=False, requested=True)),
    (ipcsem.CapacityMismatch("nm", 3, 4), ValueError,
     dict(name="nm", setting="capacity", existing=3, requested=4)),
    (ipcsem.Corrupt("bad magic", name="nm", path="/dev/shm/ipcsem.nm"), ipcsem.IpcsemError,
     dict(name="nm", reason="bad magic", path="/dev/shm/ipcsem.nm")),
    (ipcsem.LedgerFull("holders", 8, name="nm"), ipcsem.IpcsemError,
     dict(name="nm", what="holders", limit=8)),
    (ipcsem.PermissionDenied("not yours", name="nm", path="/p", owner="bob", mode=0o600),
     PermissionError, dict(name="nm", reason="not yours", path="/p", owner="bob", mode=0o600)),
    (ipcsem.Unlinked(name="nm"), ipcsem.IpcsemError, dict(name="nm")),
    (ipcsem.Closed(name="nm"), ValueError, dict(name="nm")),
    (ipcsem.NotOwner("not the owner", name="nm"), RuntimeError, dict(name="nm")),
    (ipcsem.DeadlockDetected(DEADLOCK, name="nm"), ipcsem.IpcsemError,
     dict(name="nm", deadlock=DEADLOCK)),
    (ipcsem.Wedged(4711, name="nm", waited=2.0), TimeoutError,
     dict(name="nm", holder_pid=4711, waited=2.0)),
    (ipcsem.LeaseLost("session expired", name="nm"), ipcsem.IpcsemError,
     dict(name="nm", reason="session expired")),
    (ipcsem.Unavailable("no server", name="nm", url="zookeeper://h:1"), ConnectionError,
     dict(name="nm", reason="no server", url="zookeeper://h:1")),
]


@pytest.mark.parametrize("err, builtin, facts", ERRORS,
                         ids=[type(e).__name__ for e, _b, _f in ERRORS])
def test_errors_carry_their_facts_and_pickle(err, builtin, facts):
    assert isinstance(err, ipcsem.IpcsemError) and isinstance(err, builtin)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    if not isinstance(err, (ipcsem.NotOwner, ipcsem.Unavailable)):   # given text / a URL
        assert "nm" in str(err)
    for key, value in facts.items():
        assert getattr(err, key) == value, key
        assert getattr(back, key) == value, key


def test_a_late_name_fills_in_the_message():
    err = ipcsem.LedgerFull("waiters", 4)
    assert err.name is None
    err.with_name("gpu")
    assert err.name == "gpu" and "'gpu'" in str(err)
    err.with_name("other")                       # never overwrites a known name
    assert err.name == "gpu"


def test_ledger_full_is_a_clear_error(name, agents):
    s = ipcsem.Semaphore(name, capacity=1, max_holders=1, max_waiters=1)
    a = agents()
    a.open(name)
    assert a.try_acquire(1) is True
    with pytest.raises(ipcsem.LedgerFull) as e:
        s.acquire(timeout=0.05)  # no holder slot for this process to queue in
    assert (e.value.name, e.value.what, e.value.limit) == (name, "holders", 1)
    assert s.available == 0 and s.waiters() == []
    assert_consistent(s, available=0, holders={a: 1}, waiting=0)
    a.close()
    # a full table of the dead heals itself before saying "full"
    assert s.acquire(timeout=5)
    s.check()
