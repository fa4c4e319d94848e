"""Semaphore names and the POSIX object names derived from them.

A semaphore NAME owns one shared-memory ledger ``/ipcsem.NAME`` (visible as
``/dev/shm/ipcsem.NAME``) and lazily created doorbell semaphores
``/ipcsem.NAME:wN`` (``/dev/shm/sem.ipcsem.NAME:wN``), one per queue entry in
use.  ':' is not allowed in NAME, so one name's doorbells never match
another name's prefix.
"""
from __future__ import annotations

import os
import re

PREFIX = "ipcsem."
SHM_DIR = "/dev/shm"
MAX_NAME = 200  # + "/ipcsem." + ":w1048575" stays under Linux's 251 bytes
_VALID = re.compile(r"[A-Za-z0-9._-]+")


def validate(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"semaphore name must be a str, not {type(name).__name__}")
    if not (0 < len(name) <= MAX_NAME) or not _VALID.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"bad semaphore name {name!r}: use 1..{MAX_NAME} letters, digits, '.', '_' or '-'"
        )
    return name


def shm_name(name: str) -> str:
    return f"/{PREFIX}{name}"


def shm_path(name: str) -> str:
    return f"{SHM_DIR}/{PREFIX}{name}"


def doorbell_name(name: str, entry: int) -> str:
    return f"/{PREFIX}{name}:w{entry}"


def doorbell_path(name: str, entry: int) -> str:
    return f"{SHM_DIR}/sem.{PREFIX}{name}:w{entry}"


def doorbell_entries(name: str) -> list[int]:
    """Queue entries that have a doorbell file (Linux: glibc keeps them in /dev/shm)."""
    lead = f"sem.{PREFIX}{name}:w"
    try:
        files = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(int(f[len(lead):]) for f in files if f.startswith(lead) and f[len(lead):].isdigit())


def names() -> list[str]:
    """Every ipcsem semaphore name on this machine (that /dev/shm shows us)."""
    try:
        files = os.listdir(SHM_DIR)
    except OSError:
        return []
    found = []
    for f in files:
        if f.startswith(PREFIX):
            name = f[len(PREFIX):]
            if _VALID.fullmatch(name):
                found.append(name)
    return sorted(found)
