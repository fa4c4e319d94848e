"""Shared by the tests of the console scripts: where they are, how to run
them, how to read `ipcsem-status --json`, and the real processes the CLI
tests need that the common fixtures do not give: a child dropped to
another uid (CI runs as root), and a process that wedges a ledger (takes
its lock, starts an update, and is SIGSTOPped there)."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from procs import wait_until

BIN = os.path.dirname(sys.executable)
IPCSEM = shutil.which("ipcsem", path=BIN)
STATUS = shutil.which("ipcsem-status", path=BIN)

needs_scripts = pytest.mark.skipif(not (IPCSEM and STATUS),
                                   reason="console scripts not installed: pip install -e .")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

# uids/gids no account uses: setresuid accepts any number, and a uid
# without a passwd entry has no home, no session, nothing to disturb.
SPARE_UID = 4242000 + os.getpid() % 1000 * 10
SPARE_GID = SPARE_UID


def run(*args, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)


def status_json(*args) -> dict:
    r = run(STATUS, "--json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def sem_json(name: str) -> dict:
    doc = status_json(name)
    assert doc["version"] == 1
    (obj,) = doc["semaphores"]
    assert obj["name"] == name
    return obj


def wait_for(pred, timeout=10.0, what="condition"):
    return wait_until(pred, timeout=timeout, interval=0.05, what=what)


# --------------------------------------------------- another user, forked
def drop_to(uid: int, gid: int, groups: list[int] = ()) -> None:
    """Become uid/gid (with these supplementary groups) for good."""
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def enter_private_shm() -> None:
    """Give this (forked, single-threaded) process a mount namespace of its
    own with an empty tmpfs on /dev/shm: what it and its children create
    there no other test sees, and it sees no other test's semaphores."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:       # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm"], check=True)


def _can_private_shm() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs",
                        "tmpfs", "/dev/shm"], capture_output=True)
    return r.returncode == 0


_PRIVATE_SHM = _can_private_shm()
needs_private_shm = pytest.mark.skipif(not _PRIVATE_SHM,
                                       reason="needs root and mount namespaces "
                                              "(a private /dev/shm)")


