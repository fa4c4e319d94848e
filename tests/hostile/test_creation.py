"""Creating a semaphore while others interfere: the creation flock, a full
/dev/shm, no inodes left (issue 8, item 4's "someone else holding the
creation flock"; the trust doc's "anyone who can open the file can hold
its flock forever").

The rules under test (segment.py): the creation flock is waited for at
most FLOCK_BOUND (Wedged, never a hang); an initialised ledger needs no
flock at all, so a flock held on it changes nothing; running out of space
is a typed error.  v1 (``git show ccdff60:ipcsem/_segment.py``) waited for
the creation flock without a bound: every test here that holds it would
have hung.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time
from collections import Counter

import ipcsem

from .conftest import (
    ALICE,
    ATTACKER,
    Proc,
    assert_survived,
    isolated,
    new_name,
    plant_file,
    segment,
    shm_path,
    timed,
)

SLACK = 1.0


def _flock_when_it_appears(chan, name, patience=None):
    """A reader: wait for the file (at most ``patience`` seconds), open it
    read-only, hold its flock."""
    path = shm_path(name)
    chan.send("watching")
    end = None if patience is None else time.monotonic() + patience
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
            break
        except (FileNotFoundError, PermissionError):
            if end is not None and time.monotonic() > end:
                chan.send("nothing to lock")
                time.sleep(60)
            time.sleep(0.0005)
    fcntl.flock(fd, fcntl.LOCK_EX)
    chan.send("locked")
    time.sleep(60)


def _create(chan, name, mode):
    chan.send("ready")
    chan.recv(30)
    r, took = timed(ipcsem.Semaphore, name, 2, mode=mode)
    return r[0], (r[1]["type"] if r[0] == "raise" else None), took


def _fill_shm(chan):
    fd = os.open("/dev/shm/ballast", os.O_CREAT | os.O_RDWR, 0o600)
    off = 0
    try:
        while True:
            os.posix_fallocate(fd, off, 4096)
            off += 4096
    except OSError:
        pass
    chan.send("full")
    chan.recv(30)
    os.unlink("/dev/shm/ballast")
    return off


@isolated(shm_size="2m")
def test_a_reader_cannot_wedge_creation_after_a_full_shm():
    """The attacker fills /dev/shm (ALICE's creation fails: LedgerFull, as it
    should), flocks the empty 0644 file that failure left behind (before
    7c0e42c it stayed, with its final mode; now it is removed), frees the
    space: ALICE's next creation must work."""
    name = new_name()
    filler = Proc(_fill_shm, user=ATTACKER)
    filler.expect("full")
    first = Proc(_create, name, 0o644, user=ALICE)
    first.expect("ready")
    first.send("go")
    assert assert_survived(first, 10).value[1] == "ipcsem._errors.LedgerFull"
    reader = Proc(_flock_when_it_appears, name, 1.0, user=ATTACKER)
    reader.expect("watching")
    assert reader.recv() in ("locked", "nothing to lock")
    filler.send("free")
    assert_survived(filler, 10)
    again = Proc(_create, name, 0o644, user=ALICE)
    again.expect("ready")
    again.send("go")
    out = assert_survived(again, segment.FLOCK_BOUND + SLACK + 5)
    assert out.value[0] == "return", f"creation failed: {out.value}"


