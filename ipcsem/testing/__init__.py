"""Test helpers for code that uses ipcsem: real processes, real SIGKILLs.

ipcsem's own suite tests itself with this kit; use it from yours, either as
a plugin (the fixtures appear by themselves)::

    # conftest.py
    pytest_plugins = ["ipcsem.testing"]

or by importing what you need::

    from ipcsem.testing import (assert_consistent, holder_factory, ipcsem_name,
                                kill_and_wait_recovered, spawn_holder, unique_name)

A test::

    import ipcsem
    from ipcsem.testing import assert_consistent, kill_and_wait_recovered

    def test_units_of_a_killed_worker_come_back(ipcsem_name, holder_factory):
        sem = ipcsem.Semaphore(ipcsem_name, capacity=3)
        worker = holder_factory(ipcsem_name, units=2)     # another process holds 2
        assert_consistent(sem, available=1, held=2, holders=1, waiting=0)
        kill_and_wait_recovered(sem, worker)               # SIGKILL, then recovered
        assert_consistent(sem, available=3, held=0, holders=0, waiting=0)

What is here
------------
Names and processes that hold:

``unique_name(prefix="t")``
    a fresh semaphore name; the ``ipcsem_name`` fixture gives one and
    unlinks it after the test.
``spawn_holder(name, units=1, *, capacity=None, timeout=10, wait=True, backend=None)``
    start a *separate* process (``python -m ipcsem.testing hold``) that
    acquires the units and blocks; returns a ``HolderProcess`` once it holds
    them.  ``holder_factory`` is ``spawn_holder`` plus clean-up.
``Agent(backend=None, env=None, wait=True)``
    a separate process driven command by command (``python -m
    ipcsem.testing agent``): open, acquire, release, queue, hold a lease,
    lock a mutex, install signal handlers, fork, arm a crash point.
    ``agent_factory`` is ``Agent`` plus clean-up.
``start_supervisor(*names)``
    ``ipcsem supervise NAME...`` as a child; ``.stop()`` returns its log.

Asserting:

``kill_and_wait_recovered(sem, holder, *, timeout=5.0, recover=True, sig=SIGKILL)``
    SIGKILL the holder and wait until the ledger no longer shows it.
``assert_consistent(sem, *, available=, held=, holders=, waiting=, unowned=)``
    ``sem.check()`` (the ledger invariant) plus exact counts.
``can_take_all(name, units, timeout=5.0, *, backend=None)``
    the independent oracle: can a fresh process take ``units`` units now?
``wait_until(predicate, timeout=5.0, *, interval=0.005, what=None)``
    poll until ``predicate()`` is true; AssertionError on timeout.
``held_by(sem)``, ``queued_pids(sem)``
    ``{pid: units}`` of the holders and the waiters' pids in serving order.

asyncio (see docs/asyncio.md):

``await wait_for_waiters(sem, n)``, ``await wait_until_async(predicate)``
    poll without blocking the event loop.
``watch_loop_gaps(tick=0.001)``, ``run_checked(coro, max_gap=)``, ``ipcsem_loop``
    a ticker task that proves the loop was never held (run-queue delay
    reported apart); a fresh loop (asyncio or uvloop) under it.
``resources(pid=None)``
    a process's threads (by name) and open descriptors.
``AsyncAgent(loop="asyncio")``, ``aio_agent_factory``
    a separate process whose event loop's tasks a test drives by name.

Every helper that starts a process takes ``backend=`` (a backend URL, as
``ipcsem.Semaphore(..., backend=)``; default ``$IPCSEM_BACKEND``, else the
shared-memory backend).  Only the fixtures need pytest; the rest imports and
works without it.  See docs/testing.md.

Layout: ``names``, ``holders``, ``supervisor``, ``agents`` (Agent,
AsyncAgent), ``assertions`` (the oracle and the ledger checks),
``loop_gaps`` (asyncio), ``loop_load`` (the loop-gap workload, imported
from there), ``plugin`` (the fixtures); ``__main__`` and
``_agent_side`` are the helper processes' side, ``_child`` their plumbing.
This module only re-exports.
"""
from __future__ import annotations

import sys
from typing import Any

from ._child import EXIT_TIMEOUT, MODULE, READY, RELEASED  # noqa: F401 - as before the split
from .agents import Agent, AgentError, AgentLease, AsyncAgent, AsyncAgentError
from .assertions import (
    assert_consistent,
    can_take_all,
    held_by,
    kill_and_wait_recovered,
    queued_pids,
    wait_for_waiters,
    wait_until,
    wait_until_async,
)
from .holders import HolderError, HolderProcess, spawn_holder
from .loop_gaps import LoopGaps, Resources, new_event_loop, resources, run_checked, watch_loop_gaps
from .names import unique_name
from .supervisor import SupervisorProcess, start_supervisor

__all__ = [
    "Agent",
    "AgentError",
    "AgentLease",
    "AsyncAgent",
    "AsyncAgentError",
    "HolderError",
    "HolderProcess",
    "LoopGaps",
    "Resources",
    "SupervisorProcess",
    "assert_consistent",
    "can_take_all",
    "held_by",
    "kill_and_wait_recovered",
    "new_event_loop",
    "queued_pids",
    "resources",
    "run_checked",
    "spawn_holder",
    "start_supervisor",
    "unique_name",
    "wait_for_waiters",
    "wait_until",
    "wait_until_async",
    "watch_loop_gaps",
]  # + the fixtures when pytest is loaded

# The fixtures are re-exported here when pytest is already loaded (a
# conftest, a plugin list: the only places fixtures are of use), else on
# first access by name (module __getattr__ below).  A program that only uses
# the helpers -- the helper processes (`python -m ipcsem.testing ...`), which
# must start fast, or a measured program such as the loop-gap one, whose
# every garbage collection would otherwise walk pytest's heap too -- never
# imports pytest.  (A None entry is how a program keeps pytest out.)
_FIXTURES = ("agent_factory", "aio_agent_factory", "holder_factory", "ipcsem_loop",
             "ipcsem_name")
if sys.modules.get("pytest") is not None:
    from .plugin import agent_factory as agent_factory
    from .plugin import aio_agent_factory as aio_agent_factory
    from .plugin import holder_factory as holder_factory
    from .plugin import ipcsem_loop as ipcsem_loop
    from .plugin import ipcsem_name as ipcsem_name

    __all__ += list(_FIXTURES)


_HELPER_MAINS = ("USAGE", "agent_main", "aio_agent_main", "hold_main", "take_main")


def __getattr__(name: str) -> Any:
    """The fixtures, for an import by name before pytest was loaded
    (AttributeError, so ImportError from ``from ... import``, if pytest
    cannot be imported); the helper processes' mains."""
    if name in _FIXTURES:
        try:
            from . import plugin
        except ImportError as e:
            raise AttributeError(f"{name!r} is a pytest fixture and pytest cannot be "
                                 f"imported: {e}") from e
        return getattr(plugin, name)
    if name in _HELPER_MAINS:
        # not imported up front: `python -m ipcsem.testing` runs that module
        # as __main__, and it must not be in sys.modules before that.
        from . import __main__ as mains
        return getattr(mains, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