def in_child(fn, *, uid: int | None = None, gid: int | None = None, groups=(),
             timeout: float = 30, private_shm: bool = False) -> tuple[int, str, str]:
    """Run ``fn()`` in a forked child (with a private /dev/shm if asked),
    first dropped to uid/gid/groups if given; (exit code, stdout, stderr)
    of the child.  Forked, not exec'd: the interpreter may live where
    another uid cannot reach it (pyenv under /root), but the child already
    has everything loaded."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            os.close(out_r)
            os.close(err_r)
            sys.stdout = os.fdopen(out_w, "w", buffering=1)
            sys.stderr = os.fdopen(err_w, "w", buffering=1)
            if private_shm:
                enter_private_shm()
            if uid is not None:
                drop_to(uid, uid if gid is None else gid, groups)
            code = fn() or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - the test reads it
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    bufs = {out_r: b"", err_r: b""}
    open_fds = [out_r, err_r]
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)
                raise AssertionError(f"child {pid} did not finish in {timeout} s")
            ready, _, _ = select.select(open_fds, [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    bufs[fd] += chunk
                else:
                    open_fds.remove(fd)
    finally:
        os.close(out_r)
        os.close(err_r)
        _p, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), bufs[out_r].decode(), bufs[err_r].decode()


def cli_in_child(argv: list[str], *, status: bool = False, **kw) -> tuple[int, str, str]:
    """`ipcsem ARGV` (or `ipcsem-status ARGV`) run in a forked child."""
    preload()
    from ipcsem import cli

    return in_child(lambda: (cli.status_main if status else cli.main)(argv), **kw)


def preload() -> None:
    """Import now what the CLI imports lazily: a child dropped to another
    uid may not be able to read the interpreter's library (pyenv under a
    0700 /root), so it must find everything loaded already."""
    import importlib

    import psutil

    from ipcsem import cli

    cli.build_parser()
    for mod in ("ipcsem.cli.status", "ipcsem.cli.metrics", "ipcsem.cli.manage", "resource",
                "pwd", "grp", "prometheus_client"):
        importlib.import_module(mod)
    p = psutil.Process()
    p.username(), p.cmdline(), p.name()


class Started:
    """Popen factory for code that runs where the ``procs`` fixture does not
    (a forked child): every process is killed on ``close()``."""

    def __init__(self) -> None:
        self.made: list[subprocess.Popen] = []

    def __call__(self, args, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, **kw)
        self.made.append(p)
        return p

    def close(self) -> None:
        import signal

        for p in self.made:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                except ProcessLookupError:
                    pass
            p.wait(10)


def isolated(scenario, timeout: float = 60) -> None:
    """Run ``scenario(procs)`` where no other test's supervisor or recoverer
    can touch its semaphores (a private /dev/shm, when we may make one),
    else here."""
    def body() -> int:
        started = Started()
        try:
            scenario(started)
        finally:
            started.close()
        return 0

    if _PRIVATE_SHM:
        code, out, err = in_child(body, private_shm=True, timeout=timeout)
        assert code == 0, out + err
    else:
        body()


# ----------------------------------------------- a ledger, wedged on purpose
# What a process stopped inside a ledger transaction leaves: the robust
# mutex (offset 512) locked by it, its pid recorded as the lock owner, one
# undo-log entry (the H_UNDO_COUNT word, entries at the header's undo offset)
# for a store it made.  Written as the ledger's own after_lock()/tx_store()
# would, into a mapping of our own; the store is to the `changes` counter,
# which the undo entry restores when the next locker rolls it back.
WEDGER = r"""
import ctypes, mmap, os, struct, sys, time
name, mid_update = sys.argv[1], sys.argv[2] == "1"
H_CHANGES, H_LOCK_OWNER, H_UNDO_OFF, H_UNDO_COUNT = (int(x) for x in sys.argv[3:7])
fd = os.open("/dev/shm/ipcsem." + name, os.O_RDWR)
mm = mmap.mmap(fd, os.fstat(fd).st_size)
base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
assert ctypes.CDLL(None).pthread_mutex_lock(ctypes.c_void_p(base + 512)) == 0
UNDO_COUNT_OFF = H_UNDO_COUNT * 8
def word(i, v=None):
    if v is None:
        return struct.unpack_from("<q", mm, i * 8)[0]
    struct.pack_into("<q", mm, i * 8, v)
word(H_LOCK_OWNER, os.getpid())
if mid_update:
    undo = word(H_UNDO_OFF)
    struct.pack_into("<qq", mm, undo, H_CHANGES * 8, word(H_CHANGES))
    struct.pack_into("<q", mm, UNDO_COUNT_OFF, 1)
    word(H_CHANGES, word(H_CHANGES) + 1000)
print("locked", flush=True)
time.sleep(120)
"""


def _header_index(field: str) -> int:
    """Word index of a header field, read from _ledger.c's enum (the layout
    grows: a number written here went stale when the PI fields came)."""
    import re

    from ipcsem._shm import _ledger

    src = Path(os.path.dirname(_ledger.__file__), "_ledger.c").read_text()
    body = src[src.index("enum {", src.index("H_MAGIC = 0") - 40):]
    body = re.sub(r"/\*.*?\*/", "", body[:body.index("}")], flags=re.S)
    names = [x.split("=")[0].strip() for x in body[body.index("{") + 1:].split(",")]
    return names.index(field)


def wedge(procs, name: str, mid_update: bool = True) -> subprocess.Popen:
    """A process holding NAME's ledger lock (mid-update if asked), stopped."""
    import signal

    words = [str(_header_index(f))
             for f in ("H_CHANGES", "H_LOCK_OWNER", "H_UNDO_OFF", "H_UNDO_COUNT")]
    p = procs([sys.executable, "-c", WEDGER, name, "1" if mid_update else "0", *words],
              stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    p.send_signal(signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
             what="the wedger to stop")
    return p
