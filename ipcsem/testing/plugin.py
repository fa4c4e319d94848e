"""The kit's pytest fixtures: ``ipcsem_name``, ``holder_factory``,
``agent_factory``, ``aio_agent_factory``, ``ipcsem_loop``.

Importing this module imports pytest.  ``ipcsem.testing`` re-exports the
fixtures only when pytest is already loaded (or on a lookup by name), so
``pytest_plugins = ["ipcsem.testing"]`` registers them while a program
that only uses the helpers never loads pytest."""
from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

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


class _Closable(Protocol):
    def close(self) -> None: ...


_P = TypeVar("_P", bound=_Closable)


def _remembering(make: Callable[..., _P]) -> Iterator[Callable[..., _P]]:
    """The body of a factory fixture: yields ``make`` remembering what it
    made, and closes each of those at teardown (a process still running is
    SIGKILLed, after a SIGCONT, and reaped)."""
    made: list[_P] = []

    def factory(*args: Any, **kw: Any) -> _P:
        thing = make(*args, **kw)
        made.append(thing)
        return thing

    yield factory
    for thing in made:
        thing.close()


@pytest.fixture
def holder_factory() -> Iterator[Callable[..., HolderProcess]]:
    """``spawn_holder`` that remembers its processes: each still running
    at teardown is SIGKILLed and reaped."""
    def spawn(name: str, units: int = 1, **kw: Any) -> HolderProcess:
        return spawn_holder(name, units, **kw)

    yield from _remembering(spawn)


@pytest.fixture
def agent_factory() -> Iterator[Callable[..., Agent]]:
    """``Agent(...)`` that remembers its processes: each still running at
    teardown is SIGKILLed (after a SIGCONT) and reaped."""
    yield from _remembering(lambda **kw: Agent(**kw))  # noqa: PLW0108 - keywords only, as always


@pytest.fixture
def aio_agent_factory() -> Iterator[Callable[..., AsyncAgent]]:
    """``AsyncAgent(...)`` that remembers its processes: each still
    running at teardown is SIGKILLed and reaped."""
    yield from _remembering(lambda **kw: AsyncAgent(**kw))  # noqa: PLW0108 - likewise


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
