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

Run as root, the supervisor is :class:`ipcsem._shm.root.RootSupervisor`
(root maps no other user's ledger; see root.py).
"""
from __future__ import annotations

import logging
import os
import resource
import select
import stat
import time
from collections.abc import Callable

from .. import _identity, _names
from .._errors import IpcsemError, Wedged
from . import _ledger, recovery
from .segment import Segment, distrust, open_segment

log = logging.getLogger("ipcsem")

# on_recover(name, pid, start, units, entries, died_ns | None)
OnRecover = Callable[[str, int, int, int, int, "int | None"], None]
OnError = Callable[[str, str], None]
OnWatch = Callable[[int, int], None]

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


# An idle supervisor looks for new holders this many times less often than
# right after a change (0.2 s at the default --poll 0.02).
IDLE_BACKOFF = 10


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
        # name -> its change counter at a sweep that found every identity of
        # it watched by a pidfd: until the counter moves, a sweep has
        # nothing to look at there (deaths come through the pidfds).
        self._settled: dict[str, int] = {}
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
        self._settled.pop(name, None)
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
            # Read before the snapshot: a change after it moves the counter
            # past what is recorded, so the next poll looks again.
            changes = seg.ledger.changes
            if self._settled.get(name) == changes:
                return
            snap = seg.ledger.snapshot()
            idents = recovery.identities(snap)
            for ident in idents:
                self._where.setdefault(ident, set()).add(name)
                # A watched identity's pidfd reports its death: no /proc read.
                if ident not in self._watch and _identity.is_dead(*ident):
                    recovery.recover_identity(seg, *ident, self._report(None), self._bounded())
            self._seen_changes[name] = changes
            self._watch_identities(snap)
            if all(ident in self._watch for ident in idents):
                self._settled[name] = changes
            else:
                self._settled.pop(name, None)
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

    def _poll_changes(self) -> bool:
        """Watch the newcomers of every ledger whose change counter moved;
        whether any had."""
        moved = False
        for name, seg in list(self.segments.items()):
            try:
                changes = seg.ledger.changes
                if changes != self._seen_changes.get(name):
                    moved = True
                    self._seen_changes[name] = changes
                    snap = seg.ledger.snapshot()
                    for ident in recovery.identities(snap):
                        self._where.setdefault(ident, set()).add(name)
                    self._watch_identities(snap)
            except (IpcsemError, OSError, ValueError) as e:
                self._problem(name, f"skipped: {e}")
        return moved

    def _deaths(self, events: list[tuple[int, int]]) -> None:
        died = time.time_ns()
        self._settled.clear()       # (rare) the next sweep looks everywhere again
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
        quiet = 0               # new-holder polls in a row that found nothing
        while not self._stopping:
            now = time.monotonic()
            if now >= next_sweep:
                self.run_once_sweep()
                now = time.monotonic()
                next_sweep = now + self.sweep
            elif self._poll_changes():
                quiet = 0
            else:
                quiet += 1
            # Deaths of watched holders wake the epoll at once whatever the
            # timeout; the timeout only paces the look for newcomers.  Each
            # look costs ~150 us of a cold cache over 100 ledgers, so an idle
            # supervisor backs off: self.poll after a change, doubling while
            # nothing changes, up to IDLE_BACKOFF times it.  A newcomer that
            # dies before it is watched is still recovered at the next look
            # (its pidfd cannot be opened); one a waiter waits for is watched
            # by that waiter too.
            wait = min(self.poll * min(1 << min(quiet, 8), IDLE_BACKOFF), next_sweep - now)
            try:
                events = self._poller.poll(max(wait, 0.0))
            except InterruptedError:
                continue
            if events:
                quiet = 0
                self._deaths(events)

    def close(self) -> None:
        for ident in list(self._watch):
            self._forget(ident)
        for name in list(self.segments):
            self._drop(name)
        self._poller.close()
