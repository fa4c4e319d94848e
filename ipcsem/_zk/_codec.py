"""What ipcsem writes into ZooKeeper, and the checks on everything it reads back.

Anything read from ZooKeeper is untrusted input: another program, an older
ipcsem or a typo in ``zkCli`` may have written it.  Every name and every
payload is parsed here with bounded sizes, types and ranges before it counts
units, indexes slots or bounds a loop; what does not parse is ``Corrupt``.

Layout under the chroot (default ``/ipcsem``)::

    names/<name>        persistent; JSON params + "gen": the generation id
    gens/<gen>/gate     persistent; JSON counters; its *version* orders grants
    gens/<gen>/q/       ephemeral children: requests r_... and holds h_...
    sessions/<sid>      ephemeral; the heartbeat writes to it

A child's NAME carries everything admission needs, so one children listing
decides it (no per-node reads on the hot path)::

    r_<prio>_<units>_<mkey>_<pid>_<start>_<zk sequence>
    h_<units>_<slots>_<mkey>_<pid>_<start>_<id>

``mkey`` is this machine's key (16 hex digits of a hash of the boot id and
the pid namespace), so a local watcher can tell a node of a process it can
see from one of a process on another host with the same hostname or in
another container.  ``slots`` is ``-`` or dot-separated unit numbers.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .._errors import Corrupt
from .._records import KINDS, Params

FORMAT = 1
MAX_CAPACITY = 1_000_000
MAX_SLOTTED_CAPACITY = 4096     # slots travel in node names: keep them short
MAX_PRIORITY = 2**31 - 1
MAX_DATA = 4096                 # bytes of JSON in one node we read
MAX_CHILDREN = 100_000          # a listing longer than this is not ours
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@+=-]{0,199}")

_REQ_RE = re.compile(
    r"r_(-?\d{1,10})_(\d{1,7})_([0-9a-f]{16})_(\d{1,10})_(\d{1,20})_(-?\d{10})")
_HELD_RE = re.compile(
    r"h_(\d{1,7})_(-|\d{1,4}(?:\.\d{1,4}){0,4095})_([0-9a-f]{16})_(\d{1,10})_(\d{1,20})_"
    r"([0-9a-z]{1,24})")


def check_name(name: str) -> str:
    """The semaphore name, if ZooKeeper-safe: 1-200 characters of
    ``A-Za-z0-9._@+=-``, not starting with '.' or '-'.  ValueError otherwise."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValueError(f"invalid ipcsem name for ZooKeeper {name!r}: use 1-200 characters "
                         "of A-Za-z0-9._@+=- not starting with '.' or '-'")
    return name


@dataclass(frozen=True)
class ReqNode:
    """A queued request (a child r_...)."""

    name: str
    priority: int
    units: int
    mkey: str
    pid: int
    start: int
    seq: int       # ZooKeeper's signed 32-bit sequence, as written


@dataclass(frozen=True)
class HeldNode:
    """A grant (a child h_...)."""

    name: str
    units: int
    slots: tuple[int, ...]
    mkey: str
    pid: int
    start: int
    ident: str


def request_prefix(priority: int, units: int, mkey: str, pid: int, start: int) -> str:
    return f"r_{priority}_{units}_{mkey}_{pid}_{start}_"


def held_name(units: int, slots: tuple[int, ...], mkey: str, pid: int, start: int,
              ident: str) -> str:
    s = ".".join(map(str, slots)) if slots else "-"
    return f"h_{units}_{s}_{mkey}_{pid}_{start}_{ident}"


def parse_children(names: list[str], capacity: int, where: str
                   ) -> tuple[list[ReqNode], list[HeldNode]]:
    """Requests and holds of one listing; Corrupt on anything else."""
    if len(names) > MAX_CHILDREN:
        raise Corrupt(f"{len(names)} children, more than any ipcsem queue holds", path=where)
    reqs: list[ReqNode] = []
    held: list[HeldNode] = []
    for n in names:
        if n.startswith("r_"):
            m = _REQ_RE.fullmatch(n)
            if m is None:
                raise Corrupt(f"unreadable request node {n!r}", path=where)
            prio, units = int(m[1]), int(m[2])
            if not (-MAX_PRIORITY - 1 <= prio <= MAX_PRIORITY) or not 1 <= units <= capacity:
                raise Corrupt(f"request node {n!r} out of range (capacity {capacity})", path=where)
            reqs.append(ReqNode(n, prio, units, m[3], int(m[4]), int(m[5]), int(m[6])))
        elif n.startswith("h_"):
            m = _HELD_RE.fullmatch(n)
            if m is None:
                raise Corrupt(f"unreadable hold node {n!r}", path=where)
            units = int(m[1])
            slots = () if m[2] == "-" else tuple(int(x) for x in m[2].split("."))
            if not 1 <= units <= capacity:
                raise Corrupt(f"hold node {n!r} out of range (capacity {capacity})", path=where)
            if slots and (len(slots) != units or len(set(slots)) != units
                          or not all(0 <= s < capacity for s in slots)):
                raise Corrupt(f"hold node {n!r} has bad slots", path=where)
            held.append(HeldNode(n, units, slots, m[3], int(m[4]), int(m[5]), m[6]))
        else:
            raise Corrupt(f"foreign node {n[:80]!r} in the queue", path=where)
    return reqs, held


def serial_key(seq: int, ref: int) -> int:
    """Order ZooKeeper sequence numbers across their signed 32-bit wrap
    (RFC 1982 serial arithmetic around ``ref``, any live node's number):
    a parent's counter counts every child create *and* delete, so a busy
    semaphore passes 2**31 in days; live nodes are never that far apart."""
    return (seq - ref + 2**31) % 2**32


