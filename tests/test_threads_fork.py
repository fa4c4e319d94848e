"""fork() in a holder (hazard 13): the child is another process and holds
nothing; its own grants are its own and come back when it dies.  (Threads
sharing their process's holdings, on every backend: tests/contract.)"""
import os

import ipcsem
from ipcsem.testing import assert_consistent, held_by


def test_forked_child_holds_nothing(name, agents):
    sem = ipcsem.Semaphore(name, capacity=1)
    a = agents()
    a.open(name)
    assert a.try_acquire(1) is True
    assert a.cmd("fork-child-release") == 0   # the child's release was refused
    assert held_by(sem) == {a.pid: 1}
    assert_consistent(sem, available=0, holders={a: 1})


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
