"""AsyncSemaphore/AsyncMutex with real processes (issue 10): order across
sync threads and async tasks of different processes, ownership per task,
SIGKILL of a process whose loop has tasks holding and waiting, slots,
tokens, and deadlock="raise" across processes."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest

import ipcsem
from ipcsem.testing import (
    AsyncAgentError,
    assert_consistent,
    can_take_all,
    held_by,
    kill_and_wait_recovered,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


# ------------------------------------------------------------------ order
def test_fifo_and_priority_across_sync_threads_and_async_tasks(name, aio_agent_factory):
    """Sync threads of this process and async tasks of another queue in an
    interleaved order with mixed priorities; one unit is handed on at a
    time, and each grant goes to exactly the waiter the sync rules name
    (higher priority first, FIFO within one).  The oracle is who finished,
    not the ledger's own list."""
    sem = ipcsem.Semaphore(name, capacity=1)
    assert sem.acquire()
    agent = aio_agent_factory()
    agent.cmd("open", f"open {name}")
    plan = [("t", 0), ("a", 0), ("t", 5), ("a", 5), ("a", 0), ("t", 0), ("a", 9), ("t", 5)]
    done: dict[str, bool] = {}
    threads: dict[str, threading.Thread] = {}
    for i, (kind, prio) in enumerate(plan):
        who = f"{kind}{i}"
        if kind == "t":
            t = threading.Thread(target=lambda w=who, p=prio: done.__setitem__(
                w, sem.acquire(timeout=60, priority=p)))
            threads[who] = t
            t.start()
        else:
            agent.start_cmd(who, f"acquire {name} 1 60 {prio}")
        wait_until(lambda n=i + 1: len(sem.waiters()) == n, what=f"{who} queued")
    expected = [f"{k}{i}" for i, (k, p) in sorted(enumerate(plan), key=lambda e: (-e[1][1], e[0]))]
    served = []
    holder = None                  # None: this process's main thread holds the unit
    for _ in plan:
        if holder is None or holder in threads:
            sem.release()          # threads of this process share its unit
        else:
            agent.cmd(holder, f"release {name} 1")
        finished = wait_until(lambda: [w for w in expected if w not in served and (
            (w in threads and not threads[w].is_alive()) or
            (w not in threads and agent.answered(w, 0.01)))], timeout=15)
        assert len(finished) == 1, f"one release let {finished} through"
        holder = finished[0]
        served.append(holder)
        if holder in threads:
            assert done[holder] is True
        else:
            assert agent.result(holder) is True
        assert_consistent(sem, available=0, waiting=len(plan) - len(served))
    assert served == expected
    if holder in threads:
        sem.release()
    else:
        agent.cmd(holder, f"release {name} 1")
    assert_consistent(sem, available=1, held=0, waiting=0)


def test_a_two_unit_head_is_not_overtaken_by_one_unit_tasks(name, aio_agent_factory):
    sem = ipcsem.Semaphore(name, capacity=2)
    assert sem.acquire(2)
    agent = aio_agent_factory()
    agent.cmd("o", f"open {name}")
    agent.start_cmd("big", f"acquire {name} 2 30")
    wait_until(lambda: len(sem.waiters()) == 1)
    agent.start_cmd("small", f"acquire {name} 1 30")
    wait_until(lambda: len(sem.waiters()) == 2)
    sem.release(1)                       # one free: the 1-unit request must not take it
    assert not agent.answered("small", 0.5) and not agent.answered("big", 0.01)
    sem.release(1)
    assert agent.result("big") is True
    assert not agent.answered("small", 0.3)
    agent.cmd("big", f"release {name} 2")
    assert agent.result("small") is True


# -------------------------------------------------------------- ownership
def test_tasks_share_the_process_holdings(name):
    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=3)
        got = asyncio.Event()

        async def taker():
            assert await sem.acquire(2)
            got.set()

        await asyncio.ensure_future(taker())
        await got.wait()
        assert held_by(sem) == {os.getpid(): 2}
        sem.release(1)                                   # another task gives one back
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: ipcsem.Semaphore(name).release(1))  # a thread the other
        assert_consistent(sem, available=3, held=0, waiting=0)
        sem.close()

    asyncio.run(main())


