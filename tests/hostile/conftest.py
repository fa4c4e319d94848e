"""The hostile-peer machinery: worlds, users, and processes that play them.

**A world** (``@isolated``): every test body runs in a forked root process
that has its own mount namespace and a fresh tmpfs on /dev/shm.  Whatever an
attacker plants there never meets other users of the machine, a root
supervisor over "every semaphore" sees only the test's, an ENOSPC test gets
a /dev/shm of a few pages, and the world's /dev/shm vanishes with it: no
clean-up can be forgotten.  The pytest process only waits for the world and
reports what went wrong inside it.

**Users**: plain uids/gids from 61001 up, which need no passwd entry.
``ATTACKER`` shares nothing with anyone; ``ALICE`` and ``BOB`` share the group
``TEAM``; ``MALLORY`` is in ``TEAM`` *and* in ``OTHERS``; ``CAROL`` is in
``OTHERS`` only.  A :class:`Proc` is a forked child that drops to one of them
(supplementary groups, then gid, then uid: once the uid is gone the groups
cannot be changed) and runs a function; it talks to the test over a channel
of pickled messages.  A fresh interpreter could not run as those uids here
(pyenv lives under /root, mode 0700), so children are forked from a process
that has already imported everything they need.

**Outcomes**: a victim's :class:`Outcome` says how it ended: returned a
value, raised (and whether the exception was one of ipcsem's typed errors),
or was killed by a signal, and how long its call took.  ``assert_survived``
is the suite's verdict: not killed, not hung, a value or a typed error.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import grp  # noqa: F401  - imported now: children without access to /root cannot
import json  # noqa: F401
import os
import pickle
import pwd  # noqa: F401
import select
import signal
import stat
import struct
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import ipcsem
from ipcsem import _errors, _identity, _names, _proc  # noqa: F401
from ipcsem._shm import _ledger, handle, recovery, root, segment, supervisor, worker  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))

# Modules load lazily on first use; a child that dropped to another uid can
# no longer read /root (pyenv): use them once now, while it is ours.
import asyncio  # noqa: E402
import concurrent.futures.thread  # noqa: E402,F401  (run_in_executor)

asyncio.run(asyncio.sleep(0))

psutil.Process().cmdline()
psutil.Process().create_time()
psutil.Process().status()
psutil.Process().num_threads()
_proc.user_name(0)

# --------------------------------------------------------------- root only


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="the hostile-peer suite plays other uids: run it as root")
    for item in items:
        if os.path.dirname(str(item.fspath)) == HERE:
            item.add_marker(skip)


# ------------------------------------------------------------------ users


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def all_groups(self) -> tuple[int, ...]:
        return (self.gid, *self.groups)


TEAM = 61100       # a group ALICE and BOB share (and MALLORY)
OTHERS = 61101     # a group MALLORY and CAROL share
ATTACKER = User("attacker", 61001, 61001)
ALICE = User("alice", 61002, 61002, (TEAM,))
BOB = User("bob", 61003, 61003, (TEAM,))
MALLORY = User("mallory", 61004, 61004, (TEAM, OTHERS))
CAROL = User("carol", 61005, 61005, (OTHERS,))
ROOT = None        # a Proc with user=None stays root


def become(user: User) -> None:
    """Drop this (forked) process to ``user`` for good.  Order matters:
    groups and gid need root, so the uid goes last."""
    os.setgroups(list(user.all_groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    assert os.geteuid() == user.uid and os.getegid() == user.gid


# ----------------------------------------------------------------- worlds

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 0x4000, 1 << 18
PR_SET_CHILD_SUBREAPER = 36


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def private_shm(size: str = "64m", nr_inodes: int | None = None) -> None:
    """This process gets its own mount namespace and a fresh tmpfs on
    /dev/shm (what ``unshare -m`` + ``mount -t tmpfs tmpfs /dev/shm`` do)."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Without this, a shared / would propagate our tmpfs back to the host.
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    opts = f"size={size},mode=1777" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    _check(_libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()),
           "mount tmpfs /dev/shm")


