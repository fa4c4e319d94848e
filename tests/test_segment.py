"""The POSIX objects under a name: creation races, dead creators, foreign,
truncated, corrupt or other-version segments, unlink while in use, the
RemoveIPC clean-up, limits and permissions (hazards 9, 10, 11, 15, 16, 17)."""
import os
import signal
import subprocess
import sys

import pytest
from cli import _header_index
from procs import held_by, queued_pids, wait_until

import ipcsem
from ipcsem import _names
from ipcsem._shm import _ledger

DEFAULT_SIZE = _ledger.segment_size(2, 1024, 1024, 0)

CREATE_AT_ONCE = """
import ipcsem, sys, time
t = float(sys.argv[2])
while time.time() < t:
    pass
s = ipcsem.Semaphore(sys.argv[1], capacity=4)
print(s.capacity, s.stats().creator_pid, flush=True)
"""


def test_many_processes_create_the_same_name_at_once(name):
    """Hazard 9: exactly one initialises, nobody sees a half-made ledger."""
    import time

    go = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_AT_ONCE, name, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    answers = {o[0].strip() for o in outs}
    assert len(answers) == 1                              # same ledger for all
    creator = int(answers.pop().split()[1])
    assert creator in {p.pid for p in procs}              # made by one of them
    sem = ipcsem.Semaphore(name)
    sem.check()


DIE_WHILE_CREATING = """
import os, signal, sys
from ipcsem._records import Params
from ipcsem._shm import _ledger, segment
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
_ledger.initialize = die          # the creator is killed right before the layout is written
segment.open_segment(sys.argv[1], Params(3, 3))
"""


def test_creator_killed_midway_leaves_a_name_the_next_creator_heals(name):
    p = subprocess.run([sys.executable, "-c", DIE_WHILE_CREATING, name], timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert os.path.exists(_names.shm_path(name))
    with pytest.raises(ipcsem.Corrupt, match="never initialised"):
        ipcsem.Semaphore(name)                 # no capacity: cannot initialise it
    sem = ipcsem.Semaphore(name, capacity=3)   # a creator initialises it
    assert sem.available == 3
    sem.check()


def write_segment(name, data: bytes):
    fd = os.open(_names.shm_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)


def open_in_child(name):
    """Open in a separate process: a SIGBUS or segfault would kill it, and we
    would see the signal instead of a typed error."""
    code = ("import ipcsem,sys\n"
            "try:\n ipcsem.Semaphore(sys.argv[1])\n"
            "except ipcsem.IpcsemError as e:\n print(type(e).__name__, e); sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("kind", ["foreign", "truncated", "tiny", "version", "inconsistent",
                                  "v1", "v2"])
