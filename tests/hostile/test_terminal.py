"""Root's terminal: what a process that root drops to user X can reach.

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
import select
import signal
import termios
import time
import tty

import pytest

from ipcsem import _proc
from ipcsem.cli import privsep

from .conftest import (ALICE, Proc, assert_survived, dead_identity, forge_holder, isolated,
                       make_ledger, new_name)

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


@pytest.mark.xfail(strict=True, reason="hostile-bugs.md H19: the dropped child keeps root's "
                                       "controlling terminal")
@pytest.mark.parametrize("argv", [["recover"], ["supervise", "--sweep", "0.3"]],
                         ids=["recover", "supervise"])
@isolated(timeout=60)
def test_a_child_dropped_to_a_user_cannot_type_into_roots_terminal(argv):
    name = new_name()
    assert_survived(Proc(_wedged_with_a_dead_holder, name, user=ALICE), 10)
    typed = assert_survived(Proc(_operator, [*argv, name] if argv == ["recover"] else argv, 3.0),
                            20).value
    assert INJECTED not in typed, f"uid {ALICE.uid} typed {typed!r} into root's shell"
