"""A storm worker: acquire, prove exclusivity to an oracle that does not
trust ipcsem, release; forever (the test SIGKILLs it at random).

Oracle, per slot: an exclusive non-blocking flock on DIR/slot-N (the kernel
drops it when the holder dies) and a fenced log DIR/fence-N that refuses a
token not larger than the last one it accepted.  Any refusal is written to
DIR/violations and the worker exits 3.
"""
from __future__ import annotations

import fcntl
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import ipcsem._zk  # noqa: F401
from ipcsem._backend import resolve


def violation(d: str, what: str) -> None:
    with open(os.path.join(d, "violations"), "a") as f:
        f.write(f"{os.getpid()}: {what}\n")
    os._exit(3)


def fence(d: str, slot: int, token: int) -> None:
    fd = os.open(os.path.join(d, f"fence-{slot}"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = int(os.pread(fd, 32, 0).decode() or "0")
        if token <= last:
            violation(d, f"slot {slot}: token {token} after {last}")
        os.pwrite(fd, str(token).ljust(32).encode(), 0)
    finally:
        os.close(fd)


def main() -> None:
    url, name, d = sys.argv[1:4]
    h = resolve(url).open(name, None)
    tid = threading.get_native_id()
    done = 0
    while True:
        lease = h.wait(1, 0, tid, tid, time.monotonic() + 30)
        if lease is None:
            continue
        (slot,) = lease.slots
        fd = os.open(os.path.join(d, f"slot-{slot}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            violation(d, f"slot {slot} flocked by another holder")
        if not lease.valid:
            violation(d, "lease invalid right after the grant")
        fence(d, slot, lease.token)
        time.sleep(0.002)
        os.close(fd)               # the resource first, then the units
        h.release(1, tid, lease)
        done += 1
        with open(os.path.join(d, f"done-{os.getpid()}"), "w") as f:
            f.write(str(done))


if __name__ == "__main__":
    main()
