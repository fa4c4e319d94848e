"""Read-only views: what root's (and anyone's) status tools see of ledgers
that other users wrote (issue 8: "root never maps another user's ledger";
views through validated pread copies).

A view must survive any bytes, a file truncated under it, a lock held
forever; it must not map, lock or create anything; and it must stay cheap,
because ``ipcsem-status`` run by root reads every user's semaphores.

v1 (``git show ccdff60:ipcsem/_cli.py``): status mapped each ledger and
locked it — a truncate killed the root tool with SIGBUS, a wedged lock hung
it.
"""
from __future__ import annotations

import os
import random
import struct

import ipcsem

from .conftest import (
    ALICE,
    ATTACKER,
    HDR,
    UNDO_COUNT_OFF,
    Proc,
    _ledger,
    assert_survived,
    forge_lock_owner,
    isolated,
    make_ledger,
    new_name,
    segment,
    shm_listing,
    shm_path,
    timed,
    write_words,
)

VIEW_ERRORS = ("Corrupt", "PermissionDenied", "NotFound")


SCALE = 1 << 15   # table rows (the real limit, MAX_SLOTS, is 1 << 20: 32 times the cost)


def _crafted_sparse(chan, name):
    """A library-made ledger with large tables, then made "forever in
    flight" with both high-water marks at the top — in a sparse file, so it
    costs its owner no memory."""
    from ipcsem._records import Params

    seg = segment.open_segment(name, Params(capacity=4096, initial=4096, slots=True, mode=0o644,
                                            max_holders=SCALE, max_waiters=SCALE))
    seg.close()
    path = shm_path(name)
    fd = os.open(path, os.O_RDWR)
    header = bytearray(os.pread(fd, 4096, 0))
    size = os.fstat(fd).st_size
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)                       # all holes now
    struct.pack_into("<q", header, 8 * HDR["H_HOLDER_HWM"], SCALE)
    struct.pack_into("<q", header, 8 * HDR["H_WAITER_HWM"], SCALE)
    struct.pack_into("<q", header, UNDO_COUNT_OFF, 1)
    os.pwrite(fd, bytes(header), 0)
    os.close(fd)
    return os.stat(path).st_blocks * 512, size


def _bytes_read() -> int:
    """This process's ``rchar``: bytes its read()/pread() calls returned."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@isolated(shm_size="1g", timeout=120)
def test_a_view_of_a_crafted_sparse_ledger_is_cheap():
    """Root's view of an attacker's sparse "ledger forever in flight" with
    full tables reads it about once (the kernel's rchar counter says how
    much it read), not once per seqlock retry: today 50 retries, 24 MB each
    at this scale — 8.6 s and 400 MB at the real limits."""
    name = new_name()
    out = assert_survived(Proc(_crafted_sparse, name, user=ATTACKER), 60)
    allocated, size = out.value
    assert allocated < 1 << 20 < size          # costs the attacker nothing

    def view(chan):
        before = _bytes_read()
        r, took = timed(segment.read_view, name)
        return r[0], _bytes_read() - before, took

    _kind, read, took = assert_survived(Proc(view), 60).value
    assert read <= 3 * size, (f"one view of a {size >> 20} MB file read {read >> 20} MB "
                              f"({read / size:.0f} copies, {took:.2f} s)")


# --------------------------------------------------------- any bytes at all


def _random_files(chan, seed, count):
    """``count`` 0644 files under ipcsem names: real ledgers with random
    words written over them, random bytes, truncated ledgers."""
    rnd = random.Random(seed)
    made = []
    for i in range(count):
        name = f"v{seed}-{i}"
        kind = rnd.choice(["scribbled", "scribbled", "scribbled", "truncated", "noise"])
        path = shm_path(name)
        if kind == "noise":
            with open(path, "wb") as f:
                f.write(rnd.randbytes(rnd.choice([0, 8, 4095, 4096, 5000, 70000])))
            os.chmod(path, 0o644)
        else:
            make_ledger(name, rnd.choice([1, 3, 64]), mode=0o644,
                        slots=rnd.random() < 0.3, max_holders=rnd.choice([1, 4, 64]),
                        max_waiters=rnd.choice([1, 4, 64]))
            size = os.stat(path).st_size
            if kind == "truncated":
                os.truncate(path, rnd.randrange(0, size))
            else:
                edits = {}
                for _ in range(rnd.randrange(1, 40)):
                    off = rnd.randrange(0, size // 8) * 8
                    if rnd.random() < 0.7:
                        off = rnd.randrange(0, 64) * 8       # mostly the header
                    edits[off] = rnd.choice([0, -1, 1, 2, 1 << 62, -(1 << 63), (1 << 63) - 1,
                                             size, size // 8, rnd.getrandbits(63)])
                write_words(name, edits)
        made.append(name)
    return made


def _view_all(chan, names):
    bad, took_max = [], 0.0
    for name in names:
        r, took = timed(segment.read_view, name)
        took_max = max(took_max, took)
        if r[0] == "raise" and not any(t in r[1]["mro"] for t in VIEW_ERRORS):
            bad.append((name, r[1]["type"], r[1]["message"]))
        if r[0] == "return":
            snap = r[1].snapshot
            _ = (snap.header, list(snap.holders), list(snap.waiters), snap.consistent)
    return bad, took_max


@isolated(timeout=90)
def test_views_survive_any_bytes():
    """Three seeds x 60 attacker files: root's view of each is a View or a
    Corrupt/PermissionDenied — never a signal, never slow."""
    names = []
    for seed in range(3):
        names += assert_survived(Proc(_random_files, seed, 60, user=ATTACKER), 60).value
    before = shm_listing()
    out = assert_survived(Proc(_view_all, names), 60)       # root
    bad, took_max = out.value
    assert not bad, bad
    assert took_max < 1.0, f"a view took {took_max:.2f} s"
    assert shm_listing() == before, "a view changed /dev/shm"


@isolated(timeout=60)
def test_the_parser_survives_any_bytes():
    """The C parser behind every view, fed by hypothesis: a valid header
    geometry (so parsing goes past the first check) and arbitrary words
    everywhere else, regions of any length.  A crash here kills the world,
    which the harness reports."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path_name = new_name()
    make_ledger(path_name, 8, mode=0o600, slots=True, max_holders=4, max_waiters=4)
    fd = os.open(shm_path(path_name), os.O_RDONLY)
    template = bytearray(os.pread(fd, os.fstat(fd).st_size, 0))
    os.close(fd)
    fixed = 17          # H_MAGIC .. H_NONCE: the geometry the parser recomputes
    words = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.integers(fixed, 511 // 8), words, max_size=30),
           st.dictionaries(st.integers(0, fixed - 1), words, max_size=1),
           st.binary(max_size=600), st.binary(max_size=1200), st.binary(max_size=400),
           st.booleans())
    def check(edits, geometry, holders, waiters, units, consistent):
        header = bytearray(template[:4096])
        for i, v in {**edits, **geometry}.items():
            struct.pack_into("<q", header, 8 * i, v)
        try:
            snap = _ledger.parse(bytes(header), holders, waiters, units, consistent)
        except ipcsem.Corrupt:
            return
        assert len(snap.holders) <= 4 and len(snap.waiters) <= 2 * 4
        _ledger.extent(bytes(header))
        _ledger.seqlock_words(bytes(header))

    check()


