"""What every subcommand shares: the errors that end a command, exit codes,
the parser class, argument converters, dispatch."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

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
    """argparse, but a usage error is one line on stderr (exit 2), and the
    parser remembers what it was given (``recorded``: every argument action;
    ``commands``: (name, help, parser) of each subcommand), so completion
    scripts and man pages are generated from the very parser that parses,
    through argparse's public calls only."""

    # Argument groups and subcommands come back wrapped (_Recorder,
    # Subcommands: proxies of argparse's own objects), so those methods
    # return Any; the rest take and pass on argparse's own arguments.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded: list[argparse.Action] = []
        self.commands: list[tuple[str, str | None, Parser]] = []
        self._recording = False   # argparse's own __init__ builds groups: leave those be
        super().__init__(*args, **kwargs)
        self._recording = True

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.recorded.append(action)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_argument_group(*args, **kwargs)
        return _Recorder(group, self.recorded) if self._recording else group

    def add_mutually_exclusive_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_mutually_exclusive_group(*args, **kwargs)
        return _Recorder(group, self.recorded) if self._recording else group

    def add_subparsers(self, **kwargs: Any) -> Any:
        return Subcommands(super().add_subparsers(**kwargs), self.commands)


class _Recorder:
    """An argument group that also tells its parser about each argument."""

    _group: Any                      # an argparse group, or the subparsers action
    _recorded: list[argparse.Action]

    def __init__(self, group: Any, recorded: list[argparse.Action]) -> None:
        object.__setattr__(self, "_group", group)
        object.__setattr__(self, "_recorded", recorded)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action: argparse.Action = self._group.add_argument(*args, **kwargs)
        self._recorded.append(action)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _Recorder:
        return _Recorder(self._group.add_argument_group(*args, **kwargs), self._recorded)

    def add_mutually_exclusive_group(self, *args: Any, **kwargs: Any) -> _Recorder:
        return _Recorder(self._group.add_mutually_exclusive_group(*args, **kwargs),
                         self._recorded)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._group, attr)

    def __setattr__(self, attr: str, value: object) -> None:
        setattr(self._group, attr, value)


class Subcommands(_Recorder):
    """The subparsers action, remembering each subcommand with its help."""

    _commands: list[tuple[str, str | None, Parser]]

    def __init__(self, action: Any, commands: list[tuple[str, str | None, Parser]]) -> None:
        super().__init__(action, [])
        object.__setattr__(self, "_commands", commands)

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        parser: Parser = self._group.add_parser(name, **kwargs)
        self._commands.append((name, kwargs.get("help"), parser))
        return parser


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


# --------------------------------------------------------------- backend
BACKEND_HELP = ("where the semaphores live: shm (this machine, the default) or "
                "zookeeper://host:port[,host:port...][/chroot]; default $IPCSEM_BACKEND")


def backend_arg(text: str) -> str:
    """A backend URL the library can open (checked, not connected)."""
    from .. import _backend

    try:
        _backend.resolve(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_backend_argument(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``--backend URL`` on the top-level parser (``top``) and again on each
    subcommand, so it may come before or after the subcommand's name; the
    subcommand's copy never overrides the top-level one with a default."""
    parser.add_argument("--backend", metavar="URL", type=backend_arg,
                        default=None if top else argparse.SUPPRESS, help=BACKEND_HELP)


def backend_url(given: str | None) -> str:
    """The backend a command works on: ``--backend``, else $IPCSEM_BACKEND,
    else shm.  ValueError (a usage error) for a bad $IPCSEM_BACKEND."""
    from .. import _backend

    if given:
        return given
    url = os.environ.get(_backend.ENV) or _backend.DEFAULT_URL
    try:
        _backend.resolve(url)
    except ValueError as e:
        raise UsageError(f"${_backend.ENV}: {e}") from None
    return url


def is_shm(url: str) -> bool:
    from .. import _backend

    return _backend.scheme_of(url) == "shm"


def shm_only(args: argparse.Namespace, what: str) -> None:
    """UsageError unless the command works on shm: ``what`` exists there only."""
    if not is_shm(args.backend):
        raise UsageError(f"{what} works on the shm backend only (--backend {args.backend})")


# -------------------------------------------------------------- dispatch
def dispatch(parser: argparse.ArgumentParser, argv: list[str], cmd: list[str] | None) -> int:
    args = parser.parse_args(argv)
    # kazoo logs every connection drop and reconnect (routine, and retried)
    # as warnings; a tool's stderr carries what the user must act on: the
    # ipcsem.zk logger's session-lost line and the tool's own.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    prog = parser.prog if parser.prog == "ipcsem-status" else f"ipcsem {args.command}"
    args.prog = prog
    if cmd is not None:
        args.cmd = cmd
    try:
        args.backend = backend_url(getattr(args, "backend", None))
        code: int = args.func(args)
        return code
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, IpcsemError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:
        # an optional dependency (kazoo for zookeeper://): its message says
        # what to install
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ipcsem-status | head`: the reader left; say nothing more.
        try:
            # stdout from now until exit: nothing to close
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return EXIT_OK
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # the last line of defence (re-raised with IPCSEM_DEBUG)
        if os.environ.get("IPCSEM_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} "
              "(IPCSEM_DEBUG=1 shows the traceback; please report)", file=sys.stderr)
        return EXIT_ERROR
