"""``ipcsem man``: man pages (roff) generated from the parser, so they say
exactly what ``--help`` says: ipcsem(1) with every subcommand, and
ipcsem-status(1)."""
from __future__ import annotations

import argparse
import os
import sys

from .common import EXIT_CODES, EXIT_OK, Subcommands, UsageError
from .spec import Command, full

PAGES = ("ipcsem", "ipcsem-status")


def add_parser(sub: Subcommands) -> None:
    sp = sub.add_parser(
        "man", help="print a man page (roff), generated from the parser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the man page PAGE (default ipcsem: every subcommand) in roff,\n"
                    "or with --dir write ipcsem.1 and ipcsem-status.1 into DIR.",
        epilog="examples:\n"
               "  ipcsem man | man -l -\n"
               "  ipcsem man ipcsem-status | man -l -\n"
               "  sudo ipcsem man --dir /usr/local/share/man/man1\n\n" + EXIT_CODES)
    sp.add_argument("page", nargs="?", choices=PAGES, default="ipcsem", metavar="PAGE",
                    help="ipcsem (default) or ipcsem-status")
    sp.add_argument("--dir", metavar="DIR", help="write both pages into DIR")
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    top, status = full()
    if args.dir is not None:
        if not os.path.isdir(args.dir):
            raise UsageError(f"--dir {args.dir!r} is not a directory")
        for name, text in (("ipcsem", page(top)), ("ipcsem-status", page(status))):
            with open(os.path.join(args.dir, f"{name}.1"), "w") as f:
                f.write(text)
        return EXIT_OK
    sys.stdout.write(page(top if args.page == "ipcsem" else status))
    return EXIT_OK


def _esc(text: str) -> str:
    """Roff-safe text: backslashes escaped, no line taken for a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _para(text: str) -> list[str]:
    """Free text: paragraphs reflowed by roff, blank lines separating them."""
    out = []
    for block in text.strip().split("\n\n"):
        out += [".PP", _esc(" ".join(block.split()))]
    return out


def _verbatim(text: str) -> list[str]:
    return [".PP", ".nf", _esc(text.rstrip("\n")), ".fi"]


def _options(cmd: Command) -> list[str]:
    out = []
    for p in cmd.positionals:
        out += [".TP", f"\\fI{_esc(p.metavar)}\\fR" + (" ..." if p.many else ""),
                _esc(p.help or "")]
    for o in cmd.options:
        value = ""
        if o.takes_value:
            mv = _esc(o.metavar or "VALUE")
            value = f" [\\fI{mv}\\fR]" if o.optional_value else f" \\fI{mv}\\fR"
        flags = ", ".join(f"\\fB{_esc(f)}\\fR" for f in o.flags)
        out += [".TP", flags + value, _esc(o.help or "")]
    return out


def page(cmd: Command) -> str:
    from .. import __version__

    title = cmd.prog.upper()
    short = (cmd.description.strip().split("\n\n")[0].split(".")[0]
             if cmd.commands else "show ipcsem semaphores, who holds them and who waits")
    out = [f'.TH {title} 1 "" "ipcsem {__version__}" "User Commands"',
           ".SH NAME", f"{_esc(cmd.prog)} \\- {_esc(' '.join(short.split()).lower())}",
           ".SH SYNOPSIS", ".nf", _esc(cmd.usage), ".fi"]
    if cmd.commands:
        out += [".SH DESCRIPTION", *_para(cmd.description)]
        out += [".SH OPTIONS", *_options(cmd)]
        out += [".SH COMMANDS"]
        for sub in cmd.commands:
            out += [".SS " + f'"{_esc(sub.prog)}"', _esc(sub.help or "")]
            out += [".PP", ".nf", _esc(sub.usage), ".fi"]
            if sub.description:
                out += _verbatim(sub.description)
            out += _options(sub)
            if sub.epilog:
                out += _verbatim(sub.epilog)
        if cmd.epilog:
            out += [".SH NOTES", *_verbatim(cmd.epilog)]
        out += [".SH SEE ALSO", "\\fBipcsem\\-status\\fR(1)"]
    else:
        out += [".SH DESCRIPTION", *_verbatim(cmd.description)]
        out += [".SH OPTIONS", *_options(cmd)]
        if cmd.epilog:
            out += [".SH NOTES", *_verbatim(cmd.epilog)]
        out += [".SH SEE ALSO", "\\fBipcsem\\fR(1)"]
    return "\n".join(out) + "\n"
