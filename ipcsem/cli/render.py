"""Human output of the status views: the list, the detail view, the per-pid
view and deadlocks, from --json objects (``describe``).  Every line fits
the width it is given (long command lines are clipped with ``~``; --json
has them whole)."""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import _names, _proc
from .procinfo import Procs, short_command

if TYPE_CHECKING:       # (types only: rendering needs no ledger module)
    from .._records import Deadlock
    from .describe import Obj


# ------------------------------------------------------------ small parts
def duration(seconds: float | None) -> str:
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


def clip(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "~"


def term_size() -> tuple[int, int]:
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


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def slot_list(slots: Iterable[int] | None) -> str:
    """Unit numbers as ipcsem run exports them: 0,3 (no spaces)."""
    return ",".join(str(s) for s in slots) if slots else "-"


def table(rows: list[list[str]], heads: list[str], right: set[int], flex: int,
          width: int, indent: str = "") -> list[str]:
    """Columns sized to their content; column ``flex`` (the last one) gets
    what is left of ``width`` and is clipped."""
    n = len(heads)
    widths = [max([len(heads[i])] + [len(r[i]) for r in rows]) for i in range(n)]
    fixed = len(indent) + sum(widths[i] + 2 for i in range(n) if i != flex)
    widths[flex] = max(min(widths[flex], width - fixed), len(heads[flex]))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            c = clip(cell, widths[i]) if i == flex else cell
            out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return (indent + "  ".join(out)).rstrip()

    return [line(heads), *(line(r) for r in rows)]


def short_error(o: Obj) -> str:
    """The gist of a read error for one table row: no path, no remedy."""
    msg: str = o["error"].split("; ")[0]
    path = _names.shm_path(o["name"])
    if msg.startswith(path):
        msg = msg[len(path):].lstrip(": ")
        msg = "unusable: " + (msg[3:] if msg.startswith("is ") else msg)
    elif msg.startswith("permission denied"):
        msg = msg.split("):")[0] + ")" if "):" in msg else msg
    return msg


def policy(o: Obj) -> str:
    """What kind of semaphore it is, in a few words."""
    if o["kind"] == "mutex":
        text = "mutex" + (", reentrant" if o["reentrant"] else "")
        if o.get("priority_inheritance") is not None:
            text += ", priority inheritance"
        if o["mutex_owner_pid"] is not None:
            text += f", owned by pid {o['mutex_owner_pid']}"
            if o["mutex_owner_tid"]:
                text += f" thread {o['mutex_owner_tid']}"
        else:
            text += ", unlocked"
        if o["previous_owner_died"]:
            text += "; its previous owner died holding it (not yet released normally)"
        return text
    text = "semaphore"
    if o["slots"]:
        text += f", units numbered 0..{o['capacity'] - 1} (slots)"
    text += ", strict FIFO" if o["fair"] else ", unfair (fair=False: free units may be barged)"
    return text


def inheritance_text(o: Obj) -> str | None:
    """A PI mutex's boosted (or not boostable) owner, in one line; None when
    there is nothing to say."""
    pi = o.get("priority_inheritance")
    if not pi or (pi["state"] is None and pi["reason"] is None):
        return None
    who = f"thread {pi['owner_tid']}" if pi["owner_tid"] else "the owner"
    by = ""
    if pi["because_of"] is not None:
        by = f"pid {pi['because_of']}" + (f" (thread {pi['because_of_tid']})"
                                           if pi["because_of_tid"] else "")
    if pi["state"] == "boosted":
        return (f"priority inheritance: owner {who} boosted from {pi['from']} to {pi['to']}"
                + (f" because of {by}" if by else ""))
    if pi["state"] == "unavailable":
        to = f" to {pi['to']}" if pi["to"] else ""
        return (f"priority inheritance unavailable: {who} ({pi['from']}) could not be "
                f"raised{to}" + (f" for {by}" if by else "") + f": {pi['reason']}")
    return f"priority inheritance: {pi['reason']}"


def wedge_text(o: Obj) -> str | None:
    if o["lock_owner_state"] == "stopped":
        return f"ledger lock held by stopped pid {o['lock_owner']}"
    if not o["consistent"]:
        who = f"pid {o['lock_owner']}" if o["lock_owner"] else "a process"
        state = f", {o['lock_owner_state']}" if o["lock_owner_state"] else ""
        return f"an update by {who}{state} is in flight"
    return None


# ------------------------------------------------------------- the list
def render_list(objs: list[Obj], width: int) -> list[str]:
    if not objs:
        return ["no ipcsem semaphores"]
    heads = ["NAME", "CAPACITY", "AVAIL", "HOLDERS", "WAITERS", "DEAD", "LONGEST WAIT"]

    def num(v: int | None) -> str:
        return "-" if v is None else str(v)

    rows = [[o["name"], num(o["capacity"]), num(o["available"]), str(len(o["holders"])),
             str(len(o["waiters"])), num(o["dead_holders"]), duration(o["longest_wait"])]
            for o in objs if o["error"] is None]
    widths = [max([len(heads[i])] + [len(r[i]) for r in rows]) for i in range(1, len(heads))]
    room = width - sum(w + 2 for w in widths) - 4   # what NAME may use; 4 for " * D"
    name_w = max(4, min(max(len(o["name"]) for o in objs), room))
    widths = [name_w, *widths]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(heads, widths, strict=True))).rstrip()]
    it = iter(rows)
    wedged = deadlocked = False
    for o in objs:
        name = o["name"]
        if o["error"] is not None:
            msg = short_error(o)
            if len(name) > name_w:
                out.append(name)
                out.append(clip(f"{'':{name_w}}  ! {msg}", width))
            else:
                out.append(clip(f"{name:{name_w}}  ! {msg}", width))
            continue
        r = next(it)
        cells = "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))
        if len(name) > name_w:   # long names get a line of their own
            out.append(name)
            name = ""
        flag = ""
        if o["wedged"]:
            flag += " *"
            wedged = True
        if o["deadlocked"]:
            flag += " D"
            deadlocked = True
        out.append(f"{name:{name_w}}  {cells}{flag}".rstrip())
    if wedged:
        out.append(clip("* wedged: its lock is held by a stopped process, or an update is "
                        "in flight", width))
    if deadlocked:
        out.append(clip("D deadlocked: `ipcsem-status --deadlocks` shows who waits for whom",
                        width))
    return out


