"""The supervisor: recover dead holders' units the moment they die.

Not needed for correctness (blocked waiters and refused non-blocking
attempts heal too); it makes recovery immediate.  Death is noticed three
ways, fastest first:

* a pidfd per watched process becomes readable the moment the whole thread
  group has exited (before it is reaped, so zombies count as dead);
* every ``poll`` seconds a lock-free read of each ledger's change counter
  says a new process registered: we start watching it;
* every ``sweep`` seconds a full heal of every semaphore (covers kernels
  without pidfds, a full fd table, anything missed) and a rescan of names.

Nothing is remembered that the ledger does not say: a restarted or second
supervisor is harmless because recovery is idempotent.

**One bad semaphore never stops the others.** Each semaphore is handled
inside its own error boundary with bounded lock waits: a wedged ledger
(its lock held by a stopped process), a corrupt one, an empty file, a
directory or a symlink under an ipcsem name are reported once and skipped,
and tried again at the next sweep.  Out of file descriptors, it degrades to
sweeps; it never exits on its own.

**Root maps no other user's ledger.**  Run as root, :class:`RootSupervisor`
only lists /dev/shm and lstat()s what it finds; for each user who owns
semaphores it forks a worker that drops to that user (groups, gid, uid)
before it opens anything, and reads the worker's events from a pipe in a
narrow, validated format (OpenSSH's privilege separation).  A user can make
their own worker fail; the root process restarts it, and everyone else's
semaphores are unaffected.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import stat
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .. import _identity, _names, _proc
from .._errors import IpcsemError, Wedged
from . import _ledger, recovery
from .segment import Segment, distrust, open_segment

log = logging.getLogger("ipcsem")

# on_recover(name, pid, start, units, entries, died_ns | None)
OnRecover = Callable[[str, int, int, int, int, "int | None"], None]
OnError = Callable[[str, str], None]
OnWatch = Callable[[int, int], None]
# worker_main(fd, uid, names, sweep, poll) -> exit status
WorkerMain = Callable[[int, int, "list[str] | None", float, float], int]

LOCK_BOUND = 0.2          # how long one semaphore may keep the supervisor waiting


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (pidfds are fds);
    the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _log_problem(name: str, message: str) -> None:
    if message:       # "" says the problem cleared
        log.warning("%s: %s", name, message)


class Supervisor:
    """Watch holders of the named semaphores (all that this process may
    trust when ``names`` is None, including ones created later) and recover
    the dead ones.  ``owner_uid`` limits it to semaphores that uid owns.

    Hooks: ``on_recover(name, pid, start, units, entries, died_ns)`` per
    recovered process; ``on_error(name, message)`` once per distinct
    problem with a semaphore (and ``on_error(name, "")`` when it clears);
    ``on_watch(pid, start)`` when it starts watching a process (the moment
    to note its command line, which /proc forgets at death)."""

    def __init__(self, names: list[str] | None = None, *, sweep: float = 1.0,
                 poll: float = 0.02, on_recover: OnRecover | None = None,
                 on_error: OnError | None = None, on_watch: OnWatch | None = None,
                 owner_uid: int | None = None) -> None:
        self.names = list(names) if names else None
        self.sweep = sweep
        self.poll = poll
        # Without NAMEs only our own semaphores: a group-mate's ledger we never
        # chose to use is not ours to map (its owner could truncate it under us).
        if owner_uid is None and self.names is None:
            owner_uid = os.geteuid()
        self.owner_uid = owner_uid
        self.on_recover = on_recover
        self.on_error = on_error or _log_problem
        self.on_watch = on_watch
        self.segments: dict[str, Segment] = {}
        self._seen_changes: dict[str, int] = {}
        self._watch: dict[tuple[int, int], int] = {}      # identity -> pidfd
        self._by_fd: dict[int, tuple[int, int]] = {}
        self._where: dict[tuple[int, int], set[str]] = {}  # identity -> names it appears in
        self._problems: dict[str, str] = {}
        self._stopping = False
        self.pidfds = hasattr(os, "pidfd_open")
        self.degraded = False         # out of fds: sweeps only, for identities not yet watched
        self._poller = select.epoll()   # a wait costs the same for 10 or 10,000 pidfds
        # Keep a reserve: a sweep needs descriptors of its own (/proc reads,
        # listing /dev/shm, opening ledgers), so pidfds never take them all.
        limit = raise_fd_limit()
        self._fd_budget = max(limit - max(64, limit // 4), 0)

    def stop(self) -> None:
        self._stopping = True

    # ----------------------------------------------------------- problems
    def _problem(self, name: str, message: str) -> None:
        if self._problems.get(name) != message:
            self._problems[name] = message
            self.on_error(name, message)

    def _cleared(self, name: str) -> None:
        if self._problems.pop(name, None):
            self.on_error(name, "")

    # ------------------------------------------------------------- names
    def _wanted(self) -> list[str]:
        if self.names is not None:
            return self.names
        try:
            return _names.listing()
        except OSError:               # e.g. out of descriptors: keep what we have
            return list(self.segments)

    def _refresh_names(self) -> None:
        wanted = self._wanted()
        wanted_set = set(wanted)
        for name in list(self.segments):
            seg = self.segments[name]
            if name not in wanted_set or seg.ledger.closed or seg.ledger.unlinked:
                self._drop(name)
        for name in wanted:
            if name in self.segments:
                continue
            path = _names.shm_path(name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if self.names is not None:
                    self._problem(name, "no such semaphore (yet)")
                continue
            except OSError as e:
                self._problem(name, str(e))
                continue
            if self.owner_uid is not None and st.st_uid != self.owner_uid:
                continue
            why = distrust(st)
            if why is not None:
                # Another user's semaphore is not ours to look after; say so
                # only if it was asked for, or is ours, or is no ledger at all.
                if self.names is not None or st.st_uid == os.geteuid() \
                        or not stat.S_ISREG(st.st_mode):
                    self._problem(name, f"skipped: {why}")
                continue
            if st.st_size == 0:
                self._problem(name, "skipped: empty (never initialised, or being created)")
                continue
            try:
                self.segments[name] = open_segment(name, wait_for_creator=False)
                self._cleared(name)
            except (IpcsemError, OSError) as e:
                self._problem(name, f"skipped: {e}")

    def _drop(self, name: str) -> None:
        seg = self.segments.pop(name, None)
        self._seen_changes.pop(name, None)
        if seg is not None:
            seg.close(0)

    # ---------------------------------------------------------- watching
    def _bounded(self) -> int:
        return time.monotonic_ns() + int(LOCK_BOUND * 1e9)

    def _report(self, died_ns: int | None) -> recovery.OnRecover:
        def report(name: str, pid: int, start: int, units: int, entries: int) -> None:
            if self.on_recover is not None:
                self.on_recover(name, pid, start, units, entries, died_ns)
        return report

    def _heal(self, name: str, seg: Segment) -> None:
        """One semaphore's sweep, inside its error boundary."""
        try:
            snap = seg.ledger.snapshot()
            for ident in recovery.identities(snap):
                self._where.setdefault(ident, set()).add(name)
                # A watched identity's pidfd reports its death: no /proc read.
                if ident not in self._watch and _identity.is_dead(*ident):
                    recovery.recover_identity(seg, *ident, self._report(None), self._bounded())
            self._seen_changes[name] = seg.ledger.changes
            self._watch_identities(snap)
            self._cleared(name)
        except Wedged as e:
            e.name, e.waited = name, LOCK_BOUND
            self._problem(name, f"wedged: {e}")
        except (IpcsemError, OSError, ValueError) as e:
            self._problem(name, f"skipped: {e}")

    def _watch_identities(self, snap: _ledger.Snapshot) -> None:
        if not self.pidfds:
            return
        gone: list[tuple[int, int]] = []
        for ident in recovery.identities(snap):
            if ident in self._watch:
                continue
            if len(self._watch) >= self._fd_budget:
                if not self.degraded:
                    self.degraded = True
                    log.warning("watching %d processes, the most this supervisor's file "
                                "descriptors allow: others are recovered by sweeps",
                                len(self._watch))
                continue
            try:
                fd = os.pidfd_open(ident[0])
            except ProcessLookupError:
                gone.append(ident)  # died before we could watch it: recover it now
                continue
            except OSError:
                continue            # out of fds or no permission: the sweep covers it
            # The pid could have been reused between the ledger and
            # pidfd_open: the start time decides whose pidfd this is.
            if _identity.start_of(ident[0]) != ident[1]:
                os.close(fd)
                gone.append(ident)
                continue
            self._watch[ident] = fd
            self._by_fd[fd] = ident
            self._poller.register(fd, select.EPOLLIN)
            if self.on_watch is not None:
                self.on_watch(*ident)
        for ident in gone:
            if _identity.is_dead(*ident):   # not merely hidden from us
                self._recover_dead(ident, None)

    def _forget(self, ident: tuple[int, int]) -> None:
        fd = self._watch.pop(ident, None)
        if fd is not None:
            self._by_fd.pop(fd, None)
            try:
                self._poller.unregister(fd)
            except (KeyError, OSError):
                pass
            os.close(fd)
            if self.degraded and len(self._watch) < self._fd_budget // 2:
                self.degraded = False

    # ------------------------------------------------------------ the loop
    def run_once_sweep(self) -> None:
        self._refresh_names()
        for name, seg in list(self.segments.items()):
            self._heal(name, seg)
        # (A watched identity's death is reported by its pidfd, level-
        # triggered until _deaths forgets it: nothing to look up here.)
        try:
            live = set(self._watch)
            for ident in list(self._where):
                if ident not in live and _identity.is_dead(*ident):
                    del self._where[ident]
        except OSError as e:          # out of descriptors: next sweep
            log.warning("sweep cut short: %s", e)

    def _poll_changes(self) -> None:
        for name, seg in list(self.segments.items()):
            try:
                changes = seg.ledger.changes
                if changes != self._seen_changes.get(name):
                    self._seen_changes[name] = changes
                    snap = seg.ledger.snapshot()
                    for ident in recovery.identities(snap):
                        self._where.setdefault(ident, set()).add(name)
                    self._watch_identities(snap)
            except (IpcsemError, OSError, ValueError) as e:
                self._problem(name, f"skipped: {e}")

    def _deaths(self, events: list[tuple[int, int]]) -> None:
        died = time.time_ns()
        for fd, _ev in events:
            ident = self._by_fd.get(fd)
            if ident is None:
                continue
            self._forget(ident)
            # The pidfd was opened for a verified (pid, start): readable means
            # that identity is dead.
            self._recover_dead(ident, died)

    def _recover_dead(self, ident: tuple[int, int], died: int | None) -> None:
        """Recover a dead identity where the ledgers showed it (everywhere
        we look if they did not say)."""
        for name in sorted(self._where.pop(ident, set()) or self.segments):
            seg = self.segments.get(name)
            if seg is None:
                continue
            try:
                recovery.recover_identity(seg, *ident, self._report(died), self._bounded())
            except Wedged as e:
                e.name, e.waited = name, LOCK_BOUND
                self._problem(name, f"wedged: {e}")
            except (IpcsemError, OSError, ValueError) as e:
                self._problem(name, f"skipped: {e}")

    def run(self) -> None:
        next_sweep = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_sweep:
                self.run_once_sweep()
                next_sweep = time.monotonic() + self.sweep
            else:
                self._poll_changes()
            try:
                events = self._poller.poll(self.poll)
            except InterruptedError:
                continue
            if events:
                self._deaths(events)

    def close(self) -> None:
        for ident in list(self._watch):
            self._forget(ident)
        for name in list(self.segments):
            self._drop(name)
        self._poller.close()


