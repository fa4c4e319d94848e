"""Hazard 2: a process killed *inside* ipcsem, at every instant that matters.

The ledger has a test hook that makes the calling process SIGKILL itself at
the Nth crash point: before and after each undo-log entry, after each store,
at commit and just before unlock.  For each operation we sweep N over every
point it has (until the process survives: the points are exhausted), so every
half-written state a real kill can leave is produced by a real kill.  Points
run in concurrent batches, each on its own semaphore.

The oracle is behavioural: after recovery, a process other than the killed
one must be able to take every unit, and check() must hold."""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from procs import Agent, queued_pids, wait_until

import ipcsem

# Minutes of kills at every crash point: run on every interpreter by
# `make test-all`, left to `make test` (one interpreter) by CI's other ones.
pytestmark = pytest.mark.slow

BATCH = 8


def fresh_name():
    return f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def finish(agent) -> bool:
    """Read the answer to the op in flight: True if the agent died."""
    try:
        while agent.read(15) == "queued":
            pass
        return False
    except EOFError:
        assert agent.proc.wait(10) == -signal.SIGKILL
        return True


class Case:
    """One crash point on its own semaphore."""

    def __init__(self, capacity):
        self.name = fresh_name()
        self.capacity = capacity
        self.sem = ipcsem.Semaphore(self.name, capacity=capacity)
        self.agent = Agent(wait=False)

    def close(self):
        self.agent.close()
        self.sem.close()
        ipcsem.unlink(self.name)


def sweep(capacity, setup, op, before=None, after=None, max_points=600):
    """Kill at every crash point of `op`; after each kill the semaphore must
    heal completely.  Returns the number of points the op has."""
    for first in range(0, max_points, BATCH):
        cases = [Case(capacity) for _ in range(BATCH)]
        try:
            for point, c in enumerate(cases, first):
                c.agent.ready()
                c.agent.cmd(f"open {c.name}")
                if before:
                    before(c.sem)
                for line in setup:
                    c.agent.cmd(line)
                c.agent.cmd(f"crashpoint {point}")
                c.agent.send(op)
            survived = []
            for point, c in enumerate(cases, first):
                if not finish(c.agent):
                    survived.append(point)
                    c.agent.close()
                if after:
                    after(c.sem)
                c.sem.recover()
                c.sem.check()
                free = capacity - c.sem.stats().unowned   # disowned units stay out, by design
                assert c.sem.holders() == [] and c.sem.available == free, point
                assert c.sem.acquire(free, timeout=5), f"units lost at crash point {point}"
                c.sem.release(free)
            if survived:
                assert survived == list(range(survived[0], first + BATCH)), survived
                assert survived[0] > 5, "the crash points never fired"
                return survived[0]
        finally:
            for c in cases:
                c.close()
    raise AssertionError("the operation never completed: crash points not exhausted")


def test_kill_inside_first_acquire():
    # registration of a new holder slot + the grant, in one transaction
    assert sweep(3, [], "try 2") > 20


def test_kill_inside_release():
    assert sweep(3, ["try 2"], "release 2") > 5


def test_kill_inside_disown():
    # either the hand-off happened (1 unit out without an owner) or not
    sweep(3, ["try 2"], "disown 1")


def test_kill_inside_enqueue_park_and_cancel():
    # the agent queues behind us, times out and cancels: kills land in the
    # enqueue transaction, the park, and the cancel transaction
    assert sweep(3, [], "acquire 1 0.05", before=lambda s: s.acquire(3),
                 after=lambda s: s.release(3)) > 40


def test_kill_inside_a_grant_to_a_waiter():
    """The releaser dies while granting: the waiter must still be served."""
    for first in range(0, 400, BATCH):
        cases = [Case(1) for _ in range(BATCH)]
        waiters = [Agent(wait=False) for _ in cases]
        try:
            for c, w in zip(cases, waiters, strict=True):
                c.agent.ready().cmd(f"open {c.name}")
                w.ready().cmd(f"open {c.name}")
                assert c.agent.cmd("try 1") is True
                w.start_acquire(1)
            for c, w in zip(cases, waiters, strict=True):
                wait_until(lambda c=c, w=w: queued_pids(c.sem) == [w.pid])
            for point, c in enumerate(cases, first):
                c.agent.cmd(f"crashpoint {point}")
                c.agent.send("release 1")
            survived = []
            for point, (c, w) in enumerate(zip(cases, waiters, strict=True), first):
                if not finish(c.agent):
                    survived.append(point)
                c.sem.recover()   # the supervisor's part; self-healing is tested elsewhere
                assert w.result(10) is True, f"waiter not served after a kill at point {point}"
                w.cmd("release 1")
                c.sem.check()
                assert c.sem.available == 1
            if survived:
                assert survived[0] > 5
                return
        finally:
            for c, w in zip(cases, waiters, strict=True):
                w.close()
                c.close()
    raise AssertionError("points not exhausted")


