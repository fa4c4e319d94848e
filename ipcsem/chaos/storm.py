"""The storm: start workers on a fresh semaphore, SIGKILL them (and the
supervisor) over and over, check the ledger while it runs, then kill
everything and verify (see the package docstring for the whole shape).

Interruption.  SIGINT, SIGTERM and SIGHUP only set a flag while a storm runs
(:meth:`Storm.interrupt`); the storm looks at it between steps, stops, kills
every worker, removes NAME and raises KeyboardInterrupt at the end.  It never
lets a signal handler raise: a KeyboardInterrupt raised from a handler lands
at an arbitrary bytecode, and when that bytecode belongs to a finalizer (a
dropped ``subprocess.Popen``'s ``__del__`` runs on every supervisor restart)
Python reports it as "Exception ignored" and goes on: the signal is lost and
the storm runs to its end (the old storm's flaky SIGTERM test).  Elsewhere it
could leave a just-forked worker unrecorded, or cut the clean-up short.

Backends.  Everything the storm proves comes from the flock oracle and the
grant log, which owe nothing to any backend; the semaphore itself lives on
``backend`` (a URL), which the workers, the supervisor and the fresh
process of the end check are all given explicitly.  What exists only on shm
is skipped elsewhere: self-killers (the ledger's crash hook; Options refuses
them), the /dev/shm check after unlink.  On ZooKeeper the supervisor is
``ipcsem supervise --backend URL NAME`` (this host's LocalSupervisor), and the
end check waits up to the session timeout on top of ``settle_timeout``: what
recover() cannot reap on this machine the server drops when the session of
its dead owner expires.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import _backend, _names
from .counters import (
    HOLDING,
    RELEASING,
    STARTING,
    STATE_NAMES,
    W_ARMED,
    W_BUSY,
    W_CYCLES,
    W_STATE,
    W_TIMEOUTS,
    W_TOKEN,
    Counters,
)
from .options import Options
from .oracle import BAD_SLOTS, count_violations
from .procs import STOP_SIGNALS, SupervisorProc, WorkerProc, tail
from .report import Report
from .verify import check_grants, verify
from .worker import WorkerConfig

if TYPE_CHECKING:
    from .._semaphore import Mutex, Semaphore


class _Abort(Exception):
    """The storm cannot go on (workers keep failing, none starts)."""


@dataclass
class Tally:
    """What happened during the storm."""

    kills: int = 0
    self_kills: int = 0
    supervisor_kills: int = 0
    respawns: int = 0
    unexplained: int = 0                # SIGKILLed, neither by us nor armed
    kill_states: list[int] = field(default_factory=lambda: [0] * len(STATE_NAMES))
    worker_errors: list[str] = field(default_factory=list)
    mid_checks: int = 0
    mid_failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    died_holding: set[int] = field(default_factory=set)   # tokens (mutex storms)


class Storm:
    """One storm.  ``Storm(...).run()`` -> Report; arguments as run_storm's
    (:class:`~ipcsem.chaos.options.Options`).

    Raises ValueError for bad arguments or an existing NAME (before anything
    is created), KeyboardInterrupt when interrupted (after the clean-up)."""

    def __init__(self, *args: Any, **options: Any) -> None:
        self.opt = opt = Options(*args, **options)
        assert opt.name is not None and opt.capacity is not None   # Options resolved them
        assert opt.backend is not None
        self.backend = opt.backend
        if opt.name in _backend.resolve(self.backend).names():
            raise ValueError(f"semaphore {opt.name!r} already exists; a storm needs a fresh name")
        self.name, self.kind, self.capacity = opt.name, opt.kind, opt.capacity
        self.rng = random.Random(opt.seed)
        self.interrupted: int | None = None   # the first stop signal, once one came
        self.tally = Tally()
        self.live: dict[int, WorkerProc] = {}
        self.gens: dict[int, int] = {}        # workers started per counters row
        self.sem: Semaphore | Mutex | None = None
        self.sup: SupervisorProc | None = None     # None once it keeps exiting by itself
        self.sup_record: SupervisorProc | None = None
        self.counters: Counters | None = None
        self.tmp = ""
        self.storm_seconds = 0.0
        self.end: tuple[int, str | None, dict[str, Any]] = (opt.capacity, "not verified", {})
        # Read from the storm's files at clean-up (_read_findings).
        self.totals = {W_CYCLES: 0, W_TIMEOUTS: 0, W_BUSY: 0}
        self.over = self.bad_slots = self.sup_starts = self.sup_recoveries = 0
        self.violations: list[str] = []
        self.grant_details: dict[str, Any] = {}
        self.grant_problems: list[str] = []

    @property
    def ctr(self) -> Counters:
        """The counters (_prepare makes them before any phase reads them)."""
        assert self.counters is not None
        return self.counters

    @property
    def opened(self) -> Semaphore | Mutex:
        """The storm's own handle (_prepare opens it before any phase uses it)."""
        assert self.sem is not None
        return self.sem

    # ================================================================ run
    def run(self, handle_signals: bool = True) -> Report:
        """Storm, verify, clean up.  ``handle_signals``: turn SIGINT/SIGTERM/
        SIGHUP into :meth:`interrupt` while it runs (main thread only; the
        CLI installs its own handlers for its whole run instead)."""
        t_begin = time.monotonic()
        with self._signals(handle_signals):
            try:
                self._prepare()
                self._storm()
                self._finish()
                if not self.interrupted:
                    self._verify()
            finally:
                self._cleanup()
        if self.interrupted:
            raise KeyboardInterrupt
        return self._report(time.monotonic() - t_begin)

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """Stop as soon as possible, clean up, then raise KeyboardInterrupt
        from run().  Safe to call from a signal handler, any number of times."""
        if self.interrupted is None:
            self.interrupted = signum

    @contextmanager
    def _signals(self, install: bool) -> Iterator[None]:
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.interrupt(signum)

        old = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    # ============================================================ phases
    def _prepare(self) -> None:
        import ipcsem

        self.tmp = tempfile.mkdtemp(prefix="ipcsem-chaos-")
        os.mkdir(self.path("oracle"))
        for f in ("violations", "grants"):
            open(self.path(f), "wb").close()
        self.counters = Counters(self.path("counters"), self.opt.workers)
        sem: Semaphore | Mutex
        if self.kind == "mutex":
            sem = ipcsem.Mutex(self.name, backend=self.backend)
        else:
            sem = ipcsem.Semaphore(self.name, capacity=self.capacity, slots=self.kind == "slots",
                                   backend=self.backend)
        self.sem = sem
        if not sem.created:  # created by someone else between the check and now
            self.sem = None
            sem.close()
            raise ValueError(f"semaphore {self.name!r} already exists; a storm needs a fresh "
                             "name")

    def _storm(self) -> None:
        """Start everything, then kill and check until a stop condition."""
        if self.interrupted:
            return
        if self.opt.supervisor:
            self.sup = self.sup_record = SupervisorProc(self.name, self.tmp, self.backend)
            self.sup.start()
        for i in range(self.opt.workers):
            if self.interrupted:
                return
            self._spawn(i)
        t0 = time.monotonic()
        self._t0 = self._last_ready = self._last_progress = t0
        self._deadline = None if self.opt.duration is None else t0 + self.opt.duration
        self._next_kill = t0 + self.opt.kill_every * self.rng.uniform(0.5, 1.5)
        self._next_check = t0 + self.opt.check_every
        try:
            while not self._done(time.monotonic()):
                self._tick(time.monotonic())
                wake = self._next_kill if self._deadline is None \
                    else min(self._next_kill, self._deadline)
                time.sleep(min(max(wake - time.monotonic(), 0.0), 0.002))
        except _Abort as e:
            self.tally.errors.append(str(e))
        finally:
            self.storm_seconds = time.monotonic() - t0

    def _done(self, now: float) -> bool:
        return (self.interrupted is not None
                or (self._deadline is not None and now >= self._deadline)
                or (self.opt.kills is not None and self.tally.kills >= self.opt.kills))

    def _tick(self, now: float) -> None:
        if now - self._last_ready > self.opt.stall_timeout:
            raise _Abort(f"no worker got past start-up for {self.opt.stall_timeout:.0f} s")
        self._reap_and_respawn()
        self._keep_supervisor()
        if now >= self._next_kill or now - self._last_ready > 1.0:
            ready = self._ready()
            if now >= self._next_kill:
                self._kill_one(now, ready)
        if now >= self._next_check:
            self._check_ledger(now)
        if self.opt.progress is not None and now - self._last_progress >= 5.0:
            self._last_progress = now
            t = self.tally
            self.opt.progress(f"{now - self._t0:7.1f} s  kills {t.kills}  self-kills "
                              f"{t.self_kills}  cycles {self.ctr.total(W_CYCLES)}  "
                              f"over-admissions {count_violations(self.path('violations'))}")

    def _finish(self) -> None:
        """The storm is over: every worker dies, the supervisor stops."""
        for w in list(self.live.values()):
            code, by_us = w.kill()
            self._dead(w, code, by_us)
        self.live.clear()
        if self.sup is not None:
            if self.interrupted:
                self.sup.kill()
            else:
                status = self.sup.stop()
                if status not in (0, None, -signal.SIGTERM):  # -SIGTERM: stopped while starting
                    self.tally.errors.append(f"supervisor exited with {status} on SIGTERM: "
                                             f"{self.sup.stderr_tail()}")

    def _verify(self) -> None:
        """Every worker dead: the semaphore must be whole (verify.py)."""
        self.end = verify(self.opened, self.capacity,
                          settle_timeout=self.opt.settle_timeout + session_timeout(self.backend),
                          verify_timeout=self.opt.verify_timeout, kind=self.kind,
                          should_stop=lambda: self.interrupted is not None,
                          backend=self.backend)

    def _cleanup(self) -> None:
        """Whatever happened: no process of ours left, NAME removed, the
        temporary files gone.  Every step runs even if one before failed."""
        import ipcsem

        for w in list(self.live.values()):
            self._try(w.kill)
        self.live.clear()
        if self.sup is not None:
            self._try(self.sup.kill)
        if self.sem is not None:
            self._try(self.sem.close)
            try:
                ipcsem.unlink(self.name, backend=self.backend)
            except ipcsem.NotFound:
                pass
            except Exception as e:  # noqa: BLE001 - report, keep cleaning
                self.tally.errors.append(f"unlink({self.name!r}) failed: {e}")
            path = _names.shm_path(self.name)
            if self.opt.on_shm and os.path.exists(path):
                self.tally.errors.append(f"left in /dev/shm after unlink: {path}")
                self._try(os.unlink, path)
        if self.tmp and self.counters is not None:
            try:
                self._read_findings()
            except Exception as e:  # noqa: BLE001 - a finding of its own; keep cleaning
                self.tally.errors.append(f"reading the storm's files failed: {e!r}")
        if self.counters is not None:
            self._try(self.counters.close)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def _try(f: Callable[..., object], *args: object) -> None:
        try:
            f(*args)
        except Exception:  # noqa: BLE001 - clean-up goes on
            pass

    # =========================================================== workers
    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def _spawn(self, index: int) -> None:
        self.ctr.reset(index)
        cfg = WorkerConfig(
            name=self.name, index=index, capacity=self.capacity, kind=self.kind,
            oracle=self.path("oracle"), files=self.opt.files, counters=self.path("counters"),
            violations=self.path("violations"), grants=self.path("grants"),
            self_kill=int(self.rng.random() < (self.opt.self_kill_fraction or 0.0)),
            seed=self.rng.randrange(2**63), multi_unit=int(bool(self.opt.multi_unit)),
            parent=os.getpid(), backend=self.backend)
        self.gens[index] = self.gens.get(index, 0) + 1
        if self.gens[index] > 1:
            self.tally.respawns += 1
        self.live[index] = WorkerProc.spawn(cfg, self.path(f"worker-{index}.err"), self.opt.spawn)

    def _ready(self) -> list[WorkerProc]:
        """Workers past interpreter start-up."""
        ready = [w for w in self.live.values()
                 if self.ctr.get(w.index, W_STATE) != STARTING]
        if ready:
            self._last_ready = time.monotonic()
        return ready

    def _reap_and_respawn(self) -> None:
        for index, w in list(self.live.items()):
            code = w.poll()
            if code is not None:
                self._dead(w, code, False)
                if len(self.tally.worker_errors) > 20:
                    raise _Abort("more than 20 workers failed; see details['worker_errors']")
                self._spawn(index)

    def _kill_one(self, now: float, ready: list[WorkerProc]) -> None:
        """SIGKILL one ready worker (30%: one that holds units) and replace it.

        Keeps at least half the workers past start-up, so kills land in
        ipcsem's loop rather than always in a first acquire (exec start-up
        is slow; fork is not affected)."""
        if not ready or 2 * len(ready) < len(self.live):
            self._next_kill = now + 0.002
            return
        self._next_kill = now + self.opt.kill_every * self.rng.uniform(0.5, 1.5)
        holding = [w for w in ready
                   if self.ctr.get(w.index, W_STATE) in (HOLDING, RELEASING)]
        if holding and self.rng.random() < 0.3:
            ready = holding  # most workers wait: make sure holders die too
        w = self.rng.choice(ready)
        was = self.ctr.get(w.index, W_STATE)
        code, by_us = w.kill()
        if by_us:
            self.tally.kill_states[was] += 1
            self.tally.kills += 1
        self._dead(w, code, by_us)
        self._spawn(w.index)
        # ~5% of kills also take the supervisor down (once it is seen to
        # watch: it has recovered something since it started).
        if self.sup is not None and self.rng.random() < 0.05 and self.sup.has_worked():
            self.sup.kill()
            self.tally.supervisor_kills += 1
            self.sup.start()

    def _dead(self, w: WorkerProc, code: int, by_us: bool) -> None:
        """Account for a reaped worker (before its row is reused)."""
        state = self.ctr.get(w.index, W_STATE)
        token = self.ctr.get(w.index, W_TOKEN)
        if state == HOLDING and token > 0:
            self.tally.died_holding.add(token)   # a mutex's next owner must be told
        if by_us:
            return
        if code == -signal.SIGKILL and self.ctr.get(w.index, W_ARMED):
            self.tally.self_kills += 1
        elif code == -signal.SIGKILL:
            self.tally.unexplained += 1
        else:
            self.tally.worker_errors.append(f"worker {w.index} (pid {w.pid}) exited with {code}: "
                                            f"{tail(self.path(f'worker-{w.index}.err'))}")

    # ========================================================== upkeep
    def _keep_supervisor(self) -> None:
        sup = self.sup
        if sup is None or sup.exited() is None:
            return
        if len(sup.unexpected_exits) >= 3:
            self.tally.errors.append("the supervisor keeps exiting by itself: "
                                     + sup.stderr_tail())
            self.sup = None
        else:
            sup.start()

    def _check_ledger(self, now: float) -> None:
        """Every committed state, seen under the ledger lock, must satisfy
        the invariant (check() repairs a dead owner's half-done transaction
        first), so a failure here is real."""
        from .._errors import IpcsemError

        self._next_check = now + self.opt.check_every
        self.tally.mid_checks += 1
        try:
            self.opened.check()
        except IpcsemError as e:
            self.tally.mid_failures.append(f"{now - self._t0:.3f} s: {e}")

    # ========================================================== findings
    def _read_findings(self) -> None:
        """The files the workers and the supervisor wrote, and the counters,
        read before they are removed."""
        t = self.tally
        self.totals = {w: self.ctr.total(w) for w in (W_CYCLES, W_TIMEOUTS, W_BUSY)}
        sup = self.sup_record
        self.sup_starts = sup.starts if sup is not None else 0
        self.sup_recoveries = sup.recoveries() if sup is not None else 0
        violations = self.path("violations")
        self.over = count_violations(violations)
        self.bad_slots = count_violations(violations, BAD_SLOTS)
        try:
            with open(violations, "rb") as f:
                self.violations = [ln.decode(errors="replace").rstrip()
                                   for ln in f.read().splitlines()[:40]]
        except OSError:
            self.violations = []
        final = self.end[2].get("final_grant")
        self.grant_details, self.grant_problems = check_grants(
            self.path("grants"), self.kind, t.died_holding, final)

    def _report(self, elapsed: float) -> Report:
        t = self.tally
        lost, check_error, details = self.end
        problems = ([check_error] if check_error else []) + self.grant_problems
        errors = list(t.errors)
        if t.worker_errors:
            errors.append(f"{len(t.worker_errors)} worker(s) failed: {t.worker_errors[0][:300]}")
        if t.mid_failures:
            errors.append(f"check() failed {len(t.mid_failures)} time(s) during the storm; "
                          f"first at {t.mid_failures[0]}")
        if self.bad_slots:
            errors.append(f"{self.bad_slots} lease(s) named slots that are not their units' "
                          "numbers (see violations)")
        details = dict(details, **self.grant_details)
        details.update(
            name=self.name, backend=self.backend, kind=self.kind, capacity=self.capacity,
            workers=self.opt.workers, self_kill_fraction=self.opt.self_kill_fraction,
            spawn=self.opt.spawn, seed=self.opt.seed, supervisor=self.opt.supervisor,
            oracle_slots=self.opt.files, kill_every=self.opt.kill_every,
            storm_seconds=round(self.storm_seconds, 3),
            kills_by_state={STATE_NAMES[i]: n for i, n in enumerate(t.kill_states) if n},
            respawns=t.respawns, unexplained_kills=t.unexplained,
            timeouts=self.totals[W_TIMEOUTS], busy=self.totals[W_BUSY],
            worker_errors=t.worker_errors[:10], midstorm_checks=t.mid_checks,
            midstorm_check_failures=len(t.mid_failures),
            midstorm_check_errors=t.mid_failures[:10], violations=self.violations,
            bad_slots=self.bad_slots, errors=errors)
        if self.opt.supervisor:
            details["supervisor_starts"] = self.sup_starts
            details["supervisor_recoveries"] = self.sup_recoveries
        return Report(kills=t.kills, self_kills=t.self_kills,
                      supervisor_kills=t.supervisor_kills, cycles=self.totals[W_CYCLES],
                      over_admissions=self.over, lost_units=lost,
                      check_error="; ".join(problems) or None, elapsed=round(elapsed, 3),
                      details=details)


def session_timeout(url: str) -> float:
    """The session timeout a ``zookeeper://`` URL asks for (what the server
    needs to drop a SIGKILLed process's nodes by itself), 0 on shm."""
    if _backend.scheme_of(url) != "zookeeper":
        return 0.0
    from .._zk import ZkBackend

    b = _backend.resolve(url)
    return b.options.session_timeout if isinstance(b, ZkBackend) else 0.0
