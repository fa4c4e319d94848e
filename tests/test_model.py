"""The protocol against a model: hypothesis state machines drive the real C
ledger with several identities (the protocol takes identity as an argument,
so one test process can play many processes) and check every outcome
against a small reference semaphore: exact counts, strict FIFO within a
priority, priority order, all-or-nothing multi-unit grants, unowned posts
bounded by capacity, recovery returning exactly what the dead held, fencing
tokens in grant order, unit numbers (lowest free first; which ones a
release frees), barging bounded by OVERTAKE_LIMIT (fair=False), and the
mutex contract (owner only, nesting, owner-died until a normal release).

After every step the ledger's own check() must pass and a snapshot must
agree with the model field by field: the invariant is checked, not assumed.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ipcsem
from ipcsem._identity import start_of
from ipcsem._records import Params
from ipcsem._shm import _ledger
from ipcsem._shm.segment import open_segment


def _live_identities(n: int) -> list[tuple[int, int]]:
    """Identities of real, live processes that never touch a ledger: any
    healer on the machine (a supervisor, a blocked waiter) must see them
    alive, or it would recover their units behind the model's back."""
    procs = [subprocess.Popen(["sleep", "infinity"]) for _ in range(n)]
    atexit.register(lambda: [p.kill() for p in procs])
    return [(p.pid, start_of(p.pid)) for p in procs]


IDENTS = _live_identities(4)
FOREVER = _ledger.LOCK_FOREVER
LIMIT = _ledger.OVERTAKE_LIMIT
MAX_WAITERS = 8
KEYS = (1, 2)     # two threads' owner keys


class Model:
    """What a correct semaphore does, in the plainest Python."""

    def __init__(self, capacity: int, initial: int, *, slots: bool, fair: bool) -> None:
        self.capacity, self.slots, self.fair = capacity, slots, fair
        self.available = initial
        self.unowned = capacity - initial
        self.owned = {i: 0 for i in IDENTS}
        self.queue: list[list] = []     # [ticket, ident, units, priority, entry]
        self.granted: dict[int, tuple] = {}  # entry -> (ident, units, token, slots)
        self.ticket = 0
        self.token = 1
        self.overtaken = 0
        # unit -> None (free), "U" (unowned), (ident, token, key)
        self.units = [None] * initial + ["U"] * (capacity - initial) if slots else None

    # -- the queue in serving order
    def order(self):
        return sorted(self.queue, key=lambda q: (-q[3], q[0]))

    def head(self):
        o = self.order()
        return o[0] if o else None

    def may_take(self, units, priority):
        if self.available < units:
            return 0
        h = self.head()
        if h is None or h[3] < priority:
            return 1
        if not self.fair and self.overtaken < LIMIT:
            return 2
        return 0

    def insert(self, q):
        old_head = self.head()
        self.queue.append(q)
        if self.head() is not old_head:
            self.overtaken = 0

    def remove(self, entry):
        h = self.head()
        self.queue = [q for q in self.queue if q[4] != entry]
        if h is not None and h[4] == entry:
            self.overtaken = 0

    # -- grants
    def give(self, ident, units, key=1):
        token, self.token = self.token, self.token + 1
        self.available -= units
        self.owned[ident] += units
        got = []
        if self.slots:
            for u in range(self.capacity):
                if len(got) == units:
                    break
                if self.units[u] is None:
                    self.units[u] = (ident, token, key)
                    got.append(u)
        return token, tuple(got)

    def grant_loop(self):
        while self.queue:
            h = self.head()
            if h[2] > self.available:
                return
            if not self.fair and self.overtaken < LIMIT:
                return                  # rung, not granted: it takes them itself
            self.remove(h[4])
            token, slots = self.give(h[1], h[2], h[5])
            self.granted[h[4]] = (h[1], h[2], token, slots)

    def move_slots(self, ident, units, hint, to, key=0):
        """The ledger's order: grant `hint`'s unit numbers, then owner `key`'s
        grants newest first, then any; highest numbers first within each."""
        moved = []

        def take(pred):
            for u in reversed(range(self.capacity)):
                if len(moved) == units:
                    return
                o = self.units[u]
                if isinstance(o, tuple) and o[0] == ident and pred(o):
                    self.units[u] = None if to is None else (to, o[1], o[2])
                    moved.append(u)

        if hint:
            take(lambda o: o[1] == hint)
        while key and len(moved) < units:
            tokens = [o[1] for o in self.units if isinstance(o, tuple) and o[0] == ident
                      and o[2] == key]
            if not tokens:
                break
            newest = max(tokens)
            take(lambda o, newest=newest: o[1] == newest)
        take(lambda o: True)
        return moved