# ------------------------------------------------------ the detail view
_HOST = os.uname().nodename


def pid_text(proc: dict[str, Any]) -> str:
    """A holder's or waiter's pid, with its host when that is another
    machine (zookeeper://: a pid means nothing without its host)."""
    host = proc.get("host")
    return str(proc["pid"]) if not host or host == _HOST else f"{proc['pid']}@{host}"


def render_detail(o: Obj, width: int) -> list[str]:
    name = o["name"]
    if o["error"] is not None:
        return [f"{name}: cannot be read", *textwrap.wrap(
            o["error"], width - 2, initial_indent="  ", subsequent_indent="  ",
            break_on_hyphens=False)]
    waiting = len(o["waiters"])
    out = [clip(f"{name}: {o['available']} of {o['capacity']} available, {o['held']} held"
                + (f", {o['unowned']} unowned" if o["unowned"] else "")
                + f", {plural(waiting, 'waiter')}", width)]
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["created"]))
    # owner: None on a backend without file ownership (zookeeper://)
    owner = f"owner {o['owner']}, " if o["owner"] is not None else ""
    on = f" on {o['creator_host']}" if o.get("creator_host") else ""
    out.append(clip(f"  {owner}mode {o['mode']}, created {created} "
                    f"by pid {o['creator_pid']}{on}", width))
    out.append(clip(f"  {policy(o)}", width))
    inheritance = inheritance_text(o)
    if inheritance is not None:
        out += textwrap.wrap(inheritance, width - 2, initial_indent="  ",
                             subsequent_indent="    ", break_on_hyphens=False)
    out.append(clip(f"  {plural(o['acquisitions'], 'acquisition')}; "
                    f"{plural(o['recovered_units'], 'unit')} recovered from "
                    f"{plural(o['recoveries'], 'dead process', 'dead processes')}"
                    + (f"; {o['lock_repairs']} lock repairs" if o["lock_repairs"] else ""),
                    width))
    if o["unlinked"]:
        out.append("  UNLINKED: the name was removed; only processes that had it open see it")
    wedge = wedge_text(o)
    if wedge is not None:
        tail = ("figures may be mid-update" if not o["consistent"]
                else "its units cannot change until it continues")
        out.append(clip(f"  WEDGED: {wedge}; {tail}", width))
    if o["dead_holders"]:
        out.append(clip(f"  {plural(o['dead_holders'], 'dead holder')} awaiting recovery; "
                        f"`ipcsem recover {name}` does it now", width))
    if o["head_reason"] is not None:
        head = o["waiters"][0] if o["waiters"] and o["waiters"][0]["position"] == 1 else None
        who = f"pid {head['pid']}" if head else "the head of the queue"
        out.append(clip(f"  next in queue: {who}, waiting because: {o['head_reason']}", width))
    if o["deadlocked"]:
        out.append(clip("  DEADLOCKED: `ipcsem-status --deadlocks` shows who waits for whom",
                        width))
    out.append("")
    if o["holders"]:
        out.append("HOLDERS")
        slotted = bool(o["slots"])
        rows = []
        for h in o["holders"]:
            row = [pid_text(h), h["user"] or "-", str(h["units"]), duration(h["held_for"]),
                   h["state"]]
            if slotted:
                row.append(slot_list(h["slots"]))
            rows.append([*row, short_command(h["argv"])])
        heads = ["PID", "USER", "UNITS", "HELD FOR", "STATE", *(["SLOTS"] if slotted else [])]
        out += table(rows, [*heads, "COMMAND"], {0, 2, 3}, len(heads), width, "  ")
    else:
        out.append("HOLDERS: none")
    if o["waiters"]:
        out.append("WAITERS (in queue order)")
        rows = [[str(w["position"]), pid_text(w), w["user"] or "-", str(w["units"]),
                 str(w["priority"]), duration(w["waiting_for"]), short_command(w["argv"])]
                for w in o["waiters"]]
        out += table(rows, ["POS", "PID", "USER", "UNITS", "PRIO", "WAITING", "COMMAND"],
                     {0, 1, 3, 4, 5}, 6, width, "  ")
    else:
        out.append("WAITERS: none")
    return out


