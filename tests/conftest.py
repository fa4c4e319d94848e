import os
import signal
import subprocess
import uuid

import pytest

import ipcsem
from procs import Agent


@pytest.fixture
def name():
    """A semaphore name no other test uses; removed afterwards."""
    n = f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield n
    try:
        ipcsem.unlink(n)
    except ipcsem.IpcsemError:
        pass


@pytest.fixture
def agents():
    """Factory of driven processes; every one is killed at teardown."""
    made = []

    def make(**kw):
        a = Agent(**kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


@pytest.fixture
def names():
    """Factory of unique semaphore names, every one unlinked at teardown."""
    made: list[str] = []

    def make() -> str:
        n = f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        made.append(n)
        return n

    yield make
    for n in made:
        try:
            ipcsem.unlink(n)
        except ipcsem.IpcsemError:
            pass


@pytest.fixture
def procs():
    """Popen factory; every process still running at teardown is SIGKILLed
    (after a SIGCONT, in case a test stopped it)."""
    made: list[subprocess.Popen] = []

    def start(args, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, **kw)
        made.append(p)
        return p

    yield start
    for p in made:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
        p.wait(10)
