"""``ipcsem run``: run a command while holding units of a semaphore (or a
mutex), and tell it which units it got."""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import _identity, _proc
from .._errors import LeaseLost, NotFound, PolicyMismatch, Timeout
from .common import (
    EXIT_CANNOT_EXEC,
    EXIT_NOT_FOUND,
    EXIT_TEMPFAIL,
    CliError,
    Subcommands,
    UsageError,
    name_arg,
    positive_int,
    priority_arg,
    seconds,
)

if TYPE_CHECKING:
    from .._records import Lease
    from .._semaphore import Mutex, Semaphore

_RUN_VALUE_OPTS = {"--capacity", "--units", "--timeout", "--priority", "--export", "--backend"}

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
SI_KERNEL = 0x80
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

HELP = """\
Acquire K units of NAME (creating it with capacity N if it does not exist
and --capacity is given), run CMD, release the units when CMD ends, and exit
with CMD's exit status.  NAME may also be a mutex (`ipcsem create --mutex`).

CMD's environment says what it got: IPCSEM_TOKEN (the grant's fencing
token, always), IPCSEM_SLOTS (the unit numbers, like 0,3, on a semaphore
created with --slots; also in each --export VAR), and for a mutex
IPCSEM_PREVIOUS_OWNER_DIED=1 when its previous owner died holding it.

The units belong to `ipcsem run` itself, which waits for CMD.  SIGINT,
SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to `ipcsem run` are
forwarded to CMD (those the terminal sends to the whole foreground group,
like Ctrl-C, reach CMD directly and are not sent twice).  If `ipcsem run` is
killed, even by SIGKILL, the kernel kills CMD with SIGKILL (PR_SET_PDEATHSIG)
and the units come back like any dead holder's: CMD never runs without them.
Processes CMD started in the background are not killed."""

EPILOG = """\
examples:
  ipcsem run gpu --capacity 2 -- python train.py      at most 2 at a time
  ipcsem run gpu --capacity 4 --slots --export CUDA_VISIBLE_DEVICES -- ./train
  ipcsem run licences --units 3 --timeout 60 -- ./solve model.lp
  for f in *.wav; do ipcsem run enc --capacity 4 -- flac "$f" & done; wait

exit status:
  CMD's exit status; 128+N if CMD was killed by signal N
  75  the units were not acquired within --timeout (EX_TEMPFAIL)
  126 CMD could not be executed; 127 CMD not found
  128+N  ipcsem run was interrupted by signal N while waiting
  1   error (no such semaphore without --capacity, capacity mismatch, ...)
  2   usage error"""


