import os
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
