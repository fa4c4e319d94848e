"""Semaphore names and the POSIX object names derived from them.

A semaphore NAME of the shared-memory backend owns one shared-memory ledger
``/ipcsem.NAME`` (visible as ``/dev/shm/ipcsem.NAME``); its doorbells live
inside it.  Names are 1..200 letters, digits, '.', '_' and '-', beginning with
a letter or digit (so a name is never taken for a command-line option).
"""
from __future__ import annotations

import os
import re

PREFIX = "ipcsem."
SHM_DIR = "/dev/shm"
MAX_NAME = 200  # + "/dev/shm/ipcsem." stays far below Linux's NAME_MAX of 255
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate(name: object) -> str:
    """``name`` if it is a valid semaphore name; TypeError or ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"semaphore name must be a str, not {type(name).__name__}")
    if not (0 < len(name) <= MAX_NAME) or not _VALID.fullmatch(name):
        raise ValueError(
            f"bad semaphore name {name!r}: use 1..{MAX_NAME} letters, digits, '.', '_' or '-', "
            "beginning with a letter or digit"
        )
    return name


def is_valid(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and _VALID.fullmatch(name) is not None


def shm_path(name: str) -> str:
    return f"{SHM_DIR}/{PREFIX}{name}"


def listing() -> list[str]:
    """Every shared-memory semaphore name on this machine (that /dev/shm
    shows us): files named ipcsem.NAME with a valid NAME.  OSError if
    /dev/shm cannot be listed."""
    return sorted(f[len(PREFIX):] for f in os.listdir(SHM_DIR)
                  if f.startswith(PREFIX) and is_valid(f[len(PREFIX):]))


def names() -> list[str]:
    """``listing()``, or [] when /dev/shm cannot be listed."""
    try:
        return listing()
    except OSError:
        return []
