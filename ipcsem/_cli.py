"""Command line: ``ipcsem SUBCOMMAND`` and ``ipcsem-status``.

Exit codes (every subcommand): 0 ok, 1 error (one line on stderr), 2 usage,
and the subcommand's own codes documented in its --help (``run``: CMD's
status, 75 when the units were not acquired in time).  A user error never
prints a traceback (set IPCSEM_DEBUG=1 to see one for an internal error).
docs/cli.md documents every subcommand and the --json schema.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import stat
import sys
import time

from . import _identity, _ledger, _names, _recovery, _segment
from ._errors import Corrupt, IpcsemError, NotFound, PermissionDenied

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_TEMPFAIL = 75          # run: not acquired / timed out (sysexits EX_TEMPFAIL)
EXIT_CANNOT_EXEC, EXIT_NOT_FOUND = 126, 127   # run: like a shell
JSON_VERSION = 1
LOCK_WAIT = 0.1             # status: how long the ledger lock may keep us waiting


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit 2."""


class CliError(Exception):
    """A user-facing failure: one line on stderr, exit 1."""


# ================================================================ helpers
def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


_users: dict[int, str] = {}


def _user_name(uid: int) -> str:
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _users[uid] = name
    return name


class _Procs:
    """Per-run cache of what the tools show about a process identity, so a
    process holding units of many semaphores is looked up once."""

    def __init__(self) -> None:
        self._state: dict[tuple[int, int], str] = {}
        self._info: dict[tuple[int, int], tuple[str | None, str | None]] = {}

    def state(self, pid: int, start: int) -> str:
        key = (pid, start)
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = _identity.status(pid, start)
        return st

    def info(self, pid: int, start: int) -> tuple[str | None, list[str] | None]:
        """(user, argv) of a live identity; (None, None) once it is dead.
        A zombie has no argv left: ["[comm]"], the way ps shows it."""
        key = (pid, start)
        got = self._info.get(key)
        if got is None:
            user = argv = None
            if self.state(pid, start) != _identity.DEAD:
                try:
                    user = _user_name(os.stat(f"/proc/{pid}").st_uid)
                except OSError:
                    pass
                argv = _argv(pid)
                if not argv:
                    try:
                        with open(f"/proc/{pid}/comm") as f:
                            argv = [f"[{f.read().strip()}]"]
                    except OSError:
                        argv = None
                # The pid may have been reused while we read: trust nothing then.
                if _identity.start_of(pid) != start:
                    user = argv = None
                    self._state[key] = _identity.DEAD
            got = self._info[key] = (user, argv)
        return got


def _argv(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in data.split(b"\0")[:-1]] if data else []


