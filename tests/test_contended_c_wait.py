"""The contended path in C: ``acquire()``, ``acquire(k)`` and ``with sem:``
(a Mutex's ``acquire()`` and ``with m:``) whose fast take is refused queue
and wait inside the C extension, without the Python slow path.  Each child
here replaces the slow paths with one that fails loudly, so what it shows is
the C wait's behaviour: served in order, Ctrl-C and quiet signals as
before, Unlinked/Closed named, a dead holder's unit recovered by the lazily
engaged pidfd watcher without a supervisor, and a full queue handed to the
slow path (which names the LedgerFull)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ipcsem
from ipcsem import _proc
from ipcsem.testing import assert_consistent, held_by, wait_until

PRELUDE = """
import os, sys, signal, threading, time
import ipcsem
def say(*a):
    print(*a, flush=True)
"""
NO_SLOW_PATH = """
def _slow(*a, **k):
    raise AssertionError("the Python slow path ran")
for cls in (ipcsem.Semaphore, ipcsem.Mutex):
    cls._acquire_slow = _slow
    cls._enter_slow = _slow
"""


class Child:
    """A separate process running ``code`` (with its slow paths failing
    unless ``slow_path``); lines from its stdout."""

    def __init__(self, code: str, slow_path: bool = False) -> None:
        head = PRELUDE if slow_path else PRELUDE + NO_SLOW_PATH
        self.proc = subprocess.Popen(
            [sys.executable, "-c", head + textwrap.dedent(code)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_proc.package_env(dict(os.environ)))

    def line(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the child said nothing within {timeout} s"
        text = self.proc.stdout.readline().strip()
        assert text, f"the child ended: {self.finish()}"
        return text

    def finish(self, timeout: float = 20.0) -> str:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def child():
    made: list[Child] = []

    def start(code: str, slow_path: bool = False) -> Child:
        c = Child(code, slow_path)
        made.append(c)
        return c

    yield start
    for c in made:
        c.kill()


def queued(sem) -> list[int]:
    return [w.pid for w in sem.waiters()]


@pytest.mark.parametrize("form", ["acquire()", "acquire(2)", "with"])
def test_waiters_are_served_in_arrival_order(name, child, form):
    sem = ipcsem.Semaphore(name, capacity=2)
    assert sem.acquire(2)
    units = 2 if form == "acquire(2)" else 1
    take = {"acquire()": "s.acquire(); lease = None",
            "acquire(2)": "s.acquire(2); lease = None",
            "with": "lease = s.__enter__()"}[form]
    kids = []
    for i in range(3):
        c = child(f"""
            s = ipcsem.Semaphore({name!r})
            say("ready")
            {take}
            say("got", {i})
            time.sleep(0.2)
            s.release({units})
            say("done")
        """)
        assert c.line() == "ready"
        wait_until(lambda n=i + 1: len(queued(sem)) == n, 20, what=f"{i + 1} queued")
        kids.append(c)
    assert queued(sem) == [c.proc.pid for c in kids]
    sem.release(2)
    order = [int(c.line().split()[1]) for c in kids]
    assert order == [0, 1, 2]
    for c in kids:
        assert c.line() == "done"
        assert c.finish() == ""
    assert_consistent(sem, available=2, held=0, waiting=0)


def test_ctrl_c_during_the_c_wait_leaves_nothing(name, child):
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    c = child(f"""
        s = ipcsem.Semaphore({name!r})
        say("ready")
        try:
            s.acquire()
            say("got it")
        except KeyboardInterrupt:
            say("interrupted", s.available)
    """)
    assert c.line() == "ready"
    wait_until(lambda: queued(sem) == [c.proc.pid], 20, what="the child queued")
    c.proc.send_signal(signal.SIGINT)
    assert c.line() == "interrupted 0"
    assert c.finish() == ""
    assert sem.waiters() == [] and held_by(sem) == {os.getpid(): 1}
    sem.release()
    assert_consistent(sem, available=1, held=0, waiting=0)


def test_a_quiet_signal_handler_does_not_end_the_c_wait(name, child):
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    c = child(f"""
        signal.signal(signal.SIGUSR1, lambda *a: None)
        m = ipcsem.Semaphore({name!r})
        say("ready")
        with m as lease:
            say("got", lease.units)
    """)
    assert c.line() == "ready"
    wait_until(lambda: queued(sem) == [c.proc.pid], 20, what="the child queued")
    for _ in range(5):
        c.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.02)
    assert queued(sem) == [c.proc.pid]
    sem.release()
    assert c.line() == "got 1"
    assert c.finish() == ""
    assert_consistent(sem, available=1, held=0, waiting=0)


def test_unlinked_and_closed_while_waiting_in_c_are_named(name, child):
    sem = ipcsem.Semaphore(name, capacity=1)
    sem.acquire()
    c = child(f"""
        s = ipcsem.Semaphore({name!r})
        t = ipcsem.Semaphore({name!r})
        errors = []
        def wait_on_t():
            try:
                t.acquire()
            except ipcsem.Closed as e:
                errors.append(e)
        th = threading.Thread(target=wait_on_t)
        th.start()
        say("ready")
        while len(t.waiters()) < 1:
            time.sleep(0.005)
        t.close()                     # the other thread's C wait gives up
        th.join()
        say("closed", type(errors[0]).__name__, errors[0].name)
        try:
            s.acquire()
        except ipcsem.Unlinked as e:
            say("unlinked", e.name)
    """)
    assert c.line() == "ready"
    assert c.line() == f"closed Closed {name}"
    wait_until(lambda: queued(sem) == [c.proc.pid], 20, what="the child queued again")
    ipcsem.unlink(name)
    assert c.line() == f"unlinked {name}"
    assert c.finish() == ""


@pytest.mark.parametrize("kind", ["semaphore", "mutex"])
def test_a_killed_holder_s_unit_reaches_the_c_waiter_without_a_supervisor(name, child, kind):
    opener = (f"ipcsem.Semaphore({name!r}, capacity=1)" if kind == "semaphore"
              else f"ipcsem.Mutex({name!r})")
    holder = child(f"""
        s = {opener}
        s.acquire()
        say("holding")
        time.sleep(600)
    """)
    assert holder.line() == "holding"
    waiter = child(f"""
        s = {opener}
        say("ready")
        s.acquire()
        say("got", s.previous_owner_died if isinstance(s, ipcsem.Mutex) else "-")
        s.release()
    """)
    assert waiter.line() == "ready"
    sem = ipcsem.Semaphore(name) if kind == "semaphore" else ipcsem.Mutex(name, create=False)
    try:
        wait_until(lambda: queued(sem) == [waiter.proc.pid], 20, what="the waiter queued")
        time.sleep(0.05)              # past WATCH_AFTER: its watcher is engaged
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait()
        # The healing slices alone would take up to HEAL_INTERVAL; the watcher
        # is what makes this quick, but the test asks only that it happens.
        assert waiter.line(timeout=20) == ("got True" if kind == "mutex" else "got -")
        assert waiter.finish() == ""
        assert_consistent(sem, available=1, held=0, waiting=0)
    finally:
        sem.close()


def test_a_full_queue_goes_to_the_slow_path_which_names_it(name, child):
    """With the queue full the C wait queues nothing and hands the call to
    the slow path (the real one here), whose LedgerFull names the semaphore."""
    sem = ipcsem.Semaphore(name, capacity=1, max_waiters=1)
    sem.acquire()
    first = child(f"""
        s = ipcsem.Semaphore({name!r})
        say("ready")
        s.acquire()
        say("got")
        s.release()
    """)
    assert first.line() == "ready"
    wait_until(lambda: queued(sem) == [first.proc.pid], 20, what="the first child queued")
    second = child(f"""
        s = ipcsem.Semaphore({name!r})
        try:
            s.acquire()
        except ipcsem.LedgerFull as e:
            say("full", e.name)
    """, slow_path=True)
    assert second.line() == f"full {name}"
    assert second.finish() == ""
    sem.release()
    assert first.line() == "got"
    assert first.finish() == ""
    assert_consistent(sem, available=1, held=0, waiting=0)
