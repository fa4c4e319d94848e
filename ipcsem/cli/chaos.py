"""``ipcsem chaos``: the SIGKILL storm (``ipcsem.chaos``) from the command line."""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from .. import _args, _backend, _names
from ..chaos.report import format_report
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    Subcommands,
    UsageError,
    is_shm,
    name_arg,
)

if TYPE_CHECKING:
    from ..chaos.report import Report
    from ..chaos.storm import Storm

DESCRIPTION = """\
Prove on this machine that ipcsem never admits too many and never loses a
unit.  Creates NAME with --capacity units (NAME must not exist; it is
removed at the end) and starts --workers processes that loop: acquire 1 or
2 units (blocking, with a timeout, try_acquire, hold(), some with a
priority), take as many lock files of an independent flock oracle, hold
0-2 ms, release.  Every --kill-every (jittered) one worker is SIGKILLed and
replaced; some workers (--self-kill-fraction) SIGKILL themselves inside a
ledger transaction; `ipcsem supervise` runs (unless --no-supervisor) and is
SIGKILLed and restarted now and then.

Over-admission: a worker got its units but found fewer free oracle files
(more holders than units, by the kernel's flock bookkeeping, not ipcsem's).
Lost units: after the storm every worker is killed, and all units must
come back: available == capacity after recover(), a fresh process takes
all of them at once, no holders or waiters left, check() passes.  check()
also runs every 50 ms during the storm.  Fencing tokens must increase in
grant order across every kill.

--slots: a slotted semaphore; the oracle is per slot (a worker must get the
lock files of exactly the unit numbers its lease names).  --mutex: an
ipcsem.Mutex (capacity 1); after an owner dies holding it, each next owner
must be told previous_owner_died until one releases it normally.

On ZooKeeper (--backend zookeeper://HOST:PORT/CHROOT, or $IPCSEM_BACKEND):
the same storm, workers and oracle on this host, the semaphore on the
server; the supervisor is `ipcsem supervise --backend URL NAME` (this
host's watcher of local holders); no self-kills (no ledger transaction to
die in: --self-kill-fraction is shm only).  It proves the same: no
over-admission by the flock oracle, every unit back after the storm (this
host's dead reaped by recover(), the rest when their sessions expire: give
a short ?session_timeout=2 in the URL), tokens increasing across kills.

The report (stdout; --json for the whole of it) gives the backend, kills,
self-kills, lock repairs (shm), cycles, recovered units, over-admissions
and lost units.
Progress every 5 s on stderr unless -q.  Stops after --duration or
--kills, whichever comes first (1000 kills if neither is given)."""

EPILOG = """\
examples:
  ipcsem chaos soak --workers 8 --kill-every 10ms --duration 60s
  ipcsem chaos --kills 10000 --spawn fork       dense: forked workers (~1 ms)
  ipcsem chaos --duration 10s --no-supervisor   waiters must heal by themselves
  ipcsem chaos --duration 10s --slots --spawn fork     slotted: per-slot oracle
  ipcsem chaos --duration 10s --mutex --spawn fork     a robust mutex
  ipcsem chaos --duration 5s --json | jq '.ok, .over_admissions, .lost_units'
  ipcsem --backend 'zookeeper://zk1:2181/ipcsem?session_timeout=2' chaos \\
      --duration 30s --kill-every 100ms --spawn fork     on ZooKeeper

exit status:
  0   pass: no over-admission, no lost unit, every check passed
  1   fail: the report says what (over-admission, lost units, failed check,
      a worker error, something left in /dev/shm); or an error (NAME exists)
  2   usage error
  130 interrupted (SIGINT, SIGTERM, SIGHUP): workers killed, NAME removed"""

