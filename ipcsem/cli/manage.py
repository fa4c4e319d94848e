"""``ipcsem create``, ``rm`` and ``recover``: the subcommands that change a
semaphore.  Each is bounded in time on a wedged semaphore (its ledger lock
held by a stopped process), says which one it is and goes on with the
others; run as root on another user's semaphore, the change is made by a
child running as that user (``privsep``)."""
from __future__ import annotations

import argparse
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import _args, _names
from .._errors import Corrupt, IpcsemError, NotFound, PermissionDenied, Wedged
from .._shm import _ledger, recovery
from .._shm.segment import DEFAULT_SLOTS, open_segment, owner_of, remove_file, unlink
from . import privsep
from .common import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    Subcommands,
    UsageError,
    exit_codes,
    is_shm,
    mode_arg,
    name_arg,
    positive_int,
)
from .procinfo import stopped
from .render import plural

LOCK_BOUND = 1.0     # seconds one semaphore's ledger lock may keep rm/recover waiting
Emit = Callable[[dict[str, Any]], None]
Job = Callable[[list[str], Emit], int]       # job(names, emit) -> exit status


def add_parser(sub: Subcommands) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    sp = sub.add_parser(
        "create", help="create a semaphore (or a mutex)", formatter_class=raw,
        description="Create the semaphore NAME with N units, or with --mutex a robust mutex\n"
                    "(capacity 1, owned by the acquiring thread; `ipcsem run` holds it\n"
                    "for a command).  --slots numbers the units 0..N-1 so each grant says\n"
                    "which it got (IPCSEM_SLOTS in `ipcsem run`).  --no-fair lets free\n"
                    "units be barged (throughput over strict FIFO).  Policy is fixed at\n"
                    "creation: reopening with other settings is an error.",
        epilog="examples:\n  ipcsem create gpu --capacity 2\n"
               "  ipcsem create gpu --capacity 4 --slots --mode 0660 --group video\n"
               "  ipcsem create jobs --capacity 8 --initial 0 --mode 0660\n"
               "  ipcsem create migrate --mutex\n\n"
               + exit_codes("error (exists, capacity mismatch, permission, ...)"))
    sp.add_argument("name", metavar="NAME", type=name_arg)
    sp.add_argument("--capacity", type=positive_int, metavar="N",
                    help="number of units (required unless --mutex)")
    sp.add_argument("--initial", type=int, metavar="K",
                    help="units available at first (default N; the rest are out, unowned)")
    sp.add_argument("--slots", action="store_true",
                    help="number the units 0..N-1; grants say which they got "
                         f"(N <= {_args.MAX_SLOTTED_CAPACITY})")
    sp.add_argument("--fair", action=argparse.BooleanOptionalAction, default=True,
                    help="strict FIFO (default); --no-fair: free units may be taken ahead "
                         "of woken waiters (bounded)")
    sp.add_argument("--mutex", action="store_true",
                    help="a robust mutex instead of a semaphore (capacity 1)")
    sp.add_argument("--reentrant", action="store_true",
                    help="with --mutex: its owner may nest acquires")
    sp.add_argument("--mode", type=mode_arg, default=0o600, metavar="MODE",
                    help="octal permissions of the shared memory (default 0600; 0660 "
                         "shares with the group)")
    sp.add_argument("--group", metavar="GROUP",
                    help="group (name or gid) to share it with (use with --mode 0660)")
    sp.add_argument("--max-holders", type=positive_int, default=DEFAULT_SLOTS,
                    metavar="N", help=f"holder slots (default {DEFAULT_SLOTS})")
    sp.add_argument("--max-waiters", type=positive_int, default=DEFAULT_SLOTS,
                    metavar="N", help=f"queue entries (default {DEFAULT_SLOTS})")
    sp.add_argument("--exist-ok", action="store_true",
                    help="succeed if NAME exists with these settings")
    sp.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    sp.set_defaults(func=run_create)

    sp = sub.add_parser(
        "rm", help="remove semaphores (like ipcrm)", formatter_class=raw,
        description="Remove each NAME.  Refuses while units are held or requests queued\n"
                    "(units of dead holders are recovered first), or while its ledger lock\n"
                    "is held by a stopped process, unless --force.  With --force, queued\n"
                    "waiters fail with ipcsem.Unlinked; holders keep working on the\n"
                    "removed object; a later open creates a new one.  --force also\n"
                    "removes an object that is not a usable ledger.  Run as root on another\n"
                    "user's semaphore, the removal is done as that user.",
        epilog="examples:\n  ipcsem rm gpu\n  ipcsem rm --force gpu licences\n"
               "  ipcsem ls | grep '^test-' | xargs ipcsem rm\n\n" + EXIT_CODES)
    sp.add_argument("names", nargs="+", metavar="NAME", type=name_arg)
    sp.add_argument("-f", "--force", action="store_true",
                    help="remove even while in use, wedged or corrupt")
    sp.set_defaults(func=run_rm)

    sp = sub.add_parser(
        "recover", help="return dead holders' units now", formatter_class=raw,
        description="Recover the units and queue entries of dead processes of each NAME\n"
                    "(every semaphore without NAME) once, and print one line per recovered\n"
                    "process; roll back an update a dead process left half done.  A\n"
                    f"semaphore whose ledger lock is not free within {LOCK_BOUND:g} s (held by a\n"
                    "stopped process) is reported as wedged and skipped.  Run as root, each\n"
                    "user's semaphores are recovered by a process running as that user.",
        epilog="examples:\n  ipcsem recover\n  ipcsem recover gpu\n\n"
               "output:\n  recovered name=gpu pid=4242 units=2 queue_entries=0\n"
               "  repaired name=gpu lock_owner=4243   (its half-done update rolled back)\n\n"
               + EXIT_CODES)
    sp.add_argument("names", nargs="*", metavar="NAME", type=name_arg)
    sp.set_defaults(func=run_recover)


