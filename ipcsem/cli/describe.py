"""What the tools know about a semaphore: the ``--json`` object (schema
version 1, docs/cli.md), built from a read-only view of its ledger.

Views come from ``read_view`` (pread copies: nothing is mapped or locked),
so looking never waits for a ledger lock, never repairs anything, works
with read permission only (a group member of a 0640 semaphore; root, for
anyone's, without mapping it) and costs a few microseconds per semaphore:
the list of 10,000 must take well under a second, so the per-semaphore
work here is kept to building one dict.
"""
from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from typing import Any

from .. import _identity, _names, _pi, _proc
from .._errors import Corrupt, IpcsemError, NotFound, PermissionDenied
from .._records import Deadlock
from .._shm import _ledger
from .._shm.segment import params_of, read_view
from .procinfo import Procs, stopped

JSON_VERSION = 1
Obj = dict[str, Any]     # one SEMAPHORE object of the --json schema (docs/cli.md)
WAITING = _ledger.WAITING
_DEADISH = (_identity.DEAD, _identity.ZOMBIE)

_users: dict[int, str] = {}


def user_name(uid: int) -> str:
    name = _users.get(uid)
    if name is None:
        name = _users[uid] = _proc.user_name(uid)
    return name


_policies: dict[tuple[int, int], tuple[str, bool, bool, bool, bool]] = {}


def _policy(header: _ledger.Header, mode: int) -> tuple[str, bool, bool, bool, bool]:
    """(kind, slots, fair, reentrant, priority_inheritance) of a ledger
    header: ``params_of``, asked once per distinct policy word (there are a
    handful)."""
    key = (header.policy, mode)
    got = _policies.get(key)
    if got is None:
        p = params_of(header, mode)
        got = _policies[key] = (p.kind, p.slots, p.fair, p.reentrant, p.priority_inheritance)
    return got


_PI_STATES = {_pi.PI_NONE: None, _pi.PI_BOOSTED: "boosted", _pi.PI_UNAVAILABLE: "unavailable"}


def _inheritance(h: _ledger.Header, waiters: Sequence[_ledger.WaiterRow]) -> Obj:
    """The ``priority_inheritance`` object of a PI mutex, from its ledger
    header's record (written by other processes: every value is checked
    before it is described)."""
    state = h.pi_state
    out: Obj = {"state": _PI_STATES.get(state), "owner_tid": None, "from": None, "to": None,
           "because_of": None, "because_of_tid": None, "reason": None}
    if state == _pi.PI_NONE:
        return out
    if state not in _PI_STATES:
        out["reason"] = f"unrecognised state {state} in the ledger"
        return out
    own = _pi.decode(h.pi_base_policy, h.pi_base_rtprio, h.pi_base_nice)
    given = _pi.decode(h.pi_boost_policy, h.pi_boost_rtprio, h.pi_boost_nice)
    out["owner_tid"] = h.pi_tid if h.pi_tid > 0 else None
    out["from"] = own.describe()
    # unavailable: the boost fields hold what the owner kept, unless they differ
    if state == _pi.PI_BOOSTED or given != own:
        out["to"] = given.describe()
    if h.pi_booster > 0:
        out["because_of"] = h.pi_booster
        out["because_of_tid"] = next((w.tid for w in waiters if w.pid == h.pi_booster
                                      and w.state == WAITING and w.tid > 0), None)
    if state == _pi.PI_UNAVAILABLE:
        out["reason"] = _pi.REASONS.get(h.pi_reason, f"unknown reason (code {h.pi_reason})")
    return out


def blank(name: str) -> Obj:
    """A SEMAPHORE object of the --json schema with nothing known yet."""
    return {
        # version 1 as first published
        "name": name, "capacity": None, "available": None, "unowned": None, "held": None,
        "holders": [], "waiters": [], "dead_holders": None, "longest_wait": None,
        "recovered_units": None, "recoveries": None, "acquisitions": None,
        "lock_repairs": None, "created": None, "creator_pid": None, "owner": None,
        "mode": None, "unlinked": None, "consistent": None, "lock_owner": None,
        "error": None,
        # added within version 1
        "kind": None, "slots": None, "fair": None, "reentrant": None,
        "mutex_owner_pid": None, "mutex_owner_tid": None, "previous_owner_died": None,
        "lock_owner_state": None, "wedged": None, "head_reason": None, "deadlocked": None,
        "error_kind": None, "priority_inheritance": None,
    }