def _duration(seconds: float | None) -> str:
    """Short human duration: 0.4s, 12s, 5m03s, 2h05m, 3d04h."""
    if seconds is None:
        return "-"
    s = max(seconds, 0.0)
    if s < 10:
        return f"{s:.1f}s"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clip(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "~"


def _term_size() -> tuple[int, int]:
    """(columns, lines) of the terminal on stdout, asked live (a watch view
    follows resizes; COLUMNS in the environment may be stale); else
    $COLUMNS/$LINES; else 80x24."""
    try:
        if sys.stdout.isatty():
            size = os.get_terminal_size(sys.stdout.fileno())
            return max(size.columns, 40), max(size.lines, 3)
    except (OSError, ValueError):
        pass
    size = shutil.get_terminal_size((80, 24))
    return max(size.columns, 40), max(size.lines, 3)


def _width() -> int:
    return _term_size()[0]


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _short_command(argv: list[str] | None) -> str:
    """A command line as a person reads it: `ipcsem run gpu -- make`, not
    `/opt/venv/bin/python3 /opt/venv/bin/ipcsem run gpu -- make`, and of
    that, `ipcsem run: make`."""
    if not argv:
        return "-"
    first, rest = os.path.basename(argv[0]) or argv[0], argv[1:]
    if first.startswith("python") and rest and rest[0].startswith("/") \
            and os.path.dirname(rest[0]).endswith("/bin"):
        first, rest = os.path.basename(rest[0]), rest[1:]   # a console script
    if first == "ipcsem" and rest[:1] == ["run"] and "--" in rest:
        # Units and priority have their own columns: show what it runs.
        return "ipcsem run: " + " ".join(rest[rest.index("--") + 1:])
    return " ".join([first] + rest)


# ====================================================== reading a ledger
class _LockBusy(Exception):
    pass


_alarm_armed = _alarm_installed = False


def _on_alarm(signum, frame):
    if _alarm_armed:
        raise _LockBusy


def _snapshot(seg, wait: float):
    """(header, holders, waiters, consistent): read under the ledger lock, or,
    when the lock is not had within about `wait` + 0.2 s (its owner is stopped
    or hung), read without it and say so.

    The C lock wait runs in 200 ms slices and runs Python signal handlers
    between them; a SIGALRM handler that raises ends the wait.  Only possible
    in the main thread; elsewhere the locked read simply waits."""
    global _alarm_armed, _alarm_installed
    import threading

    if threading.current_thread() is not threading.main_thread():
        h, hs, ws, wakes = seg.ledger.snapshot(True)
        seg.ring(wakes)
        return h, hs, ws, True
    if not _alarm_installed:   # once: the handler is inert unless armed
        signal.signal(signal.SIGALRM, _on_alarm)
        _alarm_installed = True
    got = None
    try:
        try:
            _alarm_armed = True
            signal.setitimer(signal.ITIMER_REAL, wait)
            got = seg.ledger.snapshot(True)
        finally:
            _alarm_armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _LockBusy:
        pass
    if got is not None:
        h, hs, ws, wakes = got
        seg.ring(wakes)
        return h, hs, ws, True
    h, hs, ws, _ = seg.ledger.snapshot(False)
    return h, hs, ws, False


def _blank(name: str) -> dict:
    """A semaphore object of the --json schema with nothing known yet."""
    return {
        "name": name, "capacity": None, "available": None, "unowned": None, "held": None,
        "holders": [], "waiters": [], "dead_holders": None, "longest_wait": None,
        "recovered_units": None, "recoveries": None, "acquisitions": None,
        "lock_repairs": None, "created": None, "creator_pid": None, "owner": None,
        "mode": None, "unlinked": None, "consistent": None, "lock_owner": None,
        "error": None,
    }


def _describe(name: str, procs: _Procs, detail: bool = True, only_pid: int | None = None) -> dict:
    """Everything status shows about one semaphore, as a --json object.
    Raises NotFound if the name is gone; every other failure is put in
    ``error`` (status never crashes on a semaphore it cannot read)."""
    obj = _blank(name)
    try:
        st = os.stat(_names.shm_path(name))
        obj["owner"] = _user_name(st.st_uid)
        obj["mode"] = f"{stat.S_IMODE(st.st_mode):04o}"
    except FileNotFoundError:
        raise NotFound(f"no ipcsem semaphore named {name!r}", name) from None
    except OSError:
        pass
    try:
        seg = _segment.open_segment(name)
    except NotFound:
        raise
    except PermissionDenied:
        obj["error"] = (f"permission denied (owner {obj['owner'] or '?'}, "
                        f"mode {obj['mode'] or '?'})")
        return obj
    except IpcsemError as e:
        obj["error"] = str(e)
        return obj
    except Exception as e:  # noqa: BLE001 - a status tool shows, never crashes
        obj["error"] = f"unreadable: {type(e).__name__}: {e}"
        return obj
    try:
        header, holders, waiters, consistent = _snapshot(seg, LOCK_WAIT)
    except Exception as e:  # noqa: BLE001 - Corrupt (lock unusable), out of memory
        obj["error"] = str(e) if isinstance(e, IpcsemError) else f"{type(e).__name__}: {e}"
        return obj
    finally:
        seg.close()
    now = time.time()
    obj.update(
        capacity=header["capacity"], available=header["available"], unowned=header["unowned"],
        held=sum(h[3] for h in holders), recovered_units=header["recovered_units"],
        recoveries=header["recoveries"], acquisitions=header["acquisitions"],
        lock_repairs=header["lock_repairs"], created=header["created_ns"] / 1e9,
        creator_pid=header["creator_pid"], unlinked=bool(header["flags"] & 1),
        consistent=consistent, lock_owner=None if consistent else (header["lock_owner"] or None),
    )
    out_h, dead = [], 0
    for _slot, pid, start, units, since, acquired, _pending, _reg in holders:
        if units <= 0:
            continue
        state = procs.state(pid, start)
        if state in (_identity.DEAD, _identity.ZOMBIE):
            dead += 1
        if only_pid is not None and pid != only_pid:
            continue
        user, argv = procs.info(pid, start) if detail else (None, None)
        out_h.append({
            "pid": pid, "start": start, "user": user,
            "command": None if argv is None else " ".join(argv), "argv": argv, "units": units,
            "since": since / 1e9, "held_for": round(max(now - since / 1e9, 0.0), 3),
            "state": procs.state(pid, start), "acquisitions": acquired,
        })
    out_h.sort(key=lambda h: h["since"])
    queued = sorted((w for w in waiters if w[1] == _ledger.WAITING), key=lambda w: (-w[6], w[7]))
    out_w, longest = [], None
    for pos, (_e, _s, pid, start, tid, units, prio, ticket, since, _h) in enumerate(queued, 1):
        waited = round(max(now - since / 1e9, 0.0), 3)
        longest = waited if longest is None else max(longest, waited)
        if only_pid is not None and pid != only_pid:
            continue
        user, argv = procs.info(pid, start) if detail else (None, None)
        out_w.append({
            "pid": pid, "start": start, "tid": tid, "user": user,
            "command": None if argv is None else " ".join(argv), "argv": argv,
            "units": units, "priority": prio, "since": since / 1e9, "waiting_for": waited,
            "position": pos, "state": procs.state(pid, start),
        })
    obj.update(holders=out_h, waiters=out_w, dead_holders=dead, longest_wait=longest)
    return obj


def _gather(names: list[str] | None, procs: _Procs, detail: bool,
            only_pid: int | None = None) -> tuple[list[dict], list[str]]:
    """Semaphore objects for NAMEs (all when None), and the NAMEs not found."""
    explicit = names is not None
    objs, missing = [], []
    for name in (names if explicit else _names.names()):
        if explicit:
            _names.validate(name)
        try:
            objs.append(_describe(name, procs, detail, only_pid))
        except NotFound:
            if explicit:
                missing.append(name)
            # listing all: it was removed while we looked; not there any more
    return objs, missing


# ============================================================== rendering
def _table(rows: list[list[str]], heads: list[str], right: set[int], flex: int,
           width: int, indent: str = "") -> list[str]:
    """Columns sized to their content; column `flex` (the last one) gets what
    is left of `width` and is clipped."""
    n = len(heads)
    widths = [max([len(heads[i])] + [len(r[i]) for r in rows]) for i in range(n)]
    fixed = len(indent) + sum(widths[i] + 2 for i in range(n) if i != flex)
    widths[flex] = max(min(widths[flex], width - fixed), len(heads[flex]))

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            c = _clip(c, widths[i]) if i == flex else c
            out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return (indent + "  ".join(out)).rstrip()

    return [line(heads)] + [line(r) for r in rows]


def _render_list(objs: list[dict], width: int) -> list[str]:
    if not objs:
        return ["no ipcsem semaphores"]
    heads = ["NAME", "CAPACITY", "AVAIL", "HOLDERS", "WAITERS", "DEAD", "LONGEST WAIT"]
    num = lambda v: "-" if v is None else str(v)  # noqa: E731
    rows = [[o["name"], num(o["capacity"]), num(o["available"]), str(len(o["holders"])),
             str(len(o["waiters"])), num(o["dead_holders"]), _duration(o["longest_wait"])]
            for o in objs if o["error"] is None]
    widths = [max([len(heads[i])] + [len(r[i]) for r in rows]) for i in range(1, len(heads))]
    room = width - sum(w + 2 for w in widths) - 2   # what NAME may use; 2 for " *"
    name_w = max(4, min(max(len(o["name"]) for o in objs), room))
    widths = [name_w] + widths
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(heads, widths))).rstrip()]
    it = iter(rows)
    for o in objs:
        name = o["name"]
        if o["error"] is not None:
            msg = _short_error(o)
            if len(name) > name_w:
                out.append(name)
                out.append(_clip(f"{'':{name_w}}  ! {msg}", width))
            else:
                out.append(_clip(f"{name:{name_w}}  ! {msg}", width))
            continue
        r = next(it)
        cells = "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:]))
        if len(name) > name_w:   # long names get a line of their own
            out.append(name)
            name = ""
        flag = "" if o["consistent"] else " *"
        out.append(f"{name:{name_w}}  {cells}{flag}".rstrip())
    if any(o["error"] is None and not o["consistent"] for o in objs):
        out.append("* read without the ledger lock (its owner is stopped or hung): "
                   "may be mid-update")
    return out


