"""The oracle: proof of over-admission that owes nothing to ipcsem.

``files`` lock files in a private directory.  Holding k units means holding
k of them with ``flock(LOCK_EX|LOCK_NB)``; a worker that got its units from
ipcsem but finds fewer free files has proved that more processes hold units
than there are units: an *over-admission*, appended to a violations file (one
O_APPEND write, before anything else; "diag:" lines gathered afterwards
follow it).  The kernel keeps the flocks and drops a dead process's at once,
so the oracle trusts nothing ipcsem wrote.  Two things keep it free of false
positives:

* takers scan the files one at a time, under a blocking flock on a guard
  file (see :meth:`Oracle.take`);
* the kernel drops a dead process's flocks while it closes its files, which
  happens before the process becomes a zombie, i.e. before pidfd, /proc or
  anything ipcsem's recovery looks at can call it dead.  A dead holder's
  files are therefore free before its units can be given to anyone else.

On a slotted semaphore the oracle is per slot: file ``s`` is unit number
``s``, and a worker must get exactly the files its lease's slots name.  Slot
``s``'s file held by another process is an over-admission *of that slot*; a
lease whose slots are not ``units`` distinct numbers in 0..capacity-1 is a
``bad-slots`` violation.

Every grant is also logged (:mod:`ipcsem.chaos.tokens`): under the guard, so
that on a mutex (one holder at a time) the log's order is the order in which
the owners held it.

Imports only the standard library at the top: exec'd workers pay for it.
"""
from __future__ import annotations

import fcntl
import os
import time

OVER_ADMISSION = "over-admission"
BAD_SLOTS = "bad-slots"


