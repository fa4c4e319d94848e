"""The POSIX object behind one semaphore: create or open the ledger segment
safely, decide whether to trust it, map it, remove it; and read-only views.

Create/open protocol (hazards 9, 10): the segment is created empty with
O_CREAT|O_EXCL, then whoever holds ``flock(LOCK_EX)`` on it and finds no
magic initialises it (size, preallocation, layout, magic last).  Openers of
an initialised segment need no flock; openers of an empty one take it
(bounded: a flock held forever by someone else is an error, not a hang), so
they never see a half-initialised segment, and because the kernel drops a
flock when its holder dies, a creator that dies mid-way leaves a segment the
next creator simply initialises.

Trust (docs/design.md, "Threat model"): /dev/shm is world-writable, so the
object under a name may be anybody's.  A process maps a ledger for writing
only if it may trust everyone who can write it: the object is a regular
file, not writable by others (o+w), and either ours or group-writable for a
group we are in — by choosing the mode, its creator chose whom to trust.
Everything else is refused with PermissionDenied saying whose it is, before
a single byte is mapped.  Views for tools (``read_view``) never map: they
copy the bytes with pread(), so a truncating or scribbling owner can make a
view wrong, never crash the viewer.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import time
from dataclasses import dataclass

from .. import _names, _proc
from .._errors import (
    CapacityMismatch,
    Corrupt,
    IpcsemError,
    LedgerFull,
    NotFound,
    PermissionDenied,
    PolicyMismatch,
    Wedged,
)
from .._records import Params
from . import _ledger

DEFAULT_SLOTS = 1024
OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
CREATOR_GRACE = 0.5      # an opener waits this long for a creator between O_EXCL and flock
FLOCK_BOUND = 2.0        # a creation flock held longer than this is someone else's stall
VIEW_BUDGET = 0.2        # a read-only view gives up waiting for a quiet ledger after this


def policy_bits(p: Params) -> int:
    return ((_ledger.P_SLOTS if p.slots else 0) | (_ledger.P_MUTEX if p.kind == "mutex" else 0)
            | (_ledger.P_REENTRANT if p.reentrant else 0) | (0 if p.fair else _ledger.P_UNFAIR)
            | (_ledger.P_PI if p.priority_inheritance else 0))


def params_of(header: _ledger.Header, mode: int) -> Params:
    """The creation-time policy a ledger header records."""
    bits = header.policy
    return Params(capacity=header.capacity, initial=header.initial,
                  kind="mutex" if bits & _ledger.P_MUTEX else "semaphore",
                  slots=bool(bits & _ledger.P_SLOTS), fair=not bits & _ledger.P_UNFAIR,
                  reentrant=bool(bits & _ledger.P_REENTRANT),
                  priority_inheritance=bool(bits & _ledger.P_PI), mode=mode,
                  max_holders=header.max_holders, max_waiters=header.max_waiters)


# ------------------------------------------------------------------ trust
def my_groups() -> set[int]:
    return {os.getegid(), *os.getgroups()}


def distrust(st: os.stat_result, groups: set[int] | None = None) -> str | None:
    """Why this process may not map the object for writing, or None: it is
    not a regular file; anyone may write it; or it is another user's and
    not shared with a group of ours."""
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file")
        return f"is {kind}, not a ledger"
    if st.st_mode & stat.S_IWOTH:
        return "is writable by every user, so nobody can trust what it says"
    if st.st_uid == os.geteuid():
        return None
    groups = my_groups() if groups is None else groups
    if st.st_mode & stat.S_IWGRP and st.st_gid in groups:
        return None
    if st.st_mode & stat.S_IWGRP:
        return "belongs to another user and is shared with a group you are not in"
    return "belongs to another user and is not shared with you"


def _denied(name: str, st: os.stat_result, reason: str) -> PermissionDenied:
    return PermissionDenied(reason, name=name, path=_names.shm_path(name),
                            owner=_proc.user_name(st.st_uid), mode=stat.S_IMODE(st.st_mode))


def check_mode(mode: int) -> None:
    """Modes a ledger may be created with: no bits for others to write, no
    special bits (a ledger every user can write is a ledger nobody can trust)."""
    if mode & ~0o777:
        raise ValueError(f"mode {mode:#o}: only permission bits (0..0o777) are allowed")
    if mode & stat.S_IWOTH:
        raise ValueError(f"mode {mode:04o} would let every local user write the ledger; share "
                         "with a group instead (0660, group=...)")
    if not mode & stat.S_IWUSR or not mode & stat.S_IRUSR:
        raise ValueError(f"mode {mode:04o}: the owner must be able to read and write it")


# ----------------------------------------------------------- the segment
class Segment:
    """One process's writable mapping of one semaphore's ledger."""

    __slots__ = ("_mmap", "created", "gid", "ledger", "mode", "name", "owner_uid", "params")

    def __init__(self, name: str, ledger: _ledger.Ledger, mm: mmap.mmap, st: os.stat_result,
                 created: bool, params: Params) -> None:
        self.name = name
        self.params = params
        self.ledger = ledger
        self._mmap: mmap.mmap | None = mm
        self.mode = stat.S_IMODE(st.st_mode)
        self.owner_uid = st.st_uid
        self.gid = st.st_gid
        self.created = created  # this open laid the ledger out (under the flock)

    def close(self, wait: float = 5.0) -> bool:
        """Let go of the mapping once no call of this process uses it (other
        threads' waits give up with Closed).  False if calls remain after
        ``wait`` seconds: the mapping is kept then."""
        if self._mmap is None:
            return True
        if not self.ledger.shutdown(wait):
            return False
        try:
            self._mmap.close()
        except BufferError:  # pragma: no cover - the ledger let go of its export
            return False
        self._mmap = None
        return True


def open_segment(name: str, params: Params | None = None, *, group: int | None = None,
                 wait_for_creator: bool = True) -> Segment:
    """Open the semaphore NAME; with ``params``, create it if absent.

    Raises NotFound, PermissionDenied (not ours to trust), Corrupt (not a
    usable ledger), CapacityMismatch/PolicyMismatch (exists with other
    settings), LedgerFull (no room), Wedged (a creation flock held by
    someone else)."""
    path = _names.shm_path(name)
    create = params is not None
    if params is not None:
        check_mode(params.mode)
    fd, created = _open_fd(name, path, create, wait_for_creator)
    try:
        st = os.fstat(fd)
        why = distrust(st)
        if why is not None:
            raise _denied(name, st, why)
        if params is not None and not created and st.st_uid != os.geteuid():
            # Another user's object under the name we meant to create.  Ours
            # to use only if it is shared the way we asked: a group mode, and
            # the very group we chose to trust (an owner can only give a file
            # a group it belongs to, so that group vouches for its owner).
            if not params.mode & stat.S_IWGRP:
                raise _denied(name, st, f"exists and is another user's; you asked for a private "
                                        f"(mode {params.mode:04o}) semaphore of that name")
            want = group if group is not None else os.getegid()
            if st.st_gid != want:
                raise _denied(name, st, f"exists, shared with group {st.st_gid}, not with the "
                                        f"group {want} you asked for")
        try:
            mm, initialised_here = _map(name, path, fd, st, params, created, wait_for_creator)
        except LedgerFull:
            if created:
                _unlink_if_same(path, st)   # leave no empty file of ours behind
            raise
        if mm is None:   # a creator showed up late: start over
            return open_segment(name, params, group=group, wait_for_creator=False)
        if initialised_here and params is not None:    # (initialised: we had params)
            # Only now, with the magic written, may anyone else open it: we
            # created it 0600, because a mere reader can hold the creation
            # flock of an empty file forever.
            if group is not None:
                os.fchown(fd, -1, group)
            os.fchmod(fd, params.mode)      # exact: O_CREAT applied the umask
            st = os.fstat(fd)
        try:
            ledger = _ledger.Ledger(mm)
        except Corrupt as e:
            mm.close()
            e.name, e.path = name, path
            raise
        found = params_of(ledger.snapshot(1).header, stat.S_IMODE(st.st_mode))
        if params is not None:
            try:
                _check_policy(name, found, params)
            except PolicyMismatch:
                ledger.shutdown(0)
                mm.close()
                raise
        return Segment(name, ledger, mm, st, initialised_here, found)
    finally:
        os.close(fd)


def _unlink_if_same(path: str, st: os.stat_result) -> None:
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)
    except OSError:
        pass


def _open_fd(name: str, path: str, create: bool, wait: bool) -> tuple[int, bool]:
    end = time.monotonic() + CREATOR_GRACE
    while True:
        try:
            if create:
                try:
                    # 0600 until initialised (see open_segment)
                    return os.open(path, OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600), True
                except FileExistsError:
                    pass
            return os.open(path, OPEN_FLAGS), False
        except FileNotFoundError:
            if not create:
                raise NotFound(name) from None
            # unlinked between our two attempts: try creating again
        except PermissionError:
            try:
                st = os.lstat(path)
            except OSError:
                raise PermissionDenied("permission denied", name=name, path=path) from None
            if wait and st.st_uid != os.geteuid() and stat.S_ISREG(st.st_mode) \
                    and stat.S_IMODE(st.st_mode) == 0o600 and time.monotonic() < end:
                time.sleep(0.002)   # its creator may be initialising it (still 0600)
                continue
            raise _denied(name, st, distrust(st) or "its mode does not admit you") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM):
                raise LedgerFull("space", name=name) from None
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV):
                st = os.lstat(path)
                raise _denied(name, st, distrust(st) or "is not a ledger") from None
            raise


def _map(name: str, path: str, fd: int, st: os.stat_result, params: Params | None,
         created: bool, wait_for_creator: bool) -> tuple[mmap.mmap | None, bool]:
    """Map an initialised ledger, or initialise it if it is ours to.  (None,
    False) when a creator appeared while we waited (open again)."""
    if st.st_size >= _ledger.HEADER_SIZE:
        magic = os.pread(fd, 8, 0)
        if int.from_bytes(magic, "little") != 0:
            return _mmap(fd, st.st_size), False     # the common case: no flock needed
    elif st.st_size != 0:
        raise Corrupt(f"is truncated ({st.st_size} bytes, less than a ledger header)",
                      name=name, path=path)
    # Empty or not initialised: only under the creation flock.  A creator
    # may be between O_EXCL and its flock: give it a moment.
    if st.st_size == 0 and params is None and not created and wait_for_creator \
            and _wait_for_creator(fd):
        return None, False
    _flock(fd, name, path)
    try:
        st = os.fstat(fd)
        if st.st_size >= _ledger.HEADER_SIZE and int.from_bytes(os.pread(fd, 8, 0), "little"):
            return _mmap(fd, st.st_size), False     # initialised while we waited
        if params is None:
            raise Corrupt("exists but was never initialised (its creator died); open it with "
                          "a capacity to initialise it", name=name, path=path)
        return _initialise(fd, params, name), True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _mmap(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size)


def _flock(fd: int, name: str, path: str) -> None:
    """The creation flock, within FLOCK_BOUND: a creator initialises in
    milliseconds, so a longer hold is a stall (anyone who can open the file
    can hold its flock forever)."""
    end = time.monotonic() + FLOCK_BOUND
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= end:
                holders = _proc.locks_on(path)
                raise Wedged(holders[0] if holders else None, name=name,
                             waited=FLOCK_BOUND, what="creation lock") from None
            time.sleep(0.002)


def _wait_for_creator(fd: int, seconds: float = CREATOR_GRACE) -> bool:
    """True once the segment has grown (a creator got to it) within the bound."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.002)
        if os.fstat(fd).st_size != 0:
            return True
    return False


def _initialise(fd: int, p: Params, name: str) -> mmap.mmap:
    bits = policy_bits(p)
    size = _ledger.segment_size(p.capacity, p.max_holders, p.max_waiters, bits)
    os.ftruncate(fd, size)
    try:
        # Allocate every page now: a full /dev/shm then fails here with
        # ENOSPC instead of killing a later writer with SIGBUS.
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.ftruncate(fd, 0)
        if e.errno in (errno.ENOSPC, errno.ENOMEM):
            raise LedgerFull("space", size, name=name) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    mm = mmap.mmap(fd, size)
    _ledger.initialize(mm, p.capacity, p.initial, p.max_holders, p.max_waiters, bits,
                       os.getpid(), int.from_bytes(os.urandom(8), "little") >> 2)
    return mm


def _check_policy(name: str, found: Params, asked: Params) -> None:
    """Capacity and kind must agree; the other settings only where the
    caller gave them explicitly (the facade checks those: a default is no
    request)."""
    if found.capacity != asked.capacity:
        raise CapacityMismatch(name, found.capacity, asked.capacity)
    if found.kind != asked.kind:
        raise PolicyMismatch(name, "kind", found.kind, asked.kind)


# ------------------------------------------------------------ removing
def remove_file(name: str) -> None:
    """Unlink the segment file (no ledger is touched)."""
    path = _names.shm_path(name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise NotFound(name) from None
    except IsADirectoryError:
        raise Corrupt("is a directory, not a ledger: remove it with rmdir", name=name,
                      path=path) from None
    except PermissionError:
        try:
            st = os.lstat(path)
        except OSError:
            raise PermissionDenied("cannot remove it", name=name, path=path) from None
        raise _denied(name, st, "cannot remove it: only its owner or root can "
                                "(the sticky bit of /dev/shm)") from None


def _may_remove(name: str) -> None:
    """PermissionDenied unless we may unlink the file: /dev/shm is sticky,
    so only the file's owner (or the directory's, or root) may."""
    st = owner_of(name)
    me = os.geteuid()
    if me != 0 and st.st_uid != me:
        try:
            dir_owner = os.stat(_names.SHM_DIR).st_uid
        except OSError:
            dir_owner = -1
        if dir_owner != me:
            raise _denied(name, st, "cannot remove it: only its owner or root can "
                                    "(the sticky bit of /dev/shm)")


def unlink(name: str, *, lock_wait: float = 5.0) -> None:
    """Remove the name: mark the ledger unlinked (queued waiters give up with
    Unlinked), then unlink the segment.  Processes that have it open keep
    their mapping (POSIX unlink is deferred): their holds and releases still
    work; a later open creates a new, separate object.  A segment that is
    not a usable ledger is removed without marking (that is what unlinking
    it is for); one we may not trust is not touched: PermissionDenied."""
    _names.validate(name)
    _may_remove(name)            # first: a refused unlink must change nothing
    try:
        seg = open_segment(name, wait_for_creator=False)
    except (Corrupt, Wedged):
        seg = None
    if seg is not None:
        try:
            seg.ledger.mark_unlinked(time.monotonic_ns() + int(lock_wait * 1e9))
        except Wedged:
            pass  # its lock is held by a stopped process: remove it anyway
        finally:
            seg.close()
    remove_file(name)


# --------------------------------------------------------- read-only views
@dataclass(frozen=True)
class View:
    """A read-only look at a ledger: its snapshot (``_ledger.Snapshot``:
    header, holders, waiters in serving order, consistent) and the file's
    owner and mode.  Taken with pread(): nothing is mapped or locked."""

    name: str
    snapshot: _ledger.Snapshot
    uid: int
    gid: int
    mode: int
    size: int


def read_view(name: str, tries: int = 50) -> View:
    """Copy the ledger NAME with pread() and parse the copy.  Works with read
    permission only (a group member of a 0640 semaphore, root for anyone's),
    never blocks on the ledger lock and never maps a byte.  Consistent when
    two looks at the seqlock words around the copy agree; after ``tries``
    attempts (a writer stopped mid-transaction) the last copy is returned
    marked inconsistent.  Raises NotFound, PermissionDenied, Corrupt."""
    path = _names.shm_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(name) from None
    except PermissionError:
        try:
            st = os.lstat(path)
        except OSError:
            raise PermissionDenied("permission denied", name=name, path=path) from None
        raise _denied(name, st, "its mode does not let you read it") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            st = os.lstat(path)
            raise Corrupt(distrust(st) or "is not a ledger", name=name, path=path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Corrupt("is not a regular file", name=name, path=path)
        if st.st_size < _ledger.HEADER_SIZE:
            raise Corrupt("is empty (never initialised, or its creator is at work)"
                          if st.st_size == 0 else
                          f"is truncated ({st.st_size} bytes, less than a ledger header)",
                          name=name, path=path)
        snap = None
        budget = time.monotonic() + VIEW_BUDGET
        for attempt in range(max(tries, 1)):
            header = os.pread(fd, _ledger.HEADER_SIZE, 0)
            c1, u1 = _ledger.seqlock_words(header)
            last = attempt == tries - 1 or time.monotonic() >= budget
            if u1 != 0 and not last:
                # a transaction in flight: look at the header alone again
                # (cheap) until it is between transactions, then copy once
                time.sleep(0.0002)
                continue
            try:
                ext = _ledger.extent(header)
            except Corrupt as e:
                e.name, e.path = name, path
                raise
            if ext["total"] > st.st_size:
                raise Corrupt(f"is truncated: {st.st_size} bytes, the ledger needs "
                              f"{ext['total']}", name=name, path=path)
            holders, waiters, units = (os.pread(fd, length, off) if length else b""
                                       for off, length in (ext["holders"], ext["waiters"],
                                                           ext["units"]))
            c2, u2 = _ledger.seqlock_words(os.pread(fd, _ledger.HEADER_SIZE, 0))
            consistent = u1 == 0 and u2 == 0 and c1 == c2
            try:
                snap = _ledger.parse(header, holders, waiters, units, consistent)
            except Corrupt as e:
                if consistent:
                    e.name, e.path = name, path
                    raise
                snap = None
            if consistent or last:
                break
        if snap is None:
            raise Corrupt("could not be read between two transactions", name=name, path=path)
        return View(name, snap, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_size)
    finally:
        os.close(fd)


def owner_of(name: str) -> os.stat_result:
    """lstat of the segment file (NotFound if absent)."""
    try:
        return os.lstat(_names.shm_path(name))
    except FileNotFoundError:
        raise NotFound(name) from None


__all__ = ["DEFAULT_SLOTS", "IpcsemError", "Segment", "View", "distrust", "open_segment",
           "owner_of", "params_of", "read_view", "remove_file", "unlink"]