def _short_error(o: dict) -> str:
    """The gist of a read error for one table row: no path, no remedy."""
    msg = o["error"].split("; ")[0]
    path = _names.shm_path(o["name"])
    if msg.startswith(path):
        msg = msg[len(path):].lstrip(": ")
        msg = "unusable: " + (msg[3:] if msg.startswith("is ") else msg)
    return msg


def _render_detail(o: dict, width: int) -> list[str]:
    import textwrap

    name = o["name"]
    if o["error"] is not None:
        return [f"{name}: cannot be read"] + textwrap.wrap(
            o["error"], width - 2, initial_indent="  ", subsequent_indent="  ",
            break_on_hyphens=False)
    waiting = len(o["waiters"])
    out = [_clip(f"{name}: {o['available']} of {o['capacity']} available, {o['held']} held"
                 + (f", {o['unowned']} unowned" if o["unowned"] else "")
                 + f", {_plural(waiting, 'waiter')}", width)]
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["created"]))
    out.append(_clip(f"  owner {o['owner']}, mode {o['mode']}, created {created} "
                     f"by pid {o['creator_pid']}", width))
    out.append(_clip(f"  {_plural(o['acquisitions'], 'acquisition')}; "
                     f"{_plural(o['recovered_units'], 'unit')} recovered from "
                     f"{_plural(o['recoveries'], 'dead process', 'dead processes')}"
                     + (f"; {o['lock_repairs']} lock repairs" if o["lock_repairs"] else ""),
                     width))
    if o["unlinked"]:
        out.append("  UNLINKED: the name was removed; only processes that had it open see it")
    if not o["consistent"]:
        out.append(_clip(f"  read without the lock (held by pid {o['lock_owner'] or '?'}): "
                         "figures may be mid-update", width))
    if o["dead_holders"]:
        out.append(_clip(f"  {_plural(o['dead_holders'], 'dead holder')} awaiting recovery; "
                         f"`ipcsem recover {name}` does it now", width))
    out.append("")
    if o["holders"]:
        out.append("HOLDERS")
        rows = [[str(h["pid"]), h["user"] or "-", str(h["units"]), _duration(h["held_for"]),
                 h["state"], _short_command(h["argv"])] for h in o["holders"]]
        out += _table(rows, ["PID", "USER", "UNITS", "HELD FOR", "STATE", "COMMAND"],
                      {0, 2, 3}, 5, width, "  ")
    else:
        out.append("HOLDERS: none")
    if o["waiters"]:
        out.append("WAITERS (in queue order)")
        rows = [[str(w["position"]), str(w["pid"]), w["user"] or "-", str(w["units"]),
                 str(w["priority"]), _duration(w["waiting_for"]), _short_command(w["argv"])]
                for w in o["waiters"]]
        out += _table(rows, ["POS", "PID", "USER", "UNITS", "PRIO", "WAITING", "COMMAND"],
                      {0, 1, 3, 4, 5}, 6, width, "  ")
    else:
        out.append("WAITERS: none")
    return out


def _render_pid(pid: int, objs: list[dict], width: int) -> list[str]:
    start = _identity.start_of(pid)
    if start is None:
        head = f"pid {pid}: no such process (entries below, if any, are of a dead process)"
    else:
        user, argv = _Procs().info(pid, start)
        head = f"pid {pid} ({user or '?'}): {_short_command(argv)}"
    out = [_clip(head, width)]
    holds = [(o, h) for o in objs for h in o["holders"]]
    waits = [(o, w) for o in objs for w in o["waiters"]]
    bad = [o["name"] for o in objs if o["error"] is not None]
    if holds:
        out.append("HOLDS")
        rows = [[o["name"], str(h["units"]), f"{o['capacity']}", _duration(h["held_for"]),
                 h["state"]] for o, h in holds]
        out += _table([r[1:] + [r[0]] for r in rows],
                      ["UNITS", "OF", "HELD FOR", "STATE", "SEMAPHORE"], {0, 1, 2}, 4, width, "  ")
    else:
        out.append("HOLDS: nothing")
    if waits:
        out.append("WAITS FOR")
        rows = [[str(w["units"]), str(w["priority"]), str(w["position"]),
                 _duration(w["waiting_for"]), str(w["tid"]), o["name"]] for o, w in waits]
        out += _table(rows, ["UNITS", "PRIO", "POS", "WAITING", "TID", "SEMAPHORE"],
                      {0, 1, 2, 3, 4}, 5, width, "  ")
    else:
        out.append("WAITS FOR: nothing")
    if bad:
        out.append(_clip(f"not readable, so not searched: {' '.join(bad)}", width))
    return out


