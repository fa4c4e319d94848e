"""The POSIX objects behind one semaphore: create/open the ledger segment
safely, map it, and ring waiters' doorbells.

Create/open protocol (hazard 9, 10): the segment is created empty with
O_CREAT|O_EXCL, then whoever holds ``flock(LOCK_EX)`` on it and finds no magic
initialises it (size, preallocation, layout, magic last).  Openers take the
same flock, so they never see a half-initialised segment, and because the
kernel drops a flock when its holder dies, a creator that dies mid-way leaves
a segment the next creator simply initialises.  No timeouts, no guessing.
The flock is held only while opening; the hot path never touches it.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat

import posix_ipc

from . import _ledger, _names
from ._errors import CapacityMismatch, Corrupt, LedgerFull, NotFound, PermissionDenied, Unlinked

_ledger.register_errors(Corrupt, LedgerFull, Unlinked)

DEFAULT_SLOTS = 1024


def _remedy(name: str) -> str:
    return f"remove it with `ipcsem rm --force {name}` (or `rm {_names.shm_path(name)}`)"


class Segment:
    """One process's handle on one semaphore's ledger."""

    __slots__ = ("name", "ledger", "_mmap", "_doorbells", "mode", "created")

    def __init__(self, name: str, ledger: _ledger.Ledger, mm: mmap.mmap, mode: int,
                 created: bool = False) -> None:
        self.name = name
        self.ledger = ledger
        self._mmap = mm
        self._doorbells: dict[int, _ledger.Doorbell] = {}
        self.mode = mode
        self.created = created  # this open laid the ledger out (under the flock)

    # Doorbells: a waiter sleeps on the one of its queue entry; whoever grants
    # it units rings it after committing.  A doorbell is only a hint: waiters
    # re-read the ledger after every wake-up, so stale or lost rings cost at
    # most one poll interval and never correctness.
    # The doorbell type is ours (_ledger.Doorbell), not posix_ipc.Semaphore:
    # posix_ipc drops the exception of a signal handler that interrupts a wait
    # (anything but KeyboardInterrupt), see _ledger.c.
    def doorbell(self, entry: int) -> _ledger.Doorbell:
        bell = self._doorbells.get(entry)
        if bell is None:
            path = _names.doorbell_name(self.name, entry)
            try:
                bell = _ledger.Doorbell(path, self.mode, True)
                _chmod_quietly(_names.doorbell_path(self.name, entry), self.mode)
            except FileExistsError:
                try:
                    bell = _ledger.Doorbell(path, self.mode)
                except PermissionError as e:
                    raise PermissionDenied(f"{path}: {e.strerror}", self.name) from None
            except PermissionError as e:
                raise PermissionDenied(f"{path}: {e.strerror}", self.name) from None
            self._doorbells[entry] = bell
        return bell

    def ring(self, wakes) -> None:
        if wakes:
            for entry in wakes:
                self.doorbell(entry).ring()

    def close(self) -> None:
        for bell in self._doorbells.values():
            bell.close()
        self._doorbells.clear()
        self.ledger.release_buffer()
        self._mmap.close()


def _chmod_quietly(path: str, mode: int) -> None:
    # O_CREAT applies the umask; a group-shared semaphore needs the exact mode.
    try:
        os.chmod(path, mode)
    except OSError:
        pass


def _open_shm(name: str, create: bool, mode: int) -> tuple[posix_ipc.SharedMemory, bool]:
    posix = _names.shm_name(name)
    while True:
        try:
            if create:
                try:
                    return posix_ipc.SharedMemory(posix, posix_ipc.O_CREX, mode=mode, size=0), True
                except posix_ipc.ExistentialError:
                    pass
            # size=0: never truncate an existing segment (posix_ipc would).
            return posix_ipc.SharedMemory(posix, 0, size=0), False
        except posix_ipc.ExistentialError:
            if not create:
                raise NotFound(f"no ipcsem semaphore named {name!r}", name) from None
            # unlinked between our two attempts: try creating again
        except posix_ipc.PermissionsError as e:
            raise PermissionDenied(
                f"{_names.shm_path(name)}: permission denied ({e}); it belongs to "
                "another user or its mode does not admit you",
                name,
            ) from None


def open_segment(
    name: str,
    capacity: int | None = None,
    initial: int | None = None,
    mode: int = 0o600,
    max_holders: int = DEFAULT_SLOTS,
    max_waiters: int = DEFAULT_SLOTS,
) -> Segment:
    """Open the semaphore NAME, creating it when ``capacity`` is given."""
    shm, created = _open_shm(name, capacity is not None, mode)
    fd = shm.fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        st = os.fstat(fd)
        if created:
            os.fchmod(fd, mode)
            # A fresh name: doorbells a previous object left behind would only
            # ring spuriously, but they are clutter.
            for entry in _names.doorbell_entries(name):
                try:
                    posix_ipc.unlink_semaphore(_names.doorbell_name(name, entry))
                except posix_ipc.Error:
                    pass
        mm = None
        initialised_here = False
        if st.st_size >= _ledger.HEADER_SIZE:
            mm = mmap.mmap(fd, st.st_size)
            initialised = int.from_bytes(mm[:8], "little") != 0
        else:
            initialised = False
            if st.st_size != 0:
                raise Corrupt(
                    f"{_names.shm_path(name)} is truncated ({st.st_size} bytes, "
                    f"less than a ledger header); {_remedy(name)}",
                    name,
                )
        if not initialised and capacity is None and not created and st.st_size == 0:
            # A creator may be between O_EXCL and its flock: give it a moment.
            fcntl.flock(fd, fcntl.LOCK_UN)
            if _wait_for_creator(fd):
                return open_segment(name, capacity, initial, mode, max_holders, max_waiters)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if not initialised:
            # Ours to initialise: created by us, or its creator died before the
            # magic was written (we hold the flock, so no creator is at work).
            if capacity is None:
                raise Corrupt(
                    f"{_names.shm_path(name)} exists but was never initialised (its creator "
                    f"died); open it with a capacity to initialise it, or {_remedy(name)}",
                    name,
                )
            if mm is not None:
                mm.close()
            mm = _initialise(fd, capacity, initial, max_holders, max_waiters, name)
            initialised_here = True
        try:
            ledger = _ledger.Ledger(mm)
        except Corrupt as e:
            mm.close()
            raise Corrupt(f"{_names.shm_path(name)}: {e}; {_remedy(name)}", name) from None
        if capacity is not None and ledger.capacity != capacity:
            ledger.release_buffer()
            mm.close()
            raise CapacityMismatch(
                f"semaphore {name!r} exists with capacity {ledger.capacity}, not {capacity}", name
            )
        return Segment(name, ledger, mm, stat.S_IMODE(os.fstat(fd).st_mode), initialised_here)
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            shm.close_fd()


def _wait_for_creator(fd: int, seconds: float = 0.5) -> bool:
    """True once the segment has grown (a creator got to it) within the bound."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.002)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a creator initialises
        grown = os.fstat(fd).st_size != 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        if grown:
            return True
    return False


