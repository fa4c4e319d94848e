"""Squatting: another user plants something under a victim's name.

/dev/shm is world-writable, so any user can create ``ipcsem.NAME`` first —
as a symlink, a directory, a FIFO, a socket, an empty file or a ledger of
their own, with any mode.  The victim must get a typed error that says
whose it is (never SIGBUS, a hang, or a silent trap), and nothing an
attacker owns may end up mapped for writing (issue 8, items 5, 6, 7).

On v1 (``git show ccdff60:ipcsem/_segment.py``) the victim opened a 0666
attacker ledger without a word (item 6): the attacker's truncate then
killed it with SIGBUS, which is what ``test_a_squatted_name_is_an_error``
would report.  Doorbell files (items 5, 7) are gone in v2: squatted
``sem.ipcsem.NAME:wN`` files must change nothing.
"""
from __future__ import annotations

import os
import socket
import stat
import time

import pytest

import ipcsem

from .conftest import (
    ALICE,
    ATTACKER,
    BOB,
    MALLORY,
    OTHERS,
    TEAM,
    Proc,
    assert_survived,
    isolated,
    maps_path,
    new_name,
    plant_file,
    segment,
    shm_listing,
    shm_path,
    timed,
)

# ------------------------------------------------------------- the plants


def _plant(chan, name: str, kind: str):
    """The attacker's move: put ``kind`` under ``name``, then wait for the
    word to spring the trap (truncate/scribble whatever it owns there)."""
    path = shm_path(name)
    if kind == "symlink-to-victims":
        os.symlink(shm_path("victims-own"), path)
    elif kind == "symlink-to-passwd":
        os.symlink("/etc/passwd", path)
    elif kind == "directory":
        os.mkdir(path, 0o777)
    elif kind == "fifo":
        os.mkfifo(path, 0o666)
        os.chmod(path, 0o666)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        os.chmod(path, 0o777)
    elif kind == "empty-0666":
        plant_file(path, mode=0o666)
    elif kind == "empty-0600":
        plant_file(path, mode=0o600)
    elif kind.startswith("ledger-"):
        mode = int(kind.split("-")[1], 8)
        # A real ledger, made by the library (which refuses o+w modes at
        # creation: the attacker simply chmods afterwards).
        ipcsem.Semaphore(name, 2, mode=0o600).close()
        os.chmod(path, mode)
    else:
        raise AssertionError(kind)
    chan.send("planted")
    chan.recv(30)
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        os.truncate(path, 0)       # SIGBUS for anyone who mapped it
    chan.send("sprung")
    time.sleep(60)


def _victim(chan, name: str, how: str):
    """The victim: open NAME the way ``how`` says, then (if that worked) use
    it after the attacker sprang the trap.  Returns what happened."""
    if how == "create-private":
        r, took = timed(ipcsem.Semaphore, name, 2)
    elif how == "create-group":
        r, took = timed(ipcsem.Semaphore, name, 2, mode=0o660, group=TEAM)
    elif how == "open":
        r, took = timed(ipcsem.Semaphore, name)
    else:
        raise AssertionError(how)
    mapped = maps_path(os.getpid(), shm_path(name))
    chan.send("opened")
    chan.recv(30)
    if r[0] == "return":
        sem = r[1]
        sem.acquire(timeout=1)   # touches the mapping: SIGBUS if it was the attacker's
        sem.release()
        return ("worked", mapped)
    return ("refused", r[1], took, mapped)


KINDS = ["symlink-to-victims", "symlink-to-passwd", "directory", "fifo", "socket", "empty-0666",
         "empty-0600", "ledger-0666", "ledger-0600", "ledger-0644", "ledger-0640"]


