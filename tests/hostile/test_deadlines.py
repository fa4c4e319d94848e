"""Deadlines hold while the ledger lock is held by a stopped (or forged)
owner (issue 8, items 4 and 13).

The lock's owner may be a real process stopped inside a transaction
(``stop_inside_transaction``: SIGSTOP at random until the lock word names
it) or a futex word a writer forged to name TID 1.  Either way every call
that has a deadline returns by it: ``try_acquire``/``blocking=False`` in
milliseconds with False, ``timeout=T`` by T with False, ``hold(timeout=)``
with Timeout, tools with Wedged.  v1 (``git show ccdff60:ipcsem/_ledger.c``)
locked with ``pthread_mutex_lock``: every one of these hung until the
stopped process was continued.
"""
from __future__ import annotations

import signal
import time

import pytest

import ipcsem

from .conftest import (
    ALICE,
    Proc,
    assert_survived,
    forge_lock_owner,
    hold_and_report,
    isolated,
    new_name,
    stop_inside_transaction,
    timed,
)

SLACK = 1.0   # scheduling noise on a loaded 2-core CI machine


def _make(chan, name, capacity=2):
    ipcsem.Semaphore(name, capacity).close()
    return "made"


def _calls_with_deadlines(chan, name):
    """Every bounded call, timed, while the lock is wedged."""
    sem = ipcsem.Semaphore(name)
    chan.send("opened")
    chan.recv(30)
    results = {}
    results["try_acquire"] = timed(sem.try_acquire)
    results["acquire(False)"] = timed(sem.acquire, False)
    results["acquire(blocking=False)"] = timed(sem.acquire, blocking=False)
    results["acquire(block=False)"] = timed(sem.acquire, block=False)
    results["acquire(timeout=0)"] = timed(sem.acquire, timeout=0)
    results["acquire(timeout=0.5)"] = timed(sem.acquire, timeout=0.5)
    results["acquire(True, 0.5)"] = timed(sem.acquire, True, 0.5)
    results["hold(timeout=0.5)"] = timed(lambda: sem.hold(timeout=0.5).__enter__())
    return results


BOUNDS = {"try_acquire": 0.0, "acquire(False)": 0.0, "acquire(blocking=False)": 0.0,
          "acquire(block=False)": 0.0, "acquire(timeout=0)": 0.0, "acquire(timeout=0.5)": 0.5,
          "acquire(True, 0.5)": 0.5, "hold(timeout=0.5)": 0.5}


def _judge(results):
    bad = []
    for call, ((kind, value), took) in results.items():
        if took > BOUNDS[call] + SLACK:
            bad.append(f"{call} took {took:.2f} s")
        if kind == "raise" and not value["typed"]:
            bad.append(f"{call} raised untyped {value['type']}: {value['message']}")
        if kind == "return" and value is not False:
            bad.append(f"{call} returned {value!r} while the lock was wedged")
        if kind == "raise" and call != "hold(timeout=0.5)" and "Wedged" not in value["mro"]:
            bad.append(f"{call} raised {value['type']}")
    return bad


@pytest.mark.parametrize("how", ["stopped-holder", "forged-tid-1"])
@isolated()
def test_bounded_calls_return_in_time_with_a_wedged_lock(how):
    name = new_name()
    assert_survived(Proc(_make, name, user=ALICE), 10)
    victim = Proc(_calls_with_deadlines, name, user=ALICE)
    victim.expect("opened")
    if how == "stopped-holder":
        _stopped = stop_inside_transaction(name, ALICE)   # held until the test ends
    else:
        forge_lock_owner(name, ALICE, 1)
    victim.send("go")
    out = assert_survived(victim, 8 * (0.5 + SLACK) + 5)
    bad = _judge(out.value)
    assert not bad, "\n".join(bad)


def _queued_timeout(chan, name, timeout):
    sem = ipcsem.Semaphore(name)
    chan.send("queueing")
    return timed(sem.acquire, timeout=timeout)


@isolated()
def test_timeout_holds_when_the_lock_wedges_while_queued():
    """Queued first, wedged afterwards: at its deadline the waiter must give
    up (False) even though it cannot take the lock to leave the queue."""
    name = new_name()
    assert_survived(Proc(_make, name, 1, user=ALICE), 10)
    holder = Proc(hold_and_report, name, user=ALICE)
    holder.expect(("holding", holder.pid))
    victim = Proc(_queued_timeout, name, 1.5, user=ALICE)
    victim.expect("queueing")
    time.sleep(0.3)                     # it is queued and parked on its doorbell
    stopped = stop_inside_transaction(name, ALICE)
    out = victim.outcome(1.5 + SLACK + 1)
    stopped.kill(signal.SIGCONT)        # let it finish, whatever the verdict
    assert out.status is not None, "acquire(timeout=1.5) hung past its deadline"
    (kind, value), took = out.value
    assert kind == "return" and value is False and took <= 1.5 + SLACK, out.value


def _try_after_death(chan, name):
    sem = ipcsem.Semaphore(name)
    chan.send("opened")
    chan.recv(30)
    return timed(sem.try_acquire)


