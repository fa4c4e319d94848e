"""Fixture wiring for ipcsem's own suite.  The process fixtures are the
kit's (``ipcsem.testing``: the kit users get is the kit the project tests
itself with); the short names here are what the suite's tests ask for."""
import signal
import subprocess

import pytest

import ipcsem
from ipcsem.testing import (  # noqa: F401 - fixtures, registered by importing them
    agent_factory,
    aio_agent_factory,
    holder_factory,
    ipcsem_loop,
    ipcsem_name,
    unique_name,
)


def pytest_configure(config):
    """The suite sends real SIGINTs (Ctrl-C) to the programs it starts.  A
    shell starts background jobs with SIGINT ignored, and children inherit
    an ignored signal through exec: give the run a handler, which exec
    resets to the default, so every program the tests start can be
    interrupted whether the suite runs in the foreground or not."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def name(ipcsem_name):
    """A semaphore name no other test uses; removed afterwards."""
    return ipcsem_name


@pytest.fixture
def agents(agent_factory):
    """Factory of driven processes (ipcsem.testing.Agent); every one is
    killed and reaped at teardown."""
    return agent_factory


@pytest.fixture
def names():
    """Factory of unique semaphore names, every one unlinked at teardown."""
    made: list[str] = []

    def make() -> str:
        n = unique_name("t")
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
