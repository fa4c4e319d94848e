"""The ``backend`` fixture: every contract test runs once per binding."""
from __future__ import annotations

import pytest

from .bindings import BINDINGS, Backend


@pytest.fixture(scope="session", params=BINDINGS, ids=lambda b: b.id)
def binding(request):
    b = request.param
    why = b.available()
    if why is not None:
        pytest.skip(f"backend {b.id}: {why}")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def backend(binding):
    """A :class:`contract.bindings.Backend`; everything made through it is
    cleaned up after the test."""
    be = Backend(binding)
    yield be
    be.close()


@pytest.fixture
def sem_name(backend):
    """A fresh name on the backend, unlinked after the test."""
    return backend.name()