def test_bad_segments_are_typed_errors_naming_the_remedy(name, kind):
    """Hazard 10: never SIGBUS, never a hang, never silent trust."""
    good = DEFAULT_SIZE
    if kind == "foreign":
        write_segment(name, os.urandom(8192))
    elif kind == "v1":   # a ledger of ipcsem 0.1 (layout version 1) still under the name
        write_segment(name, b"IPCSEM01" + (1).to_bytes(8, "little") + bytes(8192))
    elif kind == "tiny":
        write_segment(name, b"\1" * 100)
    else:
        sem = ipcsem.Semaphore(name, capacity=2)
        sem.close()
        fd = os.open(_names.shm_path(name), os.O_RDWR)
        if kind == "truncated":
            os.ftruncate(fd, good // 2)
        elif kind == "version":
            os.pwrite(fd, (99).to_bytes(8, "little"), 8)
        elif kind == "v2":    # an earlier 0.2 build's layout: the mutex owner's fields differ
            os.pwrite(fd, (2).to_bytes(8, "little"), 8)
        else:
            os.pwrite(fd, (7).to_bytes(8, "little"), 40)   # max_holders no longer fits the size
        os.close(fd)
    r = open_in_child(name)
    assert r.returncode == 3, (r.returncode, r.stderr)     # a typed error, not a signal
    assert r.stdout.startswith("Corrupt")
    assert f"ipcsem rm --force {name}" in r.stdout and _names.shm_path(name) in r.stdout
    if kind == "version":
        assert "layout version unknown" in r.stdout
    if kind == "v1":
        assert "layout version 1" in r.stdout
    if kind == "v2":
        assert "layout version 2" in r.stdout
    ipcsem.unlink(name)                       # and the remedy works
    assert not os.path.exists(_names.shm_path(name))


def test_broken_invariant_is_reported_by_check(name):
    sem = ipcsem.Semaphore(name, capacity=2)
    sem.acquire()
    fd = os.open(_names.shm_path(name), os.O_RDWR)
    available = _header_index("H_AVAILABLE")   # its header word, from _ledger.c's enum
    os.pwrite(fd, (2).to_bytes(8, "little"), available * 8)   # 2 free while 1 is held
    os.close(fd)
    with pytest.raises(ipcsem.Corrupt, match="units lost or invented"):
        sem.check()


def test_unlink_while_held_and_waited_on(name, agents):
    """Hazard 11: POSIX unlink is deferred; the name can split in two.  ipcsem
    makes it visible: queued waiters get Unlinked, holders keep working on the
    old object, a new open creates a separate one."""
    sem = ipcsem.Semaphore(name, capacity=1)
    holder, waiter = agents(), agents()
    holder.cmd(f"open {name}")
    waiter.cmd(f"open {name}")
    assert holder.cmd("try 1") is True
    waiter.start_acquire(1)
    wait_until(lambda: queued_pids(sem) == [waiter.pid])
    ipcsem.unlink(name)
    with pytest.raises(Exception, match="Unlinked"):
        waiter.result()
    assert holder.cmd("release 1") is None           # the old object still works
    fresh = ipcsem.Semaphore(name, capacity=1)        # a new, separate object
    assert fresh.try_acquire()
    assert sem.available == 1 and held_by(sem) == {}  # old: released, untouched by the new
    with pytest.raises(ipcsem.Unlinked):
        sem.acquire()


def test_removeipc_deleting_files_under_live_users(name, agents):
    """Hazard 16: systemd-logind RemoveIPC=yes unlinks a user's /dev/shm files
    at logout.  Mapped users keep working on the old ledger; it is the same
    split as unlink, without the Unlinked flag: documented, and visible."""
    sem = ipcsem.Semaphore(name, capacity=1)
    holder = agents()
    holder.cmd(f"open {name}")
    assert holder.cmd("try 1") is True
    os.unlink(_names.shm_path(name))                 # what logind does
    assert name not in ipcsem.names()
    assert holder.cmd("release 1") is None
    assert sem.try_acquire()                         # the old object goes on
    with pytest.raises(ipcsem.NotFound):
        ipcsem.Semaphore(name)


def test_limits(name):
    """Hazard 15: name length (ours <= 200 fits Linux's 251), capacity, sizes."""
    long = ("n" * 200)
    s = ipcsem.Semaphore(long, capacity=_ledger.MAX_CAPACITY)
    try:
        assert s.capacity == 2**31 - 1
        assert s.acquire(2**31 - 1)
        s.release(2**31 - 1)
        s.check()
    finally:
        s.close()
        ipcsem.unlink(long)
    with pytest.raises(ValueError):
        ipcsem.Semaphore(name, capacity=1, max_holders=0)
    small = ipcsem.Semaphore(name, capacity=1, max_holders=2, max_waiters=3)
    assert os.stat(_names.shm_path(name)).st_size == _ledger.segment_size(1, 2, 3, 0)
    small.check()


def test_mode_is_exact_despite_umask(name):
    old = os.umask(0o077)
    try:
        ipcsem.Semaphore(name, capacity=1, mode=0o660)
    finally:
        os.umask(old)
    assert os.stat(_names.shm_path(name)).st_mode & 0o777 == 0o660
    default = name + "-d"
    ipcsem.Semaphore(default, capacity=1)
    try:
        assert os.stat(_names.shm_path(default)).st_mode & 0o777 == 0o600
    finally:
        ipcsem.unlink(default)


AS_NOBODY = """
import os, sys
import ipcsem                       # first: nobody cannot read root's Python install
os.setgid(65534); os.setuid(65534)
try:
    ipcsem.Semaphore(sys.argv[1]).acquire()
except ipcsem.PermissionDenied as e:
    print("PermissionDenied", isinstance(e, PermissionError), e); sys.exit(3)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_users_semaphore_is_a_clear_error(name):
    """Hazard 17: mode 0600 by default; another user gets PermissionDenied."""
    ipcsem.Semaphore(name, capacity=1)
    r = subprocess.run([sys.executable, "-c", AS_NOBODY, name], capture_output=True, text=True,
                       timeout=30, cwd="/")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("PermissionDenied True") and _names.shm_path(name) in r.stdout
    assert "Traceback" not in r.stderr


def test_exactly_one_racing_create_reports_creating(name):
    """`ipcsem create` relies on this: the creator is decided under the flock."""
    import time

    code = ("import sys,time\nfrom ipcsem._records import Params\n"
            "from ipcsem._shm.segment import open_segment\nt=float(sys.argv[2])\n"
            "while time.time()<t: pass\n"
            "s=open_segment(sys.argv[1],Params(2,2))\nprint(int(s.created))")
    go = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", code, name, str(go)], stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["0"] * 5 + ["1"]
