"""The async section of ipcsem.testing: each helper works, and fails when
it should (a helper that cannot fail proves nothing)."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

import ipcsem
from ipcsem.testing import (
    resources,
    run_checked,
    wait_for_waiters,
    wait_until_async,
    watch_loop_gaps,
)


# ------------------------------------------- the docs/asyncio.md example
async def my_worker(name):                 # the code under test
    async with ipcsem.AsyncSemaphore(name) as lease:
        return lease.units


def test_my_worker_waits_without_blocking_the_loop(ipcsem_name, holder_factory, ipcsem_loop):
    holder = holder_factory(ipcsem_name, capacity=1)       # another process holds it

    async def scenario():
        sem = ipcsem.AsyncSemaphore(ipcsem_name)
        async with watch_loop_gaps() as gaps:              # a 1 ms ticker task
            task = asyncio.ensure_future(my_worker(ipcsem_name))
            await wait_for_waiters(sem, 1)                 # it is queued now
            await asyncio.to_thread(holder.release)      # a blocking call: not on the loop
            assert await task == 1
        sem.close()
        gaps.check(0.050, allow_runqueue=True)             # the loop was never held > 50 ms

    ipcsem_loop(scenario())         # a fresh loop; fails on tasks left running


# ------------------------------------------------------------ the ticker
def test_the_ticker_sees_a_blocked_loop():
    async def blocks():
        await asyncio.sleep(0.02)
        time.sleep(0.08)              # a blocking call on the loop's thread
        await asyncio.sleep(0.02)

    with pytest.raises(AssertionError, match="held"):
        run_checked(blocks(), max_gap=0.05)


def test_run_queue_delay_does_not_excuse_a_blocked_loop():
    async def main():
        async with watch_loop_gaps() as gaps:
            await asyncio.sleep(0.01)
            time.sleep(0.06)
            await asyncio.sleep(0.01)
        return gaps

    gaps = asyncio.run(main())
    assert gaps.max >= 0.06
    assert gaps.max_blocked >= 0.04        # sleeping is not waiting for a CPU
    with pytest.raises(AssertionError):
        gaps.check(0.03, allow_runqueue=True)


def test_reset_forgets_the_set_up():
    async def main():
        async with watch_loop_gaps() as gaps:
            await asyncio.sleep(0.005)
            time.sleep(0.05)
            await asyncio.sleep(0.005)
            gaps.reset()
            await asyncio.sleep(0.02)
        return gaps

    gaps = asyncio.run(main())
    assert gaps.samples and gaps.max < 0.05


def test_run_checked_reports_tasks_left_running():
    left: list[asyncio.Future[None]] = []

    async def leaks():
        left.append(asyncio.ensure_future(asyncio.sleep(10)))   # and never awaited

    with pytest.raises(AssertionError, match="still running"):
        run_checked(leaks())


def test_run_checked_on_uvloop():
    pytest.importorskip("uvloop")

    async def which():
        return type(asyncio.get_running_loop()).__module__

    result, _gaps = run_checked(which(), loop="uvloop")
    assert result.startswith("uvloop")


# ------------------------------------------------------- waiting helpers
def test_wait_for_waiters_times_out_saying_how_many(ipcsem_name):
    async def main():
        sem = ipcsem.AsyncSemaphore(ipcsem_name, capacity=1)
        try:
            with pytest.raises(AssertionError, match=r"expected 1 waiter.*saw 0"):
                await wait_for_waiters(sem, 1, timeout=0.1)
        finally:
            sem.close()

    asyncio.run(main())


def test_wait_until_async_takes_coroutines():
    async def main():
        n = 0

        async def third_time():
            nonlocal n
            n += 1
            return n >= 3

        assert await wait_until_async(third_time, 2) is True
        with pytest.raises(AssertionError, match="never"):
            await wait_until_async(lambda: False, 0.05, what="never")

    asyncio.run(main())


def test_resources_of_another_process(aio_agent_factory):
    agent = aio_agent_factory()
    r = resources(agent.pid)
    assert r == agent.resources()
    assert r.ipcsem_threads == ()
    agent.kill()
    with pytest.raises(ProcessLookupError):
        resources(agent.pid)


# -------------------------------------------------------------- the agent
def test_agent_tasks_own_what_they_acquire(ipcsem_name, aio_agent_factory):
    from ipcsem.testing import AsyncAgentError

    agent = aio_agent_factory()
    agent.cmd("a", f"mutex {ipcsem_name}")
    assert agent.cmd("a", f"acquire {ipcsem_name} 1 5") is True
    with pytest.raises(AsyncAgentError) as e:
        agent.cmd("b", f"release {ipcsem_name}")
    assert e.value.type == "NotOwner"
    agent.cmd("a", f"release {ipcsem_name}")
    with pytest.raises(AsyncAgentError, match="runs no command"):
        agent.cancel("a")                      # idle: nothing to cancel
    assert agent.ctl("ident") == [agent.pid, agent.start]
    assert os.getpid() != agent.pid
