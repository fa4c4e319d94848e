"""``ipcsem supervise``: recover dead holders' units as soon as they die."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import _names, _proc
from .common import (
    EXIT_CODES,
    EXIT_OK,
    CliError,
    Subcommands,
    UsageError,
    interval,
    is_shm,
    name_arg,
)

if TYPE_CHECKING:
    from .._shm.root import RootSupervisor
    from .._shm.supervisor import Supervisor
    from .metrics import Exporter, RecoveryCounters

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
          "  ipcsem supervise --print-unit > /etc/systemd/system/ipcsem-supervise.service\n"
          "  ipcsem supervise --metrics-port 9464          Prometheus scrapes :9464/metrics\n"
          "  ipcsem supervise --textfile /var/lib/node_exporter/textfile_collector\n\n"
          "log lines (key=value, one per event; journald adds time and unit):\n"
          "  recovered name=gpu pid=4242 units=2 queue_entries=0 after_ms=0.41 \\\n"
          "    cmd='python train.py'       (one line; after_ms: time since death)\n"
          "  warning name=x error='...'     (on stderr; once per problem)\n"
          "as a service: ipcsem supervise --print-unit, see docs/cli.md\n\n" + EXIT_CODES)


def add_parser(sub: Subcommands) -> None:
    sp = sub.add_parser("supervise", help="recover dead holders' units as soon as they die",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=DESCRIPTION, epilog=EPILOG)
    sp.add_argument("names", nargs="*", metavar="NAME", type=name_arg)
    sp.add_argument("--sweep", type=interval, default=1.0, metavar="S",
                    help="full scan interval in seconds (default 1.0)")
    sp.add_argument("--poll", type=interval, default=0.02, metavar="S",
                    help="new-holder poll interval in seconds after a change; doubles while "
                         "nothing changes, up to 10 times it (default 0.02)")
    sp.add_argument("--print-unit", action="store_true",
                    help="print the systemd unit file for this service and exit")
    sp.add_argument("--metrics-port", type=port_arg, metavar="PORT",
                    help="serve Prometheus metrics on http://ADDRESS:PORT/metrics "
                         "(0: any free port; the URL is logged)")
    sp.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDRESS",
                    help="address the metrics endpoint listens on (default 127.0.0.1: "
                         "this machine only; 0.0.0.0 or :: to widen)")
    sp.add_argument("--textfile", metavar="DIR",
                    help="write DIR/ipcsem.prom (replaced atomically) for node_exporter's "
                         "textfile collector")
    sp.add_argument("--textfile-interval", type=interval, default=15.0, metavar="S",
                    help="seconds between textfile writes (default 15)")
    sp.set_defaults(func=run)


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def unit_text() -> str:
    from importlib import resources

    return resources.files("ipcsem").joinpath("_data/ipcsem-supervise.service").read_text()


def run(args: argparse.Namespace) -> int:
    if args.print_unit:
        sys.stdout.write(unit_text())
        return EXIT_OK
    if not is_shm(args.backend):
        return _run_remote(args)
    if args.metrics_address != "127.0.0.1" and args.metrics_port is None:
        raise UsageError("--metrics-address needs --metrics-port")
    if args.textfile is not None and not os.path.isdir(args.textfile):
        raise UsageError(f"--textfile {args.textfile!r} is not a directory")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    what = " ".join(args.names) if args.names else "every ipcsem semaphore"
    for name in args.names:
        _names.validate(name)
    root = os.geteuid() == 0
    counters = exporter = None
    if args.metrics_port is not None or args.textfile is not None:
        from .metrics import Exporter, RecoveryCounters, ViewCollector

        counters = RecoveryCounters()
        exporter = Exporter(ViewCollector(args.names or None, counters))
    sup = _make(args, root, counters)

    def stop(signum: int, frame: FrameType | None) -> None:
        sup.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mode = "per-user workers" if root else f"pidfd={'yes' if hasattr(os, 'pidfd_open') else 'no'}"
    try:
        lines = [] if exporter is None else _start_metrics(args, exporter)
        print(f"supervising {what} (pid {os.getpid()}; {mode})", flush=True)
        for line in lines:
            print(line, flush=True)
        sup.run()
    finally:
        sup.close()
        if exporter is not None:
            exporter.close()
    print("supervisor stopped", flush=True)
    return EXIT_OK


def _run_remote(args: argparse.Namespace) -> int:
    """``supervise --backend zookeeper://...``: this host's watcher of local
    holders (``ipcsem._zk.LocalSupervisor``), deleting a dead local
    process's nodes at once (other hosts' dead go with their sessions, or
    with their own host's supervisor)."""
    import threading

    if args.metrics_port is not None or args.textfile is not None:
        raise UsageError("--metrics-port and --textfile work on the shm backend only "
                         f"(--backend {args.backend})")
    from .. import _backend

    if _backend.scheme_of(args.backend) != "zookeeper":
        raise UsageError(f"no supervisor for the backend {args.backend!r}")
    from .._zk import LocalSupervisor, Recovery

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    what = " ".join(args.names) if args.names else "every ipcsem semaphore"

    def on_recovered(r: Recovery) -> None:
        after = (r.recovered_at - r.died_at) * 1e3
        print(_recovered_line(r.name or "?", r.pid, r.units, r.entries, after, None),
              flush=True)

    def on_watching() -> None:
        print("watching every local holder", flush=True)

    def on_error(message: str) -> None:
        _warn("-", message)

    try:
        sup = LocalSupervisor(args.backend, args.names or None, on_recovered=on_recovered,
                              on_watching=on_watching, on_error=on_error)
    except OSError as e:
        raise CliError(str(e)) from None
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"supervising {what} on {args.backend} (pid {os.getpid()}; this host's holders)",
          flush=True)
    sup.start()
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        sup.stop()
    print("supervisor stopped", flush=True)
    return EXIT_OK