def test_async_mutex_is_owned_by_the_task(name, aio_agent_factory):
    async def main():
        m = ipcsem.AsyncMutex(name)
        owner_has_it = asyncio.Event()
        let_go = asyncio.Event()

        async def owner():
            assert await m.acquire(timeout=5)
            owner_has_it.set()
            await let_go.wait()
            m.release()

        t = asyncio.ensure_future(owner())
        await owner_has_it.wait()
        with pytest.raises(ipcsem.NotOwner):
            m.release()                                  # another task
        sync = ipcsem.Mutex(name)
        def from_a_thread() -> None:
            with pytest.raises(ipcsem.NotOwner):
                sync.release()

        await asyncio.get_running_loop().run_in_executor(None, from_a_thread)  # another thread
        assert m.locked()
        let_go.set()
        await t
        assert not m.locked()
        assert await m.acquire(timeout=1)
        with pytest.raises(ipcsem.DeadlockDetected):
            await m.acquire(timeout=1)                    # non-reentrant: its owner again
        m.release()
        sync.close()
        m.close()

    asyncio.run(main())
    agent = aio_agent_factory()
    agent.cmd("a", f"mutex {name}")
    assert agent.cmd("a", f"acquire {name} 1 5") is True
    other = ipcsem.Mutex(name)
    with pytest.raises(ipcsem.NotOwner):
        other.release()                                   # another process
    with pytest.raises(AsyncAgentError) as e:
        agent.cmd("b", f"release {name}")                 # another task of its process
    assert e.value.type == "NotOwner"
    agent.cmd("a", f"release {name}")
    assert other.acquire(timeout=5)
    other.release()
    other.close()


def test_reentrant_async_mutex_nests_per_task(name):
    async def main():
        m = ipcsem.AsyncMutex(name, reentrant=True)
        assert await m.acquire() and await m.acquire()
        m.release()
        assert m.locked()
        m.release()
        assert not m.locked()
        m.close()

    asyncio.run(main())


def test_previous_owner_died_after_the_owner_process_is_killed(name, aio_agent_factory):
    agent = aio_agent_factory()
    agent.cmd("a", f"mutex {name}")
    lease = agent.cmd("a", f"hold {name} 1 5")
    assert lease["previous_owner_died"] is False

    async def main():
        m = ipcsem.AsyncMutex(name)
        asyncio.get_running_loop().call_later(0.2, agent.kill)   # SIGKILL the owner's process
        assert await m.acquire(timeout=30) is True  # recovered by our waiting, no supervisor
        assert m.previous_owner_died is True        # (asked by the owning task)
        m.release()
        async with m.hold(timeout=5) as lease2:    # a normal release repaired it
            assert lease2.previous_owner_died is False
        m.close()

    asyncio.run(main())


