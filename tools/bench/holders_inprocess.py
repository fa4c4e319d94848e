"""Control for figure 4: the uncontended pair with K *other* registered
holders, all in one process (the ledger takes identities as arguments, so K
fake identities stand in for K processes).  Without K real processes on the
machine, what remains is the ledger's own cost in K; figure 4 measures the
same with real processes and with their noise.

    .venv/bin/python -m tools.bench.holders_inprocess
"""
import os
import time

import ipcsem
from ipcsem._shm import _ledger
from ipcsem._shm.segment import open_segment


def pair_ns(sem, n=200_000, reps=5) -> float:
    acquire, release = sem.acquire, sem.release
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e9


def main() -> None:
    base = None
    for k in (1, 10, 100, 1000):
        name = f"bench-inproc-{os.getpid()}-{k}"
        sem = ipcsem.Semaphore(name, capacity=2000)
        seg = open_segment(name, None)   # a second mapping, for the fake holders
        try:
            for i in range(k):   # identities no process has (pids above pid_max)
                pid = 4_000_000 + i
                assert seg.ledger.take(pid, 1, pid, pid, 1, 0, _ledger.LOCK_FOREVER) is not None
            ns = pair_ns(sem)
            base = base or ns
            print(f"K={k:5d}  {ns:7.0f} ns/pair  {ns / base:.2f}x K=1", flush=True)
        finally:
            seg.close()
            sem.close()
            ipcsem.unlink(name)


if __name__ == "__main__":
    main()
