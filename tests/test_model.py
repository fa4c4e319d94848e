"""The protocol against a model: a hypothesis state machine drives the real
C ledger with several identities (the protocol takes identity as an
argument, so one test process can play many processes) and checks every
outcome against a ~40-line reference semaphore: exact counts, strict FIFO
within priority, priority order, all-or-nothing multi-unit grants, unowned
posts bounded by capacity, recovery returning exactly what the dead held."""
import os
import uuid

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ipcsem
from ipcsem import _ledger, _segment

IDENTS = [(900000 + i, 4242 + i) for i in range(5)]  # never real pids (pid_max < 900000)


class Model:
    def __init__(self, capacity, initial):
        self.capacity = capacity
        self.available = initial
        self.unowned = capacity - initial
        self.owned = {i: 0 for i in IDENTS}
        self.queue = []   # [ticket, ident, units, priority, entry]
        self.granted = {}  # entry -> ident: granted, not yet settled
        self.ticket = 0

    def head(self):
        return min(self.queue, key=lambda q: (-q[3], q[0])) if self.queue else None

    def nobody_ahead(self, priority):
        h = self.head()
        return h is None or h[3] < priority

    def grant_loop(self):
        woken = []
        while self.queue:
            h = self.head()
            if h[2] > self.available:
                break
            self.queue.remove(h)
            self.available -= h[2]
            self.owned[h[1]] += h[2]
            self.granted[h[4]] = h[1]
            woken.append(h[4])
        return woken


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.name = f"t-model-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.model = None

    @rule(capacity=st.integers(1, 5), data=st.data())
    @precondition(lambda self: self.model is None)
    def create(self, capacity, data):
        initial = data.draw(st.integers(0, capacity))
        self.seg = _segment.open_segment(self.name, capacity, initial, 0o600, 8, 8)
        self.L = self.seg.ledger
        self.model = Model(capacity, initial)

    def teardown(self):
        if self.model is not None:
            self.seg.close()
            ipcsem.unlink(self.name)

    def units(self, data):
        return data.draw(st.integers(1, self.model.capacity))

    @rule(data=st.data(), who=st.sampled_from(IDENTS), prio=st.integers(0, 2))
    @precondition(lambda self: self.model is not None)
    def take(self, data, who, prio):
        m, units = self.model, self.units(data)
        expect = m.available >= units and m.nobody_ahead(prio)
        got = self.L.take(*who, units, prio)
        assert got == (_ledger.GRANTED if expect else _ledger.BUSY)
        if expect:
            m.available -= units
            m.owned[who] += units

    @rule(data=st.data(), who=st.sampled_from(IDENTS), prio=st.integers(0, 2))
    @precondition(lambda self: self.model is not None and len(self.model.queue) + len(self.model.granted) < 8)
    def enqueue(self, data, who, prio):
        m, units = self.model, self.units(data)
        got = self.L.enqueue(*who, 1, units, prio)
        if m.available >= units and m.nobody_ahead(prio):
            assert got == _ledger.GRANTED
            m.available -= units
            m.owned[who] += units
        else:
            assert got >= 0
            m.queue.append([m.ticket, who, units, prio, got])
            m.ticket += 1

    @rule(data=st.data(), cancel=st.booleans())
    @precondition(lambda self: self.model is not None and (self.model.queue or self.model.granted))
    def settle(self, data, cancel):
        m = self.model
        entries = sorted([q[4] for q in m.queue] + list(m.granted))
        entry = data.draw(st.sampled_from(entries))
        ident = m.granted.get(entry) or next(q[1] for q in m.queue if q[4] == entry)
        outcome, wakes = self.L.settle(entry, *ident, int(cancel))
        if entry in m.granted:
            assert outcome == 1
            del m.granted[entry]
            assert wakes is None
        elif cancel:
            assert outcome == -1
            m.queue = [q for q in m.queue if q[4] != entry]
            assert sorted(wakes or []) == sorted(m.grant_loop())
        else:
            assert outcome == 0

    @rule(data=st.data(), who=st.sampled_from(IDENTS))
    @precondition(lambda self: self.model is not None)
    def release(self, data, who):
        m, units = self.model, self.units(data)
        owned = m.owned[who]
        extra = max(0, units - owned)
        try:
            wakes = self.L.release(*who, units)
        except ValueError:
            assert extra > m.unowned
            return
        assert extra <= m.unowned
        m.owned[who] -= units - extra
        m.unowned -= extra
        m.available += units
        assert sorted(wakes or []) == sorted(m.grant_loop())

    @rule(data=st.data(), who=st.sampled_from(IDENTS))
    @precondition(lambda self: self.model is not None)
    def disown(self, data, who):
        m, units = self.model, self.units(data)
        try:
            self.L.disown(*who, units)
        except ValueError:
            assert m.owned[who] < units
            return
        m.owned[who] -= units
        m.unowned += units

    @rule(who=st.sampled_from(IDENTS))
    @precondition(lambda self: self.model is not None)
    def die_and_recover(self, who):
        m = self.model
        units, entries, wakes = self.L.recover(*who)
        mine = [q for q in m.queue if q[1] == who]
        granted = [e for e, i in m.granted.items() if i == who]
        assert units == m.owned[who]
        assert entries == len(mine) + len(granted)
        m.queue = [q for q in m.queue if q[1] != who]
        for e in granted:
            del m.granted[e]
        m.available += m.owned[who]
        m.owned[who] = 0
        assert sorted(wakes or []) == sorted(m.grant_loop())
        # recovery is idempotent: a second recoverer finds nothing
        assert self.L.recover(*who) == (0, 0, None)

    @invariant()
    def ledger_matches_model(self):
        m = self.model
        if m is None:
            return
        self.L.check()
        header, holders, waiters, _ = self.L.snapshot()
        assert header["available"] == m.available
        assert header["unowned"] == m.unowned
        assert {(h[1], h[2]): h[3] for h in holders if h[3]} == {i: u for i, u in m.owned.items() if u}
        queued = sorted((w[7], (w[2], w[3]), w[5], w[6], w[0]) for w in waiters if w[1] == _ledger.WAITING)
        assert queued == sorted(tuple(q[:2]) + tuple(q[2:]) for q in m.queue)
        assert {w[0] for w in waiters if w[1] == _ledger.STATE_GRANTED} == set(m.granted)


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_ledger_against_model = LedgerMachine.TestCase