USAGE = ("ipcsem chaos [NAME] [--workers N] [--kill-every T] [--duration T]\n"
         "                    [--kills N] [--capacity N] [--spawn {exec,fork}]\n"
         "                    [--slots | --mutex] [--no-supervisor] [--json] [-q] ...")

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'10ms', '60s', '2m', '1h', '0.5' (seconds) -> seconds; ValueError."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*", str(text))
    if not m or m.group(2) not in ("", *_UNITS):
        raise ValueError(f"bad duration {text!r}: use e.g. 10ms, 60s, 2m")
    value = float(m.group(1)) * (_UNITS[m.group(2)] if m.group(2) else 1.0)
    if not 0 < value < float("inf"):
        raise ValueError(f"duration must be > 0, got {text!r}")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("chaos", help="SIGKILL storm against a fresh semaphore, checked by an "
                                     "independent oracle",
                       usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("chaos_name", nargs="?", metavar="NAME", type=name_arg,
                   help="the semaphore to create, storm and remove; must not exist "
                        "(default: a fresh chaos-PID-RANDOM)")
    p.add_argument("--kills", type=int, default=None, metavar="N",
                   help="stop after N kills (default 1000 unless --duration is given)")
    p.add_argument("--duration", type=_duration, default=None, metavar="T",
                   help="stop after T (e.g. 60s, 2m); with --kills, whichever comes first")
    p.add_argument("--workers", type=int, default=8, metavar="N", help="worker processes (8)")
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="semaphore units (3; a mutex has 1)")
    p.add_argument("--kill-every", type=_duration, default=0.01, metavar="T",
                   help="mean time between kills, jittered (10ms)")
    p.add_argument("--no-supervisor", dest="supervisor", action="store_false",
                   help="run without `ipcsem supervise` (waiters must heal by themselves)")
    p.add_argument("--self-kill-fraction", type=float, default=None, metavar="F",
                   help="share of workers that SIGKILL themselves inside a ledger "
                        "transaction (0.2; shm only)")
    p.add_argument("--single-unit", dest="multi_unit", action="store_false",
                   help="acquire 1 unit at a time (default: 1 or 2)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--slots", action="store_true",
                      help="a slotted semaphore: the oracle checks each grant's unit numbers")
    kind.add_argument("--mutex", action="store_true",
                      help="an ipcsem.Mutex: also checks previous_owner_died after kills")
    p.add_argument("--spawn", choices=("exec", "fork"), default="exec",
                   help="exec: every worker a fresh interpreter (default; ~0.1 s CPU per "
                        "restart bounds the kill rate); fork: forked from the storm process "
                        "(~1 ms), for dense storms")
    p.add_argument("--seed", type=int, default=None, help="random seed (printed in the report)")
    # NAME is the CLI's way; --name stays accepted, unlisted.
    p.add_argument("--name", type=name_arg, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    # Self-test of the oracle: fewer lock files than units must fail the run.
    p.add_argument("--oracle-slots", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


class _StopSignals:
    """SIGINT/SIGTERM/SIGHUP recorded from the first moment of the command
    and handed to the storm once it exists (its handler only sets a flag:
    see ipcsem/chaos/storm.py for why nothing may raise from a handler)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.storm: Storm | None = None
        self.old = {sig: signal.signal(sig, self._on) for sig in
                    (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def _on(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self.storm is not None:
            self.storm.interrupt(signum)

    def attach(self, storm: Storm) -> None:
        self.storm = storm
        if self.signum is not None:
            storm.interrupt(self.signum)

    def ignore(self) -> None:
        for sig in self.old:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _check(args: argparse.Namespace) -> None:
    """UsageError / CliError for what argparse cannot see."""
    # The oracle (flocks) and the workers are this machine's on any
    # backend; the semaphore is the backend's (args.backend, resolved by
    # dispatch).
    if args.chaos_name is not None and args.name is not None and args.chaos_name != args.name:
        raise UsageError(f"NAME {args.chaos_name!r} and --name {args.name!r} differ")
    args.name = args.chaos_name if args.chaos_name is not None else args.name
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.mutex and args.capacity not in (None, 1):
        raise UsageError(f"--mutex has capacity 1, not {args.capacity}")
    limit = _args.MAX_SLOTTED_CAPACITY if args.slots else _args.MAX_CAPACITY
    if args.capacity is not None and not 1 <= args.capacity <= limit:
        raise UsageError(f"--capacity must be in 1..{limit}, got {args.capacity}")
    if args.kills is not None and args.kills < 1:
        raise UsageError(f"--kills must be >= 1, got {args.kills}")
    fraction = args.self_kill_fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise UsageError(f"--self-kill-fraction must be in 0..1, got {fraction}")
    if fraction and not is_shm(args.backend):
        raise UsageError("--self-kill-fraction works on the shm backend only (workers kill "
                         "themselves inside a ledger transaction; "
                         f"--backend {args.backend} has none)")
    if args.oracle_slots is not None and args.oracle_slots < 1:
        raise UsageError(f"--oracle-slots must be >= 1, got {args.oracle_slots}")
    if args.name is not None and _exists(args.name, args.backend):
        raise CliError(f"semaphore {args.name!r} already exists: a storm creates its own and "
                       "removes it at the end (pick another NAME)")


def _exists(name: str, backend: str) -> bool:
    """NAME is there already (on shm: any file of that name, even one
    ipcsem would refuse to open)."""
    if is_shm(backend):
        return os.path.exists(_names.shm_path(name))
    return name in _backend.resolve(backend).names()


def run(args: argparse.Namespace) -> int:
    stops = _StopSignals()
    try:
        report = _storm(args, stops)
    except KeyboardInterrupt:   # the storm has killed and removed everything
        report = None
    except BaseException:
        stops.restore()
        raise
    if report is None or stops.signum is not None:
        # The command is ending with status 130 whatever comes now: ignore
        # further stop signals (a Python handler would not do: interpreter
        # shutdown resets those to SIG_DFL, and a late SIGTERM of a burst
        # would then kill the process instead).
        stops.ignore()
        print("chaos: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    try:
        print(report.to_json() if args.json else format_report(report), flush=True)
    finally:
        stops.restore()     # the verdict is out: a signal from now on is an ordinary one
    return EXIT_OK if report.ok else EXIT_ERROR


def _storm(args: argparse.Namespace, stops: _StopSignals) -> Report:
    """Check the arguments, run the storm: its Report (KeyboardInterrupt
    when a stop signal came, after its clean-up)."""
    _check(args)
    if stops.signum is not None:
        raise KeyboardInterrupt
    from ..chaos.storm import Storm

    progress = None if (args.quiet or args.json) else (
        lambda line: print(line, file=sys.stderr, flush=True))
    storm = Storm(args.name, args.capacity, args.workers, args.kill_every, args.duration,
                  args.kills, args.supervisor, args.self_kill_fraction, args.seed,
                  args.multi_unit, spawn=args.spawn, slots=args.slots, mutex=args.mutex,
                  oracle_slots=args.oracle_slots, progress=progress, backend=args.backend)
    stops.attach(storm)
    return storm.run(handle_signals=False)
