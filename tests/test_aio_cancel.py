"""AsyncSemaphore cancellation leaves nothing behind (issue 10).

``task.cancel()``, ``asyncio.timeout()`` and ``wait_for()`` at every moment
of an acquire -- before it queues, while it is queued, as the grant races
in -- leave no queue entry and no unit, and the cancelled task sees
CancelledError.  The other side is always another process (a sync holder,
sync churners, an AsyncAgent's tasks); the oracle is a fresh process that
must be able to take every unit afterwards.
"""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys

import pytest

import ipcsem
from ipcsem.testing import (
    assert_consistent,
    can_take_all,
    held_by,
    wait_for_waiters,
)

pytestmark = pytest.mark.timeout(180)



def mine(sem) -> tuple[int, int]:
    """(units this process holds, queue entries it has) per the ledger."""
    units = held_by(sem).get(os.getpid(), 0)
    return units, sum(1 for w in sem.waiters() if w.pid == os.getpid())


# ----------------------------------------------------------- each moment
def test_cancel_before_queueing_leaves_nothing(name, holder_factory):
    """Cancelled before its first step runs: it never reaches the ledger."""
    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=1)
        holder_factory(name)
        t = asyncio.ensure_future(sem.acquire())
        t.cancel()                        # before the task ever ran
        with pytest.raises(asyncio.CancelledError):
            await t
        assert mine(sem) == (0, 0)
        assert_consistent(sem, available=0, waiting=0)
        sem.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["cancel", "wait_for", "timeout"])
def test_cancel_while_queued_leaves_nothing(name, holder_factory, how):
    if how == "timeout" and not hasattr(asyncio, "timeout"):
        pytest.skip("asyncio.timeout() is new in Python 3.11")

    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=1)
        holder = holder_factory(name)
        if how == "cancel":
            t = asyncio.ensure_future(sem.acquire())
            await wait_for_waiters(sem, 1, pid=os.getpid())
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        elif how == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sem.acquire(), 0.3)
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await sem.acquire()
        assert mine(sem) == (0, 0)
        assert_consistent(sem, available=0, holders={holder: 1}, waiting=0)
        holder.release()
        assert await sem.acquire(timeout=5)     # the queue is not blocked by a ghost
        sem.release()
        assert_consistent(sem, available=1, held=0, waiting=0)
        sem.close()

    asyncio.run(main())
    assert can_take_all(name, 1)


def test_timeout_leaves_nothing_and_hold_raises_timeout(name, holder_factory):
    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=2)
        holder = holder_factory(name, units=2)
        assert await sem.acquire(timeout=0.2) is False
        assert await sem.acquire(timeout=0) is False
        with pytest.raises(ipcsem.Timeout) as e:
            async with sem.hold(2, timeout=0.2):
                pass
        assert (e.value.name, e.value.units, e.value.timeout) == (name, 2, 0.2)
        assert_consistent(sem, available=0, holders={holder: 2}, waiting=0)
        sem.close()

    asyncio.run(main())


def test_cancel_as_the_grant_races_in_gives_the_units_back(name):
    """Cancel at every loop iteration around the grant: the notifier's
    wake-up, the task's settle.  Whichever way each race goes, the task
    either has the units (acquire returned True) or saw CancelledError and
    the units went back -- never a unit held by a cancelled task."""
    rounds = 40

    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=1)
        other = ipcsem.Semaphore(name)
        outcomes = {"granted": 0, "cancelled": 0}
        for i in range(rounds):
            assert other.acquire(timeout=5)
            t = asyncio.ensure_future(sem.acquire(timeout=10))
            await wait_for_waiters(sem, 1)
            other.release()                    # grant -> process bell -> notifier -> task
            for _ in range(i % 8):             # cancel 0..7 loop iterations later
                await asyncio.sleep(0)
            accepted = t.cancel()
            try:
                got = await t
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
                assert mine(sem) == (0, 0)
            else:
                assert got is True
                assert not accepted, "cancel() accepted, yet acquire returned True"
                outcomes["granted"] += 1
                sem.release()
            assert_consistent(sem, available=1, held=0, waiting=0)
        sem.close()
        other.close()
        return outcomes

    outcomes = asyncio.run(main())
    assert outcomes["cancelled"] > 0, outcomes      # the races did happen both ways
    assert can_take_all(name, 1)


def test_a_cancel_after_the_wakeup_is_not_lost(name):
    """The deterministic race: the notifier has woken the task (its wait's
    ``rung``); the task is cancelled before it runs again.  cancel() returns
    True, so the task must see CancelledError (and the units go back)."""

    def the_wait(task):
        coro = task.get_coro()
        while hasattr(coro, "cr_frame"):  # find _grant's frame and its wait
            frame = coro.cr_frame
            if frame is not None and hasattr(frame.f_locals.get("w"), "rung"):
                return frame.f_locals["w"]
            coro = coro.cr_await
        return None

    async def main():
        sem = ipcsem.AsyncSemaphore(name, capacity=1)
        other = ipcsem.Semaphore(name)
        lost = []
        for delay in range(3):
            assert other.acquire(timeout=5)
            t = asyncio.ensure_future(sem.acquire(timeout=10))
            await wait_for_waiters(sem, 1)
            while the_wait(t) is None:
                await asyncio.sleep(0)
            w = the_wait(t)
            other.release()
            while not w.rung:            # the notifier has woken it
                await asyncio.sleep(0)
            for _ in range(delay):
                await asyncio.sleep(0)
            if not t.cancel():               # too late: it had finished, holding the unit
                assert await t is True
                sem.release()
                continue
            try:
                await t
                lost.append(delay)
                sem.release()
            except asyncio.CancelledError:
                pass
            assert_consistent(sem, available=1, held=0, waiting=0)
        sem.close()
        other.close()
        return lost

    assert asyncio.run(main()) == []