class LedgerMachine(RuleBasedStateMachine):
    SLOTS = False
    FAIR = True

    def __init__(self):
        super().__init__()
        self.name = f"t-model-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.m = None

    @rule(capacity=st.integers(1, 5), data=st.data())
    @precondition(lambda self: self.m is None)
    def create(self, capacity, data):
        initial = data.draw(st.integers(0, capacity))
        p = Params(capacity, initial, slots=self.SLOTS, fair=self.FAIR, max_holders=8,
                   max_waiters=MAX_WAITERS)
        self.seg = open_segment(self.name, p)
        self.L = self.seg.ledger
        self.m = Model(capacity, initial, slots=self.SLOTS, fair=self.FAIR)
        self.m.token = self.L.snapshot().header.next_token   # tokens start at the creation time

    def teardown(self):
        if self.m is not None:
            self.seg.close()
            ipcsem.unlink(self.name)

    def draw_units(self, data):
        return data.draw(st.integers(1, self.m.capacity))

    def expect_grant(self, g, token, slots, units):
        assert g is not None
        assert (g.units, g.token, g.slots) == (units, token, slots)

    @rule(data=st.data(), who=st.sampled_from(IDENTS), prio=st.integers(0, 2),
          key=st.sampled_from(KEYS))
    @precondition(lambda self: self.m is not None)
    def take(self, data, who, prio, key):
        m, units = self.m, self.draw_units(data)
        how = m.may_take(units, prio)
        g = self.L.take(*who, key, key, units, prio, FOREVER)
        if not how:
            assert g is None
            return
        if how == 2:
            m.overtaken += 1
        self.expect_grant(g, *m.give(who, units, key), units)

    @rule(data=st.data(), who=st.sampled_from(IDENTS), prio=st.integers(0, 2),
          key=st.sampled_from(KEYS))
    @precondition(lambda self: self.m is not None
                  and len(self.m.queue) + len(self.m.granted) < MAX_WAITERS)
    def enqueue(self, data, who, prio, key):
        m, units = self.m, self.draw_units(data)
        how = m.may_take(units, prio)
        got = self.L.enqueue(*who, key, key, units, prio, 0, FOREVER)
        if how:
            if how == 2:
                m.overtaken += 1
            self.expect_grant(got, *m.give(who, units, key), units)
        else:
            assert isinstance(got, int) and got >= 0
            m.insert([m.ticket, who, units, prio, got, key])
            m.ticket += 1

    def pending_entry(self, data):
        m = self.m
        entries = sorted([q[4] for q in m.queue] + list(m.granted))
        entry = data.draw(st.sampled_from(entries))
        if entry in m.granted:
            return entry, m.granted[entry][0]
        return entry, next(q[1] for q in m.queue if q[4] == entry)

    @rule(data=st.data())
    @precondition(lambda self: self.m is not None and (self.m.queue or self.m.granted))
    def settle(self, data):
        m = self.m
        entry, ident = self.pending_entry(data)
        if entry not in m.granted and not m.fair:
            h = m.head()
            if h[4] == entry and h[2] <= m.available:   # the woken head takes them itself
                m.remove(entry)
                token, slots = m.give(ident, h[2], h[5])
                m.granted[entry] = (ident, h[2], token, slots)
        g = self.L.settle(entry, *ident, FOREVER)
        if entry in m.granted:
            _, units, token, slots = m.granted.pop(entry)
            if self.SLOTS:
                slots = tuple(sorted(u for u in range(m.capacity)
                                     if isinstance(m.units[u], tuple)
                                     and m.units[u][:2] == (ident, token)))
            self.expect_grant(g, token, slots, units)
            if not m.fair:
                m.grant_loop()
        else:
            assert g is None

    @rule(data=st.data())
    @precondition(lambda self: self.m is not None and (self.m.queue or self.m.granted))
    def cancel(self, data):
        m = self.m
        entry, ident = self.pending_entry(data)
        back = self.L.cancel(entry, *ident, FOREVER)
        if entry in m.granted:
            # The grant's units are the process's: it may have released or
            # disowned some since; what is still held goes back.
            _, units, token, _slots = m.granted.pop(entry)
            units = min(units, m.owned[ident])
            assert back == units
            m.owned[ident] -= units
            m.available += units
            if m.slots:
                m.move_slots(ident, units, token, None)
        else:
            assert back == 0
            m.remove(entry)
        m.grant_loop()

    @rule(data=st.data(), who=st.sampled_from(IDENTS), key=st.sampled_from(KEYS))
    @precondition(lambda self: self.m is not None)
    def release(self, data, who, key):
        m, units = self.m, self.draw_units(data)
        owned = m.owned[who]
        extra = max(units - owned, 0)
        tokens = sorted({o[1] for o in (m.units or []) if isinstance(o, tuple) and o[0] == who})
        hint = data.draw(st.sampled_from(tokens)) if tokens else 0
        if extra > m.unowned:
            with pytest.raises(ValueError):
                self.L.release(*who, key, units, hint)
            return
        self.L.release(*who, key, units, hint)
        if m.slots:
            m.move_slots(who, units - extra, hint, None, key)
            freed = 0
            for u in range(m.capacity):
                if freed == extra:
                    break
                if m.units[u] == "U":
                    m.units[u] = None
                    freed += 1
        m.owned[who] -= units - extra
        m.unowned -= extra
        m.available += units
        m.grant_loop()

    @rule(data=st.data(), who=st.sampled_from(IDENTS), key=st.sampled_from(KEYS))
    @precondition(lambda self: self.m is not None)
    def disown(self, data, who, key):
        m, units = self.m, self.draw_units(data)
        if m.owned[who] < units:
            with pytest.raises(ValueError):
                self.L.disown(*who, units, 0, key)
            return
        self.L.disown(*who, units, 0, key)
        m.owned[who] -= units
        m.unowned += units
        if m.slots:
            for u in m.move_slots(who, units, 0, "gone", key):
                m.units[u] = "U"

    @rule(who=st.sampled_from(IDENTS))
    @precondition(lambda self: self.m is not None)
    def recover(self, who):
        m = self.m
        units, entries = self.L.recover(*who, FOREVER)
        mine = [e for e, g in m.granted.items() if g[0] == who]
        queued = [q[4] for q in m.queue if q[1] == who]
        assert (units, entries) == (m.owned[who], len(mine) + len(queued))
        for e in mine:
            del m.granted[e]
        for e in queued:
            m.remove(e)
        m.available += m.owned[who]
        m.owned[who] = 0
        if m.slots:
            m.units = [None if isinstance(o, tuple) and o[0] == who else o for o in m.units]
        m.grant_loop()

    @invariant()
    def agrees_with_the_model(self):
        if self.m is None:
            return
        m = self.m
        self.L.check(FOREVER)   # the ledger's own invariant, on a locked copy
        snap = self.L.snapshot()
        assert snap.consistent
        h = snap.header
        assert (h.available, h.unowned, h.waiting, h.next_token) == \
               (m.available, m.unowned, len(m.queue), m.token)
        held = {(x.pid, x.start): x.units for x in snap.holders if x.units}
        assert held == {i: u for i, u in m.owned.items() if u}
        waiting = [w.entry for w in snap.waiters if w.state == _ledger.WAITING]
        assert waiting == [q[4] for q in m.order()]
        assert {w.entry for w in snap.waiters if w.state == _ledger.GRANTED} == set(m.granted)
        if m.slots:
            for x in snap.holders:
                want = tuple(u for u, o in enumerate(m.units)
                             if isinstance(o, tuple) and o[0] == (x.pid, x.start))
                assert x.slots == want
        if not m.fair:
            assert h.head_overtaken == m.overtaken


