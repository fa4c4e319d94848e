"""Semaphore names for tests: fresh ones, and removing them."""
from __future__ import annotations

import os
import uuid


def unique_name(prefix: str = "t") -> str:
    """A semaphore name no other test (in this or another process) uses:
    ``PREFIX-PID-RANDOM``.  Nothing is created; see the ``ipcsem_name``
    fixture for a name that is also removed after the test.  ValueError if
    the prefix makes an invalid name."""
    from .. import _names

    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    _names.validate(name)   # a bad prefix fails here, not at first use
    return name


def unlink_quietly(name: str, backend: str | None = None) -> None:
    from .._base import unlink
    from .._errors import IpcsemError

    try:
        unlink(name, backend=backend)
    except IpcsemError:
        pass