def describe(name: str, procs: Procs, detail: bool = True, only_pid: int | None = None,
             now: float | None = None) -> Obj:
    """Everything status shows about one semaphore, as a --json object.
    Raises NotFound if the name is gone; every other failure is put in
    ``error`` (a status tool shows a semaphore it cannot read, never crashes
    on it)."""
    try:
        view = read_view(name)
    except NotFound:
        raise
    except PermissionDenied as e:
        obj = blank(name)
        obj.update(owner=e.owner, mode=None if e.mode is None else f"{e.mode:04o}",
                   error_kind="permission_denied",
                   error=f"permission denied (owner {e.owner or '?'}, mode "
                         f"{'?' if e.mode is None else format(e.mode, '04o')}): {e.reason}")
        return obj
    except Corrupt as e:
        obj = blank(name)
        _file_facts(obj)
        obj.update(error=str(e), error_kind="corrupt")
        return obj
    except (IpcsemError, OSError, ValueError) as e:
        obj = blank(name)
        _file_facts(obj)
        obj.update(error=f"unreadable: {e}", error_kind="unreadable")
        return obj
    snap = view.snapshot
    h = snap.header
    kind, slots, fair, reentrant, inherits = _policy(h, view.mode)
    now = time.time() if now is None else now
    mutex = kind == "mutex"
    lock_owner = h.lock_owner if h.lock_owner > 0 else None
    lock_state = None
    if lock_owner is not None:
        s = stopped(lock_owner)
        lock_state = "dead" if s is None else ("stopped" if s else "alive")
    consistent = snap.consistent
    # One dict literal, keys in the order of blank(): this runs once per
    # semaphore of the list, 10,000 times for 10,000 semaphores.
    obj = {
        "name": name, "capacity": h.capacity, "available": h.available, "unowned": h.unowned,
        "held": None, "holders": None, "waiters": None, "dead_holders": None,
        "longest_wait": None, "recovered_units": h.recovered_units,
        "recoveries": h.recoveries, "acquisitions": h.acquisitions,
        "lock_repairs": h.lock_repairs, "created": h.created_ns / 1e9,
        "creator_pid": h.creator_pid, "owner": user_name(view.uid),
        "mode": f"{view.mode:04o}", "unlinked": bool(h.flags & 1), "consistent": consistent,
        "lock_owner": lock_owner, "error": None,
        "kind": kind, "slots": slots, "fair": fair, "reentrant": reentrant if mutex else None,
        "mutex_owner_pid": None, "mutex_owner_tid": None, "previous_owner_died": None,
        "lock_owner_state": lock_state, "wedged": lock_state == "stopped" or not consistent,
        "head_reason": None, "deadlocked": False, "error_kind": None,
        "priority_inheritance": None,
    }
    if mutex:
        obj["previous_owner_died"] = bool(h.mx_owner_died)
        if inherits:
            obj["priority_inheritance"] = _inheritance(h, snap.waiters)
    held = dead = dead_units = 0
    out_h: list[Obj] = []
    for x in snap.holders:
        units = x.units
        if units <= 0:
            continue
        held += units
        state = procs.state(x.pid, x.start)
        if state in _DEADISH:
            dead += 1
            dead_units += units
        if mutex:
            obj["mutex_owner_pid"] = x.pid
            obj["mutex_owner_tid"] = h.mx_owner_tid or None
        if only_pid is not None and x.pid != only_pid:
            continue
        user, argv = procs.info(x.pid, x.start) if detail else (None, None)
        since = x.since_ns / 1e9
        out_h.append({
            "pid": x.pid, "start": x.start, "user": user,
            "command": None if argv is None else " ".join(argv), "argv": argv, "units": units,
            "since": since, "held_for": round(max(now - since, 0.0), 3), "state": state,
            "acquisitions": x.acquisitions,
            "slots": list(x.slots), "tid": (h.mx_owner_tid or None) if mutex else None,
        })
    out_h.sort(key=lambda d: d["since"])
    out_w: list[Obj] = []
    longest: float | None = None
    head_reason: str | None = None
    best_ahead: tuple[int, int] | None = None     # (priority, pid) of the best entry ahead
    available = h.available
    for w in snap.waiters:
        if w.state != WAITING:
            continue          # granted, not yet settled by its waiter: a holder by now
        since = w.since_ns / 1e9
        waited = round(max(now - since, 0.0), 3)
        longest = waited if longest is None else max(longest, waited)
        reason = _why(w, best_ahead, available, dead_units, obj, lock_owner, lock_state)
        if w.position == 1:
            head_reason = reason
        if best_ahead is None or w.priority > best_ahead[0]:
            best_ahead = (w.priority, w.pid)
        if only_pid is not None and w.pid != only_pid:
            continue
        user, argv = procs.info(w.pid, w.start) if detail else (None, None)
        out_w.append({
            "pid": w.pid, "start": w.start, "tid": w.tid, "user": user,
            "command": None if argv is None else " ".join(argv), "argv": argv,
            "units": w.units, "priority": w.priority, "since": since, "waiting_for": waited,
            "position": w.position, "state": procs.state(w.pid, w.start), "reason": reason,
        })
    obj.update(held=held, holders=out_h, waiters=out_w, dead_holders=dead,
               longest_wait=longest, head_reason=head_reason)
    return obj