# ---------------------------------------------------------- one process
def render_pid(pid: int, objs: list[Obj], width: int) -> list[str]:
    start = _proc.start_of(pid)
    if start is None:
        head = f"pid {pid}: no such process (entries below, if any, are of a dead process)"
    else:
        user, argv = Procs().info(pid, start)
        head = f"pid {pid} ({user or '?'}): {short_command(argv)}"
    out = [clip(head, width)]
    holds = [(o, h) for o in objs for h in o["holders"]]
    waits = [(o, w) for o in objs for w in o["waiters"]]
    bad = [o["name"] for o in objs if o["error"] is not None]
    if holds:
        out.append("HOLDS")
        rows = [[str(h["units"]), f"{o['capacity']}", duration(h["held_for"]), h["state"],
                 slot_list(h["slots"]), o["name"]] for o, h in holds]
        out += table(rows, ["UNITS", "OF", "HELD FOR", "STATE", "SLOTS", "SEMAPHORE"],
                     {0, 1, 2}, 5, width, "  ")
    else:
        out.append("HOLDS: nothing")
    if waits:
        out.append("WAITS FOR")
        rows = [[str(w["units"]), str(w["priority"]), str(w["position"]),
                 duration(w["waiting_for"]), str(w["tid"]), o["name"]] for o, w in waits]
        out += table(rows, ["UNITS", "PRIO", "POS", "WAITING", "TID", "SEMAPHORE"],
                     {0, 1, 2, 3, 4}, 5, width, "  ")
        for o, w in waits:
            out.append(clip(f"  {o['name']}: {w['reason']}", width))
    else:
        out.append("WAITS FOR: nothing")
    if bad:
        out.append(clip(f"not readable, so not searched: {' '.join(bad)}", width))
    return out


# ------------------------------------------------------------- deadlocks
def render_deadlocks(found: list[Deadlock], width: int) -> list[str]:
    """Each deadlock: who holds what, who waits for what, and what they run."""
    if not found:
        return ["no deadlocks"]
    procs = Procs()
    out: list[str] = []
    for i, dl in enumerate(found, 1):
        if out:
            out.append("")
        sems = ", ".join(dl.semaphores)
        out.append(clip(f"deadlock {i}: {plural(len(dl.processes), 'process', 'processes')} "
                        f"({', '.join(map(str, dl.processes))}) on {sems}", width))
        for edge in dl.edges:
            out.append(clip(f"  {edge}", width))
        for pid in dl.processes:
            start = _proc.start_of(pid)
            argv = procs.info(pid, start)[1] if start is not None else None
            out.append(clip(f"  pid {pid} runs: {short_command(argv)}", width))
    out.append("")
    out.append(clip("to break one, end one of its processes: its units come back", width))
    return out
