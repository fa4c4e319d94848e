"""Contenders: one small class per named-semaphore implementation.

Common interface (what figures/ and worker.py rely on):

    c.key            stable id used on the CLI, in JSON and in worker argv
    c.label          display name in tables/plots
    c.max_capacity   None = any capacity; 1 = mutex only (flock, filelock)
    c.inherit_only   True = other processes cannot open it by name; they must
                     be forked children that inherit the object
                     (multiprocessing.Semaphore)
    c.slow           True = use fewer iterations in tight loops
    c.pair_only      True = a variant measured in figure 1 only (its pair
                     cost next to its base's), not in the contended cells
    c.unavailable()  None if usable, else a human-readable reason
    c.create(cap)    create a fresh semaphore holding `cap` free units and
                     return its *spec*: a JSON-able dict that lets any process
                     open it (for inherit_only contenders the spec may hold a
                     live object and only travels through fork)
    c.open(spec)     -> Handle, a per-process handle on the semaphore
    c.destroy(spec)  remove every OS object behind the spec (idempotent)
    c.shm_files(spec) -> paths under /dev/shm belonging to the semaphore, or
                     None if it has no shm footprint we can see

Handle:
    h.acquire()      blocking acquire of one unit; the fastest bound callable
                     the library offers (no Python wrapper), because the
                     uncontended figure is dominated by call overhead
    h.release()      release one unit
    h.close()

Library imports happen lazily inside methods so that `python -m
tools.bench.worker` starts fast and an unavailable library only disables its
own contender.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import os
import shutil
import tempfile
import threading
from typing import ClassVar

# ---------------------------------------------------------------------------
# Unique names. Every object this run creates carries `bench-<harness pid>-`
# so that leftovers can be found (and attributed) after the run.

_counter = 0
_counter_lock = threading.Lock()
RUN_TAG = os.environ.get("IPCSEM_BENCH_TAG") or f"bench-{os.getpid()}"


def unique_name() -> str:
    global _counter
    with _counter_lock:
        _counter += 1
        return f"{RUN_TAG}-{_counter}"


_tmpdir = None


def lock_dir() -> str:
    """Private tmp dir for file-lock contenders; removed by cleanup_tmpdir()."""
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = os.environ.get("IPCSEM_BENCH_TMPDIR") or tempfile.mkdtemp(
            prefix=f"ipcsem-{RUN_TAG}-")
        # Workers inherit the harness environment; let them know the dir.
        os.environ["IPCSEM_BENCH_TMPDIR"] = _tmpdir
    return _tmpdir


def cleanup_tmpdir() -> None:
    global _tmpdir
    if _tmpdir is not None:
        shutil.rmtree(_tmpdir, ignore_errors=True)
        _tmpdir = None


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


class Handle:
    __slots__ = ("_close", "acquire", "obj", "release")

    def __init__(self, acquire, release, close=None, obj=None):
        self.acquire = acquire
        self.release = release
        self._close = close
        self.obj = obj

    def close(self):
        if self._close is not None:
            self._close()
            self._close = None


class Contender:
    key = "?"
    label = "?"
    max_capacity: int | None = None
    inherit_only = False
    slow = False
    pair_only = False

    def unavailable(self) -> str | None:
        return None

    def phase_jitter(self) -> float:
        """Period (s) of any polling the waiter does. Figure 3 kills the
        holder at a uniformly random phase within it: with a fixed delay a
        poller would always be measured at the same point of its cycle."""
        return 0.0

    def applies(self, capacity: int) -> bool:
        return self.max_capacity is None or capacity <= self.max_capacity

    def version(self) -> str | None:
        return None

    def create(self, capacity: int) -> dict:
        raise NotImplementedError

    def open(self, spec: dict) -> Handle:
        raise NotImplementedError

    def destroy(self, spec: dict) -> None:
        pass

    def shm_files(self, spec: dict):
        return None

    def units_free(self, handle: Handle):
        """Free units right now, if the library can tell (sanity checks)."""
        return None


# ---------------------------------------------------------------------------


class Ipcsem(Contender):
    """The library under construction. Pinned API used here:

        ipcsem.Semaphore(name, capacity=N)   create-or-open
        s.acquire()  (units=1, blocking, no timeout) -> bool
        s.release()  (units=1)
        s.close(); ipcsem.unlink(name)
    """

    key = "ipcsem"
    label = "ipcsem"

    def __init__(self):
        self._creators = {}

    def unavailable(self):
        try:
            import ipcsem
        except Exception as e:  # ImportError, or a half-written package
            return f"import ipcsem failed: {type(e).__name__}: {e}"
        missing = [a for a in ("Semaphore", "unlink") if not hasattr(ipcsem, a)]
        if missing:
            return f"ipcsem lacks {', '.join(missing)}"
        return None

    def version(self):
        try:
            import ipcsem
            return getattr(ipcsem, "__version__", None) or _version("ipcsem")
        except Exception:
            return None

    def phase_jitter(self):
        # Blocked ipcsem waiters wake every HEAL_INTERVAL to look for dead
        # holders (0.5 s when written). Private, so read defensively.
        try:
            from ipcsem._shm import handle
            return float(getattr(handle, "HEAL_INTERVAL", 0.5))
        except Exception:
            return 0.5

    def create(self, capacity):
        import ipcsem
        name = unique_name()
        # Keep the creating handle open until destroy(): we do not want the
        # benchmark to depend on whether a semaphore outlives its last handle.
        self._creators[name] = ipcsem.Semaphore(name, capacity=capacity)
        return {"name": name, "capacity": capacity}

    def open(self, spec):
        import ipcsem
        s = ipcsem.Semaphore(spec["name"], capacity=spec["capacity"])
        return Handle(s.acquire, s.release, s.close, s)

    def destroy(self, spec):
        import ipcsem
        s = self._creators.pop(spec["name"], None)
        try:
            if s is not None:
                s.close()
        finally:
            try:
                ipcsem.unlink(spec["name"])
            except FileNotFoundError:
                pass

    def units_free(self, handle):
        return handle.obj.available

    def shm_files(self, spec):
        # Whatever the library names its shm segment / POSIX semaphores, the
        # semaphore's name is in it (POSIX sems appear as /dev/shm/sem.*).
        return sorted(glob.glob(f"/dev/shm/*{spec['name']}*"))


class IpcsemUnfair(Ipcsem):
    """ipcsem.Semaphore(name, capacity=N, fair=False): barging allowed (a
    releasing or arriving process may take free units before a woken
    waiter), bounded by the ledger's OVERTAKE_LIMIT per queued request."""

    key = "ipcsem-unfair"
    label = "ipcsem fair=False"
    options: ClassVar[dict] = {"fair": False}

    def create(self, capacity):
        import ipcsem
        name = unique_name()
        self._creators[name] = ipcsem.Semaphore(name, capacity=capacity, **self.options)
        return {"name": name, "capacity": capacity}

    def open(self, spec):
        import ipcsem
        s = ipcsem.Semaphore(spec["name"], capacity=spec["capacity"], **self.options)
        return Handle(s.acquire, s.release, s.close, s)


