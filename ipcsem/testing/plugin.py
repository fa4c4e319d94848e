"""The kit's pytest fixtures: ``ipcsem_name``, ``holder_factory``,
``agent_factory``, ``aio_agent_factory``, ``ipcsem_loop``.

Importing this module imports pytest.  ``ipcsem.testing`` re-exports the
fixtures only when pytest is already loaded (or on a lookup by name), so
``pytest_plugins = ["ipcsem.testing"]`` registers them while a program
that only uses the helpers never loads pytest."""
from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from .agents import Agent, AsyncAgent
from .holders import HolderProcess, spawn_holder
from .loop_gaps import LoopGaps, run_checked
from .names import unique_name, unlink_quietly

__all__ = ["agent_factory", "aio_agent_factory", "holder_factory", "ipcsem_loop", "ipcsem_name"]


@pytest.fixture
def ipcsem_name() -> Iterator[str]:
    """A fresh semaphore name (nothing created); unlinked after the test."""
    name = unique_name("t")
    yield name
    unlink_quietly(name)


@pytest.fixture
def holder_factory() -> Iterator[Callable[..., HolderProcess]]:
    """``spawn_holder`` that remembers its processes: each still running
    at teardown is SIGKILLed and reaped."""
    made: list[HolderProcess] = []

    def factory(name: str, units: int = 1, **kw: Any) -> HolderProcess:
        holder = spawn_holder(name, units, **kw)
        made.append(holder)
        return holder

    yield factory
    for holder in made:
        holder.close()


@pytest.fixture
def agent_factory() -> Iterator[Callable[..., Agent]]:
    """``Agent(...)`` that remembers its processes: each still running at
    teardown is SIGKILLed (after a SIGCONT) and reaped."""
    made: list[Agent] = []

    def factory(**kw: Any) -> Agent:
        agent = Agent(**kw)
        made.append(agent)
        return agent

    yield factory
    for agent in made:
        agent.close()


@pytest.fixture
def aio_agent_factory() -> Iterator[Callable[..., AsyncAgent]]:
    """``AsyncAgent(...)`` that remembers its processes: each still
    running at teardown is SIGKILLed and reaped."""
    made: list[AsyncAgent] = []

    def factory(**kw: Any) -> AsyncAgent:
        agent = AsyncAgent(**kw)
        made.append(agent)
        return agent

    yield factory
    for agent in made:
        agent.close()


@pytest.fixture
def ipcsem_loop() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Runs coroutines for a sync test: ``ipcsem_loop(coro)`` is
    ``run_checked(coro, max_gap=ipcsem_loop.max_gap)`` (default 0.1 s:
    set ``ipcsem_loop.max_gap`` or ``.loop = "uvloop"`` first) and
    returns the coroutine's result; ``ipcsem_loop.gaps`` is the last
    run's LoopGaps."""

    class Runner:
        max_gap: float | None = 0.1
        loop = "asyncio"
        gaps: LoopGaps | None = None

        def __call__(self, coro: Coroutine[Any, Any, Any]) -> Any:
            result, self.gaps = run_checked(coro, max_gap=self.max_gap, loop=self.loop)
            return result

    return Runner()