class SlottedMachine(LedgerMachine):
    SLOTS = True


class UnfairMachine(LedgerMachine):
    FAIR = False


class UnfairSlottedMachine(LedgerMachine):
    SLOTS = True
    FAIR = False


SETTINGS = settings(max_examples=int(os.environ.get("IPCSEM_MODEL_EXAMPLES", "60")),
                    stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestLedgerModel = LedgerMachine.TestCase
TestLedgerModel.settings = SETTINGS
TestSlottedModel = SlottedMachine.TestCase
TestSlottedModel.settings = SETTINGS
TestUnfairModel = UnfairMachine.TestCase
TestUnfairModel.settings = SETTINGS
TestUnfairSlottedModel = UnfairSlottedMachine.TestCase
TestUnfairSlottedModel.settings = SETTINGS


# ----------------------------------------------------------------- mutexes
class MutexModel:
    def __init__(self, reentrant: bool) -> None:
        self.reentrant = reentrant
        self.owner = None          # (ident, key)
        self.depth = 0
        self.died = False
        self.token = 1
        self.queue: list[list] = []   # [ticket, ident, key, prio, entry]
        self.granted: dict[int, tuple] = {}
        self.ticket = 0

    def head(self):
        return min(self.queue, key=lambda q: (-q[3], q[0])) if self.queue else None

    def grant(self, ident, key):
        token, self.token = self.token, self.token + 1
        self.owner, self.depth = (ident, key), 1
        return token

    def grant_loop(self):
        if self.owner is None and self.queue:
            h = self.head()
            self.queue.remove(h)
            self.granted[h[4]] = (h[1], self.grant(h[1], h[2]))


class MutexMachine(RuleBasedStateMachine):
    REENTRANT = False
    KEYS = (11, 12)

    def __init__(self):
        super().__init__()
        self.name = f"t-mxmodel-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        p = Params(1, 1, kind="mutex", reentrant=self.REENTRANT, max_holders=8,
                   max_waiters=MAX_WAITERS)
        self.seg = open_segment(self.name, p)
        self.L = self.seg.ledger
        self.m = MutexModel(self.REENTRANT)
        self.m.token = self.L.snapshot().header.next_token

    def teardown(self):
        self.seg.close()
        ipcsem.unlink(self.name)

    @rule(who=st.sampled_from(IDENTS[:3]), key=st.sampled_from(KEYS), prio=st.integers(0, 1))
    def take(self, who, key, prio):
        m = self.m
        if m.owner == (who, key):
            if not m.reentrant:
                with pytest.raises(ipcsem.DeadlockDetected):
                    self.L.take(*who, key, key, 1, prio, FOREVER)
                return
            g = self.L.take(*who, key, key, 1, prio, FOREVER)
            m.depth += 1
            assert g is not None
            return
        g = self.L.take(*who, key, key, 1, prio, FOREVER)
        h = m.head()
        if m.owner is None and (h is None or h[3] < prio):
            died = m.died
            assert g is not None and g.token == m.grant(who, key)
            assert g.previous_owner_died == died
        else:
            assert g is None

    @rule(who=st.sampled_from(IDENTS[:3]), key=st.sampled_from(KEYS), prio=st.integers(0, 1))
    @precondition(lambda self: len(self.m.queue) + len(self.m.granted) < MAX_WAITERS)
    def enqueue(self, who, key, prio):
        m = self.m
        if m.owner == (who, key):
            return  # covered by take
        got = self.L.enqueue(*who, key, key, 1, prio, 0, FOREVER)
        h = m.head()
        if m.owner is None and (h is None or h[3] < prio):
            assert not isinstance(got, int) and got.token == m.grant(who, key)
        else:
            assert isinstance(got, int)
            m.queue.append([m.ticket, who, key, prio, got])
            m.ticket += 1

    @rule(data=st.data())
    @precondition(lambda self: self.m.granted)
    def settle(self, data):
        m = self.m
        entry = data.draw(st.sampled_from(sorted(m.granted)))
        ident, token = m.granted.pop(entry)
        g = self.L.settle(entry, *ident, FOREVER)
        assert g is not None and g.token == token and g.previous_owner_died == m.died

    @rule(who=st.sampled_from(IDENTS[:3]), key=st.sampled_from(KEYS))
    def release(self, who, key):
        m = self.m
        if m.owner != (who, key):
            with pytest.raises(ipcsem.NotOwner):
                self.L.release(*who, key, 1, 0)
            return
        self.L.release(*who, key, 1, 0)
        m.depth -= 1
        if m.depth == 0:
            m.owner, m.died = None, False
            m.grant_loop()

    @rule(who=st.sampled_from(IDENTS[:3]))
    def recover(self, who):
        m = self.m
        units, entries = self.L.recover(*who, FOREVER)
        held = 1 if m.owner is not None and m.owner[0] == who else 0
        mine = [e for e, g in m.granted.items() if g[0] == who]
        queued = [q for q in m.queue if q[1] == who]
        assert (units, entries) == (held, len(mine) + len(queued))
        for e in mine:
            del m.granted[e]
        for q in queued:
            m.queue.remove(q)
        if held:
            m.owner, m.depth, m.died = None, 0, True
        m.grant_loop()

    @invariant()
    def agrees(self):
        m = self.m
        self.L.check(FOREVER)
        h = self.L.snapshot().header
        assert (h.mx_owner != 0) == (m.owner is not None)
        if m.owner is not None:
            assert (h.mx_owner, h.mx_depth) == (m.owner[1], m.depth)
        assert bool(h.mx_owner_died) == m.died
        assert h.next_token == m.token


class ReentrantMutexMachine(MutexMachine):
    REENTRANT = True


TestMutexModel = MutexMachine.TestCase
TestMutexModel.settings = SETTINGS
TestReentrantMutexModel = ReentrantMutexMachine.TestCase
TestReentrantMutexModel.settings = SETTINGS


def test_the_model_serves_priority_before_ticket():
    """The model's own order (the machines compare the ledger against it):
    priority first, then ticket.  Mutating the model's order, slot choice
    or overtake limit makes the machines fail (tried when they were
    written: each mutation is caught within the default example count)."""
    m = Model(2, 0, slots=False, fair=True)
    m.insert([0, IDENTS[0], 1, 0, 0])
    m.insert([1, IDENTS[1], 1, 5, 1])
    assert [q[4] for q in m.order()] == [1, 0]   # priority first, as the ledger must
