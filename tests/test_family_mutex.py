"""The robust mutex (issue 9 §2), with real processes and real SIGKILLs."""
import os

import pytest
from family_procs import ChildError, children, ledger_view, wait_queued, wait_until  # noqa: F401

import ipcsem


def owner_of(m) -> tuple[int, int] | None:
    """(pid, owner_tid) of the holder, from holders()."""
    hs = m.holders()
    assert len(hs) <= 1
    return (hs[0].pid, hs[0].owner_tid) if hs else None


def ledger_state(m):
    h = ledger_view(m.name).header
    return (h.available, h.mx_owner, h.mx_owner_tid, h.mx_depth, h.mx_owner_died,
            tuple((x.pid, x.units) for x in m.holders()))


def test_owned_by_the_acquiring_thread_notowner_elsewhere_nothing_changes(name, children):
    m = ipcsem.Mutex(name)
    a = children(f"m = ipcsem.Mutex({name!r})")
    main_tid = a.run("threading.get_native_id()")
    assert a.run("m.acquire()") is True
    assert m.locked()
    assert owner_of(m) == (a.pid, main_tid)
    before = ledger_state(m)
    # Another process:
    with pytest.raises(ipcsem.NotOwner) as e:
        m.release()
    assert isinstance(e.value, ipcsem.IpcsemError) and isinstance(e.value, RuntimeError)
    assert e.value.name == name
    assert ledger_state(m) == before
    # Another thread of the owning process:
    a.thread("m.release()", name="other")
    wait_until(lambda: a.run("threads['other'][0]") != "running", what="the thread ran")
    assert a.run("threads['other'][:2]") == ("err", "NotOwner")
    assert ledger_state(m) == before
    # A third process cannot take it either, without waiting:
    b = children(f"m = ipcsem.Mutex({name!r})")
    assert b.run("m.acquire(False)") is False
    assert b.run("m.acquire(timeout=0)") is False
    assert ledger_state(m) == before
    # The owner can; then it is free for anyone.
    a.run("m.release()")
    assert not m.locked() and owner_of(m) is None
    assert b.run("m.acquire(False)") is True
    assert owner_of(m) == (b.pid, b.run("threading.get_native_id()"))
    # A release of a mutex nobody holds is NotOwner too, and changes nothing.
    b.run("m.release()")
    with pytest.raises(ipcsem.NotOwner):
        m.release()
    assert ledger_state(m)[:5] == (1, 0, 0, 0, 0)


def test_thread_owned_across_threads_of_one_process_holders_show_the_tid(name, children):
    m = ipcsem.Mutex(name)
    a = children(f"m = ipcsem.Mutex({name!r})")
    a.thread("m.acquire(); time.sleep(0.5); result = threading.get_native_id()", name="t1")
    wait_until(lambda: owner_of(m) is not None, what="t1 owns it")
    pid, tid = owner_of(m)
    assert pid == a.pid and tid != a.run("threading.get_native_id()")
    assert tid in {int(t) for t in os.listdir(f"/proc/{a.pid}/task")}
    # status reads the same (a read-only view: what status tools and root use)
    from ipcsem._shm.segment import read_view

    hdr = read_view(name).snapshot.header
    assert hdr.mx_owner_tid == tid
    # main thread of the owner's process: not the owner
    with pytest.raises(ChildError) as e:
        a.run("m.release()")
    assert e.value.type == "NotOwner"


def test_non_reentrant_reacquire_by_the_owner_raises_instead_of_hanging(name, children):
    ipcsem.Mutex(name)
    a = children(f"m = ipcsem.Mutex({name!r})")
    a.run("m.acquire()")
    for call in ("m.acquire()", "m.acquire(True, 5)", "m.acquire(timeout=-1)", "m.acquire(False)",
                 "m.hold().__enter__()", "m.__enter__()"):
        with pytest.raises(ChildError) as e:
            a.run(call, timeout=10)     # a hang fails here, not a self-deadlock
        assert e.value.type == "DeadlockDetected", call
        assert "IpcsemError" in e.value.mro
    assert a.run("(m.locked(), m.holders()[0].units)") == (True, 1)
    a.run("m.release()")
    assert a.run("m.locked()") is False


