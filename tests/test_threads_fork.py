"""Holds belong to processes (hazards 13, 14)."""
import os

import ipcsem
from procs import held_by


def test_threads_of_one_process_share_its_holdings(name, agents):
    sem = ipcsem.Semaphore(name, capacity=2)
    a, b = agents(), agents()
    for x in (a, b):
        x.cmd(f"open {name}")
    b.send("threads 4 300")               # another process, contending
    assert a.cmd("threads 8 300", timeout=120) == []
    assert b.result(120) == []
    assert sem.available == 2 and sem.holders() == []
    sem.check()


def test_units_taken_by_one_thread_may_be_released_by_another(name):
    import threading

    sem = ipcsem.Semaphore(name, capacity=2)
    sem.acquire(2)
    t = threading.Thread(target=sem.release, args=(2,))
    t.start()
    t.join()
    assert sem.available == 2
    sem.check()


def test_forked_child_holds_nothing(name, agents):
    sem = ipcsem.Semaphore(name, capacity=1)
    a = agents()
    a.cmd(f"open {name}")
    assert a.cmd("try 1") is True
    assert a.cmd("fork-child-release") == 0   # the child's release was refused
    assert held_by(sem) == {a.pid: 1}


def test_fork_child_identity_is_its_own(name):
    sem = ipcsem.Semaphore(name, capacity=2)
    sem.acquire()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if sem.acquire(timeout=5) and sem.holders() and len(sem.holders()) == 2 else 2
        finally:
            os._exit(code)     # dies holding: its unit must come back, not the parent's
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert sem.recover() == 1
    assert held_by(sem) == {os.getpid(): 1}
    sem.check()