@pytest.mark.parametrize("victim", ["alice", "root"])
@pytest.mark.parametrize("how", ["create-private", "create-group", "open"])
@isolated(timeout=90)
def test_a_squatted_name_is_an_error(how, victim):
    """Every kind of squat, every way of opening, by a user and by root: a
    typed PermissionDenied (or Corrupt for what is no ledger at all) that
    names the owner, in well under a second, and nothing of the attacker's
    mapped."""
    user = ALICE if victim == "alice" else None
    # A ledger of the victim's own, for the symlink to point at.
    assert_survived(Proc(lambda chan: ipcsem.Semaphore("victims-own", 1).close() or "ok",
                         user=user), 10)
    failures = []
    for kind in KINDS:
        name = new_name("sq")
        attacker = Proc(_plant, name, kind, user=ATTACKER, label=f"attacker({kind})")
        attacker.expect("planted")
        victim = Proc(_victim, name, how, user=user, label=f"{victim}({kind}, {how})")
        victim.expect("opened", timeout=15)
        attacker.send("spring")
        attacker.expect("sprung")
        victim.send("use it")
        out = assert_survived(victim, 15)
        verdict = out.value
        if verdict[0] == "worked":
            failures.append(f"{kind}/{how}: the victim used the attacker's object")
            continue
        err, took, mapped = verdict[1], verdict[2], verdict[3]
        if not err["typed"]:
            failures.append(f"{kind}/{how}: untyped {err['type']}: {err['message']}")
        elif "PermissionDenied" not in err["mro"] and "Corrupt" not in err["mro"]:
            failures.append(f"{kind}/{how}: {err['type']}: {err['message']}")
        elif "PermissionDenied" in err["mro"] and str(ATTACKER.uid) not in err["message"] \
                and not kind.startswith("symlink"):
            failures.append(f"{kind}/{how}: the error does not say whose it is: {err['message']}")
        if took > 1.0:
            failures.append(f"{kind}/{how}: refusing took {took:.2f} s")
        if mapped:
            failures.append(f"{kind}/{how}: the attacker's object was mapped")
        attacker.kill()
    assert not failures, "\n".join(failures)


def _make_shared(chan, name, group, mode=0o660):
    s = ipcsem.Semaphore(name, 4, mode=mode, group=group)
    os.stat(shm_path(name))           # it exists
    s.close()
    chan.send("made")
    chan.recv(30)
    os.truncate(shm_path(name), 0)
    chan.send("sprung")
    time.sleep(60)


def _open_shared(chan, name, group):
    r, _ = timed(ipcsem.Semaphore, name, 4, mode=0o660, group=group)
    chan.send("opened")
    chan.recv(30)
    if r[0] == "raise":
        return ("refused", r[1])
    r[1].acquire(timeout=1)     # SIGBUS here if it opened the attacker's ledger
    return ("worked",)


@isolated()
def test_create_with_group_refuses_another_users_object_of_another_group():
    """MALLORY (in TEAM and OTHERS) asks for a semaphore shared with OTHERS
    (``mode=0o660, group=OTHERS``).  ALICE, in TEAM but not in OTHERS, made
    that name first, shared with TEAM.  MALLORY never chose to trust ALICE:
    the open must be refused, not trusted because MALLORY happens to be in
    TEAM too (hostile-bugs.md H1: today she opens it and ALICE's truncate
    kills her with SIGBUS)."""
    name = new_name()
    alice = Proc(_make_shared, name, TEAM, user=ALICE)
    alice.expect("made")
    mallory = Proc(_open_shared, name, OTHERS, user=MALLORY)
    mallory.expect("opened")
    alice.send("spring")
    alice.expect("sprung")
    mallory.send("use it")
    out = assert_survived(mallory, 10)
    assert out.value[0] == "refused", "MALLORY used ALICE's TEAM ledger after asking for OTHERS"
    assert "PermissionDenied" in out.value[1]["mro"], out.value[1]


def _create_with_mode(chan, name, mode):
    r, _ = timed(ipcsem.Semaphore, name, 1, mode=mode)
    return r[0], (r[1]["type"] if r[0] == "raise" else None), os.path.exists(shm_path(name))


@isolated()
def test_modes_anyone_could_write_are_refused_at_creation():
    """A ledger every user may write is one nobody can trust: 0666, 0606,
    0602 and special bits are refused before anything is created."""
    for mode in (0o666, 0o606, 0o602, 0o4600, 0o2660, 0o1600):
        out = assert_survived(Proc(_create_with_mode, new_name(), mode, user=ALICE), 10,
                              allow_typed=False)
        kind, err, exists = out.value
        assert kind == "raise" and err == "builtins.ValueError", (oct(mode), out.value)
        assert not exists, f"mode {mode:o}: refused, but a file was left behind"


# ----------------------------------------------- squatted doorbell files


def _plant_doorbells(chan, names, count):
    """0-byte 0666 files under every doorbell name v1 would have opened."""
    for name in names:
        for w in range(count):
            plant_file(f"/dev/shm/sem.ipcsem.{name}:w{w}", mode=0o666)
            plant_file(f"/dev/shm/sem.ipcsem.{name}:h{w}", mode=0o666)
    return "planted"