# ================================================================= status
def _status_frame(args, width: int) -> tuple[list[str], dict, int]:
    """(human lines, json document, exit code) for one look."""
    procs = _Procs()
    names = args.names or None
    if args.pid is not None:
        objs, missing = _gather(names, procs, True, args.pid)
        objs = [o for o in objs if o["holders"] or o["waiters"] or o["error"]]
        doc = {"version": JSON_VERSION, "pid": args.pid, "semaphores": objs}
        lines = _render_pid(args.pid, objs, width)
    elif names:
        objs, missing = _gather(names, procs, True)
        doc = {"version": JSON_VERSION, "semaphores": objs}
        lines = []
        for o in objs:
            if lines:
                lines.append("")
            lines += _render_detail(o, width)
    else:
        objs, missing = _gather(None, procs, args.json)
        doc = {"version": JSON_VERSION, "semaphores": objs}
        lines = _render_list(objs, width)
    if missing:
        doc["missing"] = missing
    rc = EXIT_ERROR if missing or (names and any(o["error"] for o in objs)) else EXIT_OK
    return lines, doc, rc


def cmd_status(args) -> int:
    if args.watch is not None:
        if args.json:
            raise UsageError("--watch and --json do not mix (poll with --json instead)")
        if args.watch <= 0:
            raise UsageError("--watch interval must be > 0 seconds")
        return _watch(args)
    lines, doc, rc = _status_frame(args, 80 if args.json else _width())
    if args.json:
        # Indented for a person at a terminal; one compact line (C encoder,
        # several times faster) when piped.
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json.dumps(doc, indent=indent) + "\n")
    else:
        if lines:
            print("\n".join(lines))
        for name in doc.get("missing", ()):
            print(f"{args.prog}: no ipcsem semaphore named {name!r}", file=sys.stderr)
    return rc


def _watch(args) -> int:
    host = os.uname().nodename
    what = " ".join(args.names) if args.names else "all semaphores"
    if args.pid is not None:
        what = f"pid {args.pid}" + (f" in {what}" if args.names else "")
    out = sys.stdout
    try:
        while True:
            width, height = _term_size()
            lines, doc, _rc = _status_frame(args, width)
            lines += [f"{n}: no such semaphore (yet)" for n in doc.get("missing", ())]
            head = f"every {args.watch:g}s: ipcsem-status {what}"
            clock = f"{host}: {time.strftime('%H:%M:%S')}"
            head = head + " " * max(width - len(head) - len(clock), 1) + clock
            frame = [_clip(head, width), ""] + [_clip(x, width) for x in lines]
            frame = frame[: height - 1]
            # Home, then each line and clear-to-end-of-line, then clear the
            # rest: a redraw without the flicker of clearing first.
            out.write("\x1b[H" + "".join(f"{x}\x1b[K\n" for x in frame) + "\x1b[J")
            out.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        out.write("\n")
        return EXIT_OK


def cmd_ls(args) -> int:
    if args.long:
        return cmd_status(argparse.Namespace(names=[], pid=None, json=args.json, watch=None,
                                             prog="ipcsem ls"))
    names = _names.names()
    if args.json:
        print(json.dumps({"version": JSON_VERSION, "names": names}))
    elif names:
        print("\n".join(names))
    return EXIT_OK


# ================================================================= create
def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad mode {text!r}: use octal, like 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"bad mode {text!r}: use 0000..0777")
    return mode


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return v


def cmd_create(args) -> int:
    from ._semaphore import _check_int

    _names.validate(args.name)
    _check_int("capacity", args.capacity, 1, _ledger.MAX_CAPACITY)
    _check_int("max_holders", args.max_holders, 1, _ledger.MAX_SLOTS)
    _check_int("max_waiters", args.max_waiters, 1, _ledger.MAX_SLOTS)
    if args.initial is not None:
        _check_int("initial", args.initial, 0, args.capacity)
    # Whether this call laid the ledger out is decided under the creation
    # flock, so of two racing `ipcsem create`s exactly one reports success.
    seg = _segment.open_segment(args.name, args.capacity, args.initial, args.mode,
                                args.max_holders, args.max_waiters)
    try:
        avail, mode, created = seg.ledger.available, seg.mode, seg.created
    finally:
        seg.close()
    if not created and not args.exist_ok:
        raise CliError(f"semaphore {args.name!r} already exists (use --exist-ok to accept it)")
    if not args.quiet:
        print(f"{args.name}: capacity {args.capacity}, {avail} available, mode {mode:04o}")
    return EXIT_OK


# ===================================================================== rm
def cmd_rm(args) -> int:
    for name in args.names:
        _names.validate(name)       # a bad name is a usage error: nothing removed
    rc = EXIT_OK
    for name in args.names:
        try:
            _rm_one(name, args.force)
        except (IpcsemError, CliError, ValueError) as e:
            print(f"ipcsem rm: {e}", file=sys.stderr)
            rc = EXIT_ERROR
    return rc


