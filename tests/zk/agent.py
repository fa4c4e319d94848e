"""A process the ZooKeeper tests drive: JSON commands on stdin, one JSON reply
per line on stdout.  It uses only the backend seam (ipcsem._backend), so
what it proves holds for the facade the lead builds on top.

    {"op": "open", "url": U, "name": N, "params": {"capacity": 2, ...} | null}
    {"op": "take" | "wait", "units": 1, "priority": 0, "timeout": 5}
        -> {"lease": id, "token": t, "slots": [...], "died": bool} | {"lease": null}
    {"op": "release", "lease": id, "units": 1}
    {"op": "valid", "lease": id}     -> {"valid": bool, "deadline_in": s}
    {"op": "guard", "lease": id}     -> starts a thread noting when valid turns False
    {"op": "guarded"}                -> {"invalid_at": epoch s | null, "lost": [reasons]}
    {"op": "flock", "path": P}       -> takes an exclusive flock (LOCK_NB) or fails
    {"op": "exit"}

Errors come back as {"error": "<ClassName>", "msg": "..."}.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import ipcsem._zk  # noqa: F401
from ipcsem._backend import resolve
from ipcsem._records import Params

leases: dict[int, object] = {}
lost: list[str] = []
invalid_at: list[float] = []
handle = None
flocks: list[int] = []


def on_lost(lease, reason: str) -> None:
    lost.append(reason)


def guard(lease) -> None:
    while lease.valid:
        time.sleep(0.005)
    invalid_at.append(time.time())


def lease_reply(lease):
    if lease is None:
        return {"lease": None}
    leases[id(lease)] = lease
    return {"lease": id(lease), "token": lease.token, "slots": list(lease.slots),
            "died": lease.previous_owner_died, "at": time.time()}


def run(cmd: dict):
    global handle
    op = cmd["op"]
    tid = threading.get_native_id()
    if op == "open":
        p = cmd.get("params")
        handle = resolve(cmd["url"]).open(cmd["name"], Params(**p) if p else None,
                                          on_lost=on_lost)
        return {"created": handle.created}
    if op in ("take", "wait"):
        args = (cmd.get("units", 1), cmd.get("priority", 0), cmd.get("owner", tid), tid)
        if op == "take":
            return lease_reply(handle.take(*args))
        t = cmd.get("timeout")
        return lease_reply(handle.wait(*args, None if t is None else time.monotonic() + t))
    if op == "release":
        lease = leases.get(cmd.get("lease"))
        handle.release(cmd.get("units", 1), cmd.get("owner", tid), lease)
        return {}
    if op == "valid":
        lease = leases[cmd["lease"]]
        d = lease.deadline
        return {"valid": lease.valid, "deadline_in": None if d is None else d - time.monotonic()}
    if op == "guard":
        threading.Thread(target=guard, args=(leases[cmd["lease"]],), daemon=True).start()
        return {}
    if op == "guarded":
        return {"invalid_at": invalid_at[0] if invalid_at else None, "lost": lost}
    if op == "flock":
        fd = os.open(cmd["path"], os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocks.append(fd)
        return {}
    if op == "unflock":
        for fd in flocks:
            os.close(fd)
        flocks.clear()
        return {}
    if op == "stats":
        s = handle.stats()
        return {"available": s.available, "held": s.held, "waiting": s.waiting}
    if op == "exit":
        sys.stdout.write(json.dumps({}) + "\n")
        sys.stdout.flush()
        os._exit(0)
    raise ValueError(f"unknown op {op}")


def main() -> None:
    sys.stdout.write(json.dumps({"ready": os.getpid()}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            reply = run(json.loads(line))
        except Exception as e:  # noqa: BLE001
            reply = {"error": type(e).__name__, "msg": str(e),
                     "tb": traceback.format_exc()[-1500:]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