def test_reentrant_nests_and_frees_at_depth_zero(name, children):
    m = ipcsem.Mutex(name, reentrant=True)
    a, b = children(f"m = ipcsem.Mutex({name!r}, reentrant=True)", n=2)
    tokens = a.run("result = [m.hold().__enter__().token for _ in range(3)]")
    assert len(set(tokens)) == 1, "nesting is one grant"
    assert ledger_view(m.name).header.mx_depth == 3
    for left in (2, 1):
        a.run("m.release()")
        assert m.locked() and b.run("m.acquire(False)") is False
        assert ledger_view(m.name).header.mx_depth == left
    a.run("m.release()")
    assert not m.locked()
    assert ledger_view(m.name).header.mx_depth == 0 and ledger_view(m.name).header.mx_owner_tid == 0
    # The next owner's nested grants carry its own grant's token (layout 3
    # keeps no copy of it: the last token handed out, capacity being 1).
    b_tokens = b.run("result = [m.hold().__enter__().token for _ in range(2)]")
    assert b_tokens[0] == b_tokens[1] > tokens[0]
    assert ledger_view(m.name).header.mx_depth == 2
    with pytest.raises(ChildError) as e:
        a.run("m.release()")
    assert e.value.type == "NotOwner"
    b.run("m.release(); m.release()")
    assert not m.locked()


def test_owner_killed_next_owners_see_previous_owner_died_until_a_normal_release(name, children):
    m = ipcsem.Mutex(name)
    setup = f"m = ipcsem.Mutex({name!r})"
    a, b, c, d = children(setup, n=4)
    assert a.run("m.acquire()") is True
    # b is blocked when a dies: it heals a's mutex itself (no supervisor).
    b.begin("lease = m.hold(timeout=30).__enter__(); "
            "result = (lease.previous_owner_died, m.previous_owner_died)")
    wait_queued(m, b)
    a.kill()
    assert b.result(15) == (True, True)
    assert owner_of(m)[0] == b.pid
    assert ledger_view(m.name).header.mx_owner_died == 1
    # b dies holding it too, never having released: still not repaired.
    b.kill()
    # c never blocks: its non-blocking attempts heal (issue 9 §4).
    wait_until(lambda: c.run("m.acquire(False)"), timeout=8, what="c gets the mutex")
    assert c.run("m.previous_owner_died") is True
    # c repairs and releases normally: the next owner sees a healthy mutex.
    c.run("m.release()")
    assert ledger_view(m.name).header.mx_owner_died == 0
    assert d.run("lease = m.hold().__enter__(); "
                 "result = (lease.previous_owner_died, m.previous_owner_died)") == (False, False)
    d.run("m.release()")
    m.check()


def test_reentrant_owner_killed_at_depth_two(name, children):
    m = ipcsem.Mutex(name, reentrant=True)
    a, b = children(f"m = ipcsem.Mutex({name!r}, reentrant=True)", n=2)
    a.run("m.acquire(); m.acquire()")
    a.kill()
    m.recover()
    assert m.stats().recovered_units == 1 and not m.locked()
    assert b.run("(m.acquire(False), m.previous_owner_died)") == (True, True)
    assert ledger_view(m.name).header.mx_depth == 1
    b.run("m.release()")
    assert not m.locked()


def test_waiters_are_served_fifo(name, children, tmp_path):
    log = str(tmp_path / "order")
    m = ipcsem.Mutex(name)
    m.acquire()
    waiters = children(f"m = ipcsem.Mutex({name!r})", n=4)
    for w in waiters:
        w.begin(f"m.acquire()\n"
                f"with open({log!r}, 'a') as f: f.write(str(os.getpid()) + ' ')\n"
                f"m.release()")
        wait_queued(m, w)
    assert [w.pid for w in m.waiters()] == [w.pid for w in waiters]
    m.release()
    for w in waiters:
        w.result(15)
    with open(log) as f:
        assert [int(x) for x in f.read().split()] == [w.pid for w in waiters]


def test_hold_times_out_with_timeout_error(name, children):
    ipcsem.Mutex(name)
    a = children(f"m = ipcsem.Mutex({name!r})")
    a.run("m.acquire()")
    m = ipcsem.Mutex(name)
    with pytest.raises(ipcsem.Timeout) as e, m.hold(timeout=0.2):
        pass
    assert isinstance(e.value, TimeoutError) and e.value.name == name
    assert m.waiters() == []


def test_owner_thread_exits_without_release_next_owner_sees_it(name, children):
    m = ipcsem.Mutex(name)
    a = children(f"m = ipcsem.Mutex({name!r})")
    a.run("t = threading.Thread(target=m.acquire); t.start(); t.join()")
    assert m.locked()
    b = children(f"m = ipcsem.Mutex({name!r})")
    # Like a robust pthread mutex (EOWNERDEAD): the owner is gone, the next
    # acquirer gets it and is told.
    assert b.run("m.acquire(timeout=5)", timeout=20) is True
    assert b.run("m.previous_owner_died") is True


def test_self_deadlock_error_carries_a_deadlock_record(name):
    m = ipcsem.Mutex(name)
    m.acquire()
    try:
        with pytest.raises(ipcsem.DeadlockDetected) as e:
            m.acquire()
        dl = e.value.deadlock
        assert isinstance(dl, ipcsem.Deadlock)
        assert dl.processes == (os.getpid(),) and dl.semaphores == (name,)
    finally:
        m.release()