def _inotify_flocker(chan, prefix):
    """A reader with inotify: flock every new file named ipcsem.PREFIX* the
    moment it appears (before its creator takes the flock)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ifd = libc.inotify_init1(0)
    assert ifd >= 0 and libc.inotify_add_watch(ifd, b"/dev/shm", 0x100) >= 0  # IN_CREATE
    chan.send("watching")
    held = []
    while True:
        buf = os.read(ifd, 65536)
        off = 0
        while off < len(buf):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, off)
            entry = buf[off + 16:off + 16 + length].rstrip(b"\0").decode()
            off += 16 + length
            if entry.startswith("ipcsem." + prefix):
                try:
                    fd = os.open("/dev/shm/" + entry, os.O_RDONLY)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(fd)
                except OSError:
                    pass


def _create_many(chan, prefix, count, mode):
    """Create up to ``count`` semaphores; stop at the first failure."""
    from .conftest import KEEP

    outcomes = []
    for i in range(count):
        r, _ = timed(ipcsem.Semaphore, f"{prefix}{i}", 2, mode=mode)
        if r[0] == "return":
            KEEP.append(r[1])      # never dropped: H11 would crash us, not H4
            outcomes.append("ok")
        else:
            outcomes.append(r[1]["type"].rsplit(".", 1)[-1])
            break
    return outcomes


@isolated(timeout=120)
def test_a_reader_racing_the_creator_cannot_wedge_it():
    """No help needed: a reader that watches /dev/shm with inotify wins the
    race between O_EXCL and the creator's flock often enough (about one
    creation in six here).  Every one of 40 0644 creations must work."""
    prefix = new_name("race")
    reader = Proc(_inotify_flocker, prefix, user=ATTACKER)
    reader.expect("watching")
    out = assert_survived(Proc(_create_many, prefix, 40, 0o644, user=ALICE),
                          40 * 0.2 + segment.FLOCK_BOUND + SLACK + 10)
    assert Counter(out.value) == Counter({"ok": 40}), Counter(out.value)


def _hold_flock(chan, name):
    fd = os.open(shm_path(name), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    chan.send("locked")
    time.sleep(60)


def _use(chan, name):
    """Open, take, queue-free release, close — timed."""
    def work():
        sem = ipcsem.Semaphore(name, 2, mode=0o644)
        assert sem.acquire(timeout=2)
        sem.release()
        sem.close()
        return "worked"
    return timed(work)


@isolated()
def test_a_flock_on_an_initialised_ledger_changes_nothing():
    """Readers may flock ALICE's 0644 ledger forever: once initialised,
    nobody needs that flock (opening, acquiring, releasing are as fast
    as ever)."""
    name = new_name()
    assert_survived(Proc(lambda chan: ipcsem.Semaphore(name, 2, mode=0o644).close() or "ok",
                         user=ALICE), 10)
    reader = Proc(_hold_flock, name, user=ATTACKER)
    reader.expect("locked")
    out = assert_survived(Proc(_use, name, user=ALICE), 10)
    (kind, value), took = out.value
    assert kind == "return" and value == "worked", out.value
    assert took < 0.5, f"took {took:.2f} s: it waited for the flock"


def _plant_uninitialised(chan, name, size):
    """The victim's own never-initialised file (a creator died): sized, no magic."""
    plant_file(shm_path(name), mode=0o640, size=size)
    return "planted"


@isolated()
def test_a_held_creation_flock_is_wedged_not_a_hang():
    """A never-initialised ledger of ALICE's (its creator died) whose flock a
    group reader holds: opening it to initialise waits FLOCK_BOUND, then
    raises Wedged naming the flock's holder — never a hang."""
    name = new_name()
    assert_survived(Proc(_plant_uninitialised, name, 0, user=ALICE), 10)
    os.chown(shm_path(name), ALICE.uid, ATTACKER.gid)     # the attacker's group may read it
    reader = Proc(_hold_flock, name, user=ATTACKER)
    reader.expect("locked")
    out = assert_survived(Proc(lambda chan: timed(ipcsem.Semaphore, name, 2, mode=0o640),
                               user=ALICE), segment.FLOCK_BOUND + SLACK + 5)
    (kind, value), took = out.value
    assert kind == "raise" and "Wedged" in value["mro"], out.value
    assert took <= segment.FLOCK_BOUND + SLACK
    assert str(reader.pid) in value["message"], value["message"]


def _fill_inodes(chan):
    count = 0
    try:
        while True:
            plant_file(f"/dev/shm/junk{count}", mode=0o600)
            count += 1
    except OSError as e:
        return count, e.errno


@isolated(nr_inodes=64)
def test_no_inodes_left_is_a_typed_error():
    """The attacker creates empty files until /dev/shm has no inode left:
    ALICE's creation must fail with LedgerFull (typed), not a bare OSError."""
    assert_survived(Proc(_fill_inodes, user=ATTACKER), 20)
    out = assert_survived(Proc(lambda chan: timed(ipcsem.Semaphore, new_name(), 2)[0],
                               user=ALICE), 10)
    kind, value = out.value
    assert kind == "raise" and "LedgerFull" in value["mro"], value


@isolated(shm_size="1m")
def test_no_space_left_is_a_typed_error_and_leaves_nothing_mapped():
    """The attacker fills /dev/shm: ALICE's creation fails with LedgerFull
    (the pages are allocated at creation, so no later write can SIGBUS),
    and an existing semaphore of hers keeps working."""
    have = new_name()
    assert_survived(Proc(lambda chan: ipcsem.Semaphore(have, 1).close() or "ok", user=ALICE), 10)
    filler = Proc(_fill_shm, user=ATTACKER)
    filler.expect("full")

    def victim(chan):
        made = timed(ipcsem.Semaphore, new_name(), 2)[0]
        sem = ipcsem.Semaphore(have)
        for _ in range(100):
            assert sem.acquire(timeout=1)
            sem.release()
        return made

    out = assert_survived(Proc(victim, user=ALICE), 20)
    kind, value = out.value
    assert kind == "raise" and "LedgerFull" in value["mro"], value