def _why(w: _ledger.WaiterRow, best_ahead: tuple[int, int] | None, available: int,
         dead_units: int, obj: Obj, lock_owner: int | None, lock_state: str | None) -> str:
    """Why this queued request is not granted yet, in a few words."""
    if lock_state == "stopped":
        return f"lock held by stopped pid {lock_owner}"
    if best_ahead is not None:
        prio, pid = best_ahead
        if prio > w.priority:
            return f"behind a higher priority (pid {pid}, priority {prio})"
        return f"behind {w.position - 1} earlier request{'s' if w.position > 2 else ''} (FIFO)"
    if obj["kind"] == "mutex" and obj["mutex_owner_pid"] is not None:
        return f"owned by pid {obj['mutex_owner_pid']}" + (
            f" (thread {obj['mutex_owner_tid']})" if obj["mutex_owner_tid"] else "")
    if w.units > available:
        why = f"wants {w.units}, {available} free"
        if dead_units:
            why += f" ({dead_units} more held by dead holders, being recovered)"
        return why
    return "being granted (the units are free)"


def _file_facts(obj: Obj) -> None:
    """Owner and mode of the object under the name, for an unreadable one."""
    try:
        st = os.lstat(_names.shm_path(obj["name"]))
    except OSError:
        return
    obj["owner"] = user_name(st.st_uid)
    obj["mode"] = f"{stat.S_IMODE(st.st_mode):04o}"


def gather(names: list[str] | None, procs: Procs, detail: bool,
           only_pid: int | None = None) -> tuple[list[Obj], list[str]]:
    """Semaphore objects for NAMEs (every name when None), and the NAMEs not
    found.  A name that vanishes while listing them all was removed: it is
    simply not there any more."""
    explicit = names is not None
    objs: list[Obj] = []
    missing: list[str] = []
    now = time.time()
    for name in (names if names is not None else _names.names()):
        try:
            objs.append(describe(name, procs, detail, only_pid, now))
        except NotFound:
            if explicit:
                missing.append(name)
    return objs, missing


def mark_deadlocks(objs: list[Obj]) -> list[Deadlock]:
    """Set ``deadlocked`` on the objects of semaphores in a deadlock; the
    deadlocks (``ipcsem.Deadlock``).  Only looked for when some request
    waits (no waiter, no deadlock): the common list stays one read per
    semaphore."""
    if not any(o["longest_wait"] is not None for o in objs):
        return []
    from .. import find_deadlocks

    found = find_deadlocks()
    involved = {n for dl in found for n in dl.semaphores}
    for o in objs:
        if o["error"] is None:
            o["deadlocked"] = o["name"] in involved
    return found
