"""A drop-in for threading and multiprocessing code (issue 9 §3).

The same pieces of code, written for ``threading.BoundedSemaphore`` /
``threading.Semaphore`` / ``multiprocessing.BoundedSemaphore``, run with only
the constructor changed; the oracle is the standard library itself (the
trace of outcomes must be the same) and, across processes, flock files that
bound how many hold at once.
"""
import multiprocessing
import threading

import pytest
from family_procs import ChildError, children, ledger_view, wait_queued  # noqa: F401

import ipcsem

# --------------------------------------------- code written for the stdlib
THREADING_CODE = '''
def threading_forms(sem):
    """Written for threading.BoundedSemaphore(2)."""
    trace = []
    trace.append(("acquire(False)", sem.acquire(False)))
    trace.append(("acquire(True, 2.0)", sem.acquire(True, 2.0)))
    trace.append(("full: acquire(blocking=False)", sem.acquire(blocking=False)))
    trace.append(("full: acquire(False)", sem.acquire(False)))
    trace.append(("full: acquire(timeout=0)", sem.acquire(timeout=0)))
    trace.append(("full: acquire(True, 0.05)", sem.acquire(True, 0.05)))
    trace.append(("full: acquire(blocking=True, timeout=0.05)",
                  sem.acquire(blocking=True, timeout=0.05)))
    sem.release()
    trace.append(("acquire(blocking=True)", sem.acquire(blocking=True)))
    sem.release(2)                      # threading's release(n)
    trace.append(("acquire()", sem.acquire()))
    trace.append(("acquire(timeout=5)", sem.acquire(timeout=5)))
    sem.release(n=2)
    with sem:
        trace.append(("in with: acquire(False)", sem.acquire(False)))
        trace.append(("in with, full: acquire(False)", sem.acquire(False)))
        sem.release()
    try:
        sem.release()
        trace.append(("release() beyond", "no error"))
    except ValueError:
        trace.append(("release() beyond", "ValueError"))
    for bad in ("sem.acquire(False, 1)", "sem.acquire(blocking=False, timeout=1)"):
        try:
            eval(bad)
            trace.append((bad, "no error"))
        except ValueError:
            trace.append((bad, "ValueError"))
    try:
        sem.release(0)
        trace.append(("release(0)", "no error"))
    except ValueError:
        trace.append(("release(0)", "ValueError"))
    return trace


def limited(sem, jobs, work):
    """Written for threading.Semaphore: at most N of `jobs` run `work` at once."""
    done = []
    def worker(job):
        with sem:
            done.append(work(job))
    threads = [threading.Thread(target=worker, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(done)
'''

MULTIPROCESSING_CODE = '''
def multiprocessing_forms(sem):
    """Written for multiprocessing.BoundedSemaphore(2)."""
    trace = []
    trace.append(("acquire()", sem.acquire()))
    trace.append(("acquire(block=False)", sem.acquire(block=False)))
    trace.append(("full: acquire(block=False)", sem.acquire(block=False)))
    trace.append(("full: acquire(False)", sem.acquire(False)))
    trace.append(("full: acquire(block=False, timeout=1)", sem.acquire(block=False, timeout=1)))
    trace.append(("full: acquire(True, 0.05)", sem.acquire(True, 0.05)))
    trace.append(("full: acquire(block=True, timeout=0.05)",
                  sem.acquire(block=True, timeout=0.05)))
    trace.append(("full: acquire(timeout=0)", sem.acquire(timeout=0)))
    sem.release()
    sem.release()
    with sem:
        trace.append(("in with: acquire(block=True, timeout=1)",
                      sem.acquire(block=True, timeout=1)))
        sem.release()
    try:
        sem.release()
        trace.append(("release() beyond", "no error"))
    except ValueError:
        trace.append(("release() beyond", "ValueError"))
    return trace
'''

ns: dict = {"threading": threading}
exec(THREADING_CODE, ns)
exec(MULTIPROCESSING_CODE, ns)


def test_threading_code_runs_unchanged_and_means_the_same(name, children):
    expected = ns["threading_forms"](threading.BoundedSemaphore(2))
    c = children(THREADING_CODE)
    got = c.run(f"threading_forms(ipcsem.Semaphore({name!r}, capacity=2))", timeout=30)
    assert got == expected
    assert ipcsem.Semaphore(name).available == 2


def test_multiprocessing_code_runs_unchanged_and_means_the_same(name, children):
    expected = ns["multiprocessing_forms"](multiprocessing.BoundedSemaphore(2))
    c = children(MULTIPROCESSING_CODE)
    got = c.run(f"multiprocessing_forms(ipcsem.Semaphore({name!r}, capacity=2))", timeout=30)
    assert got == [tuple(x) for x in expected]
    assert ipcsem.Semaphore(name).available == 2


def test_threaded_code_in_two_processes_never_exceeds_the_capacity(name, children, tmp_path):
    """`limited()` runs in two processes at once on one ipcsem semaphore of 2:
    each holder must find one of two flock files free (the kernel's view,
    not the ledger's)."""
    d = str(tmp_path)
    for k in range(2):
        open(f"{d}/seat-{k}", "w").close()
    work = (
        "import fcntl\n"
        "def work(job):\n"
        f"    fds = [os.open('{d}/seat-' + str(k), os.O_RDWR) for k in range(2)]\n"
        "    try:\n"
        "        for fd in fds:\n"
        "            try:\n"
        "                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "            except BlockingIOError:\n"
        "                continue\n"
        "            time.sleep(0.01)\n"
        "            return job\n"
        "        return ('over capacity', job)\n"
        "    finally:\n"
        "        for fd in fds:\n"
        "            os.close(fd)\n")
    ipcsem.Semaphore(name, capacity=2)
    a, b = children(THREADING_CODE + work, n=2)
    for c, jobs in ((a, range(0, 40)), (b, range(40, 80))):
        c.begin(f"limited(ipcsem.Semaphore({name!r}), list({jobs!r}), work)")
    assert a.result(60) == list(range(0, 40))
    assert b.result(60) == list(range(40, 80))