def remount_shm(size: str, nr_inodes: int | None = None) -> None:
    """Resize this world's /dev/shm (tmpfs accepts a remount with new limits)."""
    MS_REMOUNT = 32
    opts = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    _check(_libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV,
                       opts.encode()), "remount /dev/shm")


def _members_of(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _end_world() -> None:
    """Kill every process this world started (they share its process group)."""
    me = os.getpid()
    for _ in range(3):
        pids = _members_of(me)
        if not pids:
            return
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        time.sleep(0.05)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def run_isolated(body, shm_size: str = "64m", nr_inodes: int | None = None,
                 timeout: float = 60.0) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the world
        code = 0
        try:
            os.close(r)
            os.setpgid(0, 0)
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)   # pytest-timeout's is not ours
            private_shm(shm_size, nr_inodes)
            body()
            os.write(w, b"ok")
        except BaseException:  # noqa: BLE001 - reported to the parent
            text = traceback.format_exc()
            code = 1
            try:
                os.write(w, text.encode()[-60000:])
            except OSError:
                pass
        finally:
            try:
                _end_world()
            finally:
                os._exit(code)
    os.close(w)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while True:
            left = end - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(left, 0))
            if not ready:
                os.killpg(pid, signal.SIGKILL)
                pytest.fail(f"the test's world did not finish within {timeout} s",
                            pytrace=False)
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)   # stragglers that outlived the world
        except ProcessLookupError:
            pass
    out = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        pytest.fail(f"the test's world was killed by {signal.Signals(os.WTERMSIG(status)).name}"
                    f"\n{out}", pytrace=False)
    if out != "ok":
        pytest.fail(out, pytrace=False)


