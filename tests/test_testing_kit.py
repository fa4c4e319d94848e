"""ipcsem.testing, used the way a user's suite uses it: as a plugin (the
example of docs/testing.md, run by pytester), and by importing its fixtures
and helpers.  Every helper is also shown to *fail* when it should: a kit
whose assertions cannot fail would prove nothing."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

import ipcsem
from ipcsem.testing import (
    Agent,
    AgentError,
    HolderError,
    agent_factory,  # noqa: F401 - a fixture, imported the way a user would
    assert_consistent,
    can_take_all,
    held_by,
    holder_factory,  # noqa: F401 - a fixture
    ipcsem_name,  # noqa: F401 - a fixture
    kill_and_wait_recovered,
    queued_pids,
    spawn_holder,
    start_supervisor,
    unique_name,
    wait_until,
)

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs_examples() -> dict[str, str]:
    """Every block of docs/testing.md that starts with ``# test_NAME.py``."""
    with open(os.path.join(ROOT, "docs", "testing.md")) as f:
        text = f.read()
    blocks = re.findall(r"```python\n(# (test_\w+)\.py\n.*?)```", text, re.S)
    assert len(blocks) >= 2, "docs/testing.md lost its example test files"
    return {module: body for body, module in blocks}


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


# ============================================================== as a plugin
def test_docs_examples_run_as_a_plugin(pytester):
    """The copyable examples of docs/testing.md pass with only
    `pytest_plugins = ["ipcsem.testing"]` in a conftest."""
    examples = _docs_examples()
    assert {"test_gpu_pool", "test_queue_order"} <= set(examples)
    pytester.makeconftest('pytest_plugins = ["ipcsem.testing"]\n')
    pytester.makepyfile(**examples)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_plugin_fixtures_clean_up(pytester, tmp_path):
    """ipcsem_name unlinks its semaphore; holder_factory kills (and reaps)
    a holder the test left running, even when the test fails."""
    record = tmp_path / "record"
    pytester.makeconftest('pytest_plugins = ["ipcsem.testing"]\n')
    pytester.makepyfile(f'''
import ipcsem

def test_leaves_a_holder(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=2)
    h = holder_factory(ipcsem_name, units=2)
    with open({str(record)!r}, "w") as f:
        f.write(f"{{ipcsem_name}} {{h.pid}}")
    assert sem.available == 0
    assert False, "fails on purpose: clean-up must still happen"
''')
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    name, pid = record.read_text().split()
    assert name not in ipcsem.names()
    assert _gone(int(pid)), "the holder process outlived the test (or is an unreaped zombie)"