def _rm_one(name: str, force: bool) -> None:
    _names.validate(name)
    try:
        seg = _segment.open_segment(name)
    except Corrupt as e:
        if not force:
            raise CliError(f"{name!r} is not a usable ledger ({str(e).split(';')[0]}); "
                           "use --force to remove it") from None
        seg = None
    if seg is not None:
        try:
            _h, holders, waiters, consistent = _snapshot(seg, LOCK_WAIT)
            if consistent and not force:
                _recovery.heal(seg)          # dead holders do not keep a name alive
                _h, holders, waiters, consistent = _snapshot(seg, LOCK_WAIT)
        finally:
            seg.close()
        if not consistent:
            if not force:
                raise CliError(f"the ledger lock of {name!r} is held by a stopped or hung "
                               "process; use --force to remove it anyway")
            # Marking it unlinked needs that lock: remove the name without
            # telling queued waiters (they keep the removed object).
            _segment.remove_objects(name)
            return
        held = [(h[1], h[3]) for h in holders if h[3] > 0]
        queued = sum(1 for w in waiters if w[1] == _ledger.WAITING)
        if (held or queued) and not force:
            who = ", ".join(f"pid {pid}" + (f" ({units})" if len(held) > 1 else "")
                            for pid, units in held[:3])
            more = f" and {len(held) - 3} more" if len(held) > 3 else ""
            parts = []
            if held:
                parts.append(f"{sum(u for _, u in held)} unit(s) held by {who}{more}")
            if queued:
                parts.append(_plural(queued, "waiter"))
            raise CliError(f"{name!r} is in use: {'; '.join(parts)}; "
                           "use --force to remove it anyway")
    _segment.unlink(name)


# ================================================================ recover
def cmd_recover(args) -> int:
    for name in args.names:
        _names.validate(name)
    names = args.names or _names.names()
    rc = EXIT_OK
    for name in names:
        try:
            seg = _segment.open_segment(name)
        except NotFound:
            if args.names:
                print(f"ipcsem recover: no ipcsem semaphore named {name!r}", file=sys.stderr)
                rc = EXIT_ERROR
            continue
        except (IpcsemError, ValueError) as e:
            print(f"ipcsem recover: {e}", file=sys.stderr)
            rc = EXIT_ERROR
            continue
        try:
            def report(n, pid, start, units, entries):
                print(f"recovered name={n} pid={pid} units={units} queue_entries={entries}",
                      flush=True)
            _recovery.heal(seg, report)
        finally:
            seg.close()
    return rc


# ==================================================================== run
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
SI_KERNEL = 0x80


class _Interrupted(KeyboardInterrupt):
    """A forwarded signal while waiting.  A KeyboardInterrupt on purpose:
    posix_ipc (1.3) runs Python signal handlers inside sem_timedwait and
    lets only a KeyboardInterrupt through (others become SignalError, which
    the library's wait loop ignores)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _holds_units(sem) -> int:
    """Units this process holds, read without the ledger lock: used on the
    way out after a signal, when waiting for the lock again could hang."""
    me = _identity.ME
    _h, holders, _w, _ = sem._seg.ledger.snapshot(False)
    return sum(h[3] for h in holders if (h[1], h[2]) == (me.pid, me.start))


def cmd_run(args) -> int:
    from ._semaphore import Semaphore

    if not args.cmd:
        raise UsageError("no command given: ipcsem run NAME [OPTIONS] -- CMD [ARGS...]")
    if args.capacity is not None:
        sem = Semaphore(args.name, args.capacity)
    else:
        try:
            sem = Semaphore(args.name)
        except NotFound:
            raise CliError(f"no ipcsem semaphore named {args.name!r} "
                           "(give --capacity N to create it)") from None
    if args.units > sem.capacity:
        raise UsageError(f"--units {args.units} exceeds the capacity of {args.name!r} "
                         f"({sem.capacity})")

    # Phase 1: waiting.  A forwarded signal ends the wait (the library leaves
    # no queue entry behind) and we exit as if killed by it.
    phase = {"waiting": True, "pending": []}

    def on_signal(signum, frame):
        if phase["waiting"]:
            raise _Interrupted(signum)
        phase["pending"].append(signum)

    for sig in FORWARDED:
        signal.signal(sig, on_signal)
    try:
        try:
            try:
                got = sem.acquire(args.units, timeout=args.timeout, priority=args.priority)
            finally:
                phase["waiting"] = False
        except _Interrupted as e:
            # Only if the signal landed between the grant and the line above.
            if _holds_units(sem):
                sem.release(args.units)
            return 128 + e.signum
        if not got:
            what = "now" if args.timeout == 0 else f"within {args.timeout:g} s"
            print(f"ipcsem run: timed out: {args.units} unit(s) of {args.name!r} not "
                  f"available {what}", file=sys.stderr)
            return EXIT_TEMPFAIL
        try:
            return _run_child(args.cmd, phase["pending"])
        finally:
            sem.release(args.units)
    finally:
        sem.close()     # frees our holder slot now rather than at the next heal


def _run_child(cmd: list[str], pending: list[int]) -> int:
    import ctypes
    import subprocess

    waited = set(FORWARDED) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    if pending:   # signalled while between the grant and here: CMD never starts
        return 128 + pending[0]
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def child_setup():
        # CMD must never run without the units: if ipcsem run dies (even by
        # SIGKILL) the kernel kills CMD too.  Then, defaults and no mask.
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    try:
        child = subprocess.Popen(cmd, preexec_fn=child_setup)
    except FileNotFoundError:
        print(f"ipcsem run: {cmd[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError as e:
        print(f"ipcsem run: {cmd[0]}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CANNOT_EXEC
    except OSError as e:
        print(f"ipcsem run: {cmd[0]}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CANNOT_EXEC
    while True:
        info = signal.sigtimedwait(waited, 0.5)
        if info is not None and info.si_signo != signal.SIGCHLD:
            # Signals the kernel sent to the whole foreground process group
            # (Ctrl-C, Ctrl-\, terminal hangup) reached CMD already.
            if info.si_code != SI_KERNEL:
                try:
                    os.kill(child.pid, info.si_signo)
                except ProcessLookupError:
                    pass
            continue
        rc = child.poll()
        if rc is not None:
            return rc if rc >= 0 else 128 - rc


# ============================================================== supervise
class _LoggingSupervisor(_recovery.Supervisor):
    """The library's supervisor, remembering each watched process's command
    line while it is alive: after death /proc no longer has it."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.commands: dict[tuple[int, int], str] = {}
        self._stale: set[tuple[int, int]] = set()

    def _watch_identities(self, seg) -> None:
        try:
            _h, holders, waiters, _w = seg.ledger.snapshot(False)
        except Exception:  # noqa: BLE001 - only a nicety; super() reports errors
            holders, waiters = [], []
        for ident in _recovery.identities(holders, waiters):
            if ident not in self.commands and _identity.start_of(ident[0]) == ident[1]:
                self.commands[ident] = _command_line(ident[0])
        super()._watch_identities(seg)

    def run_once_sweep(self) -> None:
        super().run_once_sweep()
        # The sweep recovered every dead identity it found; forget those
        # still dead a sweep later (two strikes: one may have died just now).
        for ident in list(self.commands):
            if ident not in self._watch and _identity.is_dead(*ident):
                if ident in self._stale:
                    del self.commands[ident]
                    self._stale.discard(ident)
                else:
                    self._stale.add(ident)


