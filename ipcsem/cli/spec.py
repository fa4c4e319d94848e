"""The command line as data, read from the parsers themselves (what
``common.Parser`` recorded through argparse's public calls), for the
generated shell completion and man pages: one source of truth, so a new
option is completed and documented the moment it is parsed."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from .common import Parser, name_arg


@dataclass
class Option:
    flags: list[str]
    help: str
    takes_value: bool           # a value follows (always, or maybe: see optional_value)
    optional_value: bool
    metavar: str | None
    choices: list[str] | None
    names: bool                 # its value is a semaphore name


@dataclass
class Positional:
    metavar: str
    help: str
    many: bool                  # nargs * or +
    required: bool
    choices: list[str] | None
    names: bool


@dataclass
class Command:
    name: str
    prog: str
    help: str
    usage: str
    description: str
    epilog: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Positional] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)

    def find(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)


def _metavar(action: argparse.Action) -> str | None:
    mv = action.metavar
    if isinstance(mv, tuple):
        mv = " ".join(mv)
    return mv


def walk(parser: Parser, name: str | None = None, help: str | None = None) -> Command:
    """The Command tree of ``parser`` (a ``common.Parser``)."""
    usage = parser.format_usage().strip()
    if usage.startswith("usage: "):
        usage = usage[len("usage: "):]
    cmd = Command(name or parser.prog, parser.prog, help or "", usage,
                  parser.description or "", parser.epilog or "")
    for action in parser.recorded:
        if action.help == argparse.SUPPRESS:
            continue
        choices = [str(c) for c in action.choices] if action.choices is not None else None
        is_name = action.type is name_arg
        if action.option_strings:
            nargs = action.nargs
            cmd.options.append(Option(
                list(action.option_strings), action.help or "", nargs != 0, nargs == "?",
                _metavar(action) or (action.dest.upper() if nargs != 0 else None),
                choices, is_name))
        else:
            cmd.positionals.append(Positional(
                _metavar(action) or action.dest.upper(), action.help or "",
                action.nargs in ("*", "+", argparse.REMAINDER),
                action.nargs not in ("*", "?"), choices, is_name))
    for sub_name, sub_help, sub_parser in parser.commands:
        cmd.commands.append(walk(sub_parser, sub_name, sub_help))
    return cmd


def full() -> tuple[Command, Command]:
    """(ipcsem, ipcsem-status) as Commands."""
    from . import build_parser
    from .status import build_status_parser

    return walk(build_parser()), walk(build_status_parser())
