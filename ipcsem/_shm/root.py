"""Root's supervisor: privilege separation.

**Root maps no other user's ledger.**  Run as root, :class:`RootSupervisor`
only lists /dev/shm and lstat()s what it finds; for each user who owns
semaphores it forks a worker that drops to that user (groups, gid, uid)
before it opens anything, and reads the worker's events from a pipe in a
narrow, validated format (OpenSSH's privilege separation).  A user can make
their own worker fail; the root process restarts it, and everyone else's
semaphores are unaffected.

This module is the root process's side (RootSupervisor: which users get a
worker, starting and restarting them, reading their pipes); ``worker`` is
the worker's side and the event format both agree on.
"""
from __future__ import annotations

import json
import os
import select
import signal
import stat
import time
from collections.abc import Callable
from typing import Any

from .. import _names, _proc
from .._errors import IpcsemError
from . import worker
from .supervisor import raise_fd_limit
from .worker import WorkerMain

MAX_WORKERS = 256     # users served at once (more owners are logged, not served)
RANGE_SLOTS = 4       # workers the uids of one subordinate uid range may have together
SUBUID_FILE = "/etc/subuid"
RANK_LOOKS = 8        # views root reads per uid to rank it, when owners outnumber slots


def subuid_ranges(path: str = SUBUID_FILE) -> list[tuple[int, int, str]]:
    """``(first, end, owner)`` for each subordinate uid range in ``path``
    (lines ``owner:first:count``, the owner by name or uid); [] when it
    cannot be read.  An unprivileged user comes to own files under other
    uids only through such a range (newuidmap maps nothing else), so files
    owned by them are that user's."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0].startswith("#"):
            continue
        try:
            first, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if first >= 0 and count > 0:
            ranges.append((first, first + count, parts[0]))
    return ranges


def _principal(uid: int, ranges: list[tuple[int, int, str]]) -> str:
    """Who a file owner's slots are charged to: the owner of the
    subordinate range ``uid`` is in, else ``uid`` itself."""
    for first, end, owner in ranges:
        if first <= uid < end:
            return f"subordinate uids of {owner}"
    return f"uid {uid}"


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
                 max_workers: int = MAX_WORKERS, worker_main: WorkerMain | None = None,
                 subuid_file: str = SUBUID_FILE) -> None:
        self.max_workers = max_workers
        self.subuid_file = subuid_file
        self._principals: dict[int, str] = {}     # uid -> who its slots are charged to
        self._worker_main = worker_main or worker.main   # tests play a compromised worker
        self.names = list(names) if names else None
        self.sweep = sweep
        self.poll = poll
        self.emit = emit
        self.workers: dict[int, tuple[int, int, bytearray]] = {}   # uid -> (pid, fd, buffer)
        self._restart_after: dict[int, float] = {}
        self._stopping = False
        self._unserved: set[int] = set()
        self._forged: set[tuple[int, str]] = set()   # (worker uid, name) already reported
        raise_fd_limit()

    def stop(self) -> None:
        self._stopping = True

    def _owners(self) -> list[int]:
        """uids owning ipcsem names that look like ledgers (regular, not
        writable by all, not empty: an empty file costs its owner nothing and
        must not cost us a worker), in the order they get workers.

        Slots are shared out by *user*, not by uid: the uids of one
        subordinate range (/etc/subuid) are charged to its owner (at most
        RANGE_SLOTS workers together), and the order takes each user's
        best uid before anyone's second.  Never by uid number or mtime
        alone, which an attacker chooses.  When owners outnumber the slots,
        a uid ranks by what read-only views of its files say (a holder,
        else an initialised ledger, else neither: junk ranks last); those
        are forgeable too, which is why the users come first."""
        latest: dict[int, float] = {}
        names_of: dict[int, list[str]] = {}
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
            names_of.setdefault(uid, []).append(name)
        ranges = subuid_ranges(self.subuid_file)
        self._principals = {uid: _principal(uid, ranges) for uid in latest}
        crowded = len(latest) > self.max_workers
        rank = {uid: _rank(names_of[uid]) if crowded else 0 for uid in latest}
        by_user: dict[str, list[int]] = {}
        for uid in sorted(latest, key=lambda u: (rank[u], -latest[u])):
            by_user.setdefault(self._principals[uid], []).append(uid)
        order: list[int] = []
        depth = max((len(uids) for uids in by_user.values()), default=0)
        for k in range(depth):       # every user's k-th uid before anyone's (k+1)-th
            order.extend(uids[k] for uids in by_user.values() if k < len(uids))
        return order

    def _start_worker(self, uid: int) -> None:
        user = self._principals.get(uid, f"uid {uid}")
        if user.startswith("subordinate") and \
                sum(self._principals.get(u) == user for u in self.workers) >= RANGE_SLOTS:
            if uid not in self._unserved:
                self._unserved.add(uid)
                self.emit({"event": "worker", "uid": uid,
                           "status": f"not served: {RANGE_SLOTS} workers already serve the "
                                     f"{user}"})
            return
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
                worker.prepare()            # everything it needs, while root can read it
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
        for line in _proc.split_lines(buf):
            event = worker.validate_event(line)
            if event is not None and self._reports_its_own(uid, event):
                event["uid"] = uid
                self.emit(event)

    def _reports_its_own(self, uid: int, event: dict[str, Any]) -> bool:
        """False (and said once) for an event about a semaphore another
        user owns: a worker serves only its own user's (owner_uid), so that
        is a forgery by a worker its user took over.  A name that is gone
        passes: it may have been removed since (the line says who spoke)."""
        name = event.get("name")
        if not isinstance(name, str) or not _names.is_valid(name):
            return True
        try:
            owner = os.lstat(_names.shm_path(name)).st_uid
        except OSError:
            return True
        if owner == uid:
            return True
        if (uid, name) not in self._forged:
            if len(self._forged) >= 1024:
                self._forged.clear()          # bounded: a forger may name many
            self._forged.add((uid, name))
            self.emit({"event": "worker", "uid": uid,
                       "status": f"reported a {event['event']} in {name}, which uid {owner} "
                                 "owns, not this worker's user: dropped"})
        return False

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


def _rank(names: list[str]) -> int:
    """0: one of ``names`` (a few looked at) has a holder; 1: one is an
    initialised ledger; 2: neither.  Read-only views: root maps nothing."""
    from .segment import read_view

    best = 2
    for name in names[:RANK_LOOKS]:
        try:
            snap = read_view(name, tries=1).snapshot
        except (IpcsemError, OSError):
            continue
        if any(h.units for h in snap.holders):
            return 0
        best = 1
    return best
