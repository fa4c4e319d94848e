"""``ipcsem status`` / ``ipcsem-status`` (the list, the detail view, -p PID,
--watch, --json, --prometheus, --deadlocks) and ``ipcsem ls``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from .. import _names
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    Parser,
    Subcommands,
    UsageError,
    add_backend_argument,
    exit_codes,
    interval,
    is_shm,
    name_arg,
    positive_int,
    shm_only,
)
from .describe import JSON_VERSION, gather, mark_deadlocks
from .procinfo import Procs
from .render import clip, render_deadlocks, render_detail, render_list, render_pid, term_size

HELP = """\
Without NAME: one line per semaphore this user can see.  With NAMEs: holders
(pid, user, command, units, held for, state, slots) and waiters in queue
order, and why the first one waits.  A semaphore that cannot be read
(another user's, corrupt) is shown as such.  Ledgers are copied with
pread(): looking never takes, waits for or repairs a ledger lock, and needs
read permission only.  A ledger whose lock is held by a stopped process,
or that was copied while an update was in flight, is marked wedged."""

EPILOG = """\
examples:
  ipcsem-status                   every semaphore, one line each
  ipcsem-status gpu               who holds gpu, who waits (and why), how long
  ipcsem-status -p 4242           what pid 4242 holds and waits for
  ipcsem-status --json gpu | jq '.semaphores[0].holders[].pid'
  ipcsem-status --watch 0.5 gpu   live view; Ctrl-C to quit
  ipcsem-status --deadlocks       who waits for whom, if anyone is stuck
  ipcsem-status --prometheus      metrics in the Prometheus text format

states: alive, stopped, zombie, dead (awaiting recovery), unknown (hidden
from us: treated as alive).  --json schema and metrics: docs/cli.md.

""" + exit_codes("a NAME was not found or could not be read; --deadlocks: "
                 "there is one")


def _status_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("names", nargs="*", metavar="NAME", type=name_arg,
                    help="semaphores to show in detail")
    sp.add_argument("--json", action="store_true",
                    help="machine-readable output (schema: docs/cli.md)")
    sp.add_argument("-p", "--pid", type=positive_int, metavar="PID",
                    help="what PID holds and waits for, across all semaphores (or NAMEs)")
    sp.add_argument("-w", "--watch", type=interval, nargs="?", const=1.0, metavar="SECONDS",
                    help="redraw every SECONDS (default 1) until Ctrl-C")
    sp.add_argument("--deadlocks", action="store_true",
                    help="print each deadlock (who holds what, who waits for what); "
                         "exit 1 if there is one")
    sp.add_argument("--prometheus", action="store_true",
                    help="print metrics in the Prometheus text exposition format")
    sp.set_defaults(func=run)


def add_parser(sub: Subcommands) -> None:
    sp = sub.add_parser("status", help="show semaphores, holders and waiters (= ipcsem-status)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=HELP, epilog=EPILOG)
    _status_args(sp)
    sp = sub.add_parser("ls", help="list semaphore names",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Print the name of every ipcsem semaphore this user can "
                                    "see, one per line.",
                        epilog="examples:\n  ipcsem ls\n  ipcsem ls -l        "
                               "(same as ipcsem-status)\n\n" + exit_codes())
    sp.add_argument("-l", "--long", action="store_true", help="the ipcsem-status table")
    sp.add_argument("--json", action="store_true", help='{"version": 1, "names": [...]}')
    sp.set_defaults(func=run_ls)


def build_status_parser() -> Parser:
    p = Parser(prog="ipcsem-status", formatter_class=argparse.RawDescriptionHelpFormatter,
               description=HELP, epilog=EPILOG)
    _status_args(p)
    add_backend_argument(p, top=True)
    return p


# ------------------------------------------------------------- one look
def _gather(args: argparse.Namespace, names: list[str] | None, procs: Procs, detail: bool,
            only_pid: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """``describe.gather`` on shm, ``remote.gather`` on any other backend;
    deadlocks marked (shm only: finding them reads every process's
    threads, and holders on other machines are out of sight)."""
    if is_shm(args.backend):
        objs, missing = gather(names, procs, detail, only_pid)
        mark_deadlocks(objs)
        return objs, missing
    from . import remote

    return remote.gather(args.backend, names, procs, detail, only_pid)


def frame(args: argparse.Namespace, width: int) -> tuple[list[str], dict[str, Any], int]:
    """(human lines, json document, exit code) for one look."""
    procs = Procs()
    names = args.names or None
    if args.pid is not None:
        objs, missing = _gather(args, names, procs, True, args.pid)
        objs = [o for o in objs if o["holders"] or o["waiters"] or o["error"]]
        doc = {"version": JSON_VERSION, "pid": args.pid, "semaphores": objs}
        lines = render_pid(args.pid, objs, width)
    elif names:
        objs, missing = _gather(args, names, procs, True)
        doc = {"version": JSON_VERSION, "semaphores": objs}
        lines = []
        for o in objs:
            if lines:
                lines.append("")
            lines += render_detail(o, width)
    else:
        objs, missing = _gather(args, None, procs, args.json)
        doc = {"version": JSON_VERSION, "semaphores": objs}
        lines = render_list(objs, width)
    if missing:
        doc["missing"] = missing
    rc = EXIT_ERROR if missing or (names and any(o["error"] for o in objs)) else EXIT_OK
    return lines, doc, rc


def _write_json(doc: dict[str, Any]) -> None:
    # Indented for a person at a terminal; one compact line (the C encoder,
    # several times faster) when piped.
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(doc, indent=indent) + "\n")


def _say_missing(args: argparse.Namespace, missing: Iterable[str]) -> None:
    for name in missing:
        print(f"{args.prog}: no ipcsem semaphore named {name!r}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    modes = [m for m, on in (("--json", args.json), ("--watch", args.watch is not None),
                             ("--prometheus", args.prometheus),
                             ("--deadlocks", args.deadlocks), ("-p", args.pid is not None))
             if on]
    allowed = ({"--json", "-p"}, {"--json", "--deadlocks"}, {"--watch", "-p"})
    if len(modes) > 1 and not any(set(modes) <= ok for ok in allowed):
        if "--watch" in modes and "--json" in modes:
            raise UsageError("--watch and --json do not mix (poll with --json instead)")
        raise UsageError(f"{' and '.join(modes)} do not mix")
    if args.watch is not None:
        return watch(args)
    if args.deadlocks:
        return deadlocks(args)
    if args.prometheus:
        return prometheus(args)
    lines, doc, rc = frame(args, 80 if args.json else term_size()[0])
    if args.json:
        _write_json(doc)
    elif lines:
        print("\n".join(lines))
    _say_missing(args, doc.get("missing", ()))
    return rc


def deadlocks(args: argparse.Namespace) -> int:
    from .. import find_deadlocks

    shm_only(args, "--deadlocks")
    names = args.names or None
    missing = [n for n in (names or ()) if not os.path.exists(_names.shm_path(n))]
    if missing:
        _say_missing(args, missing)
        return EXIT_ERROR
    found = find_deadlocks(names)
    if args.json:
        _write_json({"version": JSON_VERSION, "deadlocks": [
            {"processes": list(dl.processes), "semaphores": list(dl.semaphores),
             "description": dl.description, "edges": list(dl.edges)} for dl in found]})
    else:
        print("\n".join(render_deadlocks(found, term_size()[0])))
    return EXIT_ERROR if found else EXIT_OK


def prometheus(args: argparse.Namespace) -> int:
    from .metrics import exposition

    objs, missing = _gather(args, args.names or None, Procs(), detail=False)
    sys.stdout.write(exposition(objs, missing))
    _say_missing(args, missing)
    return EXIT_ERROR if missing else EXIT_OK


# ---------------------------------------------------------------- watch
def watch(args: argparse.Namespace) -> int:
    host = os.uname().nodename
    what = " ".join(args.names) if args.names else "all semaphores"
    if args.pid is not None:
        what = f"pid {args.pid}" + (f" in {what}" if args.names else "")
    out = sys.stdout
    try:
        while True:
            width, height = term_size()
            lines, doc, _rc = frame(args, width)
            lines += [f"{n}: no such semaphore (yet)" for n in doc.get("missing", ())]
            head = f"every {args.watch:g}s: ipcsem-status {what}"
            clock = f"{host}: {time.strftime('%H:%M:%S')}"
            head = head + " " * max(width - len(head) - len(clock), 1) + clock
            body = [clip(x, width) for x in lines]
            room = height - 3          # the heading, a blank line, and the cursor's line
            if len(body) > room:
                cut = len(body) - room + 1
                body = [*body[:room - 1], f"... {cut} more line{'s' if cut > 1 else ''} "
                                          "(a taller terminal, or NAMEs, show them)"]
                body[-1] = clip(body[-1], width)
            frame_lines = [clip(head, width), "", *body]
            # Home, then each line and clear-to-end-of-line, then clear the
            # rest: a redraw without the flicker of clearing first.
            out.write("\x1b[H" + "".join(f"{x}\x1b[K\n" for x in frame_lines) + "\x1b[J")
            out.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        out.write("\n")
        return EXIT_OK


# ------------------------------------------------------------------- ls
def run_ls(args: argparse.Namespace) -> int:
    if args.long:
        return run(argparse.Namespace(names=[], pid=None, json=args.json, watch=None,
                                      deadlocks=False, prometheus=False, prog="ipcsem ls",
                                      backend=args.backend))
    if is_shm(args.backend):
        names = _names.names()
    else:
        from . import remote

        names = remote.names(args.backend)
    if args.json:
        print(json.dumps({"version": JSON_VERSION, "names": names}))
    elif names:
        print("\n".join(names))
    return EXIT_OK