def test_the_forms_keep_their_meaning_across_processes(name, children):
    sem = ipcsem.Semaphore(name, capacity=2)
    holder, other = children(f"s = ipcsem.Semaphore({name!r})", n=2)
    holder.run("s.acquire(); s.acquire()")
    for call in ("s.acquire(False)", "s.acquire(blocking=False)", "s.acquire(block=False)",
                 "s.acquire(timeout=0)", "s.acquire(True, 0.2)",
                 "s.acquire(block=True, timeout=0.2)", "s.acquire(2, 0.2)",
                 "s.acquire(units=1, timeout=0.1)", "s.try_acquire()"):
        assert other.run(call) is False, call
    assert sem.waiters() == []
    # A negative timeout does not wait, as in threading.Semaphore and
    # multiprocessing (docs/family.md); None waits for the release.
    assert other.run("s.acquire(timeout=-1)") is False
    assert other.run("s.acquire(True, -5)") is False
    assert sem.waiters() == []
    other.begin("s.acquire(timeout=None)")
    wait_queued(sem, other)
    assert other.pending(0.3)
    holder.run("s.release()")
    assert other.result() is True
    holder.run("s.release()")
    # units: keyword and positional int; a bool is blocking, never a count.
    assert other.run("s.acquire(False)") is True           # 1 unit, non-blocking
    assert {h.pid: h.units for h in sem.holders()} == {other.pid: 2}
    other.run("s.release(2)")
    assert other.run("s.acquire(2, False)") is True        # 2 units, non-blocking
    other.run("s.release(n=2)")
    assert other.run("s.acquire(units=2, timeout=1)") is True
    other.run("s.release(2)")
    assert other.run("s.acquire(True, 1.0)") is True       # blocking, timeout 1.0, 1 unit
    assert {h.pid: h.units for h in sem.holders()} == {other.pid: 1}
    other.run("s.release()")
    assert sem.available == 2


@pytest.mark.parametrize("call, error", [
    ("s.acquire(blocking=False, timeout=1)", "ValueError"),   # as threading
    ("s.acquire(False, 1)", "ValueError"),                    # as threading
    ("s.acquire(False, 1.5)", "ValueError"),
    ("s.acquire(0)", "ValueError"),          # threading: non-blocking; here: 0 units is an error
    ("s.acquire(units=0)", "ValueError"),
    ("s.acquire(3)", "ValueError"),          # more than the capacity can ever give
    ("s.acquire(units=True)", "TypeError"),  # a bool is never a unit count
    ("s.acquire(units=2.0)", "TypeError"),
    ("s.acquire(1.0)", "TypeError"),
    ("s.acquire(None)", "TypeError"),
    ("s.acquire(blocking=1)", "TypeError"),
    ("s.acquire(block=0)", "TypeError"),
    ("s.acquire(True, 1, 2)", "TypeError"),
    ("s.acquire(2, units=2)", "TypeError"),
    ("s.acquire(True, blocking=True)", "TypeError"),
    ("s.acquire(block=True, blocking=True)", "TypeError"),
    ("s.acquire(timeout=float('nan'))", "ValueError"),
    ("s.acquire(timeout=float('inf'))", "ValueError"),
    ("s.acquire(timeout='1')", "TypeError"),
    ("s.acquire(timeout=True)", "TypeError"),
    ("s.acquire(priority=True)", "TypeError"),
    ("s.acquire(deadlock='maybe')", "ValueError"),
    ("s.release()", "ValueError"),           # nothing held, nothing unowned: as BoundedSemaphore
    ("s.release(0)", "ValueError"),          # as threading
    ("s.release(3)", "ValueError"),
    ("s.hold(True)", "TypeError"),
    ("s.hold(0)", "ValueError"),
])
def test_misuse_is_a_typed_error_that_changes_nothing(name, children, call, error):
    sem = ipcsem.Semaphore(name, capacity=2)
    c = children(f"s = ipcsem.Semaphore({name!r})")
    before = ledger_view(sem.name).header
    with pytest.raises(ChildError) as e:
        c.run(call)
    assert e.value.type == error, e.value
    after = ledger_view(sem.name).header
    assert (after.available, after.unowned, after.waiting, after.acquisitions) == \
        (before.available, before.unowned, before.waiting, before.acquisitions)
    assert sem.holders() == [] and sem.waiters() == []


def test_block_false_ignores_a_timeout_as_multiprocessing(name, children):
    ipcsem.Semaphore(name, capacity=1)
    c = children(f"s = ipcsem.Semaphore({name!r})")
    assert c.run("s.acquire(block=False, timeout=1)") is True
    assert c.run("s.acquire(block=False, timeout=1)") is False
    c.run("s.release()")


@pytest.mark.parametrize("call", ["s.release(True)", "s.release(n=True)", "s.release(units=True)",
                                  "s.disown(True)"])
def test_release_never_takes_a_bool_as_a_unit_count(name, children, call):
    ipcsem.Semaphore(name, capacity=2)
    c = children(f"s = ipcsem.Semaphore({name!r}); s.acquire()")
    with pytest.raises(ChildError) as e:
        c.run(call)
    assert e.value.type == "TypeError"


def test_try_acquire_of_a_bool_says_units(name):
    sem = ipcsem.Semaphore(name, capacity=2)
    with pytest.raises(TypeError, match="units"):
        sem.try_acquire(True)