def _truncate_forever(chan, name):
    path = shm_path(name)
    size = os.stat(path).st_size
    chan.send("cutting")
    while True:
        os.truncate(path, 0)
        os.truncate(path, size)
        os.truncate(path, 4096)


@isolated(timeout=60)
def test_a_view_survives_its_file_being_truncated_under_it():
    """The attacker truncates and regrows its ledger in a loop while root
    views it 300 times: each view is a View or Corrupt, none a SIGBUS."""
    name = new_name()
    assert_survived(Proc(lambda chan: make_ledger(name, 64, mode=0o644, max_holders=256,
                                                  max_waiters=256) or "ok", user=ATTACKER), 10)
    cutter = Proc(_truncate_forever, name, user=ATTACKER)
    cutter.expect("cutting")

    def views(chan):
        kinds = {}
        for _ in range(300):
            r, _ = timed(segment.read_view, name)
            key = r[0] if r[0] == "return" else r[1]["type"]
            kinds[key] = kinds.get(key, 0) + 1
        return kinds

    kinds = assert_survived(Proc(views), 60).value
    assert set(kinds) <= {"return", "ipcsem._errors.Corrupt"}, kinds


@isolated()
def test_root_views_a_wedged_semaphore_without_waiting_or_mapping():
    """ALICE's semaphore with its lock "held by init" forever: root's view
    returns at once (it never locks), maps nothing, and creates nothing."""
    name = new_name()
    assert_survived(Proc(lambda chan: make_ledger(name, 2) or "ok", user=ALICE), 10)
    forge_lock_owner(name, ALICE, 1)
    before = shm_listing()

    def view(chan):
        r, took = timed(segment.read_view, name)
        with open("/proc/self/maps") as f:
            mapped = [line for line in f if "/dev/shm/" in line]
        return r[0], took, mapped, (r[1].uid, r[1].snapshot.header.capacity) \
            if r[0] == "return" else r[1]

    kind, took, mapped, facts = assert_survived(Proc(view), 10).value
    assert kind == "return" and facts == (ALICE.uid, 2), facts
    assert took < 0.5 and not mapped
    assert shm_listing() == before


def _group_reader(chan, name):
    view, _ = timed(segment.read_view, name)
    opened, _ = timed(ipcsem.Semaphore, name)
    return (view[0], view[1].snapshot.header.capacity if view[0] == "return" else view[1]), \
        (opened[0], opened[1]["mro"] if opened[0] == "raise" else None)


@isolated()
def test_a_group_reader_can_view_but_not_use():
    """ALICE's ``0640 alice:TEAM`` semaphore: BOB (TEAM) may read it, so his
    status tools see it (pread); he may not write it, so he cannot open it
    for use: PermissionDenied, never a mapping of what he cannot trust
    anyone with."""
    from .conftest import BOB, TEAM

    name = new_name()
    assert_survived(Proc(lambda chan: make_ledger(name, 3, mode=0o640, group=TEAM) or "ok",
                         user=ALICE), 10)
    (vkind, vfacts), (okind, omro) = assert_survived(Proc(_group_reader, name, user=BOB), 10).value
    assert (vkind, vfacts) == ("return", 3), vfacts
    assert okind == "raise" and "PermissionDenied" in omro, omro
