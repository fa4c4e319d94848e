"""One storm worker: loop acquire -> oracle -> hold -> release until killed.

Started by the storm either as an unrelated interpreter (``python -m
ipcsem.chaos worker KEY=VALUE ...``, :func:`main`) or forked from the storm
process (:func:`run_forked`); either way it opens the semaphore by name
itself, on the backend URL it is given (``backend=``, never inherited from
the environment), so to ipcsem it is just another process.

Every way the API grants units is used, with 1 or 2 units and sometimes a
priority: ``try_acquire``, ``with sem.hold(k, timeout=...) as lease``, ``with
sem as lease``, ``acquire(k, timeout=...)``, threading's ``acquire(True, t)``
and a blocking ``acquire(k)``; on a mutex ``with m as lease``,
``m.hold(timeout=...)`` (0: a try), ``m.acquire(False)``, ``m.acquire(True,
t)`` and ``m.acquire()``.  (``deadlock="raise"`` is not used: one semaphore
cannot deadlock, and its probe would read every ledger on the machine each
slice.)  A share of the workers arm the ledger's crash hook, so they SIGKILL
*themselves* at a random store inside a later ledger transaction, holding the
ledger lock.

The worker's row in the shared counters says what it is doing (the storm
reads it to pick and classify kills) and, while it holds, which grant.  It
writes its first state only after every import, so that kills, which only
pick workers past STARTING, never land in ``import``.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import ipcsem

from .. import _proc
from .._errors import Timeout
from .._identity import ME
from .counters import (
    ACQUIRING,
    CLOSING,
    HOLDING,
    IDLE,
    OPENING,
    RELEASING,
    W_ARMED,
    W_BUSY,
    W_CYCLES,
    W_PID,
    W_STATE,
    W_TIMEOUTS,
    W_TOKEN,
    W_VIOLATIONS,
    Counters,
)
from .oracle import Oracle, proc_state

KINDS = ("semaphore", "slots", "mutex")

# A self-killing worker's countdown, in ledger crash points.  An undo-logged
# store has 3, a commit 1, an unlock 1: a take is ~20 points, a release ~8.
CRASH_POINTS = 60


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, passed as KEY=VALUE arguments."""

    name: str
    index: int
    capacity: int
    kind: str            # "semaphore", "slots" (a slotted semaphore) or "mutex"
    oracle: str          # the oracle's directory
    files: int           # oracle files (capacity, unless the oracle is being tested)
    counters: str
    violations: str
    grants: str          # the grant log (tokens.py)
    self_kill: int       # 1: arm the crash hook
    seed: int
    multi_unit: int      # 1: acquire 1 or 2 units
    parent: int          # the storm's pid: die with it
    backend: str         # the backend URL ("shm", "zookeeper://...")

    def argv(self) -> list[str]:
        return [f"{k}={v}" for k, v in asdict(self).items()]

    @classmethod
    def from_argv(cls, args: list[str]) -> WorkerConfig:
        """ValueError for a missing, unknown or malformed KEY=VALUE."""
        given = dict(a.split("=", 1) for a in args if "=" in a)
        if len(given) != len(args):
            raise ValueError("worker arguments are KEY=VALUE")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in given:
                raise ValueError(f"worker argument {f.name}= is missing")
            raw = given.pop(f.name)
            kw[f.name] = int(raw) if f.type in ("int", int) else raw
        if given:
            raise ValueError(f"unknown worker argument {sorted(given)[0]}=")
        if kw["kind"] not in KINDS:
            raise ValueError(f"worker kind must be one of {KINDS}")
        return cls(**kw)


# ------------------------------------------------------------ entry points
def main(cfg: WorkerConfig) -> None:
    """An exec'd worker's life: loop until killed (never returns normally)."""
    die_with_parent(cfg.parent)
    Worker(cfg).loop()


