"""Process facts, read from the kernel: one place for /proc parsing, the
parent-death signal, and launching helper processes (supervisors, storm
workers) the same way everywhere.

Start ticks (field 22 of /proc/PID/stat) are read here by hand: they are
half of a process's identity and must be exact.  Everything else a person
wants to see about a process (user, command line, thread count, state) comes
from psutil, the tool users already know for this.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HAVE_PROC = os.path.exists("/proc/self/stat")
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat ipcsem uses."""

    state: str        # R, S, D, T, t, Z, X, ... (the thread-group leader's)
    ppid: int
    threads: int      # live threads of the whole thread group
    start: int        # start time in clock ticks since boot


def stat(pid: int) -> Stat | None:
    """/proc/PID/stat of ``pid``, or None if there is no such process.
    PermissionError if /proc hides it (hidepid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and ')': split after the last ')'.
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return Stat(rest[0].decode(), int(rest[1]), int(rest[17]), int(rest[19]))
    except (ValueError, IndexError):
        return None  # vanished while we read it (an empty file)


def start_of(pid: int) -> int | None:
    """Start time token of ``pid``, or None if it does not exist."""
    if HAVE_PROC:
        try:
            st = stat(pid)
        except PermissionError:
            return None
        return None if st is None else st.start
    import psutil

    try:
        return int(psutil.Process(pid).create_time() * 1_000_000)
    except psutil.Error:
        return None


def argv(pid: int, start: int | None = None) -> list[str] | None:
    """The command line of ``pid`` (psutil), ``["[comm]"]`` for a zombie or a
    kernel thread, None if it is gone (or is no longer the process that
    started at ``start``)."""
    import psutil

    try:
        p = psutil.Process(pid)
        try:
            args = p.cmdline()
        except psutil.ZombieProcess:
            args = []
        if not args:
            args = [f"[{p.name()}]"]
    except psutil.Error:
        return None
    if start is not None and start_of(pid) != start:
        return None  # reused while we looked: trust nothing
    return args


def user(pid: int) -> str | None:
    """The login name (or uid) owning ``pid``, None if unknown."""
    import psutil

    try:
        return psutil.Process(pid).username()
    except psutil.Error:
        return None
    except KeyError:  # a uid without a passwd entry
        try:
            return str(psutil.Process(pid).uids().real)
        except psutil.Error:
            return None


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies
    (prctl PR_SET_PDEATHSIG; it survives exec).  False where unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rc: int = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        return rc == 0
    except (OSError, AttributeError):
        return False


def start_named_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread whose kernel name (/proc/PID/task/TID/comm,
    what deadlock detection and ``ps -L`` see) is ``name``, and return once
    it is named: a detector looking right after sees ipcsem's thread, not
    a thread of the program.  prctl is resolved here, by the caller: the
    new thread imports nothing (after a privilege drop it may not be able
    to read the interpreter's files)."""
    prctl: Callable[..., int] | None
    try:
        import ctypes

        prctl = ctypes.CDLL(None).prctl
    except (ImportError, OSError, AttributeError):
        prctl = None
    named = threading.Event()
    raw = name.encode()[:15]

    def run() -> None:
        if prctl is not None:
            prctl(PR_SET_NAME, raw, 0, 0, 0)
        named.set()
        target()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    named.wait(5.0)
    return thread


