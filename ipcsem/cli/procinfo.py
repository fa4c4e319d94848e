"""What the tools show about a process: its state (for recovery's sake),
and who runs what (for a person's).  One cache per look, so a process that
holds units of many semaphores is looked up once."""
from __future__ import annotations

import os

from .. import _identity, _proc


class Procs:
    """Per-look cache of process facts, keyed by identity (pid, start)."""

    __slots__ = ("_info", "_state")

    def __init__(self) -> None:
        self._state: dict[tuple[int, int], str] = {}
        self._info: dict[tuple[int, int], tuple[str | None, list[str] | None]] = {}

    def state(self, pid: int, start: int) -> str:
        """alive, stopped, zombie, dead or unknown (``ipcsem._identity``)."""
        key = (pid, start)
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = _identity.status(pid, start)
        return st

    def info(self, pid: int, start: int) -> tuple[str | None, list[str] | None]:
        """(user, argv) of a live identity; (None, None) once it is dead or
        its pid was reused while we looked.  A zombie shows ``["[comm]"]``,
        the way ps does."""
        key = (pid, start)
        got = self._info.get(key)
        if got is None:
            user = argv = None
            if self.state(pid, start) != _identity.DEAD:
                argv = _proc.argv(pid, start)       # None if reused meanwhile
                if argv is not None:
                    user = _proc.user(pid)
                    if _proc.start_of(pid) != start:   # reused after argv: trust nothing
                        user = argv = None
                if argv is None and _proc.start_of(pid) != start:
                    self._state[key] = _identity.DEAD     # it exited while we looked
            got = self._info[key] = (user, argv)
        return got


def stopped(pid: int) -> bool | None:
    """True if ``pid`` exists and is stopped (SIGSTOP, a debugger), False if
    it runs, None if there is no such process (or /proc hides it)."""
    try:
        st = _proc.stat(pid)
    except PermissionError:
        return None
    if st is None:
        return None
    return st.state in ("T", "t")


def short_command(argv: list[str] | None) -> str:
    """A command line as a person reads it: `ipcsem run gpu -- make`, not
    `/opt/venv/bin/python3 /opt/venv/bin/ipcsem run gpu -- make`, and of
    that, `ipcsem run: make` (units and priority have their own columns)."""
    if not argv:
        return "-"
    first, rest = os.path.basename(argv[0]) or argv[0], argv[1:]
    if first.startswith("python") and rest and rest[0].startswith("/") \
            and os.path.dirname(rest[0]).endswith("/bin"):
        first, rest = os.path.basename(rest[0]), rest[1:]   # a console script
    elif first.startswith("python") and rest[:2] == ["-m", "ipcsem"]:
        first, rest = "ipcsem", rest[2:]
    if first == "ipcsem" and rest[:1] == ["run"] and "--" in rest:
        return "ipcsem run: " + " ".join(rest[rest.index("--") + 1:])
    return " ".join([first, *rest])
