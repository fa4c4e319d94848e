"""``ipcsem supervise``: recover dead holders' units as soon as they die."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from .. import _names, _proc
from .common import EXIT_CODES, EXIT_OK, interval, name_arg

DESCRIPTION = """\
Run in the foreground until SIGINT/SIGTERM, watching every holder of
the named semaphores (all ipcsem semaphores, including ones created
later, when no NAME is given) and returning a dead holder's units at
once.  Not required for correctness: blocked waiters heal too, within
about a second.  Logs one line per recovery on stdout.

Run as root, it never maps another user's ledger: it forks one worker per
user who owns semaphores, which drops to that user before it opens
anything, and logs what the workers report."""

EPILOG = ("examples:\n  ipcsem supervise\n  ipcsem supervise gpu licences\n"
          "  ipcsem supervise --print-unit > /etc/systemd/system/ipcsem-supervise.service\n\n"
          "log lines (key=value, one per event; journald adds time and unit):\n"
          "  recovered name=gpu pid=4242 units=2 queue_entries=0 after_ms=0.41 \\\n"
          "    cmd='python train.py'       (one line; after_ms: time since death)\n"
          "  warning name=x error='...'     (on stderr; once per problem)\n"
          "as a service: ipcsem supervise --print-unit, see docs/cli.md\n\n" + EXIT_CODES)


def add_parser(sub) -> None:
    sp = sub.add_parser("supervise", help="recover dead holders' units as soon as they die",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=DESCRIPTION, epilog=EPILOG)
    sp.add_argument("names", nargs="*", metavar="NAME", type=name_arg)
    sp.add_argument("--sweep", type=interval, default=1.0, metavar="S",
                    help="full scan interval in seconds (default 1.0)")
    sp.add_argument("--poll", type=interval, default=0.02, metavar="S",
                    help="new-holder poll interval in seconds (default 0.02)")
    sp.add_argument("--print-unit", action="store_true",
                    help="print the systemd unit file for this service and exit")
    sp.set_defaults(func=run)


def unit_text() -> str:
    from importlib import resources

    return resources.files("ipcsem").joinpath("_data/ipcsem-supervise.service").read_text()


def run(args) -> int:
    if args.print_unit:
        sys.stdout.write(unit_text())
        return EXIT_OK
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    what = " ".join(args.names) if args.names else "every ipcsem semaphore"
    for name in args.names:
        _names.validate(name)
    root = os.geteuid() == 0
    sup = _make(args, root)

    def stop(signum, frame):
        sup.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mode = "per-user workers" if root else f"pidfd={'yes' if hasattr(os, 'pidfd_open') else 'no'}"
    print(f"supervising {what} (pid {os.getpid()}; {mode})", flush=True)
    try:
        sup.run()
    finally:
        sup.close()
    print("supervisor stopped", flush=True)
    return EXIT_OK


def _recovered_line(name, pid, units, entries, after_ms, cmd) -> str:
    after = "" if after_ms is None else f" after_ms={after_ms:.2f}"
    return (f"recovered name={name} pid={pid} units={units} queue_entries={entries}{after} "
            f"cmd={(cmd if cmd is not None else '?')!r}")


def _warn(name: str, error: str) -> None:
    print(f"warning name={name} error={error!r}", file=sys.stderr, flush=True)


def _make(args, root: bool):
    from .._shm.supervisor import RootSupervisor, Supervisor

    if root:
        def emit(ev: dict) -> None:
            if ev["event"] == "recovered":
                print(_recovered_line(ev["name"], ev["pid"], ev["units"], ev["entries"],
                                      ev["after_ms"], ev["cmd"]), flush=True)
            elif ev["event"] == "warning":
                _warn(ev["name"], ev["error"])
            elif ev["event"] == "worker":
                print(f"worker uid={ev['uid']} {ev['status']}", file=sys.stderr, flush=True)

        return RootSupervisor(args.names or None, sweep=args.sweep, poll=args.poll, emit=emit)

    commands: dict[tuple[int, int], str] = {}

    def on_watch(pid, start):
        argv = _proc.argv(pid, start)
        if argv is not None:
            commands[(pid, start)] = " ".join(argv)

    def on_recover(name, pid, start, units, entries, died_ns):
        after = None if died_ns is None else (time.time_ns() - died_ns) / 1e6
        print(_recovered_line(name, pid, units, entries, after, commands.pop((pid, start), None)),
              flush=True)

    def on_error(name, message):
        if message:
            _warn(name, message)

    return Supervisor(args.names or None, sweep=args.sweep, poll=args.poll,
                      on_recover=on_recover, on_error=on_error, on_watch=on_watch)