# ------------------------------------------------------------- storms
CHURN = r"""
import sys, time, ipcsem
s = ipcsem.Semaphore(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
n = 0
while time.monotonic() < end:
    if s.acquire(timeout=0.5):
        time.sleep(0.001)
        s.release()
        n += 1
    time.sleep(0.001)
print(n, flush=True)
"""


def start_churners(name: str, n: int, seconds: float, procs) -> list[subprocess.Popen]:
    """Sync processes that take and give back a unit of ``name`` every ~2 ms."""
    made = [procs([sys.executable, "-c", CHURN, name, str(seconds)], stdout=subprocess.PIPE,
                  text=True) for _ in range(n)]
    for p in made:
        assert p.stdout.readline().strip() == "ready"
    return made


def test_cancellation_storm_across_processes(name, procs, aio_agent_factory):
    """Hundreds of tasks wait, random ones are cancelled (task.cancel,
    wait_for and asyncio.timeout deadlines) while sync processes and an
    async process's tasks take and release; afterwards no task of ours
    holds or waits, the cancelled ones saw CancelledError, and the counts
    are exact (check(), then a fresh process takes every unit)."""
    capacity, tasks, seconds = 3, 300, 4.0
    sem0 = ipcsem.Semaphore(name, capacity=capacity)
    churners = start_churners(name, 2, seconds + 1, procs)
    agent = aio_agent_factory()
    agent.cmd("A", f"open {name}")
    agent.ctl(f"swarm {name} 100 -")
    rng = random.Random(os.getpid())

    async def main():
        sem = ipcsem.AsyncSemaphore(name)
        stats = {"granted": 0, "cancelled": 0, "timeouts": 0, "lost": 0}
        cancelled: set[asyncio.Task] = set()

        stop = False

        async def worker(i: int) -> None:
            kind = i % 3
            while not stop:        # a worker ends by cancellation (or a lost one: B2)
                if kind == 0:
                    got = await sem.acquire()
                elif kind == 1:
                    try:
                        got = await asyncio.wait_for(sem.acquire(), rng.uniform(0.001, 0.05))
                    except asyncio.TimeoutError:
                        stats["timeouts"] += 1
                        continue
                else:
                    got = await sem.acquire(timeout=rng.uniform(0.0, 0.05))
                if got:
                    stats["granted"] += 1
                    try:
                        await asyncio.sleep(rng.uniform(0, 0.002))   # cancelled here too
                    finally:
                        sem.release()

        loop = asyncio.get_running_loop()
        live = [loop.create_task(worker(i)) for i in range(tasks)]
        end = loop.time() + seconds
        while loop.time() < end:
            await asyncio.sleep(rng.uniform(0, 0.004))
            t = rng.choice(live)
            if t.cancel():
                cancelled.add(t)
            live.remove(t)
            live.append(loop.create_task(worker(rng.randrange(3))))
        agent.ctl("swarm-cancel")
        stop = True
        for t in live:
            if t.cancel():
                cancelled.add(t)
        results = await asyncio.gather(*cancelled, return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                stats["cancelled"] += 1
            else:
                # a worker whose cancel() was accepted ends only by CancelledError
                raise AssertionError(f"a cancelled task ended with {r!r}")
        assert mine(sem) == (0, 0), "a cancelled task left units or a queue entry"
        sem.close()
        return stats

    stats = asyncio.run(main())
    for p in churners:
        p.wait(30)
    st = agent.ctl("swarm-state")
    assert st["errors"] == [] and st["running"] == 0, st
    assert stats["cancelled"] > tasks // 2 and stats["granted"] > 0, stats
    assert_consistent(sem0, available=capacity, held=0, holders=0, waiting=0, unowned=0)
    assert can_take_all(name, capacity)
    sem0.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cancelled_async_agent_tasks_leave_nothing_in_another_process(name, aio_agent_factory,
                                                                      loop):
    """The waiting tasks are another process's: its cancels are seen from
    here only through the ledger.  Then the same number queued again are
    all served, one after another, from one released unit (each swarm task
    gives its unit back at once)."""
    from ipcsem.testing import wait_until

    if loop == "uvloop":
        pytest.importorskip("uvloop")
    sem = ipcsem.Semaphore(name, capacity=2)
    assert sem.acquire(2)
    agent = aio_agent_factory(loop=loop)
    agent.cmd("A", f"open {name}")
    agent.ctl(f"swarm {name} 200 -")
    wait_until(lambda: len(sem.waiters()) == 200, timeout=20, what="200 queued tasks")
    assert agent.ctl("swarm-cancel") == 200
    wait_until(lambda: agent.ctl("swarm-state")["running"] == 0, what="every task ended")
    st = agent.ctl("swarm-state")
    assert (st["granted"], st["cancelled"], st["errors"]) == (0, 200, []), st
    assert_consistent(sem, available=0, holders={os.getpid(): 2}, waiting=0)
    agent.ctl(f"swarm {name} 200 -")
    wait_until(lambda: len(sem.waiters()) == 200, timeout=20, what="200 queued tasks")
    sem.release(1)
    wait_until(lambda: agent.ctl("swarm-state")["running"] == 0, timeout=30,
               what="all 200 served by one unit")
    st = agent.ctl("swarm-state")
    assert (st["granted"], st["cancelled"], st["errors"]) == (200, 200, []), st
    assert_consistent(sem, available=1, holders={os.getpid(): 1}, waiting=0)
    sem.release()
    assert can_take_all(name, 2)
    sem.close()