def _queue_and_release(chan, name, rounds):
    """Queue behind a holder, get granted, release: rings on every round."""
    sem = ipcsem.Semaphore(name)
    got = 0
    for _ in range(rounds):
        if sem.acquire(timeout=5):
            got += 1
            time.sleep(0.001)
            sem.release()
    return got


def _hold_then_release(chan, name, rounds):
    sem = ipcsem.Semaphore(name)
    for _ in range(rounds):
        assert sem.acquire(timeout=5)
        time.sleep(0.003)
        sem.release()
        time.sleep(0.001)
    return rounds


@isolated(shm_size="4m")
def test_squatted_doorbell_files_change_nothing():
    """Items 5, 7, 14 lose their object: an attacker's 0-byte 0666
    ``sem.ipcsem.NAME:wN`` files (v1 opened them: SIGBUS for waiters and
    releasers) and a /dev/shm filled to the last byte (v1: release() raised
    ENOSPC after committing) change nothing for queueing, granting,
    releasing and recovery — and v2 creates no such files at all."""
    name = new_name()
    assert_survived(Proc(lambda chan: ipcsem.Semaphore(name, 1).close() or "ok", user=ALICE), 10)
    assert_survived(Proc(_plant_doorbells, [name], 64, user=ATTACKER), 20)
    # Fill what is left of /dev/shm (the attacker's own big file).
    assert_survived(Proc(_fill_shm, user=ATTACKER), 20)
    before = shm_listing()
    a = Proc(_hold_then_release, name, 40, user=ALICE)
    b = Proc(_queue_and_release, name, 40, user=ALICE)
    c = Proc(_queue_and_release, name, 40, user=ALICE)
    for p in (a, b, c):
        out = assert_survived(p, 60, allow_typed=False)
        assert out.value == 40, f"{p.label}: {out.value}"
    # A holder killed while others queue: its unit comes back to a waiter.
    killed = Proc(_hold_forever, name, user=ALICE)
    killed.expect("holding")
    waiter = Proc(_queue_and_release, name, 1, user=ALICE)
    time.sleep(0.2)
    killed.kill()
    assert assert_survived(waiter, 10, allow_typed=False).value == 1
    assert shm_listing().keys() == before.keys(), "new files appeared in /dev/shm"


def _fill_shm(chan):
    fd = os.open("/dev/shm/attackers-ballast", os.O_CREAT | os.O_RDWR, 0o600)
    off = 0
    try:
        while True:
            os.posix_fallocate(fd, off, 4096)
            off += 4096
    except OSError:
        pass
    return off


def _hold_forever(chan, name):
    sem = ipcsem.Semaphore(name)
    assert sem.acquire(timeout=5)
    chan.send("holding")
    time.sleep(60)


# ------------------------------------------------------------ group sharing


def _group_member(chan, name, role):
    sem = ipcsem.Semaphore(name, 2, mode=0o660, group=TEAM)
    st = os.stat(shm_path(name))
    chan.send(("opened", st.st_uid, stat.S_IMODE(st.st_mode), st.st_gid))
    while True:
        cmd = chan.recv(30)
        if cmd == "acquire":
            chan.send(("acquired", sem.acquire(timeout=10)))
        elif cmd == "acquire-queued":
            chan.send("queueing")
            chan.send(("acquired", sem.acquire(timeout=10)))
        elif cmd == "release":
            sem.release()
            chan.send("released")
        elif cmd == "recover":
            chan.send(("recovered", sem.recover()))
        elif cmd == "check":
            sem.check()
            chan.send("checked")
        elif cmd == "holders":
            chan.send(("holders", sorted((h.pid, h.units) for h in sem.holders())))
        elif cmd == "done":
            sem.close()
            return "done"