@isolated()
def test_try_acquire_holds_with_a_dead_holder_and_a_wedged_lock():
    """A refused try_acquire may heal (a dead holder must not lock out
    callers that never block) — but within its own bound."""
    name = new_name()
    assert_survived(Proc(_make, name, 1, user=ALICE), 10)
    holder = Proc(hold_and_report, name, user=ALICE)
    holder.expect(("holding", holder.pid))
    victim = Proc(_try_after_death, name, user=ALICE)
    victim.expect("opened")
    stopped = stop_inside_transaction(name, ALICE)
    holder.kill()                       # dead, and nobody can recover it now
    time.sleep(0.6)                     # the churner's heal election has lapsed
    victim.send("go")
    out = victim.outcome(SLACK + 2)
    stopped.kill(signal.SIGCONT)
    assert out.status is not None, "try_acquire() hung"
    (kind, value), took = out.value
    assert kind == "return" and value is False and took <= SLACK, out.value


def _unlink_wedged(chan, name):
    return timed(ipcsem.unlink, name)


@isolated()
def test_unlink_of_a_wedged_semaphore_is_bounded():
    """``ipcsem.unlink`` marks the ledger unlinked under its lock, within a
    bound: a wedged lock delays it, never hangs it, and the name goes."""
    import os

    from .conftest import shm_path
    name = new_name()
    assert_survived(Proc(_make, name, user=ALICE), 10)
    forge_lock_owner(name, ALICE, 1)
    out = assert_survived(Proc(_unlink_wedged, name, user=ALICE), 15)
    (kind, _value), took = out.value
    assert kind == "return" and took < 5 + SLACK, out.value
    assert not os.path.exists(shm_path(name))


def _tool_call(chan, name, call):
    sem = ipcsem.Semaphore(name)
    chan.send("opened")
    chan.recv(30)
    return timed(getattr(sem, call))


TOOL_BOUND = 2.0   # what a tool may spend on one wedged semaphore before saying so


@isolated()
def test_recover_and_check_are_bounded_on_a_wedged_semaphore():
    """The tools' calls: a wedged semaphore (lock held by a stopped process,
    a dead holder to recover) is Wedged within a few seconds, naming it."""
    name = new_name()
    assert_survived(Proc(_make, name, 1, user=ALICE), 10)
    holder = Proc(hold_and_report, name, user=ALICE)
    holder.expect(("holding", holder.pid))
    tools = [Proc(_tool_call, name, call, user=ALICE, label=call) for call in ("recover", "check")]
    for t in tools:
        t.expect("opened")
    stopped = stop_inside_transaction(name, ALICE)
    holder.kill()
    for t in tools:
        t.send("go")
    end = time.monotonic() + TOOL_BOUND + SLACK + 1
    outs = [t.outcome(max(end - time.monotonic(), 0.1)) for t in tools]
    stopped.kill(signal.SIGCONT)
    for t, out in zip(tools, outs, strict=True):
        assert out.status is not None, f"{t.label}() hung on a wedged semaphore"
        (kind, value), took = out.value
        assert kind == "raise" and "Wedged" in value["mro"] and took <= TOOL_BOUND + SLACK, \
            (t.label, value)


# ------------------------------------------------------------- event loops


def _async_waiter(chan, name, timeout):
    """An event loop: one task acquires with a deadline, another ticks every
    10 ms.  Reports the acquire's result and the loop's longest stall."""
    import asyncio

    async def main():
        sem = ipcsem.AsyncSemaphore(name)
        stalls = [0.0]
        stop = asyncio.Event()

        async def ticker():
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                stalls[0] = max(stalls[0], now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        chan.send("looping")
        # The test wedges the lock meanwhile; the loop keeps ticking.
        await asyncio.get_running_loop().run_in_executor(None, chan.recv, 30)
        stalls[0] = 0.0
        t0 = time.monotonic()
        try:
            got = await sem.acquire(timeout=timeout)
        except ipcsem.IpcsemError as e:
            got = type(e).__name__
        took = time.monotonic() - t0
        stop.set()
        await tick
        return got, took, stalls[0]

    return asyncio.run(main())


@pytest.mark.parametrize("when", [
    "before",
    "dead-holder",
])
@isolated()
def test_an_event_loop_is_never_blocked_by_a_wedged_lock(when):
    """AsyncSemaphore.acquire(timeout=1) with the ledger lock held by a
    stopped process: the loop keeps running (no stall over 0.5 s) and the
    acquire gives up by its deadline.  "dead-holder": a dead holder's units
    are due for recovery too — the heal must not block the loop either."""
    name = new_name()
    assert_survived(Proc(_make, name, 1, user=ALICE), 10)
    holder = Proc(hold_and_report, name, user=ALICE)
    holder.expect(("holding", holder.pid))
    loop = Proc(_async_waiter, name, 1.0, user=ALICE, label="event loop")
    loop.expect("looping")
    stopped = stop_inside_transaction(name, ALICE)
    if when == "dead-holder":
        holder.kill()
        time.sleep(0.6)       # the stopped churner's heal election has lapsed
    assert loop.alive(), loop.outcome(1).summary()
    loop.send("go")
    out = loop.outcome(1.0 + SLACK + 1)
    stopped.kill(signal.SIGCONT)
    assert out.status is not None, "the event loop hung"
    got, took, stall = out.value
    assert got in (False, None, "Timeout"), out.value
    assert took <= 1.0 + SLACK and stall <= 0.5, \
        f"acquire took {took:.2f} s, loop stalled {stall:.2f} s"