def split_run(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For `ipcsem run`, split off CMD: everything after the first `--`, or,
    without `--`, from the first word after NAME that is not an option of
    run.  argparse alone would take CMD's own options for ours."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 2 if argv[i] == "--backend" else 1
    if i >= len(argv) or argv[i] != "run":
        return argv, None
    if "--" in argv[i:]:
        j = argv.index("--", i)
        return argv[:j], argv[j + 1:]
    positionals, k = 0, i + 1
    while k < len(argv):
        a = argv[k]
        if a in _RUN_VALUE_OPTS:
            k += 2
            continue
        if a.startswith("-"):
            k += 1
            continue
        positionals += 1
        if positionals == 2:
            return argv[:k], argv[k:]
        k += 1
    return argv, None


def env_var(text: str) -> str:
    if not _ENV_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not an environment variable name: {text!r}")
    return text


def add_parser(sub: Subcommands) -> None:
    sp = sub.add_parser("run", help="run a command while holding units",
                        usage="ipcsem run NAME [--capacity N [--slots] [--no-fair]] [--units K]\n"
                              "                  [--timeout S] [--priority P] [--export VAR]\n"
                              "                  -- CMD [ARGS...]",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=HELP, epilog=EPILOG)
    sp.add_argument("name", metavar="NAME", type=name_arg)
    sp.add_argument("--capacity", type=positive_int, metavar="N",
                    help="create NAME with N units if it does not exist (and check it)")
    sp.add_argument("--slots", action="store_true", default=None,
                    help="with --capacity: number the units 0..N-1 (checked if NAME exists)")
    sp.add_argument("--fair", action=argparse.BooleanOptionalAction, default=None,
                    help="with --capacity: strict FIFO (default) or --no-fair (barging)")
    sp.add_argument("--units", type=positive_int, default=1, metavar="K",
                    help="units to hold while CMD runs (default 1)")
    sp.add_argument("--timeout", type=seconds, metavar="S",
                    help="give up after S seconds with exit status 75 (0: only if free now; "
                         "default: wait as long as it takes)")
    sp.add_argument("--priority", type=priority_arg, default=0, metavar="P",
                    help="queue priority: higher is served first, FIFO within one (default 0)")
    sp.add_argument("--export", action="append", default=[], type=env_var, metavar="VAR",
                    help="also put the slot list in VAR (repeatable), e.g. "
                         "CUDA_VISIBLE_DEVICES")
    sp.set_defaults(func=run, cmd=[])


class _Interrupted(KeyboardInterrupt):
    """A forwarded signal while waiting.  Raised from the signal handler, it
    ends the wait; the ledger then cancels the queue entry (giving back a
    grant that raced in), so nothing is left behind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _open(args: argparse.Namespace, on_lost: Callable[[Lease, str], None]) -> Semaphore | Mutex:
    """The semaphore or mutex NAME (created as a semaphore with --capacity);
    ``on_lost`` runs if a lease of it may have been lost (ZooKeeper)."""
    from .._semaphore import Mutex, Semaphore

    if args.capacity is None and (args.slots or args.fair is not None):
        raise UsageError("--slots and --fair/--no-fair need --capacity N (they are fixed "
                         "at creation)")
    try:
        if args.capacity is not None:
            return Semaphore(args.name, args.capacity, slots=args.slots, fair=args.fair,
                             backend=args.backend, on_lost=on_lost)
        return Semaphore(args.name, backend=args.backend, on_lost=on_lost)
    except NotFound:
        raise CliError(f"no ipcsem semaphore named {args.name!r} "
                       "(give --capacity N to create it)") from None
    except PolicyMismatch as e:
        if e.setting != "kind" or args.capacity is not None:
            raise
    return Mutex(args.name, create=False, backend=args.backend, on_lost=on_lost)


def _my_units(sem: Semaphore | Mutex) -> int:
    """Units this process holds (read without the ledger lock: used on the
    way out after a signal)."""
    me = _identity.ME
    return sum(h.units for h in sem.holders() if (h.pid, h.start) == (me.pid, me.start))


def _environment(args: argparse.Namespace, sem: Semaphore | Mutex,
                 lease: Lease) -> dict[str, str]:
    env = dict(os.environ)
    env["IPCSEM_TOKEN"] = str(lease.token)
    if sem.params.slots:
        slots = ",".join(str(s) for s in lease.slots)
        env["IPCSEM_SLOTS"] = slots
        for var in args.export:
            env[var] = slots
    else:
        env.pop("IPCSEM_SLOTS", None)   # not an outer run's slots: this one has none
    if sem.params.kind == "mutex":
        env["IPCSEM_PREVIOUS_OWNER_DIED"] = "1" if lease.previous_owner_died else "0"
    return env


def run(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise UsageError("no command given: ipcsem run NAME [OPTIONS] -- CMD [ARGS...]")
    lost = _LostLease(args.name)
    sem = _open(args, lost.on_lost)
    try:
        mutex = sem.params.kind == "mutex"
        if args.units > sem.capacity:
            raise UsageError(f"--units {args.units} exceeds the capacity of {args.name!r} "
                             f"({sem.capacity})")
        if args.export and not sem.params.slots:
            raise UsageError(f"--export needs slots: {args.name!r} was created without "
                             "--slots")
        return _hold_and_run(args, sem, mutex, lost)
    finally:
        sem.close()     # frees our holder slot now rather than at the next heal


class _LostLease:
    """CMD must never run without the units.  When the backend says a lease
    may have been lost (a ZooKeeper session it cannot prove alive), CMD gets
    SIGTERM at once -- from the backend's thread, before anyone else can be
    admitted past the session timeout -- and ``ipcsem run`` says so on
    stderr and exits EXIT_TEMPFAIL.  (A local ledger never loses a lease.)"""

    def __init__(self, name: str) -> None:
        self.name = name
        self.child: int | None = None     # CMD's pidfd: never a reused pid's process
        self.reason: str | None = None
        self.lock = threading.Lock()       # on_lost runs on the backend's thread

    def on_lost(self, lease: Lease, reason: str) -> None:
        if self.reason is None:
            self.reason = reason or "the lease may have been lost"
        self.stop_child()

    def stop_child(self) -> None:
        with self.lock:
            if self.child is not None and self.reason is not None:
                try:
                    signal.pidfd_send_signal(self.child, signal.SIGTERM)
                except OSError:
                    pass          # it has exited

    def watch(self, pid: int) -> None:
        with self.lock:
            try:
                self.child = os.pidfd_open(pid)
            except OSError:
                self.child = None   # (before Linux 5.3: the 0.5 s check still stops CMD)

    def forget(self) -> None:
        with self.lock:
            if self.child is not None:
                fd, self.child = self.child, None
                os.close(fd)

    def check(self, lease: Lease) -> None:
        """The backstop of the callback: a lease that says it is not valid."""
        if self.reason is None and not lease.valid:
            self.on_lost(lease, "the lease is no longer valid")

    def report(self) -> int:
        print(f"ipcsem run: lost the lease on {self.name!r} ({self.reason}): CMD was "
              "stopped (SIGTERM)", file=sys.stderr)
        return EXIT_TEMPFAIL


def _hold_and_run(args: argparse.Namespace, sem: Semaphore | Mutex, mutex: bool,
                  lost: _LostLease) -> int:
    from .._semaphore import Mutex

    # Phase 1: waiting.  A forwarded signal ends the wait (the library leaves
    # no queue entry behind) and we exit as if killed by it.
    phase: dict[str, Any] = {"waiting": True, "pending": []}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if phase["waiting"]:
            raise _Interrupted(signum)
        phase["pending"].append(signum)

    for sig in FORWARDED:
        signal.signal(sig, on_signal)
    # (sem is a Mutex exactly when mutex is True: _open)
    hold = (sem.hold(timeout=args.timeout, priority=args.priority) if isinstance(sem, Mutex)
            else sem.hold(args.units, timeout=args.timeout, priority=args.priority))
    try:
        with hold as lease:
            phase["waiting"] = False
            rc = _run_child(args.cmd, phase["pending"], _environment(args, sem, lease),
                            lost, lease)
            if lost.reason is None:
                return rc
        return lost.report()       # (leaving the hold raised LeaseLost otherwise)
    except LeaseLost as e:
        if lost.reason is None:
            lost.reason = str(e)
        return lost.report()
    except _Interrupted as e:
        # Only if the signal landed between the grant and hold's return.
        phase["waiting"] = False
        if _my_units(sem):
            sem.release() if mutex else sem.release(args.units)
        return 128 + e.signum
    except Timeout:
        what = "now" if args.timeout == 0 else f"within {args.timeout:g} s"
        print(f"ipcsem run: timed out: {args.units} unit(s) of {args.name!r} not "
              f"available {what}", file=sys.stderr)
        return EXIT_TEMPFAIL


def _run_child(cmd: list[str], pending: list[int], env: dict[str, str], lost: _LostLease,
               lease: Lease) -> int:
    waited = set(FORWARDED) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    if pending:   # signalled between the grant and here: CMD never starts
        return 128 + pending[0]

    def defaults() -> None:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    # CMD must never run without the units: if ipcsem run dies (even by
    # SIGKILL) the kernel kills CMD too.  Then, default signals and no mask.
    try:
        child = subprocess.Popen(cmd, env=env, preexec_fn=_proc.pdeathsig_preexec(
            signal.SIGKILL, then=defaults))
    except FileNotFoundError:
        print(f"ipcsem run: {cmd[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as e:
        print(f"ipcsem run: {cmd[0]}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CANNOT_EXEC
    lost.watch(child.pid)
    lost.stop_child()          # lost between the grant and here
    try:
        return _wait_child(child, waited, lost, lease)
    finally:
        lost.forget()


def _wait_child(child: subprocess.Popen[bytes], waited: set[signal.Signals], lost: _LostLease,
                lease: Lease) -> int:
    while True:
        lost.check(lease)
        info = signal.sigtimedwait(waited, 0.5)
        # After a SIGSTOP/SIGCONT of this process, sigtimedwait can hand back
        # a siginfo nobody filled in (si_signo -1933433248: seen on Linux 6.18,
        # CPython 3.11): only a signal we wait for counts.
        if info is not None and info.si_signo not in waited:
            info = None
        if info is not None and info.si_signo != signal.SIGCHLD:
            # Signals the kernel sent to the whole foreground process group
            # (Ctrl-C, Ctrl-\, terminal hangup) reached CMD already.
            if info.si_code != SI_KERNEL:
                try:
                    os.kill(child.pid, info.si_signo)
                except ProcessLookupError:
                    pass
            continue
        rc = child.poll()
        if rc is not None:
            return rc if rc >= 0 else 128 - rc