@isolated(timeout=60)
def test_two_users_of_one_group_share_a_semaphore():
    """ALICE and BOB (both in TEAM) share ``mode=0o660, group=TEAM``: queue
    behind each other, kill holders, recover each other's dead — without a
    single PermissionDenied, and with no file appearing but the ledger (v1:
    doorbells owned by whoever rang first broke this, item 7)."""
    name = new_name()
    alice = Proc(_group_member, name, "alice", user=ALICE, label="alice")
    assert alice.recv()[0] == "opened"
    bob = Proc(_group_member, name, "bob", user=BOB, label="bob")
    _, uid, mode, gid = bob.recv()
    assert (uid, mode, gid) == (ALICE.uid, 0o660, TEAM)
    assert list(shm_listing()) == [f"ipcsem.{name}"]
    # Queueing across users, both directions.
    alice.send("acquire")
    assert alice.recv() == ("acquired", True)
    alice.send("acquire")
    assert alice.recv() == ("acquired", True)
    bob.send("acquire-queued")
    assert bob.recv() == "queueing"
    time.sleep(0.2)
    alice.send("release")
    assert alice.recv() == "released"
    assert bob.recv() == ("acquired", True)
    alice.send("acquire-queued")
    assert alice.recv() == "queueing"
    time.sleep(0.2)
    bob.send("release")
    assert bob.recv() == "released"
    assert alice.recv() == ("acquired", True)
    # ALICE dies holding both units; BOB, queued for both, gets them (his
    # own healing recovers her: no supervisor here).
    bob.send("acquire-queued")
    assert bob.recv() == "queueing"
    alice.kill()
    assert bob.recv(5) == ("acquired", True)
    bob.send("check")
    assert bob.recv() == "checked"
    # A second member of the group (another BOB process) recovers BOB's units.
    bob2 = Proc(_group_member, name, "bob2", user=BOB, label="bob2")
    assert bob2.recv()[0] == "opened"
    bob.kill()
    bob2.send("recover")
    assert bob2.recv() == ("recovered", 1)
    bob2.send("holders")
    assert bob2.recv() == ("holders", [])
    bob2.send("done")
    assert assert_survived(bob2, 10).value == "done"
    assert list(shm_listing()) == [f"ipcsem.{name}"], "files other than the ledger appeared"


def _try_unlink(chan, name):
    return timed(ipcsem.unlink, name)[0]


def _use_after(chan, name):
    sem = ipcsem.Semaphore(name, 2, mode=0o660, group=TEAM)
    return timed(sem.acquire, timeout=1)[0]


@isolated()
def test_a_group_member_who_may_not_unlink_changes_nothing():
    """BOB (TEAM) may write ALICE's ``0660 alice:TEAM`` semaphore but not
    remove its file (the sticky bit of /dev/shm).  His ``ipcsem.unlink``
    is refused — and a refusal must change nothing: the semaphore goes on
    working for everyone."""
    name = new_name()
    assert_survived(Proc(lambda chan: ipcsem.Semaphore(name, 2, mode=0o660, group=TEAM).close()
                         or "ok", user=ALICE), 10)
    kind, err = assert_survived(Proc(_try_unlink, name, user=BOB), 10).value
    assert kind == "raise" and "PermissionDenied" in err["mro"], err
    assert os.path.exists(shm_path(name))
    kind, value = assert_survived(Proc(_use_after, name, user=ALICE), 10).value
    assert (kind, value) == ("return", True), f"after BOB's refused unlink: {value}"


def _refusals(chan, name, tries):
    worst = 0.0
    for _ in range(tries):
        r, took = timed(ipcsem.Semaphore, name)
        assert r[0] == "raise" and "PermissionDenied" in r[1]["mro"], r
        worst = max(worst, took)
    return worst


@isolated()
def test_refusing_a_squat_that_cannot_be_a_creators_costs_no_wait():
    """Creators keep a new file 0600 until it is initialised, so an opener
    refused by a 0600 file of someone else's may wait a moment for its
    mode to change.  A 0644 or 0640 file cannot be in that window: refusing
    it must be immediate, or every squatted name costs every open 0.5 s."""
    for mode in (0o644, 0o640):
        name = new_name()
        assert_survived(Proc(lambda chan, name=name, mode=mode:
                             plant_file(shm_path(name), mode=mode) or "ok",
                             user=ATTACKER), 10)
        worst = assert_survived(Proc(_refusals, name, 5, user=ALICE), 20).value
        assert worst < 0.2, f"a {mode:04o} squat: a refusal took {worst:.2f} s"


@isolated()
def test_refusing_an_old_private_squat_costs_no_wait():
    """A 0600 file of someone else's can be a creator's still initialising —
    but only if it was made (or changed: sizing it changes its ctime) moments
    ago.  A squat planted longer ago than ``CREATOR_WINDOW`` is refused at
    once.  (A squatter who keeps touching its file keeps costing opens up
    to the grace, 0.5 s each: bounded, and it has to keep working at it.)"""
    name = new_name()
    assert_survived(Proc(lambda chan: plant_file(shm_path(name), mode=0o600, size=4096) or "ok",
                         user=ATTACKER), 10)
    time.sleep(getattr(segment, "CREATOR_WINDOW", 2.0) + 0.2)
    worst = assert_survived(Proc(_refusals, name, 3, user=ALICE), 20).value
    assert worst < 0.2, f"an old 0600 squat: a refusal took {worst:.2f} s"