class IpcsemSlots(IpcsemUnfair):
    """ipcsem.Semaphore(name, capacity=N, slots=True): every grant also
    picks unit numbers (lease.slots). Figure 1 only."""

    key = "ipcsem-slots"
    label = "ipcsem slots=True"
    options: ClassVar[dict] = {"slots": True}
    pair_only = True


class IpcsemMutex(Ipcsem):
    """ipcsem.Mutex(name): capacity 1, owned by the acquiring thread.
    Figure 1 only."""

    key = "ipcsem-mutex"
    label = "ipcsem Mutex"
    max_capacity = 1
    pair_only = True

    def create(self, capacity):
        import ipcsem
        name = unique_name()
        self._creators[name] = ipcsem.Mutex(name)
        return {"name": name, "capacity": capacity}

    def open(self, spec):
        import ipcsem
        m = ipcsem.Mutex(spec["name"])
        return Handle(m.acquire, m.release, m.close, m)

    def units_free(self, handle):
        return 0 if handle.obj.locked() else 1


class PosixRaw(Contender):
    """posix_ipc.Semaphore: fast, but a unit held by a dead process is lost."""

    key = "posix"
    label = "posix_ipc raw"

    def unavailable(self):
        try:
            import posix_ipc  # noqa: F401
        except Exception as e:
            return f"import posix_ipc failed: {e}"
        return None

    def version(self):
        return _version("posix_ipc")

    def create(self, capacity):
        import posix_ipc
        name = "/" + unique_name()
        s = posix_ipc.Semaphore(name, posix_ipc.O_CREX, initial_value=capacity)
        s.close()
        return {"name": name}

    def open(self, spec):
        import posix_ipc
        s = posix_ipc.Semaphore(spec["name"])
        return Handle(s.acquire, s.release, s.close, s)

    def destroy(self, spec):
        import posix_ipc
        try:
            posix_ipc.unlink_semaphore(spec["name"])
        except posix_ipc.ExistentialError:
            pass

    def shm_files(self, spec):
        return sorted(glob.glob("/dev/shm/sem." + spec["name"].lstrip("/")))

    def units_free(self, handle):
        return handle.obj.value


