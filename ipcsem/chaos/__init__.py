"""The chaos storm: SIGKILL processes that use one semaphore, thousands of
times, and prove with an oracle that ipcsem never admits too many and never
loses a unit.

    from ipcsem.chaos import run_storm
    report = run_storm(capacity=3, workers=8, kills=2000)
    assert report.ok

``ipcsem chaos`` is its command line (``ipcsem/cli/chaos.py``).

Shape of a storm
----------------
* ``workers`` worker processes loop (``worker.py``): open the semaphore,
  acquire k units (1..min(2, capacity)) in every way the API allows, take the
  *oracle* (``oracle.py``), hold 0-2 ms, drop the oracle, release.  A share of
  them arm the ledger's crash hook, so they SIGKILL *themselves* at a random
  store inside a ledger transaction, holding the ledger lock.
* The storm (``storm.py``, class Storm) SIGKILLs a random worker every
  ``kill_every`` seconds (jittered) and starts a new one in its place; with
  ``supervisor=True`` it also runs ``ipcsem supervise NAME`` and SIGKILLs and
  restarts it now and then.  Every ``check_every`` it runs ``check()``.
* Afterwards every worker is SIGKILLed, the supervisor stopped, and the
  semaphore must come back whole (``verify.py``): ``available == capacity``
  after ``recover()``, a fresh process acquires all ``capacity`` units within
  5 s, no holders, no waiters, ``check()`` passes; nothing is left in
  /dev/shm.  The grant log must show fencing tokens strictly increasing in
  grant order across every kill (``tokens.py``).
* ``report.py`` says what happened (text or JSON).

Backends: ``backend=`` a URL (default ``$IPCSEM_BACKEND``, else shm).  On
``zookeeper://...`` the same workers and oracle run on this host against the
server's semaphore; the supervisor is ``ipcsem supervise --backend URL NAME``;
there are no self-killers (the crash hook is the shm ledger's) and no
/dev/shm check; the end check also waits out the dead sessions' expiry.  What
is proven does not change: it rests on the oracle and the grant log.

Kinds of semaphore: a plain counting semaphore (default); ``slots=True``, a
slotted one, where the oracle is per slot (a worker must get the lock files
of exactly the unit numbers its lease names); ``mutex=True``, an
``ipcsem.Mutex``, where the grant log also proves ``previous_owner_died``:
True for every next owner after an owner died holding it, until someone
releases it normally.

The oracle
----------
``capacity`` lock files in a private directory; holding k units means
holding k of them with ``flock(LOCK_NB)``.  Fewer free files than units is an
*over-admission*.  It owes nothing to ipcsem's bookkeeping, and has no false
positives: takers scan under a guard flock, and the kernel drops a dead
holder's flocks before anything can see it dead (``oracle.py`` says why).

Spawning workers
----------------
``spawn="exec"`` (default) starts every worker as an unrelated interpreter:
``python -m ipcsem.chaos worker ...``.  Each start costs about 0.1 CPU
second (interpreter + imports), so on a small machine the kill rate is
bounded by how fast workers can be restarted (about 7 kills/s on two busy
cores).  The killer keeps at least half the workers past start-up, so a kill
does not always land in a first acquire.  ``spawn="fork"`` forks workers from
the storm process instead (about 1 ms each); the child never touches the
parent's semaphore handle: it opens the name itself, has its own identity
(ipcsem refreshes it at fork) and its own oracle files, so to ipcsem it is
just another process.  Use it for dense storms in little time (the test
suite does).

Kills only target workers that got past interpreter start-up (they have
written a state into the shared counters, ``counters.py``), so every kill
lands in ipcsem code or between ipcsem calls, never in ``import``.  Most
workers are queued at any instant, so 30% of kills pick among current
holders.

This package's ``__init__`` stays light (names are imported on first use):
an exec'd worker imports it before ``worker.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Report

__all__ = ["Report", "Storm", "format_report", "run_storm"]


def run_storm(name: str | None = None, capacity: int | None = None, workers: int = 8,
              kill_every: float = 0.01, duration: float | None = None, kills: int | None = None,
              supervisor: bool = True, self_kill_fraction: float | None = None,
              seed: int | None = None, multi_unit: bool = True, **options: Any) -> Report:
    """Run one storm and return its Report.

    Stops after ``kills`` kills or ``duration`` seconds, whichever comes
    first (1000 kills if neither is given).  ``capacity``: 3 (a mutex: 1).
    Keyword options: ``spawn`` ("exec" or "fork"), ``slots`` (a slotted
    semaphore), ``mutex`` (an ipcsem.Mutex), ``oracle_slots`` (default:
    capacity; fewer files than units must be reported: the oracle's
    self-test), ``progress(line)`` (called every 5 s), ``stall_timeout``,
    ``settle_timeout``, ``verify_timeout``, ``check_every`` (seconds between
    mid-storm check() calls; a failure there fails the storm), ``backend``
    (a URL; default $IPCSEM_BACKEND, else shm).  ``self_kill_fraction``:
    0.2 on shm, 0 elsewhere (ValueError for more off shm).  The
    semaphore NAME must not exist yet; it is unlinked at the end.

    Raises ValueError for bad arguments or an existing NAME; when SIGINT,
    SIGTERM or SIGHUP arrives (in the main thread), KeyboardInterrupt after
    every worker was killed and NAME removed.
    """
    from .storm import Storm

    return Storm(name, capacity, workers, kill_every, duration, kills, supervisor,
                 self_kill_fraction, seed, multi_unit, **options).run()


def __getattr__(name: str) -> Any:
    if name == "Storm":
        from .storm import Storm

        return Storm
    if name in ("Report", "format_report"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