def test_module_imports_without_pytest():
    code = ("import sys; sys.modules['pytest'] = None\n"
            "import ipcsem.testing as t\n"
            "assert not hasattr(t, 'ipcsem_name') and 'ipcsem_name' not in t.__all__\n"
            "print(t.unique_name('x'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("x-")


# ==================================================================== names
def test_unique_name():
    a, b = unique_name(), unique_name("job")
    assert a != unique_name() and a.startswith(f"t-{os.getpid()}-")
    assert b.startswith(f"job-{os.getpid()}-")
    with pytest.raises(ValueError):
        unique_name("bad/prefix")


# ================================================================== holders
def test_holder_holds_then_releases(ipcsem_name, holder_factory):
    h = holder_factory(ipcsem_name, units=2, capacity=3)   # the holder creates it
    sem = ipcsem.Semaphore(ipcsem_name)
    assert h.holding and h.running and h.start is not None
    assert [(x.pid, x.start, x.units) for x in sem.holders()] == [(h.pid, h.start, 2)]
    assert_consistent(sem, available=1, held=2, holders={h: 2}, waiting=0, unowned=0)
    assert h.release() == 0
    assert not h.holding and h.returncode == 0
    assert_consistent(sem, available=3, held=0, holders=0, waiting=0)


def test_holder_queued_then_granted(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=1)
    first = holder_factory(ipcsem_name)
    second = holder_factory(ipcsem_name, wait=False)
    wait_until(lambda: [w.pid for w in sem.waiters()] == [second.pid], what="second queued")
    assert not second.holding
    assert_consistent(sem, available=0, holders={first: 1}, waiting=1)
    first.release()
    second.wait_holding(5)
    assert_consistent(sem, available=0, holders={second: 1}, waiting=0)


def test_spawn_holder_times_out(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=1)
    holder_factory(ipcsem_name)
    with pytest.raises(ipcsem.Timeout, match="could not acquire 1 unit") as e:
        spawn_holder(ipcsem_name, timeout=0.2)
    assert (e.value.name, e.value.units, e.value.timeout) == (ipcsem_name, 1, 0.2)
    assert_consistent(sem, available=0, holders=1, waiting=0)   # it left no entry


def test_spawn_holder_reports_failure(ipcsem_name):
    with pytest.raises(HolderError, match=r"\(exit status 1\): hold: NotFound: no ipcsem"):
        spawn_holder(ipcsem_name)            # no such semaphore, no capacity given
    ipcsem.Semaphore(ipcsem_name, capacity=2)
    with pytest.raises(HolderError, match="CapacityMismatch"):
        spawn_holder(ipcsem_name, capacity=5)
    with pytest.raises(ValueError):
        spawn_holder(ipcsem_name, units=0)


def test_holder_context_manager(ipcsem_name):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=2)
    with spawn_holder(ipcsem_name, 2) as h:
        assert sem.available == 0
    assert h.returncode == -signal.SIGKILL
    assert sem.recover() == 2
    assert_consistent(sem, available=2, holders=0)