# ------------------------------------------------------------------ JSON
def _load(data: bytes | None, where: str) -> dict[str, Any]:
    if data is None or len(data) > MAX_DATA:
        raise Corrupt("missing or oversized node data", path=where)
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Corrupt("node data is not JSON", path=where) from None
    if not isinstance(obj, dict):
        raise Corrupt("node data is not a JSON object", path=where)
    return obj


def _int(obj: dict[str, Any], key: str, low: int, high: int, where: str) -> int:
    v = obj.get(key)
    if v.__class__ is not int or not low <= v <= high:
        raise Corrupt(f"field {key!r} missing or out of range {low}..{high}", path=where)
    return v


def _bool(obj: dict[str, Any], key: str, where: str) -> bool:
    v = obj.get(key, False)
    if v.__class__ is not bool:
        raise Corrupt(f"field {key!r} is not a boolean", path=where)
    return v


def _str(obj: dict[str, Any], key: str, limit: int, where: str,
         optional: bool = False) -> str | None:
    v = obj.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise Corrupt(f"field {key!r} is not a string of at most {limit} characters", path=where)
    return v


def _num(obj: dict[str, Any], key: str, where: str) -> float:
    v = obj.get(key, 0.0)
    if v.__class__ not in (int, float) or not 0 <= v < 1e11:
        raise Corrupt(f"field {key!r} is not a time", path=where)
    return float(v)


def dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Meta:
    """names/<name>: the creation-time params and where the state lives."""

    params: Params
    gen: str
    created: float
    creator_pid: int
    creator_host: str


def encode_meta(params: Params, gen: str, created: float, pid: int, host: str) -> bytes:
    return dump({"format": FORMAT, "gen": gen, "capacity": params.capacity,
                 "initial": params.initial, "kind": params.kind, "slots": params.slots,
                 "fair": params.fair, "reentrant": params.reentrant,
                 "priority_inheritance": params.priority_inheritance, "mode": params.mode,
                 "max_holders": params.max_holders, "max_waiters": params.max_waiters,
                 "created": created, "creator_pid": pid, "creator_host": host[:255]})


def decode_meta(data: bytes | None, where: str) -> Meta:
    obj = _load(data, where)
    if obj.get("format") != FORMAT:
        raise Corrupt(f"not an ipcsem semaphore of format {FORMAT} "
                      f"(format {obj.get('format')!r})", path=where)
    gen = _str(obj, "gen", 32, where)
    assert gen is not None
    if re.fullmatch(r"[0-9a-f]{32}", gen) is None:
        raise Corrupt("bad generation id", path=where)
    capacity = _int(obj, "capacity", 1, MAX_CAPACITY, where)
    kind = _str(obj, "kind", 16, where)
    if kind not in KINDS:
        raise Corrupt(f"unknown kind {kind!r}", path=where)
    slots = _bool(obj, "slots", where)
    if slots and capacity > MAX_SLOTTED_CAPACITY:
        raise Corrupt("slotted capacity out of range", path=where)
    params = Params(
        capacity=capacity,
        initial=_int(obj, "initial", 0, capacity, where),
        kind=kind, slots=slots,
        fair=_bool(obj, "fair", where),
        reentrant=_bool(obj, "reentrant", where),
        priority_inheritance=_bool(obj, "priority_inheritance", where),
        mode=_int(obj, "mode", 0, 0o777, where),
        max_holders=_int(obj, "max_holders", 1, MAX_CHILDREN, where),
        max_waiters=_int(obj, "max_waiters", 1, MAX_CHILDREN, where),
    )
    return Meta(params, gen, _num(obj, "created", where),
                _int(obj, "creator_pid", 0, 2**31, where),
                _str(obj, "creator_host", 255, where) or "")


@dataclass(frozen=True)
class Gate:
    """gens/<gen>/gate: counters changed only by conditional writes."""

    unowned: int = 0          # units out without an owner
    grants: int = 0
    recovered_units: int = 0
    recoveries: int = 0
    dirty: bool = False       # mutex: the last owner died holding it, not repaired since
    held_by: str | None = None  # mutex: the hold node of the current owner


def encode_gate(g: Gate) -> bytes:
    return dump({"unowned": g.unowned, "grants": g.grants, "recovered_units": g.recovered_units,
                 "recoveries": g.recoveries, "dirty": g.dirty, "held_by": g.held_by})


def decode_gate(data: bytes | None, capacity: int, where: str) -> Gate:
    obj = _load(data, where)
    big = 2**62
    return Gate(
        unowned=_int(obj, "unowned", 0, capacity, where),
        grants=_int(obj, "grants", 0, big, where),
        recovered_units=_int(obj, "recovered_units", 0, big, where),
        recoveries=_int(obj, "recoveries", 0, big, where),
        dirty=_bool(obj, "dirty", where),
        held_by=_str(obj, "held_by", 200, where, optional=True),
    )


@dataclass(frozen=True)
class Who:
    """The data of a request or hold node: who asked, for tools."""

    host: str
    mkey: str
    pid: int
    start: int
    tid: int
    owner: int
    since: float


def encode_who(w: Who) -> bytes:
    return dump({"host": w.host[:255], "mkey": w.mkey, "pid": w.pid, "start": w.start,
                 "tid": w.tid, "owner": w.owner, "since": w.since})


def decode_who(data: bytes | None, where: str) -> Who:
    obj = _load(data, where)
    mkey = _str(obj, "mkey", 16, where) or ""
    return Who(
        host=_str(obj, "host", 255, where) or "",
        mkey=mkey,
        pid=_int(obj, "pid", 0, 2**31, where),
        start=_int(obj, "start", 0, 2**64, where),
        tid=_int(obj, "tid", 0, 2**63, where),
        owner=_int(obj, "owner", -(2**63), 2**63, where),
        since=_num(obj, "since", where),
    )