def pdeathsig_preexec(sig: int = signal.SIGKILL, parent: int | None = None,
                      then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child die with us (libc is looked up
    here, in the parent, not between fork and exec).  If the parent already
    died before prctl took effect, the child kills itself.  ``then()`` runs
    after (signal dispositions, masks)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid() if parent is None else parent

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        if then is not None:
            then()

    return preexec


def package_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which a child ``python -m ipcsem...`` imports this
    very ipcsem, even when the parent found it through sys.path rather than
    an installation."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        env["PYTHONPATH"] = os.pathsep.join([here, *paths])
    return env


def launch_supervisor(names: Sequence[str] = (), *, extra: Sequence[str] = (),
                      die_with_parent: bool = True, new_session: bool = False,
                      **popen: Any) -> subprocess.Popen[Any]:
    """Start ``python -m ipcsem supervise [NAME...]`` as a child process (the
    storm, the tests, the benchmarks all start it this way).  It dies with
    us unless ``die_with_parent`` is False."""
    argv = [sys.executable, "-m", "ipcsem", "supervise", *extra, *names]
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("env", package_env())
    if die_with_parent:
        popen.setdefault("preexec_fn", pdeathsig_preexec())
    return subprocess.Popen(argv, start_new_session=new_session, **popen)


def locks_on(path: str) -> list[int]:
    """Pids holding a lock (flock/POSIX) on the file at ``path``, from
    /proc/locks (blocked requests skipped)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] != "->" and parts[5] == key:
                    pids.append(int(parts[4]))
    except (OSError, ValueError):
        pass
    return pids


def become(uid: int) -> None:
    """Drop to ``uid`` for good (in a forked child): supplementary groups,
    then gid, then uid, in that order; PermissionError if root could be
    regained.  Import what the child needs *before* calling this: files
    under a private home (an interpreter installed in /root) are not
    readable afterwards."""
    import pwd

    try:
        pw = pwd.getpwuid(uid)
        gid, groups = pw.pw_gid, os.getgrouplist(pw.pw_name, pw.pw_gid)
    except KeyError:
        gid, groups = uid, [uid]    # a uid without a passwd entry: its own group only
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() != uid or (uid != 0 and can_regain_root()):
        raise PermissionError(f"could not drop privileges to uid {uid}")


def can_regain_root() -> bool:
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        return False
    return True


def keep_only_fds(*keep: int) -> None:
    """Close every descriptor but ``keep`` and point 0-2 at /dev/null (a
    child that must not inherit its parent's pipes and journal streams)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(null, fd)
    os.close(null)
    top = 3
    for fd in sorted(set(keep) | {2}):
        if fd >= top:
            os.closerange(top, fd)
            top = fd + 1
    os.closerange(top, 1 << 20)


# ------------------------------------------------ event lines over a pipe
# A dropped child (a supervisor's per-user worker, a privilege-separated
# CLI job) reports to root as one JSON object per line, each at most
# EVENT_LINE_MAX bytes; root reads them as untrusted bytes.
EVENT_LINE_MAX = 4096


def write_event(fd: int, event: dict[str, Any]) -> None:
    """Write ``event`` as one JSON line to ``fd``; one too long is dropped."""
    import json

    data = (json.dumps(event) + "\n").encode()
    if len(data) <= EVENT_LINE_MAX:
        os.write(fd, data)


def read_event(line: bytes) -> dict[str, Any] | None:
    """One line as an event, or None: at most EVENT_LINE_MAX bytes, JSON, an
    object whose "event" is a string.  (Deep nesting is not ours either:
    the parser's RecursionError says so.)  Its other keys are the reader's
    to check."""
    import json

    if len(line) > EVENT_LINE_MAX:
        return None
    try:
        ev = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return ev if isinstance(ev, dict) and isinstance(ev.get("event"), str) else None


def split_lines(buf: bytearray) -> list[bytes]:
    """Take the complete lines off the front of ``buf`` (what a pipe gave
    so far); a rest longer than EVENT_LINE_MAX is no line of ours and is
    dropped, so a writer without newlines cannot grow ``buf`` for ever."""
    lines = []
    while b"\n" in buf:
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        lines.append(line)
    if len(buf) > EVENT_LINE_MAX:
        buf.clear()
    return lines


class CommandLines:
    """Command lines of watched processes, noted while they live (/proc
    forgets them at death) and handed out once, when they are recovered.
    ``note`` is a supervisor's ``on_watch`` hook."""

    def __init__(self) -> None:
        self._lines: dict[tuple[int, int], str] = {}

    def note(self, pid: int, start: int) -> None:
        args = argv(pid, start)
        if args is not None:
            self._lines[(pid, start)] = " ".join(args)

    def pop(self, pid: int, start: int) -> str | None:
        return self._lines.pop((pid, start), None)
