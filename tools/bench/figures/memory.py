"""Figure 5: shared memory per semaphore.

Measures the /dev/shm footprint of one semaphore while one process has it
open and holds a unit: the files carrying its name, st_size (apparent) and
st_blocks x 512 (allocated).

How: ipcsem (and slots=True, whose unit table grows with the capacity) at
each capacity in MEMORY_CAPS, posix_ipc at capacity 1; the others keep
their state elsewhere and get "n/a" with a note saying where
(MEMORY_NOTES).  "What it buys": the ledger's own size function
(_ledger.segment_size) taken apart -- the fixed part (header, undo log),
bytes per holder slot, per waiter entry, per slotted unit -- and the size
at a few table settings next to the defaults (max_holders = max_waiters =
1024: that many processes holding, that many acquires queued at once).

Target (issue #12): none; the README states the default's size and what
it buys.

Returns {"contenders": {key: {"rows": [{"capacity", "files", "st_size",
"allocated"}]} or {"status": "n/a", "note"}}, "geometry": {...}};
rendered by report._md_memory (no plot).
"""

from __future__ import annotations

from .common import file_sizes, guarded, log, semaphore

MEMORY_CAPS = [1, 64, 2000]
MEMORY_CONTENDERS = ("ipcsem", "ipcsem-slots", "posix")
TABLE_SETTINGS = [(16, 16), (64, 64), (1024, 1024), (4096, 4096)]
MEMORY_NOTES = {
    "sysv": "kernel memory (sem_array + per-process undo lists); nothing in /dev/shm",
    "mp": "POSIX semaphore unlinked right after creation; one mapped page per process",
    "flock": "0-byte lock file + kernel lock record",
    "portalocker": "N 0-byte lock files + kernel lock records",
    "filelock": "0-byte lock file + kernel lock record",
}


def geometry():
    """Bytes the ledger needs, taken apart with its own size function."""
    from ipcsem._shm import _ledger
    size = _ledger.segment_size
    base = size(1, 1, 1, 0)
    per_holder = size(1, 2, 1, 0) - base
    per_waiter = size(1, 1, 2, 0) - base
    slots = _ledger.P_SLOTS
    per_unit = (size(1001, 1, 1, slots) - size(1, 1, 1, slots)) / 1000
    return {"fixed": base - per_holder - per_waiter, "per_holder": per_holder,
            "per_waiter": per_waiter, "per_slotted_unit": per_unit,
            "defaults": size(1, 1024, 1024, 0),
            "tables": [{"max_holders": h, "max_waiters": w, "bytes": size(1, h, w, 0)}
                       for h, w in TABLE_SETTINGS],
            "slotted_4096": size(4096, 1024, 1024, slots)}


def fig_memory(cfg, cs):
    out = {"contenders": {}}
    try:
        out["geometry"] = geometry()
    except Exception as e:  # the library's private size function moved
        out["geometry"] = {"error": f"{type(e).__name__}: {e}"}
    for c in cs:
        if c.key in MEMORY_CONTENDERS:
            out["contenders"][c.key] = r = guarded(c, lambda c=c: run_memory(c))
            log(f"  fig5 {c.key:12s} {r.get('status')} {r.get('error', '')}")
        elif not c.pair_only and c.key not in ("ipcsem-unfair",):
            out["contenders"][c.key] = {"status": "n/a", "note": MEMORY_NOTES.get(c.key, "")}
    return out


def run_memory(c):
    rows = []
    for cap in (MEMORY_CAPS if c.key.startswith("ipcsem") else MEMORY_CAPS[:1]):
        with semaphore(c, cap) as spec:
            h = c.open(spec)  # one process opened and holding: the ledger is in use
            try:
                h.acquire()
                row = {"capacity": cap, **file_sizes(c.shm_files(spec) or [])}
                h.release()
            finally:
                h.close()
        rows.append(row)
    return {"rows": rows}