def _initialise(fd: int, capacity, initial, max_holders, max_waiters, name) -> mmap.mmap:
    size = _ledger.segment_size(max_holders, max_waiters)
    os.ftruncate(fd, size)
    try:
        # Allocate every page now: a full /dev/shm then fails here with
        # ENOSPC instead of killing a later writer with SIGBUS.
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.ftruncate(fd, 0)
        if e.errno in (errno.ENOSPC, errno.ENOMEM):
            raise LedgerFull(f"no room in {_names.SHM_DIR} for a {size}-byte ledger", name) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    mm = mmap.mmap(fd, size)
    _ledger.initialize(
        mm, capacity, capacity if initial is None else initial, max_holders, max_waiters, os.getpid()
    )
    return mm


def unlink(name: str) -> None:
    """Remove the name: mark the ledger unlinked (queued waiters give up with
    Unlinked), then unlink the segment and its doorbells.  Processes that have
    it open keep their mapping (POSIX unlink is deferred): their holds and
    releases still work; a later open creates a new, separate object."""
    _names.validate(name)
    try:
        seg = open_segment(name)
    except NotFound:
        raise
    except Corrupt:
        seg = None  # removing a corrupt segment is what unlink is for
    if seg is not None:
        try:
            wakes = seg.ledger.mark_unlinked()
            seg.ring(wakes)
        finally:
            seg.close()
    remove_objects(name)


def remove_objects(name: str) -> None:
    """Unlink the segment and its doorbells without touching the ledger
    (unlink() marks it first; `ipcsem rm --force` uses this alone when the
    ledger lock is held by a stopped process)."""
    try:
        posix_ipc.unlink_shared_memory(_names.shm_name(name))
    except posix_ipc.ExistentialError:
        raise NotFound(f"no ipcsem semaphore named {name!r}", name) from None
    except posix_ipc.PermissionsError as e:
        raise PermissionDenied(f"{_names.shm_path(name)}: {e}", name) from None
    for entry in _names.doorbell_entries(name):
        try:
            posix_ipc.unlink_semaphore(_names.doorbell_name(name, entry))
        except posix_ipc.Error:
            pass
