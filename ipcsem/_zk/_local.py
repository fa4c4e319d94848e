"""This machine's processes: who is local, who is dead, and fast cleanup.

A node in a queue names the process that made it by (machine key, pid,
start).  The machine key is a hash of the kernel's boot id and the pid
namespace: two hosts that share a hostname, or two containers on one kernel
whose pids overlap, have different keys, so a pid is only ever looked up on
the machine (and in the pid namespace) where it means that process.

A :class:`Reaper` watches local processes through pidfds (``os.pidfd_open``,
Linux >= 5.3): the fd becomes readable when the process exits, zombie or
not.  Identity is re-checked *after* the fd is opened (the start time of the
pid), which closes the pid-reuse window: the fd refers to one process for
its whole life.  When a watched process dies, its nodes are deleted at once,
so its units come back in milliseconds instead of after a session timeout.
A stopped (SIGSTOP) or slow process is alive: never reaped.
"""
from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import threading
from collections.abc import Callable

from .. import _proc
from .._identity import start_of

log = logging.getLogger("ipcsem.zk")


def _machine_key() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "no-boot-id:" + socket.gethostname()
    try:
        st = os.stat("/proc/self/ns/pid")
        ns = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        ns = "no-pidns"
    return hashlib.sha256(f"{boot}/{ns}".encode()).hexdigest()[:16]


MACHINE_KEY = _machine_key()
HOSTNAME = socket.gethostname()[:255]
HAVE_PIDFD = hasattr(os, "pidfd_open")


class _Me:
    """This process's identity, recomputed in a forked child (which holds
    nothing: its parent's nodes are its parent's)."""

    def __init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.pid = os.getpid()
        self.start = start_of(self.pid) or 0


ME = _Me()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ME.refresh)

DEAD = -1
IDLE_PIDFDS = 64      # pidfds of processes no longer watched kept open, the latest first


def open_watch(pid: int, start: int) -> int:
    """A pidfd for the live process (pid, start), or DEAD.  A process we
    may not see (another user's, hidepid) raises PermissionError: callers
    treat it as alive."""
    if pid <= 0:
        return DEAD
    if not HAVE_PIDFD:
        return DEAD if start_of(pid) != start else _poll_fallback()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return DEAD
    # The fd pins *a* process with this pid; is it ours?  (pid reuse)
    if start_of(pid) != start:
        os.close(fd)
        return DEAD
    return fd


def is_dead(pid: int, start: int) -> bool:
    """The local process (pid, start) has exited (a zombie has: its pidfd is
    readable).  A process we may not see counts as alive."""
    try:
        fd = open_watch(pid, start)
    except OSError:               # PermissionError included: hidden, so alive
        return False
    if fd == DEAD:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    finally:
        os.close(fd)


def _poll_fallback() -> int:
    raise PermissionError("no pidfd_open on this platform: local reaping is off")


def is_local(mkey: str) -> bool:
    return mkey == MACHINE_KEY


