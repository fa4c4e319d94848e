"""Root's tools and the children they drop to user X: what such a child,
taken over by X, can reach — root's terminal, root's parser.

An operator types ``ipcsem recover NAME`` or ``ipcsem supervise`` as root in
a terminal.  The work on X's semaphores runs in a child dropped to X —
which maps and locks X's ledger, so X can take that child over (the glibc
robust-list write-what-where of issue 8 item 2: the reason for privilege
separation in the first place).  Privilege separation holds only if that
child has nothing of root's left: not root's descriptors and not root's
*controlling terminal*.  A process in the terminal's session can open
/dev/tty and push keystrokes into root's shell with TIOCSTI (enabled here:
``dev.tty.legacy_tiocsti = 1``, the kernel default before 6.2 and on most
distributions) — "sudo su" escapes work exactly so.

The takeover is simulated: the function that drops privileges is wrapped
so that, the moment the child is X, it does what X's exploit would do —
try TIOCSTI on every descriptor it has and on /dev/tty.  The operator's
pty then shows whether anything was typed into root's shell.
"""
from __future__ import annotations

import fcntl
import os
import pty
import signal
import termios
import time
import tty

import pytest

from ipcsem import _proc
from ipcsem.cli import privsep

from .conftest import (
    ALICE,
    Proc,
    assert_survived,
    dead_identity,
    forge_holder,
    isolated,
    make_ledger,
    new_name,
)

INJECTED = b"id >/tmp/pwned\r"


def _typed_as_user() -> None:
    """What a taken-over child of X does: type into any terminal it can reach."""
    def push(fd):
        for ch in INJECTED:
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))

    for fd in range(0, 256):
        try:
            push(fd)
            return
        except OSError:
            pass
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        push(fd)
    except OSError:
        pass


def _compromised(real):
    def become(uid):
        real(uid)
        if uid != 0:
            _typed_as_user()
    return become


def _operator(chan, argv, seconds):
    """A root shell on a pty (its controlling terminal) running ``ipcsem
    ARGV`` for at most ``seconds``; what arrived on the shell's input."""
    master, slave = pty.openpty()
    tty.setraw(slave)                       # every pushed byte is readable at once
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            privsep.become = _compromised(privsep.become)       # SEAM REQUEST (see docstring)
            _proc.become = _compromised(_proc.become)
            from ipcsem import cli

            signal.alarm(int(seconds) + 1)
            cli.main(argv)
        finally:
            os._exit(0)
    end = time.monotonic() + seconds
    while time.monotonic() < end and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    os.set_blocking(slave, False)
    typed = b""
    while True:
        try:
            chunk = os.read(slave, 4096)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        typed += chunk
    os.close(master)
    return typed


def _wedged_with_a_dead_holder(chan, name):
    make_ledger(name, 2)
    pid, start = dead_identity()
    forge_holder(name, 0, pid, start + 1, 1)
    return "made"


@pytest.mark.parametrize("argv", [["recover"], ["supervise", "--sweep", "0.3"]],
                         ids=["recover", "supervise"])
@isolated(timeout=60)
def test_a_child_dropped_to_a_user_cannot_type_into_roots_terminal(argv):
    name = new_name()
    assert_survived(Proc(_wedged_with_a_dead_holder, name, user=ALICE), 10)
    typed = assert_survived(Proc(_operator, [*argv, name] if argv == ["recover"] else argv, 3.0),
                            20).value
    assert INJECTED not in typed, f"uid {ALICE.uid} typed {typed!r} into root's shell"


def _pipe_ends(pid: int, access: int) -> dict[str, int]:
    """pipe inode -> fd, for ``pid``'s pipe descriptors opened with ``access``."""
    ends = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
        except OSError:
            continue
        if target.startswith("pipe:") and flags & os.O_ACCMODE == access:
            ends[target] = int(fd)
    return ends


def _pipe_to_root() -> int:
    """(Still root, in the child:) our end of the pipe root reads events
    from — the write end whose read end our parent holds."""
    ours = _pipe_ends(os.getpid(), os.O_WRONLY)
    roots = _pipe_ends(os.getppid(), os.O_RDONLY)
    return max(fd for inode, fd in ours.items() if inode in roots)


def _root_cli_with_a_nesting_child(chan, argv):
    """Root runs ``ipcsem ARGV``; the child it drops to X (taken over)
    writes a line nested 3,000 deep to root.  Root's exit code and output."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        import sys

        os.close(r)
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        # the child's stdout/stderr until it exits (closefd=False: nothing to close)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        real = privsep.become

        def become(uid):
            fd = _pipe_to_root()
            real(uid)
            os.write(fd, b"[" * 3000 + b"\n")

        privsep.become = become         # SEAM REQUEST: simulate the taken-over child
        from ipcsem import cli

        code = cli.main(argv)
        os._exit(code if isinstance(code, int) else 0)
    os.close(w)
    out = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@isolated(timeout=30)
def test_root_tools_survive_a_childs_nested_line():
    """``ipcsem recover`` as root over ALICE's semaphore and a second one of
    BOB's: ALICE's child sends garbage nested 3,000 deep.  Root reports
    ALICE's child as failed and goes on with BOB's — no internal error."""
    from .conftest import BOB

    mine, his = new_name("a"), new_name("b")
    assert_survived(Proc(_wedged_with_a_dead_holder, mine, user=ALICE), 10)
    assert_survived(Proc(_wedged_with_a_dead_holder, his, user=BOB), 10)
    _code, out = assert_survived(Proc(_root_cli_with_a_nesting_child, ["recover", mine, his]),
                                20).value
    assert "internal error" not in out, out
    assert f"recovered name={his}" in out, out
