"""What the tools know about a semaphore on a backend other than shm
(``--backend zookeeper://...``): the same ``--json`` objects as
``describe`` builds from a shm ledger, read through the backend seam
(``holders()``, ``waiters()``, ``stats()``), so ``status``, ``ls``, the
watch, ``-p`` and the Prometheus exposition render them unchanged.

Holders and waiters carry a ``host`` (added within --json version 1; None
on shm).  Processes of this machine are looked up as on shm (state, user,
command); those of other machines are ``unknown``: only their host can
watch them (``ipcsem supervise --backend URL`` there).
"""
from __future__ import annotations

import socket
import time
from typing import Any

from .. import _backend
from .._errors import IpcsemError, NotFound
from .describe import blank
from .procinfo import Procs

_HOST = socket.gethostname()[:255]


def names(url: str) -> list[str]:
    """Every semaphore name on the backend, sorted."""
    return sorted(_backend.resolve(url).names())


def unlink(url: str, name: str) -> None:
    """Remove ``name`` (queued waiters fail with Unlinked); NotFound if absent."""
    _backend.resolve(url).unlink(name)


def _local(host: str | None) -> bool:
    return host is None or host == _HOST


def _unreadable(name: str, e: BaseException) -> dict[str, Any]:
    obj = blank(name)
    obj.update(error=f"unreadable: {e}", error_kind="unreadable")
    return obj


def describe(url: str, name: str, procs: Procs, detail: bool = True,
             only_pid: int | None = None, now: float | None = None) -> dict[str, Any]:
    """The --json object of ``name`` on the backend at ``url``.  Raises
    NotFound if it does not exist; any other failure (the servers
    unreachable, a corrupt record) is put in ``error``."""
    try:
        handle = _backend.resolve(url).open(name, None)
    except NotFound:
        raise                   # (an IpcsemError too: the caller says "no such semaphore")
    except (IpcsemError, OSError, ValueError) as e:
        return _unreadable(name, e)
    params = handle.params
    # The ZooKeeper handle's creation record says which host created it.
    meta = getattr(handle, "meta", None)
    creator_host = getattr(meta, "creator_host", None)
    try:
        # One reading: the counters and the lists must agree (a grant
        # between two reads showed a holder next to "1 available").
        pic = handle.picture()
        st, holders, waiters = pic.stats, pic.holders, pic.waiters
    except NotFound:
        raise
    except (IpcsemError, OSError, ValueError) as e:
        return _unreadable(name, e)
    finally:
        handle.close()
    now = time.time() if now is None else now
    mutex = st.kind == "mutex"
    obj = blank(name)
    obj["mode"] = f"{params.mode:04o}"
    obj["creator_host"] = creator_host
    obj.update(capacity=st.capacity, available=st.available, unowned=st.unowned, held=st.held,
               recovered_units=st.recovered_units, recoveries=st.recoveries,
               acquisitions=st.acquisitions, lock_repairs=st.lock_repairs, created=st.created,
               creator_pid=st.creator_pid, unlinked=False, consistent=True, kind=st.kind,
               slots=st.slots, fair=st.fair, reentrant=st.reentrant if mutex else None,
               wedged=False, deadlocked=False)
    out_h: list[dict[str, Any]] = []
    dead = 0
    for h in holders:
        local = _local(h.host)
        state = procs.state(h.pid, h.start) if local else "unknown"
        if state in ("dead", "zombie"):
            dead += 1
        if mutex:
            obj["mutex_owner_pid"] = h.pid
            obj["mutex_owner_tid"] = h.owner_tid
        if only_pid is not None and (h.pid != only_pid or not local):
            continue
        user, argv = procs.info(h.pid, h.start) if detail and local else (None, None)
        out_h.append({
            "pid": h.pid, "start": h.start, "user": user,
            "command": None if argv is None else " ".join(argv), "argv": argv,
            "units": h.units, "since": h.since, "held_for": round(max(now - h.since, 0.0), 3),
            "state": state, "acquisitions": h.acquisitions, "slots": list(h.slots),
            "tid": h.owner_tid if mutex else None, "host": h.host,
        })
    out_h.sort(key=lambda d: d["since"])
    out_w: list[dict[str, Any]] = []
    longest = None
    for position, w in enumerate(waiters, 1):
        waited = round(max(now - w.since, 0.0), 3)
        longest = waited if longest is None else max(longest, waited)
        local = _local(w.host)
        reason = _why(position, w.units, st.available, obj)
        if position == 1:
            obj["head_reason"] = reason
        if only_pid is not None and (w.pid != only_pid or not local):
            continue
        user, argv = procs.info(w.pid, w.start) if detail and local else (None, None)
        out_w.append({
            "pid": w.pid, "start": w.start, "tid": w.tid, "user": user,
            "command": None if argv is None else " ".join(argv), "argv": argv,
            "units": w.units, "priority": w.priority, "since": w.since, "waiting_for": waited,
            "position": position, "state": procs.state(w.pid, w.start) if local else "unknown",
            "reason": reason, "host": w.host,
        })
    obj.update(holders=out_h, waiters=out_w, dead_holders=dead, longest_wait=longest)
    return obj


def _why(position: int, units: int, available: int, obj: dict[str, Any]) -> str:
    """Why this queued request is not granted yet, in a few words."""
    if position > 1:
        return f"behind {position - 1} earlier request{'s' if position > 2 else ''}"
    if obj["kind"] == "mutex" and obj["mutex_owner_pid"] is not None:
        return f"owned by pid {obj['mutex_owner_pid']}"
    if units > available:
        return f"wants {units}, {available} free"
    return "being granted (the units are free)"


def gather(url: str, wanted: list[str] | None, procs: Procs, detail: bool,
           only_pid: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Semaphore objects for NAMEs (every name when None), and the NAMEs not
    found (as ``describe.gather``)."""
    explicit = wanted is not None
    objs: list[dict[str, Any]] = []
    missing: list[str] = []
    now = time.time()
    for name in (wanted if wanted is not None else names(url)):
        try:
            objs.append(describe(url, name, procs, detail, only_pid, now))
        except NotFound:
            if explicit:
                missing.append(name)
    return objs, missing
