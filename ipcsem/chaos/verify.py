"""After the storm, every worker dead: the semaphore must be whole, and the
grant log must prove the tokens (and a mutex's owner-died flag) right.

:func:`verify` runs the end checks on the storm's own handle, plus one fresh
process (:func:`independent_acquire`, ``python -m ipcsem.chaos verify``) that
must take every unit at once; :func:`check_grants` reads the grant log
(:mod:`ipcsem.chaos.tokens`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .tokens import Grant, check_owner_died, check_tokens, read_log

if TYPE_CHECKING:
    from .._semaphore import Mutex, Semaphore


def verify(sem: Semaphore | Mutex, capacity: int, *, settle_timeout: float = 5.0,
           verify_timeout: float = 5.0, kind: str = "semaphore",
           should_stop: Callable[[], bool] = lambda: False, backend: str = "shm"
           ) -> tuple[int, str | None, dict[str, Any]]:
    """-> (lost_units, check_error, details).

    1. recover() until available == capacity (up to ``settle_timeout``);
    2. a fresh process must acquire all units at once within
       ``verify_timeout`` (proves no unit is lost without trusting
       ``available``); on a slotted semaphore its lease must name every unit
       number;
    3. no holders, no waiters, and sem.check() passes.

    ``backend``: the URL ``sem`` was opened on (the fresh process opens the
    name there).  On ZooKeeper, recover() returns this machine's dead
    processes' units at once and the server drops the rest when their
    sessions expire: ``settle_timeout`` should cover the session timeout.

    ``details["final_grant"]`` is the fresh process's grant (a tokens.Grant
    as a dict) when it got one.  ``should_stop()`` True (the storm was
    interrupted) cuts the waits short.
    """
    details: dict[str, Any] = {}
    problems: list[str] = []
    lost = _settle(sem, capacity, settle_timeout, should_stop, details, problems)
    ok, said, grant = independent_acquire(sem.name, capacity, verify_timeout, kind, should_stop,
                                          backend)
    details["independent_acquire"] = said
    if not ok:
        problems.append(f"a fresh process could not acquire all {capacity} units within "
                        f"{verify_timeout} s ({said})")
    elif grant is not None:
        if kind == "slots" and tuple(grant["slots"]) != tuple(range(capacity)):
            problems.append(f"a fresh process holding all {capacity} units was given slots "
                            f"{grant['slots']}")
        details["final_grant"] = grant
    _nothing_left(sem, problems)
    st = sem.stats()
    details.update(lock_repairs=st.lock_repairs, recovered_units=st.recovered_units,
                   recoveries=st.recoveries, acquisitions=st.acquisitions)
    return lost, ("; ".join(problems) or None), details


def _settle(sem: Semaphore | Mutex, capacity: int, settle_timeout: float,
            should_stop: Callable[[], bool], details: dict[str, Any], problems: list[str]) -> int:
    """recover() until every unit is back or time is up: the units lost."""
    t0 = time.monotonic()
    recovered = 0
    while True:
        recovered += sem.recover()
        if (sem.available == capacity or time.monotonic() - t0 >= settle_timeout
                or should_stop()):
            break
        time.sleep(0.02)
    available = sem.available
    details["final_recovered_units"] = recovered
    details["settle_seconds"] = round(time.monotonic() - t0, 4)
    if available != capacity:
        problems.append(f"available is {available} of {capacity} after {settle_timeout} s "
                        "of recovery")
    return capacity - available


def _nothing_left(sem: Semaphore | Mutex, problems: list[str]) -> None:
    """No holder, no waiter, and the ledger invariant holds."""
    from .._errors import IpcsemError

    holders, waiters = sem.holders(), sem.waiters()
    if holders:
        problems.append(f"holders left: {holders}")
    if waiters:
        problems.append(f"waiters left: {waiters}")
    try:
        sem.check()
    except IpcsemError as e:
        problems.append(f"check() failed: {e}")


def independent_acquire(name: str, capacity: int, timeout: float, kind: str,
                        should_stop: Callable[[], bool], backend: str = "shm"
                        ) -> tuple[bool, str, dict[str, Any] | None]:
    """Run :func:`verify_main` in a fresh interpreter: (ok, what it said,
    its grant as a dict (asked_ns, token, died, slots, pid) or None)."""
    from .. import _proc
    from .procs import child_preexec, stop_signals_blocked

    with open(os.devnull, "rb") as null, stop_signals_blocked():
        p = subprocess.Popen([sys.executable, "-m", "ipcsem.chaos", "verify", name,
                              str(capacity), str(timeout), kind, backend],
                             stdin=null, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_proc.package_env(), preexec_fn=child_preexec())
    end = time.monotonic() + timeout + 30
    try:
        while True:
            try:
                out, err = p.communicate(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if should_stop():
                    return False, "interrupted", None
                if time.monotonic() > end:
                    return False, "the independent acquire process hung", None
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    lines = out.decode(errors="replace").splitlines()
    said = lines[0] if lines else err.decode(errors="replace")[-300:]
    if p.returncode != 0 or not said.startswith("ok "):
        return False, said, None
    grant = _parse_grant(lines[1:])
    if grant is not None:
        grant["pid"] = p.pid
    return True, said, grant


def _parse_grant(lines: list[str]) -> dict[str, Any] | None:
    """``grant ASKED_NS TOKEN DIED SLOT,SLOT,...`` (our own child's output,
    still checked: a malformed line is no grant)."""
    try:
        word, asked, token, died, slots = lines[0].split()
        if word != "grant" or died not in ("0", "1"):
            return None
        return {"asked_ns": int(asked), "token": int(token), "died": died == "1",
                "slots": [int(s) for s in slots.split(",")] if slots != "-" else []}
    except (IndexError, ValueError):
        return None


def verify_main(name: str, capacity: int, timeout: float, kind: str,
                backend: str = "shm") -> int:
    """The independent check, in a fresh process: take every unit at once
    (of ``name`` on the ``backend`` URL).  Prints ``ok WAITED`` then ``grant
    ASKED_NS TOKEN DIED SLOTS``, or ``timeout WAITED``; exit 0 only when it
    got them."""
    import ipcsem

    sem = ipcsem.Mutex(name, create=False, backend=backend) if kind == "mutex" \
        else ipcsem.Semaphore(name, backend=backend)
    asked = time.monotonic_ns()
    t0 = time.monotonic()
    try:
        # (a Mutex exactly when kind == "mutex")
        with (sem.hold(timeout=timeout) if isinstance(sem, ipcsem.Mutex)
              else sem.hold(capacity, timeout=timeout)) as lease:
            waited = time.monotonic() - t0
            slots = ",".join(map(str, lease.slots)) or "-"
            print(f"ok {waited:.6f}\ngrant {asked} {lease.token} "
                  f"{int(lease.previous_owner_died)} {slots}", flush=True)
    except ipcsem.Timeout:
        print(f"timeout {time.monotonic() - t0:.6f}", flush=True)
        return 1
    finally:
        sem.close()
    return 0


def check_grants(path: str, kind: str, died_holding: set[int],
                 final: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The grant log's checks: (details, problems)."""
    log = read_log(path)
    grants = list(log.grants)
    last = None
    if final is not None and final.get("token"):
        last = Grant(final["asked_ns"], final["asked_ns"], final["token"], final["died"],
                     final["pid"])
        grants.append(last)
    problems: list[str] = []
    tokens = check_tokens(grants, serial=(kind == "mutex"))
    details = {"grants_logged": len(log.grants), "tokens_checked": tokens.checked,
               "token_failures": tokens.failures, "token_problems": tokens.problems}
    if tokens.failures:
        problems.append(f"tokens: {tokens.failures} out of order, first: {tokens.problems[0]}")
    if log.malformed:
        details["grant_log_malformed"] = log.malformed
        problems.append(f"grant log: malformed line {log.malformed[0]!r}")
    if kind == "mutex":
        od = check_owner_died(log, died_holding, last)
        details.update(owner_died_seen=od.seen, owner_died_checked=od.checked,
                       owner_died_failures=od.failures, owner_died_problems=od.problems)
        if od.failures:
            problems.append(f"owner died: {od.failures} wrong, first: {od.problems[0]}")
    return details, problems