def test_hold_entry_point_usage():
    out = subprocess.run([sys.executable, "-m", "ipcsem.testing"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "usage: python -m ipcsem.testing hold" in out.stderr
    assert "ipcsem.testing take" in out.stderr and "ipcsem.testing agent" in out.stderr


def test_holder_reports_its_lease(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=3, slots=True)
    with sem as mine:
        h = holder_factory(ipcsem_name, units=2)
    assert h.slots == (1, 2) and h.token > mine.token
    assert {x.pid: x.slots for x in sem.holders()} == {h.pid: (1, 2)}


def test_holder_on_another_backend(ipcsem_name):
    """backend= reaches the holder process: an unknown URL fails there."""
    with pytest.raises(HolderError, match="unknown ipcsem backend"):
        spawn_holder(ipcsem_name, capacity=1, backend="nosuch://x")
    h = spawn_holder(ipcsem_name, capacity=1, backend="shm")
    with h:
        assert held_by(ipcsem.Semaphore(ipcsem_name, backend="shm")) == {h.pid: 1}


# ================================================== kill_and_wait_recovered
def test_kill_and_wait_recovered(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=3)
    h = holder_factory(ipcsem_name, units=2)
    seconds = kill_and_wait_recovered(sem, h)
    assert 0 <= seconds < 1.0
    assert h.returncode == -signal.SIGKILL           # killed and reaped
    st = sem.stats()
    assert (st.recovered_units, st.recoveries) == (2, 1)
    assert_consistent(sem, available=3, held=0, holders=0, waiting=0)


def test_kill_and_wait_recovered_fails_for_a_stopped_holder(ipcsem_name, holder_factory):
    """Stopped is alive: the units stay, so waiting for their recovery must
    fail, and say why."""
    sem = ipcsem.Semaphore(ipcsem_name, capacity=2)
    h = holder_factory(ipcsem_name, units=2)
    with pytest.raises(AssertionError) as e:
        kill_and_wait_recovered(sem, h, sig=signal.SIGSTOP, timeout=0.3)
    msg = str(e.value)
    assert f"pid {h.pid} still has 2 unit(s)" in msg and "after SIGSTOP" in msg
    assert "it is stopped" in msg, msg
    assert h.running
    assert_consistent(sem, available=0, holders={h: 2})
    assert kill_and_wait_recovered(sem, h) < 1.0      # SIGKILL ends a stopped process
    assert_consistent(sem, available=2, holders=0)


def test_recover_false_only_watches(ipcsem_name, holder_factory):
    """With recover=False nothing but the ledger's own users recover: alone,
    the dead holder stays in the ledger and the wait fails; with a blocked
    waiter (which heals) it succeeds."""
    sem = ipcsem.Semaphore(ipcsem_name, capacity=1)
    lone = holder_factory(ipcsem_name)
    with pytest.raises(AssertionError, match="nothing recovered it"):
        kill_and_wait_recovered(sem, lone, recover=False, timeout=0.3)
    assert sem.available == 0                          # really not recovered
    assert sem.recover() == 1

    first = holder_factory(ipcsem_name)
    second = holder_factory(ipcsem_name, wait=False)
    wait_until(lambda: len(sem.waiters()) == 1, what="second queued")
    seconds = kill_and_wait_recovered(sem, first, recover=False, timeout=3.0)
    assert seconds < 3.0
    second.wait_holding(3)
    assert_consistent(sem, available=0, holders={second: 1}, waiting=0)


def test_kill_and_wait_recovered_with_your_own_process(ipcsem_name):
    """Any Popen works as the holder: the user's own worker program."""
    sem = ipcsem.Semaphore(ipcsem_name, capacity=2)
    code = ("import ipcsem, sys, time\n"
            "s = ipcsem.Semaphore(sys.argv[1]); s.acquire(2)\n"
            "print('working', flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code, ipcsem_name],
                          stdout=subprocess.PIPE, text=True) as worker:
        assert worker.stdout.readline() == "working\n"
        assert_consistent(sem, available=0, holders={worker.pid: 2})
        assert kill_and_wait_recovered(sem, worker) < 1.0
        assert worker.returncode == -signal.SIGKILL       # reaped
    assert_consistent(sem, available=2, holders=0)


def test_kill_and_wait_recovered_refuses_a_holder_of_nothing(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=1)
    h = holder_factory(ipcsem_name)
    h.release()
    with pytest.raises(AssertionError, match="nothing to recover"):
        kill_and_wait_recovered(sem, h)


# ======================================================= assert_consistent
def test_assert_consistent_fails_on_wrong_counts(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=3)
    h = holder_factory(ipcsem_name, units=2)
    assert_consistent(sem, available=1, held=2, holders=1, waiting=0)
    with pytest.raises(AssertionError, match=r"available: expected 2, actual 1") as e:
        assert_consistent(sem, available=2, held=2)
    assert "held:" not in str(e.value)              # only the wrong counts are listed
    assert f"holders pid {h.pid}: 2" in str(e.value)
    with pytest.raises(AssertionError, match=r"held: expected 1, actual 2"):
        assert_consistent(sem, held=1)
    with pytest.raises(AssertionError, match=r"holders: expected 2, actual 1"):
        assert_consistent(sem, holders=2)
    with pytest.raises(AssertionError) as e:
        assert_consistent(sem, holders={h: 1})
    assert f"holders: expected {{pid {h.pid}: 1}}, actual {{pid {h.pid}: 2}}" in str(e.value)
    with pytest.raises(AssertionError, match=r"waiting: expected 1, actual 0"):
        assert_consistent(sem, waiting=1)
    with pytest.raises(AssertionError, match=r"unowned: expected 1, actual 0"):
        assert_consistent(sem, unowned=1)


def test_assert_consistent_counts_unowned(ipcsem_name):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=3, initial=1)
    assert_consistent(sem, available=1, held=0, unowned=2, holders=0)


# =================================================================== agents
def test_agent_runs_commands_and_reports_errors(ipcsem_name, agent_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=3)
    a = agent_factory()
    assert a.start is not None and a.cmd("ident") == [a.pid, a.start]
    assert a.open(ipcsem_name) == 3
    assert a.try_acquire(2) is True
    assert held_by(sem) == {a.pid: 2}
    assert a.acquire(2, timeout=0.1) is False
    with pytest.raises(AgentError) as e:
        a.release(3)                      # beyond what it owns and the capacity
    assert e.value.type == "ValueError" and str(e.value).startswith("ValueError ")
    with pytest.raises(AgentError, match="unknown command"):
        a.cmd("frobnicate")
    lease = a.hold(1)
    assert lease.units == 1 and lease.slots == () and lease.token > 0
    assert held_by(sem) == {a.pid: 3}
    a.unhold()
    a.release(2)
    assert_consistent(sem, available=3, held=0, holders=0)
    with pytest.raises(AgentError, match="NotFound"):
        a.open(ipcsem_name + "-missing")


def test_agent_queues_and_answers_later(ipcsem_name, agent_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=1)
    sem.acquire()
    a = agent_factory()
    a.open(ipcsem_name)
    a.start_acquire(1, on=sem)
    assert queued_pids(sem) == [a.pid]
    assert not a.answered(0.2)            # still waiting ...
    sem.release()
    assert a.answered(5)                  # ... answered, and the answer is kept
    assert a.result() is True
    assert held_by(sem) == {a.pid: 1}


def test_agent_start_acquire_fails_if_it_never_queues(ipcsem_name, agent_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=1)
    a = agent_factory()
    a.open(ipcsem_name)
    with pytest.raises(AssertionError, match="queued"):
        a.start_acquire(1, on=sem)          # free: granted at once, never queued
    assert a.result() is True


def test_agent_killed_mid_command_is_eof(ipcsem_name, agent_factory):
    ipcsem.Semaphore(ipcsem_name, capacity=1).acquire()
    a = agent_factory()
    a.open(ipcsem_name)
    a.start_acquire()
    a.kill()
    with pytest.raises(EOFError, match=r"rc=-9"):
        a.result()
    assert a.returncode == -signal.SIGKILL


def test_agent_factory_cleans_up(pytester, tmp_path):
    record = tmp_path / "record"
    pytester.makeconftest('pytest_plugins = ["ipcsem.testing"]\n')
    pytester.makepyfile(f'''
def test_leaves_agents(agent_factory):
    a, b = agent_factory(), agent_factory(wait=False)
    a.send("sleep 30")
    b.ready().send("sleep 30")
    import os, signal
    os.kill(b.pid, signal.SIGSTOP)        # a stopped one must be reaped too
    with open({str(record)!r}, "w") as f:
        f.write(f"{{a.pid}} {{b.pid}}")
''')
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    for pid in record.read_text().split():
        assert _gone(int(pid)), f"agent {pid} outlived the test"


def test_agent_backend_reaches_the_process(ipcsem_name):
    with Agent(backend="nosuch://x") as a, \
            pytest.raises(AgentError, match="unknown ipcsem backend"):
        a.open(ipcsem_name, 1)
    assert not os.path.exists(f"/dev/shm/ipcsem.{ipcsem_name}")


# =================================================== oracle and supervisor
def test_can_take_all(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=3)
    assert can_take_all(ipcsem_name, 3)
    h = holder_factory(ipcsem_name, units=1)
    assert not can_take_all(ipcsem_name, 3, timeout=0.2)
    assert can_take_all(ipcsem_name, 2)
    assert_consistent(sem, available=2, holders={h: 1}, waiting=0)   # it gave them back
    with pytest.raises(AssertionError, match="NotFound"):
        can_take_all(ipcsem_name + "-missing", 1)


def test_start_supervisor_recovers_and_logs(ipcsem_name, holder_factory):
    sem = ipcsem.Semaphore(ipcsem_name, capacity=2)
    with start_supervisor(ipcsem_name) as sup:
        assert sup.first_line.startswith("supervising") and sup.poll() is None
        h = holder_factory(ipcsem_name, units=2)
        kill_and_wait_recovered(sem, h, recover=False, timeout=5)
        log = sup.stop()
    assert f"recovered name={ipcsem_name} pid={h.pid} units=2" in log
    assert sup.poll() is not None
    assert_consistent(sem, available=2, holders=0)


def test_start_supervisor_fails_clearly():
    with pytest.raises(AssertionError, match="did not start"):
        start_supervisor("bad/name")
