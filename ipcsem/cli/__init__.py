"""Command line: ``ipcsem SUBCOMMAND`` and ``ipcsem-status``.

Exit codes (every subcommand): 0 ok, 1 error (one line on stderr), 2 usage,
and the subcommand's own codes documented in its --help (``run``: CMD's
status, 75 when the units were not acquired in time).  A user error never
prints a traceback (set IPCSEM_DEBUG=1 to see one for an internal error).
docs/cli.md documents every subcommand and the --json schema.

Each subcommand family is one module with ``add_parser(subparsers)`` and
the ``run(args)`` functions it sets as defaults; this package only builds
the top-level parser and dispatches.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import ModuleType

from .common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    CliError,
    Parser,
    UsageError,
    add_backend_argument,
    dispatch,
)

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_TEMPFAIL", "EXIT_USAGE", "CliError", "UsageError",
           "build_parser", "main", "status_main"]

# The subcommand families, in --help order.
FAMILIES = ("status", "run", "manage", "supervise", "chaos", "completion", "manpage")


def _families() -> list[ModuleType]:
    import importlib

    mods: list[ModuleType] = []
    for fam in FAMILIES:
        try:
            mods.append(importlib.import_module(f".{fam}", __name__))
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{fam}":
                raise
    return mods


def build_parser(prog: str = "ipcsem") -> Parser:
    import argparse

    from .. import __version__

    p = Parser(
        prog=prog,
        description="Crash-safe named counting semaphores for unrelated processes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  ipcsem create gpu --capacity 2 --mode 0660\n"
               "  ipcsem run gpu -- python train.py\n"
               "  ipcsem-status gpu\n"
               "  ipcsem rm gpu\n"
               "  ipcsem supervise                  recover dead holders' units at once\n"
               "  ipcsem chaos --duration 60s       SIGKILL storm: prove it on this machine\n"
               "  ipcsem --backend zookeeper://zk1:2181/ipcsem status   across machines\n"
               "  source <(ipcsem completion bash)  tab completion; `ipcsem man`: the manual\n\n"
               "exit codes: 0 ok, 1 error (chaos: storm failed), 2 usage,\n"
               "75 not acquired in time (run);\n"
               "see each subcommand's --help and docs/cli.md",
    )
    p.add_argument("--version", action="version", version=f"ipcsem {__version__}")
    add_backend_argument(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for mod in _families():
        mod.add_parser(sub)
    for _name, _help, parser in p.commands:
        add_backend_argument(parser)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .run import split_run

    argv, cmd = split_run(argv)
    return dispatch(build_parser(), argv, cmd)


def status_main(argv: Sequence[str] | None = None) -> int:
    from .status import build_status_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    return dispatch(build_status_parser(), argv, None)


if os.environ.get("IPCSEM_DEBUG"):  # pragma: no cover - a developer's switch
    import faulthandler

    faulthandler.enable()