class Reaper:
    """One thread that watches local processes owning nodes and, when one
    dies, calls ``delete(paths, pid, start)`` once with its nodes.

    ``watch(path, pid, start, owner)`` is idempotent per owner and cheap
    for a path already watched; ``forget(path, owner)`` drops that owner's
    interest, and the path is unwatched when no owner is left (several
    waiters of one process may watch the same holder).  ``delete`` may
    raise: the paths stay queued and are retried on the next event."""

    def __init__(self, delete: Callable[[list[str], int, int], object],
                 name: str = "ipcsem-zk-reaper") -> None:
        self._delete = delete
        self._lock = threading.Lock()
        self._paths: dict[str, tuple[int, int]] = {}      # path -> (pid, start)
        self._owners: dict[str, set[object]] = {}         # path -> who wants it watched
        self._fds: dict[tuple[int, int], int] = {}       # identity -> pidfd
        self._dead: set[str] = set()
        # fds no longer needed, closed by the reaper thread itself between two
        # selects: closed under a running select, a number could be reused by
        # another file and its readiness taken for a death.
        self._to_close: list[int] = []
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._closed = False
        self.reaped = 0
        self._thread = _proc.start_named_thread(name, self._run)

    def watch(self, path: str, pid: int, start: int, owner: object = None) -> None:
        ident = (pid, start)
        with self._lock:
            if self._closed:
                return
            self._owners.setdefault(path, set()).add(owner)
            if path in self._paths or path in self._dead:
                return
            if ident in self._fds:
                # another node of a process watched already: its pidfd is
                # polled, nothing for the reaper thread to do (no wake-up);
                # moved to the end: the latest are the idle ones kept longest
                self._fds[ident] = self._fds.pop(ident)
                self._paths[path] = ident
                return
            try:
                fd = open_watch(pid, start)
            except PermissionError:
                return  # cannot see it: treat as alive, never reap
            except OSError as e:
                log.debug("pidfd_open(%d): %s", pid, e)
                return
            if fd == DEAD:
                self._dead.add(path)
            else:
                self._fds[ident] = fd
            self._paths[path] = ident
        self.poke()

    def forget(self, path: str, owner: object = None) -> None:
        with self._lock:
            owners = self._owners.get(path)
            if owners is not None:
                owners.discard(owner)
                if owners:
                    return
                del self._owners[path]
            self._paths.pop(path, None)
            self._dead.discard(path)
            self._gc()

    def watched(self) -> set[str]:
        with self._lock:
            return set(self._paths)

    def _gc(self) -> None:
        # The pidfds of processes no longer watched linger (the most recent
        # IDLE_PIDFDS of them): under contention a waiter watches the same
        # processes at every acquisition, and opening a pidfd means reading
        # /proc to check its identity, and waking this thread to poll it.
        # An idle one stays polled: its process's death closes it.
        live = set(self._paths.values())
        idle = [i for i in self._fds if i not in live]
        for ident in idle[:max(0, len(idle) - IDLE_PIDFDS)]:
            self._to_close.append(self._fds.pop(ident))

    def poke(self) -> None:
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        while True:
            with self._lock:
                for fd in self._to_close:
                    os.close(fd)
                self._to_close.clear()
                if self._closed:
                    return
                fds = {fd: ident for ident, fd in self._fds.items()}
                dead = set(self._dead)
            if dead:
                self._reap(dead)
            poller = select.poll()       # not select(): fds above 1024 are fine
            poller.register(self._r, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                ready = [fd for fd, _ev in poller.poll(1000 if dead else None)]
            except OSError as e:
                log.warning("reaper poll: %s", e)   # never expected: fds close only here
                continue
            if self._r in ready:
                try:
                    os.read(self._r, 4096)
                except BlockingIOError:
                    pass
            gone = [fds[fd] for fd in ready if fd in fds]
            if gone:
                with self._lock:
                    for ident in gone:
                        fd = self._fds.pop(ident, -1)
                        if fd >= 0:
                            self._to_close.append(fd)
                        for p, i in self._paths.items():
                            if i == ident:
                                self._dead.add(p)

    def _reap(self, dead: set[str]) -> None:
        by_ident: dict[tuple[int, int], list[str]] = {}
        for path in dead:
            with self._lock:
                ident = self._paths.get(path)
                if ident is None:
                    self._dead.discard(path)
                    self._owners.pop(path, None)
                    continue
            by_ident.setdefault(ident, []).append(path)
        for (pid, start), paths in by_ident.items():
            try:
                self._delete(sorted(paths), pid, start)
            except Exception as e:  # noqa: BLE001 - whatever the server said: retried next round
                log.debug("reaping %s failed: %s", paths, e)
                continue
            with self._lock:
                for path in paths:
                    self._dead.discard(path)
                    self._paths.pop(path, None)
                    self._owners.pop(path, None)
                self._gc()
            self.reaped += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.poke()
        self._thread.join(5)
        with self._lock:
            for fd in [*self._fds.values(), *self._to_close]:
                os.close(fd)
            self._fds.clear()
            self._to_close.clear()
        os.close(self._r)
        os.close(self._w)