# ================================================================ create
def run_create(args: argparse.Namespace) -> int:
    from .._semaphore import Mutex, Semaphore

    if args.mutex:
        for flag, given in (("--capacity", args.capacity is not None),
                            ("--initial", args.initial is not None), ("--slots", args.slots),
                            ("--no-fair", not args.fair)):
            if given:
                raise UsageError(f"{flag} does not apply to --mutex (a mutex has one unit, "
                                 "served in FIFO order)")
    elif args.capacity is None:
        raise UsageError("--capacity N is required (or --mutex)")
    elif args.reentrant:
        raise UsageError("--reentrant applies to --mutex only")
    if args.group is not None and not is_shm(args.backend):
        raise UsageError("--group applies to the shm backend only (file ownership)")
    group = _group(args.group)
    common: dict[str, Any] = dict(mode=args.mode, max_holders=args.max_holders,
                                  max_waiters=args.max_waiters, backend=args.backend)
    if group is not None:
        common["group"] = group
    # Whether this call laid the ledger out is decided under the creation
    # flock, so of two racing `ipcsem create`s exactly one reports success.
    sem: Mutex | Semaphore
    if args.mutex:
        sem = Mutex(args.name, reentrant=args.reentrant, **common)
    else:
        sem = Semaphore(args.name, args.capacity, initial=args.initial, slots=args.slots,
                        fair=args.fair, **common)
    try:
        avail, params, created = sem.available, sem.params, sem.created
    finally:
        sem.close()
    if not created and not args.exist_ok:
        raise CliError(f"semaphore {args.name!r} already exists (use --exist-ok to accept it)")
    if not args.quiet:
        if params.kind == "mutex":
            print(f"{args.name}: mutex{', reentrant' if params.reentrant else ''}, "
                  f"{'unlocked' if avail else 'locked'}, mode {params.mode:04o}")
        else:
            extra = (f", slots 0..{params.capacity - 1}" if params.slots else "") + \
                    ("" if params.fair else ", unfair")
            print(f"{args.name}: capacity {params.capacity}, {avail} available, "
                  f"mode {params.mode:04o}{extra}")
    return EXIT_OK


def _group(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    import grp

    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"no such group {text!r}") from None


