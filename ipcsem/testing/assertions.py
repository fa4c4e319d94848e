"""Asserting on a semaphore: the independent oracle (can_take_all), the
ledger's counts (assert_consistent, held_by, queued_pids), waiting for a
condition (wait_until, and without blocking a loop: wait_until_async,
wait_for_waiters), and killing a holder until its units are back."""
from __future__ import annotations

import asyncio as _asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._child import EXIT_TIMEOUT, MODULE, child_env
from .holders import HolderProcess

if TYPE_CHECKING:
    from .._base import Opened as _Observable  # any open semaphore or mutex, sync or async
    from .._records import Waiter

_T = TypeVar("_T")


def can_take_all(name: str, units: int, timeout: float = 5.0, *,
                 backend: str | None = None) -> bool:
    """The independent oracle: a fresh process (``python -m ipcsem.testing
    take``) tries to acquire ``units`` units of ``name`` within ``timeout``
    seconds; True if it got them (it releases them and exits).  It trusts
    no count in this process: only whether another process is admitted.
    AssertionError if that process failed (e.g. NotFound)."""
    argv = [sys.executable, "-m", MODULE, "take", name, str(units), "--timeout", repr(timeout)]
    if backend is not None:
        argv += ["--backend", backend]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                         env=child_env(), check=False)   # its exit status is read below
    if out.returncode not in (0, EXIT_TIMEOUT):
        raise AssertionError(f"oracle process for {name!r} failed with exit status "
                             f"{out.returncode}: {out.stderr.strip()}")
    return out.returncode == 0


def wait_until(predicate: Callable[[], _T], timeout: float = 5.0, *, interval: float = 0.005,
               what: str | None = None) -> _T:
    """Call ``predicate()`` until it returns something true, and return that;
    AssertionError after ``timeout`` seconds, naming ``what`` is awaited.
    ``wait_until(lambda: len(sem.waiters()) == 1, what="a queued waiter")``"""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(interval)


def held_by(sem: _Observable) -> dict[int, int]:
    """``{pid: units}`` of every process holding units of ``sem`` now."""
    return {h.pid: h.units for h in sem.holders()}


def queued_pids(sem: _Observable) -> list[int]:
    """The pids of ``sem``'s waiters, in the order they will be served."""
    return [w.pid for w in sem.waiters()]


def _presence(sem: _Observable, pid: int, start: int | None) -> tuple[int, int]:
    """(units held, queue entries) of the identity per the ledger now."""
    def me(p: int, s: int) -> bool:
        return p == pid and (start is None or s == start)

    units = sum(h.units for h in sem.holders() if me(h.pid, h.start))
    queued = sum(1 for w in sem.waiters() if me(w.pid, w.start))
    return units, queued


def _describe_ledger(sem: _Observable) -> str:
    try:
        holders = ", ".join(f"pid {h.pid}: {h.units}" for h in sem.holders()) or "none"
        waiters = ", ".join(f"pid {w.pid}: {w.units}" for w in sem.waiters()) or "none"
        return (f"ledger of {sem.name!r}: {sem.available} of {sem.capacity} available; "
                f"holders {holders}; waiters {waiters}")
    except Exception as e:  # noqa: BLE001 - only a diagnostic
        return f"ledger of {sem.name!r} unreadable: {e}"


class _Signallable(Protocol):
    """What kill_and_wait_recovered needs of a process: its pid, a signal."""

    @property
    def pid(self) -> int: ...
    def send_signal(self, sig: int, /) -> None: ...


def kill_and_wait_recovered(sem: _Observable, holder: _Signallable, *, timeout: float = 5.0,
                            recover: bool = True,
                            sig: int = signal.SIGKILL) -> float:
    """SIGKILL ``holder`` and wait until ``sem``'s ledger no longer shows it
    (no units, no queue entry): its units are back in the pool, or already
    granted to a waiter.  Returns the seconds from the signal to that.

    ``recover=True`` calls ``sem.recover()`` while waiting, as a program's
    own code might; ``recover=False`` only watches, to test that something
    else recovers (``ipcsem supervise``, a blocked waiter healing).
    ``sig`` sends another signal instead (a process stopped by SIGSTOP is
    alive and is never recovered: that times out).

    ``holder`` is a HolderProcess, an Agent, or any process handle with
    ``pid`` and ``send_signal(sig)`` (a ``subprocess.Popen`` of your own
    worker; it is reaped after a SIGKILL).  AssertionError if it holds
    nothing and waits for nothing before the signal, or if it is still in
    the ledger after ``timeout`` seconds; the message says what the process
    is (alive, stopped, zombie) and what the ledger holds.
    """
    from .. import _identity

    pid: int = holder.pid
    start: int | None = getattr(holder, "start", None)
    if start is None:
        start = _identity.start_of(pid)
    units, queued = _presence(sem, pid, start)
    if not units and not queued:
        raise AssertionError(f"pid {pid} holds no units of {sem.name!r} and waits for none: "
                             "nothing to recover (did it acquire?)")
    signame = signal.Signals(sig).name
    t0 = time.monotonic()
    holder.send_signal(sig)
    deadline = t0 + timeout
    while True:
        if recover:
            sem.recover()
        now = time.monotonic()
        left = _presence(sem, pid, start)
        if left == (0, 0):
            taken = now - t0
            break
        if now >= deadline:
            state = _identity.status(pid, start or 0)
            why = {
                _identity.STOPPED: "it is stopped, i.e. alive: a stopped process keeps its units",
                _identity.ALIVE: "it is alive (the signal did not end it)",
                _identity.UNKNOWN: "it is hidden from us, so treated as alive",
            }.get(state, f"it is {state}"
                  + ("" if recover else ": nothing recovered it (recover=False: is a "
                                        "supervisor or a blocked waiter running?)"))
            raise AssertionError(
                f"pid {pid} still has {left[0]} unit(s) and {left[1]} queue entr"
                f"{'y' if left[1] == 1 else 'ies'} in {sem.name!r} {timeout} s after "
                f"{signame}; {why}. {_describe_ledger(sem)}")
        time.sleep(0.002)
    if sig == signal.SIGKILL:  # reap our own child: no zombie left behind
        proc: object = holder if isinstance(holder, subprocess.Popen) \
            else getattr(holder, "proc", None)
        if isinstance(proc, subprocess.Popen):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
    if isinstance(holder, HolderProcess):
        holder.holding = False
    return taken