def isolated(shm_size: str = "64m", nr_inodes: int | None = None, timeout: float = 60.0):
    """Run the test in its own world (see the module docstring)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            run_isolated(lambda: fn(*args, **kwargs), shm_size, nr_inodes, timeout)
        return wrapper
    return deco


# -------------------------------------------------------------- processes


def describe(e: BaseException) -> dict:
    return {"type": f"{type(e).__module__}.{type(e).__qualname__}",
            "mro": [c.__name__ for c in type(e).__mro__],
            "typed": isinstance(e, ipcsem.IpcsemError), "message": str(e),
            "traceback": traceback.format_exc()[-4000:]}


class Channel:
    """Length-prefixed pickles over a pair of pipes."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self._buf = b""

    def send(self, obj) -> None:
        try:
            data = pickle.dumps(obj)
        except Exception:  # noqa: BLE001 - a handle, a lease: its repr will do
            data = pickle.dumps(_picklable(obj))
        data = struct.pack("<I", len(data)) + data
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]

    def recv(self, timeout: float | None = 10.0):
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack("<I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    obj = pickle.loads(self._buf[4:4 + n])
                    self._buf = self._buf[4 + n:]
                    return obj
            left = None if end is None else max(end - time.monotonic(), 0)
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                raise TimeoutError(f"nothing received within {timeout} s")
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise EOFError("the other side closed the channel")
            self._buf += chunk


def _picklable(obj):
    if isinstance(obj, tuple):
        return tuple(_picklable(x) for x in obj)
    if isinstance(obj, list):
        return [_picklable(x) for x in obj]
    try:
        pickle.dumps(obj)
        return obj
    except Exception:  # noqa: BLE001
        return repr(obj)


@dataclass
class Outcome:
    """How a Proc ended.  ``status``: exit code, or -signal if killed."""

    status: int | None
    kind: str | None = None          # "return" | "raise" | None (no final word)
    value: object = None
    error: dict | None = None
    messages: list = field(default_factory=list)

    @property
    def signalled(self) -> bool:
        return self.status is not None and self.status < 0

    def summary(self) -> str:
        if self.status is None:
            return "still running (hung)"
        if self.signalled:
            return f"killed by {signal.Signals(-self.status).name}"
        if self.kind == "raise":
            e = self.error
            return f"raised {e['type']}: {e['message']}\n{e['traceback']}"
        return f"returned {self.value!r} (exit {self.status})"


class Proc:
    """A forked child running ``fn(chan, *args)`` as ``user`` (root if None).

    ``fn``'s return value (or exception) is its final word; before that it
    may talk: ``chan.send(obj)`` / ``chan.recv(timeout)`` on its side,
    ``proc.send(obj)`` / ``proc.recv(timeout)`` on ours."""

    def __init__(self, fn, *args, user: User | None = None, label: str | None = None) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        self.label = label = label or getattr(fn, "__name__", "proc")
        self.user = user
        pid = os.fork()
        if pid == 0:
            code = 0
            chan = Channel(down_r, up_w)
            try:
                os.close(down_w)
                os.close(up_r)
                import faulthandler
                faulthandler.disable()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if user is not None:
                    become(user)
                value = fn(chan, *args)
                chan.send(("return", value))
            except BaseException as e:  # noqa: BLE001 - the outcome is the point
                try:
                    chan.send(("raise", describe(e)))
                except BaseException:  # noqa: BLE001
                    code = 3
                    try:
                        sys.stderr.write(f"{label or fn}: could not report:\n"
                                         f"{traceback.format_exc()}\n{describe(e)}\n")
                    except BaseException:  # noqa: BLE001
                        pass
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        self.pid = pid
        self.chan = Channel(up_r, down_w)
        self._outcome: Outcome | None = None
        self._status: int | None = None
        self._early: list = []

    # talking
    def send(self, obj) -> None:
        self.chan.send(obj)

    def recv(self, timeout: float = 10.0):
        """The next message it sent (not its final word)."""
        try:
            msg = self.chan.recv(timeout)
        except EOFError:
            raise AssertionError(f"{self.label} went away: {self.outcome(5).summary()}") from None
        if isinstance(msg, tuple) and msg and msg[0] in ("return", "raise"):
            self._early.append(msg)
            raise AssertionError(f"{self.label} ended instead of talking: "
                                 f"{self.outcome(5).summary()}")
        return msg

    def expect(self, want, timeout: float = 10.0):
        got = self.recv(timeout)
        assert got == want, f"{self.label} said {got!r}, expected {want!r}"
        return got

    # ending
    def poll(self) -> int | None:
        if self._status is None:
            try:
                pid, st = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self._status
            if pid:
                self._status = os.waitstatus_to_exitcode(st)
        return self._status

    def wait(self, timeout: float = 10.0) -> int | None:
        end = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < end:
            time.sleep(0.005)
        return self._status

    def alive(self) -> bool:
        return self.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            if sig == signal.SIGKILL:
                os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            self.wait(10)

    def outcome(self, timeout: float = 10.0) -> Outcome:
        """Wait up to ``timeout`` for its final word and exit."""
        if self._outcome is not None and self._outcome.status is not None:
            return self._outcome
        messages, final = [], None
        if self._early:
            final = self._early.pop()
        end = time.monotonic() + timeout
        while final is None:
            try:
                msg = self.chan.recv(max(end - time.monotonic(), 0))
            except (TimeoutError, EOFError):
                break
            if isinstance(msg, tuple) and msg and msg[0] in ("return", "raise"):
                final = msg
            else:
                messages.append(msg)
        status = self.wait(max(end - time.monotonic(), 0.5))
        out = Outcome(status, messages=messages)
        if final is not None:
            out.kind = final[0]
            if final[0] == "return":
                out.value = final[1]
            else:
                out.error = final[1]
        self._outcome = out
        return out

    def close(self) -> None:
        if self.poll() is None:
            self.kill()
        for fd in (self.chan.rfd, self.chan.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def assert_survived(proc: Proc, timeout: float, *, allow_typed: bool = True) -> Outcome:
    """The suite's verdict on a victim: it ended within ``timeout`` (it has
    its own deadline inside that), was not killed by a signal, and either
    returned or raised one of ipcsem's typed errors."""
    out = proc.outcome(timeout)
    assert out.status is not None, f"{proc.label} hung: still running after {timeout} s"
    assert not out.signalled, f"{proc.label} was {out.summary()}"
    if out.kind == "raise":
        assert allow_typed and out.error["typed"], f"{proc.label} {out.summary()}"
    else:
        assert out.kind == "return", f"{proc.label} ended without a word (exit {out.status})"
    return out


def timed(fn, *args, **kwargs):
    """(result or exception description, seconds) of one call."""
    t0 = time.monotonic()
    try:
        r = ("return", fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001
        r = ("raise", describe(e))
    return r, time.monotonic() - t0


# ------------------------------------------------------------------ names


def new_name(tag: str = "h") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def shm_path(name: str) -> str:
    return _names.shm_path(name)


def plant_file(path: str, *, mode: int = 0o666, size: int = 0, data: bytes | None = None) -> None:
    """Create (as whoever we are) a regular file at ``path`` with exactly ``mode``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        if data is not None:
            os.write(fd, data)
        if size:
            os.ftruncate(fd, size)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def shm_listing() -> dict[str, tuple[int, int, int]]:
    """name -> (uid, mode, size) of everything in /dev/shm."""
    out = {}
    for n in os.listdir("/dev/shm"):
        st = os.lstat(f"/dev/shm/{n}")
        out[n] = (st.st_uid, stat.S_IMODE(st.st_mode), st.st_size)
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005, what: str = "it"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def maps_path(pid: int, path: str) -> bool:
    """Does process ``pid`` have ``path`` mapped (/proc/PID/maps)?"""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(line.rstrip().endswith(path) for line in f)
    except OSError:
        return False


# ------------------------------------------------------- legitimate holders


def hold_and_report(chan, name: str, units: int = 1):
    """A legitimate holder: open ``name``, take ``units``, say so, then
    block until killed (its units are what recovery must return)."""
    s = ipcsem.Semaphore(name)
    assert s.acquire(units, timeout=10)
    chan.send(("holding", os.getpid()))
    while True:
        time.sleep(60)


def make_ledger(name: str, capacity: int = 1, mode: int = 0o600, group: int | None = None,
                **params) -> None:
    """Create NAME as the calling user through the segment layer (no
    Semaphore object: see hostile-bugs.md H11 for why tests that make many
    avoid dropping them)."""
    from ipcsem._records import Params

    seg = segment.open_segment(name, Params(capacity=capacity, initial=capacity, mode=mode,
                                            **params), group=group)
    seg.close()


KEEP: list = []   # handles never dropped (H11)


def holder_pids(name: str) -> set[int]:
    """Pids holding units of ``name``, from a read-only view (pread)."""
    v = segment.read_view(name)
    return {h.pid for h in v.snapshot.holders if h.units > 0}


def available_of(name: str) -> int:
    return segment.read_view(name).snapshot.header.available


# ---------------------------------------------------------- a wedged lock

MUTEX_OFF = 512            # the ledger lock (a glibc robust mutex) in the header
FUTEX_TID_MASK = 0x3FFFFFFF


def lock_word(name: str) -> int:
    """The ledger lock's futex word (owner TID | flags), read with pread."""
    fd = os.open(shm_path(name), os.O_RDONLY)
    try:
        return int.from_bytes(os.pread(fd, 4, MUTEX_OFF), "little")
    finally:
        os.close(fd)


def _lock_churner(chan, name):
    sem = ipcsem.Semaphore(name)
    chan.send("churning")
    while True:
        # Every call takes the ledger lock, granted or not.  Each grant is
        # released at once, so a stop between the two holds at most a unit.
        if sem.try_acquire():
            sem.release()


def stop_inside_transaction(name: str, user: User, tries: int = 3000) -> Proc:
    """A real process of ``user``, SIGSTOPped while it holds ``name``'s
    ledger lock (in the middle of a transaction).  The caller SIGCONTs or
    kills it.  Found by stopping one lock-churning process at random
    instants until the lock word names it (a handful of tries: the lock is
    held for a good part of each call).  Only one churner, never killed
    here: a churner killed while holding would leave a dead holder behind."""
    import random

    p = Proc(_lock_churner, name, user=user, label="stopped lock holder")
    p.expect("churning")
    for _ in range(tries):
        time.sleep(random.random() * 0.002)
        os.kill(p.pid, signal.SIGSTOP)
        wait_until(lambda: psutil.Process(p.pid).status() == psutil.STATUS_STOPPED, 5,
                   what="the churner to stop")
        if lock_word(name) & FUTEX_TID_MASK:
            return p
        os.kill(p.pid, signal.SIGCONT)
    raise AssertionError(f"could not stop a process inside a transaction of {name}")


def _write_lock_word(chan, name, tid):
    fd = os.open(shm_path(name), os.O_RDWR)
    try:
        os.pwrite(fd, int(tid).to_bytes(4, "little"), MUTEX_OFF)
    finally:
        os.close(fd)
    return lock_word(name)


def forge_lock_owner(name: str, user: User, tid: int = 1) -> None:
    """A writer of the ledger (``user``) puts a live TID (1 is init) into the
    lock's futex word: the lock looks held by a process that never lets go."""
    out = Proc(_write_lock_word, name, tid, user=user).outcome(10)
    assert out.kind == "return" and out.value & FUTEX_TID_MASK == tid, out.summary()


# ------------------------------------------------------ forging a ledger
#
# A writer of a ledger can put any bytes anywhere in it.  The layout is the
# C file's: header fields are int64 words in the order of its first enum
# (read from the source, so a reordered layout cannot silently break the
# forgeries), then holder slots (8 words), waiter entries (16 words), ...

def _c_enum(first: str) -> dict[str, int]:
    import re

    src = Path(os.path.dirname(_ledger.__file__), "_ledger.c").read_text()
    body = src[src.index("enum {", src.index(first) - 40):]
    body = body[:body.index("}")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = [n.split("=")[0].strip() for n in body[len("enum {"):].split(",")]
    return {n: i for i, n in enumerate(n for n in names if n)}


HDR = _c_enum("H_MAGIC = 0")
HO = _c_enum("HO_PID = 0")
UNDO_COUNT_OFF = HDR["H_UNDO_COUNT"] * 8
HOLDER_BYTES = 8 * 8


def read_word(name: str, offset: int) -> int:
    fd = os.open(shm_path(name), os.O_RDONLY)
    try:
        return struct.unpack("<q", os.pread(fd, 8, offset))[0]
    finally:
        os.close(fd)


def header_word(name: str, field: str) -> int:
    return read_word(name, HDR[field] * 8)


def write_words(name: str, edits: dict[int, int]) -> None:
    """Store int64 values at byte offsets of NAME's file (as its writer)."""
    fd = os.open(shm_path(name), os.O_RDWR)
    try:
        for off, value in edits.items():
            os.pwrite(fd, struct.pack("<q", value), off)
    finally:
        os.close(fd)


def holder_offset(name: str, slot: int, field: str) -> int:
    return header_word(name, "H_HOLDERS_OFF") + slot * HOLDER_BYTES + HO[field] * 8


def forge_holder(name: str, slot: int, pid: int, start: int, units: int) -> None:
    """Write a holder row (and take its units from ``available``)."""
    write_words(name, {
        holder_offset(name, slot, "HO_PID"): pid,
        holder_offset(name, slot, "HO_START"): start,
        holder_offset(name, slot, "HO_UNITS"): units,
        HDR["H_HOLDER_HWM"] * 8: max(header_word(name, "H_HOLDER_HWM"), slot + 1),
        HDR["H_AVAILABLE"] * 8: header_word(name, "H_AVAILABLE") - units,
    })


def forge_undo(name: str, entries: list[tuple[int, int]], count: int | None = None) -> None:
    """Leave an undo log behind, as if its writer had died mid-transaction."""
    base = header_word(name, "H_UNDO_OFF")
    edits = {}
    for i, (off, old) in enumerate(entries):
        edits[base + 16 * i] = off
        edits[base + 16 * i + 8] = old
    edits[UNDO_COUNT_OFF] = len(entries) if count is None else count
    write_words(name, edits)


def dead_identity() -> tuple[int, int]:
    """(pid, start) of a process that has exited (a child we reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    start = None
    for _ in range(100):
        start = _proc.start_of(pid)
        if start:
            break
    os.waitpid(pid, 0)
    return pid, start or 12345
