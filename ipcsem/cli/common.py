"""What every subcommand shares: the errors that end a command, exit codes,
the parser class, argument converters, dispatch."""
from __future__ import annotations

import argparse
import os
import sys

from .. import _args, _names
from .._errors import IpcsemError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_TEMPFAIL = 75          # run: not acquired / timed out (sysexits EX_TEMPFAIL)
EXIT_CANNOT_EXEC, EXIT_NOT_FOUND = 126, 127   # run: like a shell
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit 2."""


class CliError(Exception):
    """A user-facing failure: one line on stderr, exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def exit_codes(one: str = "error: one line on stderr") -> str:
    return f"exit status:\n  0   ok\n  1   {one}\n  2   usage error"


EXIT_CODES = exit_codes()


# ------------------------------------------------------------ converters
def name_arg(text: str) -> str:
    try:
        return _names.validate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def priority_arg(text: str) -> int:
    try:
        return _args.check_priority(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if "must be" in str(e)
                                         else f"not an integer: {text!r}") from None


def seconds(text: str) -> float:
    """>= 0 seconds (0 allowed: 'only if free now')."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return v


def interval(text: str) -> float:
    """> 0 seconds (a polling or sweep interval)."""
    try:
        return _args.check_interval("interval", float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if "must be" in str(e)
                                         else f"not a number of seconds: {text!r}") from None


def mode_arg(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad mode {text!r}: use octal, like 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"bad mode {text!r}: use 0000..0777")
    return mode


# -------------------------------------------------------------- dispatch
def dispatch(parser: argparse.ArgumentParser, argv: list[str], cmd: list[str] | None) -> int:
    args = parser.parse_args(argv)
    prog = parser.prog if parser.prog == "ipcsem-status" else f"ipcsem {args.command}"
    args.prog = prog
    if cmd is not None:
        args.cmd = cmd
    try:
        return args.func(args)
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, IpcsemError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ipcsem-status | head`: the reader left; say nothing more.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if os.environ.get("IPCSEM_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} "
              "(IPCSEM_DEBUG=1 shows the traceback; please report)", file=sys.stderr)
        return EXIT_ERROR