def assert_consistent(sem: _Observable, *, available: int | None = None,
                      held: int | None = None,
                      holders: int | Mapping[Any, int] | None = None, waiting: int | None = None,
                      unowned: int | None = None) -> None:
    """Run ``sem.check()`` (the ledger invariant) and compare exact counts.

    ``available``: units free; ``held``: units owned by processes;
    ``holders``: how many processes hold units, or a mapping
    ``{pid (or HolderProcess, Agent): units}`` that must be exactly who
    holds what; ``waiting``: queued requests; ``unowned``: units out without
    an owner.  None skips a count.  AssertionError listing each mismatch as
    expected vs actual, with the ledger's holders and waiters.
    """
    from .._errors import Corrupt

    try:
        sem.check()
    except Corrupt as e:
        raise AssertionError(f"check() of {sem.name!r} failed: {e}") from e
    st = sem.stats()
    actual = {"available": st.available, "held": st.held, "waiting": st.waiting,
              "unowned": st.unowned}
    expected = {"available": available, "held": held, "waiting": waiting, "unowned": unowned}
    wrong = [f"{k}: expected {expected[k]}, actual {actual[k]}"
             for k in expected if expected[k] is not None and expected[k] != actual[k]]
    if holders is not None:
        if isinstance(holders, Mapping):
            want = {k if isinstance(k, int) else int(k.pid): v for k, v in holders.items()}
            got = held_by(sem)
            if want != got:
                wrong.append(f"holders: expected {_pids(want)}, actual {_pids(got)}")
        elif holders != st.holders:
            wrong.append(f"holders: expected {holders}, actual {st.holders}")
    if wrong:
        raise AssertionError(f"{sem.name!r}: " + "; ".join(wrong) + f". {_describe_ledger(sem)}")


def _pids(d: Mapping[int, int]) -> str:
    return "{" + ", ".join(f"pid {p}: {u}" for p, u in sorted(d.items())) + "}"


async def wait_until_async(predicate: Callable[[], Any], timeout: float = 5.0, *,
                           interval: float = 0.002, what: str | None = None) -> Any:
    """``wait_until`` for coroutines: call ``predicate()`` (a plain call, or
    one returning an awaitable) every ``interval`` seconds, sleeping on the
    loop in between, until it gives something true, and return that.
    AssertionError after ``timeout`` seconds, naming ``what``."""
    loop = _asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if _asyncio.iscoroutine(value) or isinstance(value, _asyncio.Future):
            value = await value
        if value:
            return value
        if loop.time() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        await _asyncio.sleep(interval)


async def wait_for_waiters(sem: _Observable, n: int, timeout: float = 5.0, *,
                           pid: int | None = None, interval: float = 0.002) -> list[Waiter]:
    """Wait, without blocking the loop, until ``sem.waiters()`` shows exactly
    ``n`` queued requests (of ``pid`` only, if given), and return them in
    serving order.  For tests that must know a task is *queued* before
    they release, cancel or kill something.  AssertionError on timeout,
    saying how many there were."""
    seen: list[Waiter] = []

    def queued() -> bool:
        nonlocal seen
        seen = [w for w in sem.waiters() if pid is None or w.pid == pid]
        return len(seen) == n

    try:
        await wait_until_async(queued, timeout, interval=interval)
    except AssertionError:
        raise AssertionError(f"{sem.name!r}: expected {n} waiter(s)"
                             f"{'' if pid is None else f' of pid {pid}'} within {timeout} s, "
                             f"saw {len(seen)}. {_describe_ledger(sem)}") from None
    return seen