# ------------------------------------------------------------------ kills
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigkill_of_a_loop_with_tasks_holding_and_waiting(name, aio_agent_factory, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    sem = ipcsem.Semaphore(name, capacity=4)
    agent = aio_agent_factory(loop=loop)
    agent.cmd("o", f"open {name}")
    agent.cmd("h1", f"hold {name} 2")
    agent.cmd("h2", f"hold {name} 1")
    assert sem.acquire(1)                       # full now
    agent.ctl(f"swarm {name} 50 -")
    agent.start_cmd("big", f"acquire {name} 3")
    wait_until(lambda: len(sem.waiters()) == 51, what="51 queued tasks")
    got = []
    t = threading.Thread(target=lambda: got.append(sem.acquire(timeout=30)))
    t.start()                                   # a sync waiter of ours, behind them
    wait_until(lambda: len(sem.waiters()) == 52, what="our thread queued")
    assert_consistent(sem, available=0, holders={agent: 3, os.getpid(): 1}, waiting=52)
    # nobody calls recover(): our blocked thread's healing (or its pidfd watch) does
    kill_and_wait_recovered(sem, agent, recover=False, timeout=10)
    t.join(30)
    assert got == [True]
    # nothing of the dead process is left: not its 3 units, not its 51 entries
    assert_consistent(sem, available=2, holders={os.getpid(): 2}, waiting=0)
    sem.release(2)
    assert can_take_all(name, 4)


def test_killed_waiters_units_come_back_to_a_waiting_task(name, holder_factory):
    holder = holder_factory(name, capacity=2, units=2)

    async def main():
        sem = ipcsem.AsyncSemaphore(name)
        t = asyncio.ensure_future(sem.acquire(2, timeout=20))
        await asyncio.sleep(0.2)
        holder.kill()
        assert await t is True                  # the waiting task's slice recovered them
        sem.release(2)
        assert_consistent(sem, available=2, held=0, waiting=0)
        sem.close()

    asyncio.run(main())


# -------------------------------------------------------- slots, tokens
def test_slots_and_tokens_across_an_async_and_a_sync_process(name, aio_agent_factory):
    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=4, slots=True)
        agent = aio_agent_factory()
        agent.cmd("o", f"open {name}")
        theirs = agent.cmd("h", f"hold {name} 2")
        async with sem.hold(2) as mine:
            assert sorted(set(mine.slots) | set(theirs["slots"])) == [0, 1, 2, 3]
            assert mine.token > theirs["token"]
            assert sem.try_acquire() is False
        agent.cmd("h", f"unhold {name}")
        async with sem.hold(4) as all4:
            assert sorted(all4.slots) == [0, 1, 2, 3] and all4.token > mine.token
        assert_consistent(sem, available=4, held=0, waiting=0)
        sem.close()

    asyncio.run(main())


def test_disown_hands_units_off_as_the_sync_class_does(name, aio_agent_factory):
    """Semaphore.disown's contract: disowned units stay taken, owned by
    nobody; the disowner's death returns only what it still owned; an
    unowned post (a release beyond what one owns) returns them; disowning
    more than one owns is ValueError and changes nothing."""
    sem = ipcsem.Semaphore(name, capacity=3)
    agent = aio_agent_factory()
    agent.cmd("o", f"open {name}")
    assert agent.cmd("p", f"acquire {name} 2") is True
    with pytest.raises(AsyncAgentError) as e:
        agent.cmd("p", f"disown {name} 3")              # owns only 2
    assert e.value.type == "ValueError"
    assert_consistent(sem, available=1, held=2, unowned=0)
    agent.cmd("q", f"disown {name} 1")                  # another task: the process's units
    assert_consistent(sem, available=1, held=1, unowned=1)
    kill_and_wait_recovered(sem, agent, timeout=10)
    # only the owned unit came back: the disowned one is out without an owner
    assert_consistent(sem, available=2, held=0, unowned=1)
    sem.release(1)                                      # an unowned post brings it back
    assert_consistent(sem, available=3, held=0, unowned=0)
    assert can_take_all(name, 3)

    async def in_a_task():
        a = ipcsem.AsyncSemaphore(name)
        assert await a.acquire(2)
        a.disown(2)
        with pytest.raises(ValueError):
            a.disown(1)                                 # owns none now
        with pytest.raises(ValueError):
            a.disown(4)                                 # beyond the capacity
        assert_consistent(a, available=1, held=0, unowned=2)
        a.release(2)                                    # unowned posts
        assert_consistent(a, available=3, held=0, unowned=0)
        a.close()

    asyncio.run(in_a_task())
    sem.close()


def test_policy_is_shared_with_the_sync_class(name):
    sync = ipcsem.Semaphore(name, capacity=2, fair=False)
    with pytest.raises(ipcsem.PolicyMismatch):
        ipcsem.AsyncSemaphore(name, capacity=2, fair=True)
    with pytest.raises(ipcsem.CapacityMismatch):
        ipcsem.AsyncSemaphore(name, capacity=3)
    a = ipcsem.AsyncSemaphore(name)
    assert a.params == sync.params and a.capacity == 2
    a.close()
    sync.close()


