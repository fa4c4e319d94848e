"""The admission rule against a model written without it (hypothesis).

The model keeps a queue in a plain list, ordered the obvious way (priority
descending, then arrival), and grants heads while they fit.  The rule
(``_admission.decide``) sees only what a children listing shows: names with
ZooKeeper's signed 32-bit sequence numbers, which here start near the wrap.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ipcsem._zk._admission import TAKE, decide
from ipcsem._zk._codec import HeldNode, ReqNode

MK = "0" * 16


def wrap(n: int) -> int:
    """ZooKeeper's sequence counter is a signed int: it wraps to -2**31."""
    return (n + 2**31) % 2**32 - 2**31


ops = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.integers(1, 3), st.integers(-1, 2)),
    st.tuples(st.just("take"), st.integers(1, 3), st.integers(-1, 2)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 4), unowned=st.integers(0, 1), program=ops,
       start=st.integers(2**31 - 6, 2**31 - 1))
def test_rule_matches_the_model(capacity, unowned, program, start):
    unowned = min(unowned, capacity - 1)
    counter = start
    arrivals = 0
    model_queue: list[tuple[int, int, int, int]] = []   # (prio, arrival, units, id)
    held: dict[int, int] = {}                             # id -> units
    reqs: dict[int, ReqNode] = {}
    next_id = 0

    def model_grants() -> list[int]:
        free = capacity - unowned - sum(held.values())
        out = []
        for _prio, _arr, units, rid in sorted(model_queue, key=lambda q: (-q[0], q[1])):
            if units > free:
                break
            free -= units
            out.append(rid)
        return out

    def listing():
        hs = [HeldNode(f"h{i}", u, (), MK, 1, 1, f"x{i}") for i, u in held.items()]
        return hs, list(reqs.values())

    for op, units, prio in program:
        if units > capacity - unowned:
            continue
        if op == "arrive":
            rid = next_id
            next_id += 1
            seq = wrap(counter)
            counter += 2            # a create and (eventually) a delete both count
            reqs[rid] = ReqNode(f"r{rid}", prio, units, MK, 1, 1, seq)
            model_queue.append((prio, arrivals, units, rid))
            arrivals += 1
        elif op == "take":
            hs, rs = listing()
            d = decide(capacity, unowned, hs, rs, take=(units, prio))
            # model: take succeeds iff it fits behind every queued request of
            # its priority or higher, all of which must fit too
            free = capacity - unowned - sum(held.values())
            ahead = [q for q in sorted(model_queue, key=lambda q: (-q[0], q[1])) if q[0] >= prio]
            need = 0
            ok = True
            for q in ahead:
                need += q[2]
                if need > free:
                    ok = False
                    break
            ok = ok and need + units <= free
            assert (TAKE in d.admissible) == ok
            if ok:
                held[next_id] = units
                next_id += 1
        elif op == "release" and held:
            rid = sorted(held)[units % len(held)]
            del held[rid]
        # the waiters grant themselves: the rule must agree with the model
        hs, rs = listing()
        d = decide(capacity, unowned, hs, rs)
        expect = model_grants()
        assert [int(r.name[1:]) for r in d.admissible] == expect
        for rid in expect:
            held[rid] = reqs.pop(rid).units
            model_queue[:] = [q for q in model_queue if q[3] != rid]
        assert sum(held.values()) + unowned <= capacity