def test_kill_inside_an_unowned_post_to_a_waiting_consumer():
    """The producer pattern: an unregistered process posts (release beyond
    what it owns) and dies anywhere inside, including between the commit of
    the post and the grant to the queued consumer.  Nobody calls recover():
    the consumer must still be served, by the next locker's repair."""
    for first in range(0, 400, BATCH):
        cases = [Case(1) for _ in range(BATCH)]
        consumers = [Agent(wait=False) for _ in cases]
        try:
            for c, w in zip(cases, consumers, strict=True):
                c.sem.acquire()
                c.sem.disown()                 # 0 of 1 available, 1 out without an owner
                c.agent.ready().cmd(f"open {c.name}")
                w.ready().cmd(f"open {c.name}")
                w.start_acquire(1, timeout=3)
            for c, w in zip(cases, consumers, strict=True):
                wait_until(lambda c=c, w=w: queued_pids(c.sem) == [w.pid])
            for point, c in enumerate(cases, first):
                c.agent.cmd(f"crashpoint {point}")
                c.agent.send("release 1")     # an unowned post: the producer
            survived = []
            for point, (c, w) in enumerate(zip(cases, consumers, strict=True), first):
                died = finish(c.agent)
                if not died:
                    survived.append(point)
                got = w.result(10)
                if died and not got:
                    # died before the post committed: the unit is still out,
                    # and the consumer timed out cleanly
                    st = c.sem.stats()
                    assert (st.unowned, st.available, st.waiting) == (1, 0, 0), point
                    c.sem.check()
                    continue
                assert got is True, f"consumer not served after a kill at point {point}"
                c.sem.check()
            if survived:
                assert survived[0] > 5
                return
        finally:
            for c, w in zip(cases, consumers, strict=True):
                w.close()
                c.close()
    raise AssertionError("points not exhausted")


def test_kill_during_the_repair_of_a_dead_owners_update():
    """The repairer itself dies mid-rollback; the next one finishes it."""
    cases = [Case(3) for _ in range(24)]
    second = [Agent(wait=False) for _ in cases]
    try:
        for c in cases:
            c.agent.ready().cmd(f"open {c.name}")
            c.agent.cmd("crashpoint 20")
            c.agent.send("try 2")
        for repair_point, (c, s) in enumerate(zip(cases, second, strict=True)):
            assert finish(c.agent)           # died mid-transaction, lock held
            s.ready().cmd(f"open {c.name}")
            s.cmd(f"crashpoint {repair_point}")
            s.send("try 1")                  # repairs first, may die doing it
            finish(s)
            c.sem.recover()
            c.sem.check()
            assert c.sem.acquire(3, timeout=5), f"repair point {repair_point}"
            c.sem.release(3)
            assert c.sem.stats().lock_repairs >= 1
    finally:
        for c, s in zip(cases, second, strict=True):
            s.close()
            c.close()


LOCKER = """
import ctypes, mmap, os, sys
fd = os.open("/dev/shm/ipcsem." + sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m, 512))   # the ledger mutex
assert ctypes.CDLL(None).pthread_mutex_lock(ctypes.c_void_p(addr)) == 0
print("locked", flush=True)
# ... and exit normally: interpreter teardown unmaps the ledger before the
# kernel walks the robust-futex list, so the kernel never marks it owner-dead.
"""


def test_lock_owner_that_exits_with_the_ledger_unmapped(name):
    sem = ipcsem.Semaphore(name, capacity=2)
    p = subprocess.run([sys.executable, "-c", LOCKER, name], capture_output=True, text=True,
                       timeout=30)
    assert p.stdout.strip() == "locked", p.stderr
    with open(f"/dev/shm/ipcsem.{name}", "rb") as f:
        word = int.from_bytes(os.pread(f.fileno(), 4, 512), "little")
    assert word & 0x3FFFFFFF and not word & 0x40000000  # "held" by a dead TID, unmarked
    start = time.monotonic()
    assert sem.acquire(2, timeout=10)
    assert time.monotonic() - start < 5
    sem.release(2)
    sem.check()
    assert sem.stats().lock_repairs == 1