def cmd_supervise(args) -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format="%(message)s",  # journald adds time and unit; keep lines bare
    )
    sup = None

    def on_recover(name, pid, start, units, entries, died_ns):
        after = "" if died_ns is None else f" after_ms={(time.time_ns() - died_ns) / 1e6:.2f}"
        cmd = sup.commands.pop((pid, start), None) if sup is not None else None
        print(f"recovered name={name} pid={pid} units={units} queue_entries={entries}"
              f"{after} cmd={(cmd if cmd is not None else _command_line(pid))!r}", flush=True)

    def on_error(name, err):
        print(f"warning name={name} error={str(err)!r}", file=sys.stderr, flush=True)

    sup = _LoggingSupervisor(args.names or None, sweep=args.sweep, poll=args.poll,
                             on_recover=on_recover, on_error=on_error)

    def stop(signum, frame):
        sup.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    what = " ".join(args.names) if args.names else "every ipcsem semaphore"
    print(f"supervising {what} (pid {_identity.ME.pid}; pidfd={'yes' if sup._pidfd else 'no'})",
          flush=True)
    try:
        sup.run()
    finally:
        sup.close()
    print("supervisor stopped", flush=True)
    return EXIT_OK


# ================================================================= parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _exit_codes(one: str = "error: one line on stderr") -> str:
    return f"exit status:\n  0   ok\n  1   {one}\n  2   usage error"


EXIT_CODES = _exit_codes()

STATUS_HELP = """\
Without NAME: one line per semaphore this user can see.  With NAMEs: holders
(pid, user, command, units, held for, state) and waiters in queue order.
A semaphore that cannot be read (another user's, corrupt) is shown as such.
The ledger is read under its lock; if the lock is not free within ~0.3 s
(its owner is stopped) it is read without it and marked so."""

STATUS_EPILOG = """\
examples:
  ipcsem-status                   every semaphore, one line each
  ipcsem-status gpu               who holds gpu, who waits and for how long
  ipcsem-status -p 4242           what pid 4242 holds and waits for
  ipcsem-status --json gpu | jq '.semaphores[0].holders[].pid'
  ipcsem-status --watch 0.5 gpu   live view; Ctrl-C to quit

states: alive, stopped, zombie, dead (awaiting recovery), unknown (hidden
from us: treated as alive).  --json schema: docs/cli.md.

""" + _exit_codes("a NAME was not found or could not be read")

RUN_HELP = """\
Acquire K units of NAME (creating it with capacity N if it does not exist
and --capacity is given), run CMD, release the units when CMD ends, and exit
with CMD's exit status.

The units belong to `ipcsem run` itself, which waits for CMD.  SIGINT,
SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to `ipcsem run` are
forwarded to CMD (those the terminal sends to the whole foreground group,
like Ctrl-C, reach CMD directly and are not sent twice).  If `ipcsem run` is
killed, even by SIGKILL, the kernel kills CMD with SIGKILL (PR_SET_PDEATHSIG)
and the units come back like any dead holder's: CMD never runs without them.
Processes CMD started in the background are not killed."""

RUN_EPILOG = """\
examples:
  ipcsem run gpu --capacity 2 -- python train.py      at most 2 at a time
  ipcsem run licences --units 3 --timeout 60 -- ./solve model.lp
  for f in *.wav; do ipcsem run enc --capacity 4 -- flac "$f" & done; wait

exit status:
  CMD's exit status; 128+N if CMD was killed by signal N
  75  the units were not acquired within --timeout (EX_TEMPFAIL)
  126 CMD could not be executed; 127 CMD not found
  128+N  ipcsem run was interrupted by signal N while waiting
  1   error (no such semaphore without --capacity, capacity mismatch, ...)
  2   usage error"""