class SysvUndo(Contender):
    """sysv_ipc.Semaphore with SEM_UNDO (`sem.undo = True`): the kernel gives
    a dead process's units back. The reference all ratios are taken against."""

    key = "sysv"
    label = "sysv_ipc SEM_UNDO"

    def unavailable(self):
        try:
            import sysv_ipc
        except Exception as e:
            return f"import sysv_ipc failed: {e}"
        if not hasattr(sysv_ipc.Semaphore, "undo"):
            return "sysv_ipc.Semaphore has no `undo` attribute on this platform"
        return None

    def version(self):
        return _version("sysv_ipc")

    def create(self, capacity):
        import sysv_ipc
        # key=None + IPC_CREX: the library picks a random unused key.
        s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600,
                               initial_value=capacity)
        return {"key": s.key}

    def open(self, spec):
        import sysv_ipc
        s = sysv_ipc.Semaphore(spec["key"])
        s.undo = True  # every acquire/release is recorded in the undo list
        return Handle(s.acquire, s.release, None, s)

    def units_free(self, handle):
        return handle.obj.value

    def destroy(self, spec):
        import sysv_ipc
        try:
            sysv_ipc.Semaphore(spec["key"]).remove()
        except sysv_ipc.ExistentialError:
            pass


class Multiprocessing(Contender):
    """multiprocessing.Semaphore (fork context). Unnamed (unlinked right after
    creation), so only children that inherit it can take part."""

    key = "mp"
    label = "multiprocessing.Semaphore"
    inherit_only = True

    def version(self):
        import platform
        return platform.python_version()

    def create(self, capacity):
        import multiprocessing
        return {"obj": multiprocessing.get_context("fork").Semaphore(capacity)}

    def open(self, spec):
        s = spec["obj"]
        return Handle(s.acquire, s.release, None, s)


class Flock(Contender):
    """fcntl.flock(LOCK_EX) on a lock file: a mutex only (capacity 1); the
    kernel drops the lock when the holder's last fd closes (e.g. on death)."""

    key = "flock"
    label = "fcntl.flock"
    max_capacity = 1

    def create(self, capacity):
        path = os.path.join(lock_dir(), unique_name() + ".flock")
        open(path, "a").close()
        return {"path": path}

    def open(self, spec):
        fd = os.open(spec["path"], os.O_RDWR | os.O_CREAT, 0o600)
        # partial over a C function: no Python frame per call.
        return Handle(functools.partial(fcntl.flock, fd, fcntl.LOCK_EX),
                      functools.partial(fcntl.flock, fd, fcntl.LOCK_UN),
                      functools.partial(os.close, fd))

    def destroy(self, spec):
        try:
            os.unlink(spec["path"])
        except FileNotFoundError:
            pass


class Portalocker(Contender):
    """portalocker.BoundedSemaphore: N lock files, acquire sweeps them with
    non-blocking locks and sleeps `check_interval` (default 0.25 s) between
    sweeps. We keep the library's default check_interval (that is what users
    get) and only lift the default 5 s timeout so blocking means blocking."""

    key = "portalocker"
    label = "portalocker.BoundedSemaphore"
    slow = True

    def unavailable(self):
        try:
            import portalocker  # noqa: F401
        except Exception as e:
            return f"import portalocker failed: {e}"
        return None

    def version(self):
        return _version("portalocker")

    def phase_jitter(self):
        return 0.25  # DEFAULT_CHECK_INTERVAL

    def create(self, capacity):
        return {"dir": lock_dir(), "name": unique_name(), "capacity": capacity}

    def open(self, spec):
        import portalocker
        s = portalocker.BoundedSemaphore(
            spec["capacity"], name=spec["name"], directory=spec["dir"],
            timeout=10 ** 6)
        return Handle(s.acquire, s.release, None, s)

    def destroy(self, spec):
        for p in glob.glob(os.path.join(spec["dir"], spec["name"] + ".*")):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


class Filelock(Contender):
    """filelock.FileLock: a mutex (capacity 1); polls a non-blocking flock
    every `poll_interval` (default 0.05 s). Library defaults kept."""

    key = "filelock"
    label = "filelock.FileLock"
    max_capacity = 1
    slow = True

    def unavailable(self):
        try:
            import filelock  # noqa: F401
        except Exception as e:
            return f"import filelock failed: {e}"
        return None

    def version(self):
        return _version("filelock")

    def phase_jitter(self):
        return 0.05  # default poll_interval

    def create(self, capacity):
        return {"path": os.path.join(lock_dir(), unique_name() + ".lock")}

    def open(self, spec):
        import filelock
        lk = filelock.FileLock(spec["path"])
        return Handle(lk.acquire, lk.release, None, lk)

    def destroy(self, spec):
        for p in glob.glob(spec["path"] + "*"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


# Order = column/row order in reports. sysv first: it is the reference.
ALL = [SysvUndo(), Ipcsem(), IpcsemUnfair(), IpcsemSlots(), IpcsemMutex(), PosixRaw(),
       Multiprocessing(), Flock(), Portalocker(), Filelock()]
BY_KEY = {c.key: c for c in ALL}
REFERENCE = "sysv"


def get(key: str) -> Contender:
    return BY_KEY[key]