# =============================================== events of a change job
class Printer:
    """Prints the events of a change job, ours or a dropped child's (then
    untrusted: each is checked before a word of it is shown)."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.rc = EXIT_OK

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        name = ev.get("name")
        if kind == "recovered" and isinstance(name, str) and _names.is_valid(name) and \
                all(privsep.is_int(ev.get(k)) for k in ("pid", "units", "entries")):
            print(f"recovered name={name} pid={ev['pid']} units={ev['units']} "
                  f"queue_entries={ev['entries']}", flush=True)
        elif kind == "repaired" and isinstance(name, str) and _names.is_valid(name) and \
                (ev.get("lock_owner") is None or privsep.is_int(ev.get("lock_owner"))):
            print(f"repaired name={name} lock_owner={ev.get('lock_owner') or '?'}", flush=True)
        elif kind == "error":
            print(f"{self.prog}: {privsep.printable(ev.get('message', '?'))}",
                  file=sys.stderr, flush=True)
            self.rc = EXIT_ERROR
        elif kind == "note":
            print(f"{self.prog}: {privsep.printable(ev.get('message', '?'))}",
                  file=sys.stderr, flush=True)

    def child(self, uid: int, names: list[str], job: Job) -> None:
        """Run ``job(names, emit)`` as ``uid`` and print what it says."""
        events, code = privsep.as_user(uid, lambda emit: job(names, emit))
        for ev in events:
            self(ev)
        if code == -1:
            self({"event": "error", "message": f"the process working as uid {uid} on "
                                               f"{' '.join(names)} did not finish in time"})
        elif code != 0:
            self.rc = EXIT_ERROR


def _by_owner(names: list[str], printer: Printer, explicit: bool) -> dict[int | None, list[str]]:
    """NAMEs grouped by the uid that must change them (None: this process)."""
    groups: dict[int | None, list[str]] = {}
    for name in names:
        try:
            st = owner_of(name)
        except NotFound as e:
            if explicit:
                printer({"event": "error", "message": str(e)})
            continue
        uid = st.st_uid if stat.S_ISREG(st.st_mode) and privsep.needs_drop(st.st_uid) \
            else None
        groups.setdefault(uid, []).append(name)
    return groups


def _wedge(snap: _ledger.Snapshot) -> str | None:
    """Why the ledger's lock cannot be had soon, from a lock-free snapshot."""
    owner = snap.header.lock_owner
    if owner > 0 and stopped(owner):
        return f"its ledger lock is held by stopped pid {owner} (stopped or hung)"
    return None


def _bound() -> int:
    return time.monotonic_ns() + int(LOCK_BOUND * 1e9)


# ==================================================================== rm
def run_rm(args: argparse.Namespace) -> int:
    if not is_shm(args.backend):
        return _rm_remote(args)
    printer = Printer("ipcsem rm")
    for uid, names in _by_owner(args.names, printer, True).items():
        job = _rm_job(args.force)
        if uid is None:
            job(names, printer)
        else:
            printer.child(uid, names, job)
    return printer.rc


def _rm_job(force: bool) -> Job:
    def job(names: list[str], emit: Emit) -> int:
        for name in names:
            try:
                _rm_one(name, force)
            except (IpcsemError, CliError, ValueError, OSError) as e:
                emit({"event": "error", "message": str(e)})
        return 0
    return job


def _rm_one(name: str, force: bool) -> None:
    try:
        seg = open_segment(name, wait_for_creator=False)
    except (Corrupt, Wedged) as e:
        if not force:
            why = e.reason if isinstance(e, Corrupt) else str(e)
            raise CliError(f"{name!r} is not a usable ledger ({why}); "
                           "use --force to remove it") from None
        remove_file(name)
        return
    lock_wait = 5.0
    try:
        snap = seg.ledger.snapshot()
        wedged = _wedge(snap)
        if wedged is not None:
            if not force:
                raise CliError(f"{name!r}: {wedged}; use --force to remove it anyway")
            lock_wait = 0.2     # waiters cannot be told: remove the name anyway
        elif not force:
            try:
                recovery.heal(seg, lock=_bound())   # dead holders do not keep a name alive
            except Wedged as e:
                e.name, e.waited = name, LOCK_BOUND
                raise CliError(f"{e}; use --force to remove it anyway") from None
            snap = seg.ledger.snapshot()
    finally:
        seg.close()
    held = [(h.pid, h.units) for h in snap.holders if h.units > 0]
    queued = sum(1 for w in snap.waiters if w.state == _ledger.WAITING)
    if (held or queued) and not force:
        who = ", ".join(f"pid {pid}" + (f" ({units})" if len(held) > 1 else "")
                        for pid, units in held[:3])
        more = f" and {len(held) - 3} more" if len(held) > 3 else ""
        parts = []
        if held:
            parts.append(f"{sum(u for _, u in held)} unit(s) held by {who}{more}")
        if queued:
            parts.append(plural(queued, "waiter"))
        raise CliError(f"{name!r} is in use: {'; '.join(parts)}; "
                       "use --force to remove it anyway")
    unlink(name, lock_wait=lock_wait)