def build_parser(prog: str = "ipcsem") -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog=prog,
        description="Crash-safe named counting semaphores for unrelated processes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  ipcsem create gpu --capacity 2 --mode 0660\n"
               "  ipcsem run gpu -- python train.py\n"
               "  ipcsem-status gpu\n"
               "  ipcsem rm gpu\n"
               "  ipcsem chaos --duration 60s       SIGKILL storm: prove it on this machine\n\n"
               "exit codes: 0 ok, 1 error (chaos: storm failed), 2 usage,\n"
               "75 not acquired in time (run);\n"
               "see each subcommand's --help and docs/cli.md",
    )
    p.add_argument("--version", action="version", version=f"ipcsem {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    raw = argparse.RawDescriptionHelpFormatter

    # status
    sp = sub.add_parser("status", help="show semaphores, holders and waiters (= ipcsem-status)",
                        formatter_class=raw, description=STATUS_HELP, epilog=STATUS_EPILOG)
    _status_args(sp)

    # run
    sp = sub.add_parser("run", help="run a command while holding units",
                        usage="ipcsem run NAME [--capacity N] [--units K] [--timeout S]\n"
                              "                  [--priority P] -- CMD [ARGS...]",
                        formatter_class=raw, description=RUN_HELP, epilog=RUN_EPILOG)
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--capacity", type=_positive_int, metavar="N",
                    help="create NAME with N units if it does not exist (and check it)")
    sp.add_argument("--units", type=_positive_int, default=1, metavar="K",
                    help="units to hold while CMD runs (default 1)")
    sp.add_argument("--timeout", type=_seconds, metavar="S",
                    help="give up after S seconds with exit status 75 (0: only if free now; "
                         "default: wait as long as it takes)")
    sp.add_argument("--priority", type=int, default=0, metavar="P",
                    help="queue priority: higher is served first, FIFO within one (default 0)")
    sp.set_defaults(func=cmd_run, cmd=[])

    # create
    sp = sub.add_parser("create", help="create a semaphore", formatter_class=raw,
                        description="Create the semaphore NAME with N units.",
                        epilog="examples:\n  ipcsem create gpu --capacity 2\n"
                               "  ipcsem create jobs --capacity 8 --initial 0 --mode 0660\n\n"
                               + _exit_codes("error (exists, capacity mismatch, permission, ...)"))
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--capacity", type=_positive_int, required=True, metavar="N",
                    help="number of units")
    sp.add_argument("--initial", type=int, metavar="K",
                    help="units available at first (default N; the rest are out, unowned)")
    sp.add_argument("--mode", type=_mode, default=0o600, metavar="MODE",
                    help="octal permissions of the shared memory (default 0600; 0660 "
                         "shares with the group)")
    sp.add_argument("--max-holders", type=_positive_int, default=_segment.DEFAULT_SLOTS,
                    metavar="N", help=f"holder slots (default {_segment.DEFAULT_SLOTS})")
    sp.add_argument("--max-waiters", type=_positive_int, default=_segment.DEFAULT_SLOTS,
                    metavar="N", help=f"queue entries (default {_segment.DEFAULT_SLOTS})")
    sp.add_argument("--exist-ok", action="store_true",
                    help="succeed if NAME exists with this capacity")
    sp.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    sp.set_defaults(func=cmd_create)

    # rm
    sp = sub.add_parser("rm", help="remove semaphores (like ipcrm)", formatter_class=raw,
                        description="Remove each NAME.  Refuses while units are held or "
                                    "requests queued\n(units of dead holders are recovered "
                                    "first) unless --force.  With --force,\nqueued waiters "
                                    "fail with ipcsem.Unlinked; holders keep working on the\n"
                                    "removed object; a later open creates a new one.  --force "
                                    "also removes\nan object that is not a usable ledger.",
                        epilog="examples:\n  ipcsem rm gpu\n  ipcsem rm --force gpu licences\n"
                               "  ipcsem ls | grep '^test-' | xargs ipcsem rm\n\n" + EXIT_CODES)
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("-f", "--force", action="store_true",
                    help="remove even while in use or corrupt")
    sp.set_defaults(func=cmd_rm)

    # ls
    sp = sub.add_parser("ls", help="list semaphore names", formatter_class=raw,
                        description="Print the name of every ipcsem semaphore this user can "
                                    "see, one per line.",
                        epilog="examples:\n  ipcsem ls\n  ipcsem ls -l        "
                               "(same as ipcsem-status)\n\n" + EXIT_CODES)
    sp.add_argument("-l", "--long", action="store_true", help="the ipcsem-status table")
    sp.add_argument("--json", action="store_true", help='{"version": 1, "names": [...]}')
    sp.set_defaults(func=cmd_ls)

    # recover
    sp = sub.add_parser("recover", help="return dead holders' units now", formatter_class=raw,
                        description="Recover the units and queue entries of dead processes "
                                    "of each NAME (every\nsemaphore without NAME) once, and "
                                    "print one line per recovered process.",
                        epilog="examples:\n  ipcsem recover\n  ipcsem recover gpu\n\n"
                               + EXIT_CODES)
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.set_defaults(func=cmd_recover)

    # supervise
    sp = sub.add_parser(
        "supervise", help="recover dead holders' units as soon as they die",
        formatter_class=raw,
        description="Run in the foreground until SIGINT/SIGTERM, watching every holder of\n"
                    "the named semaphores (all ipcsem semaphores, including ones created\n"
                    "later, when no NAME is given) and returning a dead holder's units at\n"
                    "once.  Not required for correctness: blocked waiters heal too, within\n"
                    "about a second.  Logs one line per recovery on stdout.",
        epilog="examples:\n  ipcsem supervise\n  ipcsem supervise gpu licences\n\n"
               "log lines (key=value, one per event; journald adds time and unit):\n"
               "  recovered name=gpu pid=4242 units=2 queue_entries=0 after_ms=0.41 \\\n"
               "    cmd='python train.py'       (one line; after_ms: time since death)\n"
               "  warning name=x error='...'     (on stderr)\n"
               "as a service: contrib/ipcsem-supervise.service, see docs/cli.md\n\n"
               + EXIT_CODES,
    )
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--sweep", type=float, default=1.0, metavar="S",
                    help="full scan interval in seconds (default 1.0)")
    sp.add_argument("--poll", type=float, default=0.02, metavar="S",
                    help="new-holder poll interval in seconds (default 0.02)")
    sp.set_defaults(func=cmd_supervise)

    # chaos
    from . import _chaos

    sp = sub.add_parser("chaos", help="SIGKILL storm against a fresh semaphore, checked "
                                      "by an independent oracle",
                        usage="ipcsem chaos [NAME] [--workers N] [--kill-every T] "
                              "[--duration T]\n"
                              "                    [--kills N] [--capacity N] "
                              "[--spawn {exec,fork}]\n"
                              "                    [--no-supervisor] [--json] [-q] ...",
                        formatter_class=raw, description=CHAOS_HELP, epilog=CHAOS_EPILOG)
    sp.add_argument("chaos_name", nargs="?", metavar="NAME",
                    help="the semaphore to create, storm and remove; must not exist "
                         "(default: a fresh chaos-PID-RANDOM)")
    _chaos.add_arguments(sp)
    for action in sp._actions:        # NAME replaces the engine's --name in the CLI
        if "--name" in action.option_strings:
            action.help = argparse.SUPPRESS
    sp.set_defaults(func=cmd_chaos)
    return p


