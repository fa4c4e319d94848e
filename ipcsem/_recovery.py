"""Recovery: return the units of dead processes, exactly once.

``heal(segment)`` is the single recovery step every path uses (blocked
waiters, Semaphore.recover(), the supervisor): look at every identity the
ledger knows, ask the kernel whether it is dead, and call the ledger's
``recover(pid, start)``, which is idempotent under the ledger lock: however
many healers race, a dead process's units are posted once.
"""
from __future__ import annotations

import logging

from . import _identity

log = logging.getLogger("ipcsem")


def identities(holders, waiters) -> set[tuple[int, int]]:
    """Every (pid, start) a ledger snapshot mentions."""
    return {(h[1], h[2]) for h in holders} | {(w[2], w[3]) for w in waiters}


def recover_identity(segment, pid: int, start: int, on_recover=None) -> int:
    """Return what one identity, known to be dead, holds or waits for; ring
    the waiters this grants to; report it.  Units recovered (0 if another
    recoverer got there first)."""
    units, entries, wakes = segment.ledger.recover(pid, start)
    segment.ring(wakes)
    if units or entries:
        log.info("recovered %d unit(s) of %s from dead pid %d", units, segment.name, pid)
        if on_recover is not None:
            on_recover(segment.name, pid, start, units, entries)
    return units


def heal(segment, on_recover=None) -> int:
    """Recover every dead holder/waiter of one semaphore; units recovered."""
    _header, holders, waiters, wakes = segment.ledger.snapshot()
    segment.ring(wakes)
    return sum(recover_identity(segment, pid, start, on_recover)
               for pid, start in identities(holders, waiters) if _identity.is_dead(pid, start))


class Supervisor:
    """Watch holders of ipcsem semaphores and recover dead ones fast.

    Death is noticed three ways, fastest first:
    - a pidfd (Linux >= 5.3) per watched process becomes readable the moment
      it exits (before it is reaped, so zombies count as dead);
    - every ``poll`` seconds, a lock-free read of each ledger's change counter
      tells us a new process registered, and we start watching it;
    - every ``sweep`` seconds, a full heal of every semaphore (catches what
      pidfds cannot: no pidfd support, fd limits, identities we missed) and a
      rescan of names when no names were given.
    Nothing is remembered that the ledger does not say: a restarted or second
    supervisor is harmless because ledger recovery is idempotent.
    """

    def __init__(self, names=None, *, sweep: float = 1.0, poll: float = 0.02,
                 on_recover=None, on_error=None) -> None:
        self.names = list(names) if names else None
        self.sweep = sweep
        self.poll = poll
        self.on_recover = on_recover
        self.on_error = on_error or (lambda name, err: log.warning("%s: %s", name, err))
        self.segments: dict[str, object] = {}
        self._seen_changes: dict[str, int] = {}
        self._watch: dict[tuple[int, int], int] = {}      # identity -> pidfd
        self._by_fd: dict[int, tuple[int, int]] = {}
        self._death_ns: dict[tuple[int, int], int] = {}
        self._bad: set[str] = set()
        self._stopping = False
        self._pidfd = hasattr(__import__("os"), "pidfd_open")

    def stop(self) -> None:
        self._stopping = True

    # ------------------------------------------------------------- plumbing
    def _refresh_names(self) -> None:
        from . import _names, _segment
        from ._errors import IpcsemError

        wanted = self.names if self.names is not None else _names.names()
        for name in list(self.segments):
            seg = self.segments[name]
            if name not in wanted or seg.ledger.unlinked:
                seg.close()
                del self.segments[name]
                self._seen_changes.pop(name, None)
        for name in wanted:
            if name in self.segments:
                continue
            try:
                self.segments[name] = _segment.open_segment(name)
                self._bad.discard(name)
            except IpcsemError as e:
                if name not in self._bad:  # say it once, not every sweep
                    self._bad.add(name)
                    self.on_error(name, e)

    def _watch_identities(self, seg) -> None:
        import os

        _h, holders, waiters, wakes = seg.ledger.snapshot()
        seg.ring(wakes)
        for ident in identities(holders, waiters):
            if ident in self._watch or not self._pidfd:
                continue
            try:
                fd = os.pidfd_open(ident[0])
            except ProcessLookupError:
                self._heal(seg)
                continue
            except OSError:
                continue  # out of fds or no permission: the sweep covers it
            # The pid could have been reused between the ledger and pidfd_open:
            # the start time decides whose pidfd this is.
            if _identity.start_of(ident[0]) != ident[1]:
                os.close(fd)
                self._heal(seg)
                continue
            self._watch[ident] = fd
            self._by_fd[fd] = ident

    def _report(self, name, pid, start, units, entries) -> None:
        if self.on_recover is not None:
            self.on_recover(name, pid, start, units, entries, self._death_ns.get((pid, start)))

    def _heal(self, seg) -> int:
        return heal(seg, self._report)

    def _recover(self, seg, ident) -> None:
        from ._errors import IpcsemError

        try:
            recover_identity(seg, *ident, self._report)
        except IpcsemError as e:
            self.on_error(seg.name, e)

    def _forget(self, ident) -> None:
        import os

        fd = self._watch.pop(ident, None)
        if fd is not None:
            self._by_fd.pop(fd, None)
            os.close(fd)

    # ------------------------------------------------------------- the loop
    def run_once_sweep(self) -> None:
        from ._errors import IpcsemError

        self._refresh_names()
        for name, seg in list(self.segments.items()):
            try:
                self._heal(seg)
                self._seen_changes[name] = seg.ledger.changes
                self._watch_identities(seg)
            except IpcsemError as e:
                self.on_error(name, e)
        # Close pidfds of the dead the poll has not reported (it will not now).
        for ident in list(self._watch):
            if _identity.status(*ident) in (_identity.DEAD, _identity.ZOMBIE):
                self._forget(ident)

    def run(self) -> None:
        import select
        import time

        poller = select.poll()
        registered: set[int] = set()
        next_sweep = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_sweep:
                self.run_once_sweep()
                next_sweep = now + self.sweep
            else:
                for name, seg in list(self.segments.items()):
                    changes = seg.ledger.changes
                    if changes != self._seen_changes.get(name):
                        self._seen_changes[name] = changes
                        self._watch_identities(seg)
            for fd in self._by_fd.keys() - registered:
                poller.register(fd, select.POLLIN)
                registered.add(fd)
            for fd in registered - self._by_fd.keys():
                poller.unregister(fd)
                registered.discard(fd)
            try:
                events = poller.poll(self.poll * 1000)
            except InterruptedError:
                continue
            if not events:
                continue
            died = time.time_ns()
            for fd, _ev in events:
                ident = self._by_fd.get(fd)
                if ident is None:
                    continue
                self._death_ns[ident] = died
                poller.unregister(fd)
                registered.discard(fd)
                self._forget(ident)
                # The pidfd was opened for a verified (pid, start): readable
                # means that identity is dead.  recover() is idempotent and
                # cheap where the identity holds nothing.
                for seg in list(self.segments.values()):
                    self._recover(seg, ident)
                self._death_ns.pop(ident, None)  # reported where it held anything

    def close(self) -> None:
        for ident in list(self._watch):
            self._forget(ident)
        for seg in self.segments.values():
            seg.close()
        self.segments.clear()