def run_forked(cfg: WorkerConfig, err_path: str) -> None:
    """In a child of fork(): become a plain worker process; never return.

    The storm forks with SIGINT/SIGTERM/SIGHUP blocked, so none of them can
    reach the storm's handler in this child before it is reset here."""
    from .procs import default_stop_signals

    code = 70
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        default_stop_signals()
        # Inherit no open file: above all no open file description that may
        # carry somebody's flock (an exec'd worker gets close_fds too), and
        # not the storm's stdout/stderr, which a caller may be reading to EOF.
        os.closerange(3, 1 << 20)
        null = os.open(os.devnull, os.O_RDWR)
        err = os.open(err_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        os.close(null)
        os.close(err)
        main(cfg)
        code = 0
    except BaseException:  # noqa: BLE001 - a forked child reaches os._exit whatever it raised
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - nor may reporting it keep the child alive
            pass
    finally:
        os._exit(code)


def die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the storm process dies (no orphans looping)."""
    _proc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(3)


# ------------------------------------------------------------------ worker
class Worker:
    """The loop, with the worker's row of the counters, its oracle and its
    random choices."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.counters = Counters(cfg.counters)
        self.row = cfg.index
        self.oracle = Oracle(cfg.oracle, cfg.files, cfg.violations, f"worker {cfg.index}",
                             grants=cfg.grants, capacity=cfg.capacity)
        self.max_k = min(2, cfg.capacity) if cfg.multi_unit and cfg.kind != "mutex" else 1
        # A self-killer arms the crash hook before one of its first cycles;
        # the countdown then fires somewhere inside a later ledger transaction.
        self.arm_at = self.rng.randrange(0, 4) if cfg.self_kill else -1
        self.sem: ipcsem.Semaphore | ipcsem.Mutex | None = None
        self.cycles = 0
        self.counters.set(self.row, W_PID, os.getpid())

    def state(self, s: int) -> None:
        self.counters.set(self.row, W_STATE, s)

    def count(self, word: int) -> None:
        self.counters.add(self.row, word)

    def loop(self) -> None:
        while True:
            if self.sem is None or self.rng.random() < 0.03:
                self.reopen()
            if self.cycles == self.arm_at:
                self.arm()
            self.cycles += 1
            self.state(ACQUIRING)
            if self.cfg.kind == "mutex":
                self.mutex_cycle()
            else:
                self.semaphore_cycle()
            self.state(IDLE)

    @property
    def opened(self) -> ipcsem.Semaphore | ipcsem.Mutex:
        assert self.sem is not None      # loop() opens it before the first cycle
        return self.sem

    def reopen(self) -> None:
        if self.sem is not None:
            self.state(CLOSING)
            self.sem.close()          # unregisters: a transaction too
        self.state(OPENING)
        self.sem = ipcsem.Mutex(self.cfg.name, create=False, backend=self.cfg.backend) \
            if self.cfg.kind == "mutex" else ipcsem.Semaphore(self.cfg.name,
                                                              backend=self.cfg.backend)
        if os.getppid() != self.cfg.parent:
            os._exit(3)

    def arm(self) -> None:
        # (only on shm: Options refuses self-killers on any other backend)
        from .._shm import _ledger  # SEAM REQUEST: the crash hook, public in ipcsem._shm

        self.counters.set(self.row, W_ARMED, 1)
        _ledger.set_crash_point(self.rng.randrange(0, CRASH_POINTS))

    # ---------------------------------------------------------- semaphore
    def semaphore_cycle(self) -> None:
        sem, rng = self.opened, self.rng
        assert isinstance(sem, ipcsem.Semaphore)      # reopen() follows cfg.kind
        k = rng.randint(1, self.max_k)
        prio = rng.choice((-1, 1, 2)) if rng.random() < 0.2 else 0
        how = rng.random()
        asked = time.monotonic_ns()
        if how < 0.30:
            try:
                if how < 0.08:
                    k = 1
                    with sem as lease:
                        self.use(k, lease, asked, "with sem")
                else:
                    with sem.hold(k, timeout=rng.uniform(0, 0.02), priority=prio) as lease:
                        self.use(k, lease, asked, f"hold({k}, timeout, priority={prio})")
            except Timeout:
                self.count(W_TIMEOUTS)
                return
            self.count(W_CYCLES)
            return
        if how < 0.42:
            got, form = sem.try_acquire(k), f"try_acquire({k})"
            if not got:
                self.count(W_BUSY)
                time.sleep(rng.uniform(0.0002, 0.001))
                return
        elif how < 0.47:
            k = 1
            got, form = sem.acquire(True, rng.uniform(0, 0.02)), "acquire(True, timeout)"
        elif how < 0.65:
            timeout = 0.0 if rng.random() < 0.1 else rng.uniform(0, 0.02)
            got = sem.acquire(k, timeout=timeout, priority=prio)
            form = f"acquire({k}, timeout, priority={prio})"
        else:
            got, form = sem.acquire(k, priority=prio), f"acquire({k}, priority={prio})"
            if not got:
                raise AssertionError(f"a blocking {form} returned False")
        if not got:
            self.count(W_TIMEOUTS)
            return
        self.use(k, None, asked, form)
        sem.release(k)
        self.count(W_CYCLES)

    # -------------------------------------------------------------- mutex
    def mutex_cycle(self) -> None:
        m, rng = self.opened, self.rng
        assert isinstance(m, ipcsem.Mutex)            # reopen() follows cfg.kind
        prio = rng.choice((-1, 1, 2)) if rng.random() < 0.2 else 0
        how = rng.random()
        asked = time.monotonic_ns()
        if how < 0.70:
            try:
                if how < 0.30:
                    with m as lease:
                        self.use(1, lease, asked, "with mutex")
                else:
                    timeout = 0.0 if how < 0.45 else rng.uniform(0, 0.02)
                    with m.hold(timeout=timeout, priority=prio) as lease:
                        self.use(1, lease, asked, f"hold(timeout={timeout:.4f}, priority={prio})")
            except Timeout:
                self.count(W_BUSY if how < 0.45 else W_TIMEOUTS)
                return
            # The release returned: from here on the next owner must not be
            # told that its previous owner died.
            self.oracle.log_release(lease.token)
            self.count(W_CYCLES)
            return
        if how < 0.80:
            got, form = m.acquire(False), "acquire(False)"
            if not got:
                self.count(W_BUSY)
                time.sleep(rng.uniform(0.0002, 0.001))
                return
        elif how < 0.90:
            got, form = m.acquire(True, rng.uniform(0, 0.02)), "acquire(True, timeout)"
        else:
            got, form = m.acquire(priority=prio), f"acquire(priority={prio})"
            if not got:
                raise AssertionError(f"a blocking {form} returned False")
        if not got:
            self.count(W_TIMEOUTS)
            return
        self.use(1, None, asked, form)
        m.release()
        self.count(W_CYCLES)

    # ------------------------------------------------------------ holding
    def use(self, k: int, lease: ipcsem.Lease | None, asked: int, form: str) -> None:
        """The protected work: take the oracle for the grant, hold 0-2 ms,
        drop it; the state says RELEASING when this returns."""
        token = 0 if lease is None else lease.token
        self.counters.set(self.row, W_TOKEN, token)
        self.state(HOLDING)
        died = False
        sem = self.opened
        if isinstance(sem, ipcsem.Mutex):           # (cfg.kind == "mutex")
            died = sem.previous_owner_died
            if lease is not None and lease.previous_owner_died != died:
                raise AssertionError(f"{form}: lease.previous_owner_died is "
                                     f"{lease.previous_owner_died}, the mutex says {died}")
        grant = (asked, token, died)
        if self.cfg.kind == "slots":
            slots = lease.slots if lease is not None else self.my_slots()
            ok = self.oracle.take_slots(slots, k, grant)
        else:
            ok = self.oracle.take(k, self.rng.randrange(len(self.oracle.fds)), grant)
        if not ok:
            self.count(W_VIOLATIONS)
            self.explain(form)
        pause = self.rng.random() * 0.002
        if pause > 0.0002:
            time.sleep(pause)
        self.oracle.release()
        self.state(RELEASING)

    def my_slots(self) -> tuple[int, ...]:
        """The unit numbers this process holds, from the ledger (after a
        bool-returning acquire: it holds this one grant only)."""
        for h in self.opened.holders():
            if (h.pid, h.start) == (ME.pid, ME.start):
                return h.slots
        return ()

    def explain(self, form: str) -> None:
        """The violation is on record; now say what we can about it."""
        o, sem = self.oracle, self.opened
        try:
            o.note(f"via {form}; oracle files held by {o.diagnose()}")
            o.note(f"me pid{ME.pid} start{ME.start}; ledger available {sem.available} "
                   "holders " + " ".join(f"pid{h.pid}:{h.units}u:{list(h.slots)}:"
                                         f"{proc_state(h.pid)}" for h in sem.holders())
                   + " waiters " + " ".join(f"pid{w.pid}:{w.units}u" for w in sem.waiters()))
        except Exception as e:  # noqa: BLE001 - diagnostics must not kill the worker
            o.note(f"diagnostics failed: {e!r}")