CHAOS_HELP = """\
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
also runs every 50 ms during the storm.

The report (stdout; --json for the whole of it) gives kills, self-kills,
lock repairs, cycles, recovered units, over-admissions and lost units.
Progress every 5 s on stderr unless -q.  Stops after --duration or
--kills, whichever comes first (1000 kills if neither is given)."""

CHAOS_EPILOG = """\
examples:
  ipcsem chaos soak --workers 8 --kill-every 10ms --duration 60s
  ipcsem chaos --kills 10000 --spawn fork       dense: forked workers (~1 ms)
  ipcsem chaos --duration 10s --no-supervisor   waiters must heal by themselves
  ipcsem chaos --duration 5s --json | jq '.ok, .over_admissions, .lost_units'

exit status:
  0   pass: no over-admission, no lost unit, every check passed
  1   fail: the report says what (over-admission, lost units, failed check,
      a worker error, something left in /dev/shm); or an error (NAME exists)
  2   usage error
  130 interrupted (SIGINT, SIGTERM, SIGHUP): workers killed, NAME removed"""


def cmd_chaos(args) -> int:
    from . import _chaos

    if args.chaos_name is not None and args.name is not None \
            and args.chaos_name != args.name:
        raise UsageError(f"NAME {args.chaos_name!r} and --name {args.name!r} differ")
    args.name = args.chaos_name if args.chaos_name is not None else args.name
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not 1 <= args.capacity <= _ledger.MAX_CAPACITY:
        raise UsageError(f"--capacity must be in 1..{_ledger.MAX_CAPACITY}, got {args.capacity}")
    if args.kills is not None and args.kills < 1:
        raise UsageError(f"--kills must be >= 1, got {args.kills}")
    if not 0.0 <= args.self_kill_fraction <= 1.0:
        raise UsageError(f"--self-kill-fraction must be in 0..1, got {args.self_kill_fraction}")
    if args.name is not None:
        _names.validate(args.name)
        if os.path.exists(_names.shm_path(args.name)):
            raise CliError(f"semaphore {args.name!r} already exists: a storm creates its own "
                           "and removes it at the end (pick another NAME)")
    return _chaos.run_from_args(args)


def _status_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("names", nargs="*", metavar="NAME", help="semaphores to show in detail")
    sp.add_argument("--json", action="store_true",
                    help="machine-readable output (schema: docs/cli.md)")
    sp.add_argument("-p", "--pid", type=_positive_int, metavar="PID",
                    help="what PID holds and waits for, across all semaphores (or NAMEs)")
    sp.add_argument("-w", "--watch", type=float, nargs="?", const=1.0, metavar="SECONDS",
                    help="redraw every SECONDS (default 1) until Ctrl-C")
    sp.set_defaults(func=cmd_status)


def build_status_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ipcsem-status", formatter_class=argparse.RawDescriptionHelpFormatter,
                description=STATUS_HELP, epilog=STATUS_EPILOG)
    _status_args(p)
    return p


_RUN_VALUE_OPTS = {"--capacity", "--units", "--timeout", "--priority"}


def _split_run(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For `ipcsem run`, split off CMD: everything after the first `--`, or,
    without `--`, from the first word after NAME that is not an option of
    run.  argparse alone would take CMD's own options for ours."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 1
    if i >= len(argv) or argv[i] != "run":
        return argv, None
    if "--" in argv[i:]:
        j = argv.index("--", i)
        return argv[:j], argv[j + 1:]
    positionals, k = 0, i + 1
    while k < len(argv):
        a = argv[k]
        if a in _RUN_VALUE_OPTS:
            k += 2
            continue
        if a.startswith("-"):
            k += 1
            continue
        positionals += 1
        if positionals == 2:
            return argv[:k], argv[k:]
        k += 1
    return argv, None


def _dispatch(parser: argparse.ArgumentParser, argv: list[str], cmd: list[str] | None) -> int:
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
        return 130
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
    except Exception as e:  # noqa: BLE001
        if os.environ.get("IPCSEM_DEBUG"):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} "
              "(IPCSEM_DEBUG=1 shows the traceback; please report)", file=sys.stderr)
        return EXIT_ERROR


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, cmd = _split_run(argv)
    return _dispatch(build_parser(), argv, cmd)


def status_main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return _dispatch(build_status_parser(), argv, None)