# ====================================================== privilege separation
EVENT_MAX = 4096      # bytes per event line from a worker
MAX_WORKERS = 256     # users served at once (more owners are logged, not served)


class RootSupervisor:
    """Root's supervisor: one worker per owning user, each running
    :class:`Supervisor` as that user over that user's semaphores.  Root
    itself only lists /dev/shm and lstat()s names.

    ``emit(event: dict)`` receives each validated worker event:
    ``{"event": "recovered", "name", "pid", "start", "units", "entries",
    "after_ms", "cmd", "uid"}`` or ``{"event": "warning", "name", "error",
    "uid"}`` or ``{"event": "worker", "uid", "status"}``."""

    def __init__(self, names: list[str] | None = None, *, sweep: float = 1.0,
                 poll: float = 0.02, emit: Callable[[dict[str, Any]], None],
                 max_workers: int = MAX_WORKERS, worker_main: WorkerMain | None = None) -> None:
        self.max_workers = max_workers
        self._worker_main = worker_main or _worker_main   # tests play a compromised worker
        self.names = list(names) if names else None
        self.sweep = sweep
        self.poll = poll
        self.emit = emit
        self.workers: dict[int, tuple[int, int, bytearray]] = {}   # uid -> (pid, fd, buffer)
        self._restart_after: dict[int, float] = {}
        self._stopping = False
        self._unserved: set[int] = set()
        raise_fd_limit()

    def stop(self) -> None:
        self._stopping = True

    def _owners(self) -> list[int]:
        """uids owning ipcsem names that look like ledgers (regular, not
        writable by all, not empty: an empty file costs its owner nothing and
        must not cost us a worker), in the order they get workers when there
        are more than max_workers: those whose semaphores have holders first
        (root reads only what lstat and a read-only view say), then the
        most recently active; never by uid, which an attacker can choose."""
        from .segment import read_view

        latest: dict[int, float] = {}
        busy: set[int] = set()
        for name in (self.names if self.names is not None else _names.names()):
            try:
                st = os.lstat(_names.shm_path(name))
            except OSError:
                continue
            if not (stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWOTH
                    and st.st_size > 0):
                continue
            uid = st.st_uid
            latest[uid] = max(latest.get(uid, 0.0), st.st_mtime)
            if uid not in busy and len(latest) > self.max_workers:
                try:
                    if any(h.units for h in read_view(name, tries=1).snapshot.holders):
                        busy.add(uid)
                except (IpcsemError, OSError):
                    pass
        return sorted(latest, key=lambda u: (u not in busy, -latest[u]))

    def _start_worker(self, uid: int) -> None:
        if len(self.workers) >= self.max_workers:
            if uid not in self._unserved:
                self._unserved.add(uid)
                self.emit({"event": "worker", "uid": uid,
                           "status": f"not served: {self.max_workers} users are already"})
            return
        try:
            r, w = os.pipe()
        except OSError as e:
            self.emit({"event": "worker", "uid": uid, "status": f"not started: {e}"})
            self._restart_after[uid] = time.monotonic() + 5.0
            return
        root = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            os.close(r)
            os.close(w)
            self.emit({"event": "worker", "uid": uid, "status": f"not started: {e}"})
            self._restart_after[uid] = time.monotonic() + 5.0
            return
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                # Root's handlers (its stop() on SIGTERM) are not the worker's.
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.close(r)
                os.setsid()                 # out of root's session: no terminal to type into
                _proc.keep_only_fds(w)      # none of root's pipes or journal streams
                _prepare_worker()           # everything it needs, while root can read it
                _proc.become(uid)
                # Die with root: the parent-death signal is set only now,
                # because changing credentials clears it.  Root may have
                # died before it took effect: then the parent is no longer it.
                _proc.set_pdeathsig(signal.SIGTERM)
                if os.getppid() != root:
                    raise SystemExit("the root supervisor is gone")
                code = self._worker_main(w, uid, self.names, self.sweep, self.poll)
            except BaseException as e:  # noqa: BLE001 - report, then exit
                try:
                    os.write(w, (json.dumps({"event": "warning", "name": "-",
                                             "error": f"worker failed: {e!r}"[:500]}) + "\n")
                             .encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        self.workers[uid] = (pid, r, bytearray())
        self.emit({"event": "worker", "uid": uid, "status": f"started (pid {pid})"})

    def _reap(self) -> None:
        for uid, (pid, fd, _buf) in list(self.workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._read(uid, fd)
                os.close(fd)
                del self.workers[uid]
                if not self._stopping:
                    code = os.waitstatus_to_exitcode(status)
                    self.emit({"event": "worker", "uid": uid,
                               "status": f"exited with {code}; restarting"})
                    self._restart_after[uid] = time.monotonic() + 1.0

    def _read(self, uid: int, fd: int) -> None:
        _pid, _fd, buf = self.workers[uid]
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            event = _validate_event(line)
            if event is not None:
                event["uid"] = uid
                self.emit(event)
        if len(buf) > EVENT_MAX:
            buf.clear()   # a line too long to be ours: drop it

    def run(self) -> None:
        next_scan = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + self.sweep
                self._reap()
                owners = self._owners()
                for uid in owners:
                    if uid not in self.workers and time.monotonic() >= \
                            self._restart_after.get(uid, 0):
                        self._start_worker(uid)
            fds = {fd: uid for uid, (_p, fd, _b) in self.workers.items()}
            poller = select.poll()          # no FD_SETSIZE limit, unlike select()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                ready = poller.poll(min(self.sweep, 0.5) * 1000)
            except InterruptedError:
                continue
            for fd, _ev in ready:
                uid = fds[fd]
                try:
                    self._read(uid, fd)
                except Exception as e:  # noqa: BLE001 - one worker's bytes never stop root
                    self.emit({"event": "worker", "uid": uid,
                               "status": f"sent what no worker sends ({type(e).__name__}); "
                                         "restarting it"})
                    self._kill_worker(uid)
            self._reap()

    def _kill_worker(self, uid: int) -> None:
        pid, _fd, buf = self.workers[uid]
        buf.clear()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._stopping = True
        for pid, _fd, _buf in list(self.workers.values()):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 5
        for uid, (pid, fd, _buf) in list(self.workers.items()):
            while time.monotonic() < end:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            self._read(uid, fd)
            os.close(fd)
        self.workers.clear()


def _prepare_worker() -> None:
    """Import what a worker uses before it drops privileges: after the drop
    the interpreter's own files may not be readable (installed under a
    private home)."""
    import ctypes  # noqa: F401  (set_pdeathsig, the watcher's pidfd_open)

    import psutil  # noqa: F401  (command lines)


def _validate_event(line: bytes) -> dict[str, Any] | None:
    """A worker's event, or None: bounded, JSON, the expected keys and types.
    (Deep nesting is not ours either: the parser's RecursionError says so.)"""
    if len(line) > EVENT_MAX:
        return None
    try:
        ev = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(ev, dict):
        return None
    kind = ev.get("event")
    if kind == "recovered":
        ints = ("pid", "start", "units", "entries")
        if not all(isinstance(ev.get(k), int) and not isinstance(ev.get(k), bool) for k in ints):
            return None
        if not isinstance(ev.get("name"), str) or not _names.is_valid(ev["name"]):
            return None
        after = ev.get("after_ms")
        if after is not None and not isinstance(after, (int, float)):
            return None
        cmd = ev.get("cmd")
        if cmd is not None and not isinstance(cmd, str):
            return None
        return {k: ev.get(k) for k in ("event", "name", *ints, "after_ms", "cmd")}
    if kind == "warning":
        if not isinstance(ev.get("name"), str) or not isinstance(ev.get("error"), str):
            return None
        return {"event": "warning", "name": ev["name"][:256], "error": ev["error"][:1000]}
    return None


def _worker_main(fd: int, uid: int, names: list[str] | None, sweep: float, poll: float) -> int:
    """A per-user worker: a Supervisor over ``uid``'s semaphores, events on ``fd``."""
    from .. import _proc

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands: dict[tuple[int, int], str] = {}

    def send(ev: dict[str, Any]) -> None:
        data = (json.dumps(ev) + "\n").encode()
        if len(data) <= EVENT_MAX:
            os.write(fd, data)

    def on_watch(pid: int, start: int) -> None:
        argv = _proc.argv(pid, start)
        if argv is not None:
            commands[(pid, start)] = " ".join(argv)

    def on_recover(name: str, pid: int, start: int, units: int, entries: int,
                   died_ns: int | None) -> None:
        after = None if died_ns is None else round((time.time_ns() - died_ns) / 1e6, 3)
        send({"event": "recovered", "name": name, "pid": pid, "start": start, "units": units,
              "entries": entries, "after_ms": after, "cmd": commands.pop((pid, start), None)})

    def on_error(name: str, message: str) -> None:
        if message:
            send({"event": "warning", "name": name, "error": message})

    sup = Supervisor(names, sweep=sweep, poll=poll, on_recover=on_recover, on_error=on_error,
                     on_watch=on_watch, owner_uid=uid)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        sup.stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        sup.run()
    finally:
        sup.close()
    return 0