def _rm_remote(args: argparse.Namespace) -> int:
    """``rm`` on a backend other than shm: refused while in use (without
    --force), as on shm; queued waiters fail with Unlinked."""
    from .. import _backend

    backend = _backend.resolve(args.backend)
    rc = EXIT_OK
    for name in args.names:
        try:
            if not args.force:
                handle = backend.open(name, None)
                try:
                    held = sum(h.units for h in handle.holders())
                    queued = len(handle.waiters())
                finally:
                    handle.close()
                if held or queued:
                    raise CliError(f"{name!r} is in use: {held} unit(s) held, "
                                   f"{plural(queued, 'waiter')}; use --force to remove it anyway")
            backend.unlink(name)
        except (IpcsemError, CliError, ValueError, OSError) as e:
            print(f"ipcsem rm: {e}", file=sys.stderr)
            rc = EXIT_ERROR
    return rc


def _recover_remote(args: argparse.Namespace) -> int:
    """``recover`` on a backend other than shm: each handle's recover()
    (the dead processes of this machine; other machines' dead go with their
    sessions)."""
    from .. import _backend

    backend = _backend.resolve(args.backend)
    rc = EXIT_OK
    for name in args.names or sorted(backend.names()):
        try:
            handle = backend.open(name, None)
            try:
                units = handle.recover(LOCK_BOUND)
            finally:
                handle.close()
        except NotFound as e:
            if args.names:
                print(f"ipcsem recover: {e}", file=sys.stderr)
                rc = EXIT_ERROR
            continue
        except (IpcsemError, ValueError, OSError) as e:
            print(f"ipcsem recover: {e}", file=sys.stderr)
            rc = EXIT_ERROR
            continue
        if units:
            print(f"recovered name={name} units={units}")
    return rc


# =============================================================== recover
def run_recover(args: argparse.Namespace) -> int:
    if not is_shm(args.backend):
        return _recover_remote(args)
    printer = Printer("ipcsem recover")
    explicit = bool(args.names)
    names = args.names or _names.names()
    for uid, group in _by_owner(names, printer, explicit).items():
        job = _recover_job(explicit)
        if uid is None:
            job(group, printer)
        else:
            printer.child(uid, group, job)
    return printer.rc


def _recover_job(explicit: bool) -> Job:
    def job(names: list[str], emit: Emit) -> int:
        for name in names:
            _recover_one(name, emit, explicit)
        return 0
    return job


def _recover_one(name: str, emit: Emit, explicit: bool) -> None:
    try:
        seg = open_segment(name, wait_for_creator=False)
    except (NotFound, PermissionDenied) as e:
        # Without NAMEs: every semaphore this user may recover; another
        # user's is theirs (or root's) to recover, not an error of ours.
        if explicit:
            emit({"event": "error", "message": str(e)})
        return
    except (IpcsemError, OSError, ValueError) as e:
        emit({"event": "error", "message": str(e)})
        return

    def report(n: str, pid: int, start: int, units: int, entries: int) -> None:
        emit({"event": "recovered", "name": n, "pid": pid, "units": units, "entries": entries})

    try:
        snap = seg.ledger.snapshot()
        wedged = _wedge(snap)
        try:
            recovery.heal(seg, report, lock=_bound())
            owner = snap.header.lock_owner
            if not snap.consistent and owner > 0 and stopped(owner) is None:
                # A process died inside a transaction: taking the lock rolls
                # its half-done update back (and check() verifies the rest).
                seg.ledger.check(_bound())
                emit({"event": "repaired", "name": name, "lock_owner": owner})
        except Wedged as e:
            e.name, e.waited = name, LOCK_BOUND
            emit({"event": "error", "message": f"wedged, skipped: {e}"})
            return
        if wedged is not None:
            emit({"event": "note", "message": f"{name!r} is wedged: {wedged}"})
    except (IpcsemError, OSError, ValueError) as e:
        emit({"event": "error", "message": str(e)})
    finally:
        seg.close()