# ------------------------------------------------------------ deadlocks
DEADLOCK = r"""
import asyncio, sys, time, ipcsem
mode, mine, want, dl = sys.argv[1:5]
release_after = float(sys.argv[5]) if len(sys.argv) > 5 else None
def report(what):
    print(what, flush=True)
if mode == "sync":
    a, b = ipcsem.Semaphore(mine), ipcsem.Semaphore(want)
    assert a.acquire()
    report("holding")
    sys.stdin.readline()
    try:
        got = b.acquire(timeout=12, deadlock=dl)
        report("granted" if got else "timeout")
    except ipcsem.DeadlockDetected as e:
        a.release()              # the victim backs off: its unit lets the other through
        report("DeadlockDetected")
    sys.stdin.readline()
    sys.exit(0)
async def main():
    a, b = ipcsem.AsyncSemaphore(mine), ipcsem.AsyncSemaphore(want)
    assert await a.acquire()
    report("holding")
    sys.stdin.readline()          # nothing else runs on this loop meanwhile
    if release_after is not None:
        async def later():        # another task of the loop that will release
            await asyncio.sleep(release_after)
            a.release()
        asyncio.ensure_future(later())
    try:
        got = await b.acquire(timeout=12, deadlock=dl)
        report("granted" if got else "timeout")
    except ipcsem.DeadlockDetected as e:
        a.release()              # the victim backs off: its unit lets the other through
        report("DeadlockDetected")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


def _pair(procs, x, y, first, second):
    """Two processes: P holds x and wants y, Q holds y and wants x."""
    ps = []
    for (mode, dl, *rest), (mine, want) in ((first, (x, y)), (second, (y, x))):
        p = procs([sys.executable, "-c", DEADLOCK, mode, mine, want, dl, *rest],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
        ps.append(p)
    for p in ps:
        assert p.stdout.readline().strip() == "holding", p.stderr.read()
    for p in ps:
        p.stdin.write("go\n")
        p.stdin.flush()
    return ps


def _outcomes(ps):
    out = []
    for p in ps:
        out.append(p.stdout.readline().strip())
        p.stdin.write("end\n")
        p.stdin.flush()
    for p in ps:
        p.wait(30)
    return out


@pytest.fixture
def two(names):
    x, y = names(), names()
    keep = [ipcsem.Semaphore(n, capacity=1) for n in (x, y)]
    yield x, y
    for k in keep:
        k.recover()            # the processes exited holding their own units
        assert_consistent(k, available=1, held=0, waiting=0)
        k.close()


def test_async_deadlock_raise_across_processes(two, procs):
    """Each loop has nothing to do but wait: the later waiter raises,
    leaves the queue; the other is granted once the victim exits."""
    ps = _pair(procs, *two, ("async", "raise"), ("async", "raise"))
    out = _outcomes(ps)
    assert sorted(out) == ["DeadlockDetected", "granted"], out


def test_no_false_deadlock_when_the_loop_has_a_task_that_will_release(two, procs):
    """Q's loop has another task that releases Q's unit in 2 s: no
    deadlock; both end up granted."""
    ps = _pair(procs, *two, ("async", "raise"), ("async", "raise", "2.0"))
    out = _outcomes(ps)
    assert out[0] == "granted", out
    assert out[1] in ("granted", "timeout"), out       # Q's own unit went back first


def test_deadlock_with_a_sync_process_as_for_the_sync_classes(two, procs):
    ps = _pair(procs, *two, ("sync", "raise"), ("async", "raise"))
    out = _outcomes(ps)
    assert sorted(out) == ["DeadlockDetected", "granted"], out


def test_an_async_wait_mode_waiter_closes_a_cycle_like_a_sync_one(two, procs):
    ps = _pair(procs, *two, ("sync", "raise"), ("async", "wait"))
    out = _outcomes(ps)
    assert out[0] == "DeadlockDetected", out


def test_control_a_sync_wait_mode_waiter_closes_the_cycle(two, procs):
    ps = _pair(procs, *two, ("sync", "raise"), ("sync", "wait"))
    out = _outcomes(ps)
    assert out[0] == "DeadlockDetected", out