def _start_metrics(args: argparse.Namespace, exporter: Exporter) -> list[str]:
    """Start the endpoint and the textfile; the lines that say where they
    are.  A failure to start either is the user's to fix (a port in use, a
    directory not writable): one line, exit 1, before supervising starts."""
    lines: list[str] = []
    if args.metrics_port is not None:
        try:
            url = exporter.serve(args.metrics_port, args.metrics_address)
        except OSError as e:
            raise CliError(f"cannot serve metrics on {args.metrics_address} port "
                           f"{args.metrics_port}: {e.strerror or e}") from None
        lines.append(f"metrics url={url}")
    if args.textfile is not None:
        try:
            path = exporter.start_textfile(args.textfile, args.textfile_interval,
                                           lambda msg: _warn("-", f"textfile: {msg}"))
        except OSError as e:
            raise CliError(f"cannot write metrics to {args.textfile!r}: "
                           f"{e.strerror or e}") from None
        lines.append(f"metrics textfile={path} every={args.textfile_interval:g}s")
    return lines


def _recovered_line(name: str, pid: int, units: int, entries: int, after_ms: float | None,
                    cmd: str | None, reported_by: int | None = None) -> str:
    after = "" if after_ms is None else f" after_ms={after_ms:.2f}"
    # As root, events come from per-user workers: say whose, so a worker's
    # forged line cannot pass for root's own word.
    by = "" if reported_by is None else f" reported_by_uid={reported_by}"
    return (f"recovered name={name} pid={pid} units={units} queue_entries={entries}{after} "
            f"cmd={(cmd if cmd is not None else '?')!r}{by}")


def _warn(name: str, error: str, reported_by: int | None = None) -> None:
    by = "" if reported_by is None else f" reported_by_uid={reported_by}"
    print(f"warning name={name} error={error!r}{by}", file=sys.stderr, flush=True)


def _make(args: argparse.Namespace, root: bool,
          counters: RecoveryCounters | None = None) -> Supervisor | RootSupervisor:
    from .._shm.root import RootSupervisor
    from .._shm.supervisor import Supervisor

    if root:
        def emit(ev: dict[str, Any]) -> None:
            if ev["event"] == "recovered":
                if counters is not None:
                    counters.recovered(ev["name"], ev["units"])
                print(_recovered_line(ev["name"], ev["pid"], ev["units"], ev["entries"],
                                      ev["after_ms"], ev["cmd"], ev["uid"]), flush=True)
            elif ev["event"] == "warning":
                _warn(ev["name"], ev["error"], ev["uid"])
            elif ev["event"] == "worker":
                print(f"worker uid={ev['uid']} {ev['status']}", file=sys.stderr, flush=True)

        return RootSupervisor(args.names or None, sweep=args.sweep, poll=args.poll, emit=emit)

    commands = _proc.CommandLines()

    def on_recover(name: str, pid: int, start: int, units: int, entries: int,
                   died_ns: int | None) -> None:
        if counters is not None:
            counters.recovered(name, units)
        after = None if died_ns is None else (time.time_ns() - died_ns) / 1e6
        print(_recovered_line(name, pid, units, entries, after, commands.pop(pid, start)),
              flush=True)

    def on_error(name: str, message: str) -> None:
        if message:
            _warn(name, message)

    return Supervisor(args.names or None, sweep=args.sweep, poll=args.poll,
                      on_recover=on_recover, on_error=on_error, on_watch=commands.note)
