"""Figure 5: shared memory per semaphore.

Measures the /dev/shm footprint of one semaphore while one process has it
open and holds a unit: the files carrying its name, st_size (apparent) and
st_blocks x 512 (allocated).

How: ipcsem at each capacity in MEMORY_CAPS, posix_ipc at capacity 1; the
others keep their state elsewhere and get "n/a" with a note saying where
(MEMORY_NOTES).

Target: none; reported in the README's table.

Returns {"contenders": {key: {"rows": [{"capacity", "files", "st_size",
"allocated"}]} or {"status": "n/a", "note"}}}; rendered by
report._md_memory (no plot).
"""

from __future__ import annotations

from .common import file_sizes, guarded, log, semaphore

MEMORY_CAPS = [1, 64, 2000]
MEMORY_NOTES = {
    "sysv": "kernel memory (sem_array + per-process undo lists); nothing in /dev/shm",
    "mp": "POSIX semaphore unlinked right after creation; one mapped page per process",
    "flock": "0-byte lock file + kernel lock record",
    "portalocker": "N 0-byte lock files + kernel lock records",
    "filelock": "0-byte lock file + kernel lock record",
}


def fig_memory(cfg, cs):
    out = {"contenders": {}}
    for c in cs:
        if c.key in ("ipcsem", "posix"):
            out["contenders"][c.key] = r = guarded(c, lambda c=c: run_memory(c))
            log(f"  fig5 {c.key:12s} {r.get('status')} {r.get('error', '')}")
        else:
            out["contenders"][c.key] = {"status": "n/a", "note": MEMORY_NOTES.get(c.key, "")}
    return out


def run_memory(c):
    rows = []
    for cap in (MEMORY_CAPS if c.key == "ipcsem" else MEMORY_CAPS[:1]):
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