class Oracle:
    """``files`` lock files; holding k units means holding k of them.

    Every Oracle opens its own file descriptions, so two Oracles in one
    process conflict exactly like two processes (flock locks belong to the
    open file description).  ``grants``: the grant log to append to (None:
    no log).  ``capacity``: the semaphore's, for the slot checks (default:
    ``files``)."""

    def __init__(self, directory: str, files: int, violations: str, who: str = "", *,
                 grants: str | None = None, capacity: int | None = None) -> None:
        self.paths = [os.path.join(directory, f"unit-{i}") for i in range(files)]
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in self.paths]
        self._guard = os.open(os.path.join(directory, "guard"), os.O_RDWR | os.O_CREAT, 0o600)
        self._vfd = os.open(violations, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._gfd = (None if grants is None
                     else os.open(grants, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        self.capacity = files if capacity is None else capacity
        self.who = who
        self.held: list[int] = []

    # ------------------------------------------------------------ counting
    def take(self, units: int, first: int = 0, grant: tuple[int, int, bool] | None = None) -> bool:
        """Lock ``units`` distinct files (trying each, from index ``first``).
        False, with one line appended to the violations file, if fewer were
        free: more units are in use than exist.  ``grant`` (asked_ns, token,
        previous_owner_died) is logged under the guard.

        Takers scan one at a time, under a blocking flock on a guard file.
        Without it the check has false positives: B passes file 0 while A
        holds it; A unlocks file 0 and releases its unit; C gets that unit and
        takes file 2 before B reaches it; B finds every file busy with only
        `capacity` units in use (seen with a kernel POSIX semaphore: 75 false
        alarms in 40 s).  Under the guard nobody takes a file during a scan,
        and files only ever become free (unlock, or the kernel at a holder's
        death), so at most ``capacity - units`` files can be busy if there is
        no over-admission, and one pass finds the rest."""
        n = len(self.fds)
        got: list[int] = []
        fcntl.flock(self._guard, fcntl.LOCK_EX)
        try:
            self._log_grant(grant)
            for j in range(n):
                if len(got) == units:
                    break
                fd = self.fds[(first + j) % n]
                if self._try_lock(fd):
                    got.append(fd)
            self.held = got
            if len(got) < units:
                self._violation(OVER_ADMISSION, f"acquired {units} unit(s) but only {len(got)} "
                                                f"of {n} oracle file(s) were free")
                return False
            return True
        finally:
            fcntl.flock(self._guard, fcntl.LOCK_UN)

    # --------------------------------------------------------------- slots
    def take_slots(self, slots: tuple[int, ...], units: int,
                   grant: tuple[int, int, bool] | None = None) -> bool:
        """Lock exactly the files of the unit numbers ``slots`` (a lease's
        ``slots`` for ``units`` units).  False, with a line in the violations
        file, if they are not ``units`` distinct numbers in 0..capacity-1
        (bad-slots), or if another process holds one of their files
        (over-admission of that slot).  Files are taken modulo their number,
        so an oracle with fewer files than units must report collisions (its
        self-test).  No scan, so no scan race; the guard orders the log."""
        n = len(self.fds)
        fcntl.flock(self._guard, fcntl.LOCK_EX)
        try:
            self._log_grant(grant)
            self.held = []
            ok = (isinstance(slots, tuple) and len(slots) == units == len(set(slots))
                  and all(s.__class__ is int and 0 <= s < self.capacity for s in slots))
            if not ok:
                self._violation(BAD_SLOTS, f"acquired {units} unit(s) of {self.capacity}; the "
                                           f"lease names slots {slots!r}")
                return False
            taken: set[int] = set()
            for s in slots:
                i = s % n
                if i in taken or not self._try_lock(self.fds[i]):
                    self._violation(OVER_ADMISSION, f"holds slot(s) {list(slots)}, but the "
                                                    f"oracle file of slot {s} (file {i}) is "
                                                    "held by another process")
                    return False
                taken.add(i)
                self.held.append(self.fds[i])
            return True
        finally:
            fcntl.flock(self._guard, fcntl.LOCK_UN)

    # ------------------------------------------------------------ the rest
    def log_release(self, token: int) -> None:
        """A normal release of grant ``token`` has returned (mutex storms:
        from here on its successor must not be told its owner died)."""
        if self._gfd is not None:
            os.write(self._gfd, f"R {token}\n".encode())

    def release(self) -> None:
        for fd in self.held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self.held = []

    def diagnose(self) -> str:
        """Who holds the oracle files now, per /proc/locks, and in what state
        those processes are (for a violation's second line)."""
        from .. import _proc

        owners = []
        for i, path in enumerate(self.paths):
            for pid in _proc.locks_on(path):
                owners.append(f"file{i}:pid{pid}:{proc_state(pid)}")
        return " ".join(sorted(owners))

    def note(self, text: str) -> None:
        os.write(self._vfd, f"    diag: {text}\n".encode())

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        os.close(self._guard)
        os.close(self._vfd)
        if self._gfd is not None:
            os.close(self._gfd)
        self.fds = []

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _violation(self, kind: str, what: str) -> None:
        line = f"{time.time():.6f} {kind}: {self.who} pid {os.getpid()} {what}\n"
        os.write(self._vfd, line.encode())

    def _log_grant(self, grant: tuple[int, int, bool] | None) -> None:
        # The time is read under the guard, after the grant: see tokens.py.
        if self._gfd is not None and grant is not None:
            asked_ns, token, died = grant
            os.write(self._gfd, f"G {asked_ns} {time.monotonic_ns()} {token} {int(died)} "
                                f"{os.getpid()}\n".encode())


def proc_state(pid: int) -> str:
    """A process's state letter (R, S, Z, ...), "gone" if there is none."""
    from .. import _proc

    try:
        st = _proc.stat(pid)
    except PermissionError:
        return "hidden"
    return "gone" if st is None else st.state


def count_violations(path: str, kind: str = OVER_ADMISSION) -> int:
    """Violations of ``kind`` in the violations file (diag lines not counted)."""
    marker = f" {kind}: ".encode()
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if marker in line and not line.startswith(b" "))
    except FileNotFoundError:
        return 0
