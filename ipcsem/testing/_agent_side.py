"""The process side of the agents: the command loops that
``python -m ipcsem.testing agent`` (AgentLoop, for Agent) and ``aio-agent``
(AioAgentLoop, for AsyncAgent) serve on stdin."""
from __future__ import annotations

import asyncio as _asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .loop_gaps import Ticker, resources

if TYPE_CHECKING:
    from .._aio import AsyncMutex, AsyncSemaphore
    from .._semaphore import Mutex, Semaphore


def _by_name(loop: object, prefix: str, cmd: str, args: list[str]) -> object:
    """``loop.PREFIXcmd(*args)`` (dashes as underscores): a command, found
    by name; ValueError for an unknown one."""
    handler = getattr(loop, prefix + cmd.replace("-", "_"), None)
    if handler is None:
        raise ValueError(f"unknown command {cmd!r}")
    result: object = handler(*args)
    return result


class AgentLoop:
    """The agent process's side of the Agent protocol (see Agent)."""

    def __init__(self, backend: str | None) -> None:
        self.backend = backend
        self.prim: Semaphore | Mutex | None = None     # the open Semaphore or Mutex
        self.holds: list[Any] = []           # entered hold() contexts, newest last

    @staticmethod
    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def serve(self) -> None:
        from .._identity import ME

        self.say(f"ready {ME.pid} {ME.start}")
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            try:
                result = self.run(parts[0], parts[1:])
                self.say("ok " + json.dumps(result))
            except BaseException as e:  # noqa: BLE001 - every outcome goes back to the test
                text = " ".join(str(e).split())
                self.say(f"err {type(e).__name__} {text}")

    def run(self, cmd: str, args: list[str]) -> object:
        return _by_name(self, "do_", cmd, args)

    def _open(self) -> Semaphore | Mutex:
        if self.prim is None:
            raise ValueError("nothing is open (open or mutex first)")
        return self.prim

    # ----------------------------------------------------------- opening
    def do_open(self, name: str, *rest: str) -> int:
        from .._semaphore import Semaphore

        capacity: int | None = None
        if rest and "=" not in rest[0]:
            capacity, rest = int(rest[0]), rest[1:]
        sem = self.prim = Semaphore(name, capacity, backend=self.backend,
                                    **_parse_options(rest))
        self.holds = []
        return sem.capacity

    def do_mutex(self, name: str, *rest: str) -> int:
        from .._semaphore import Mutex

        self.prim = Mutex(name, backend=self.backend, **_parse_options(rest))
        self.holds = []
        return 1

    # --------------------------------------------------------- acquiring
    def do_acquire(self, units: str, timeout: str = "-", priority: str = "0") -> bool:
        from .._semaphore import Mutex

        p = self._open()
        t = None if timeout == "-" else float(timeout)
        self.say("queued")       # the test may now watch the ledger for our entry
        if isinstance(p, Mutex):
            _one(units)
            return p.acquire(timeout=t, priority=int(priority))
        return p.acquire(int(units), timeout=t, priority=int(priority))

    def do_try(self, units: str) -> bool:
        from .._semaphore import Mutex

        p = self._open()
        if isinstance(p, Mutex):
            _one(units)
            return p.acquire(False)
        return p.try_acquire(int(units))

    def do_hold(self, units: str, timeout: str = "-", priority: str = "0") -> dict[str, object]:
        from .._semaphore import Mutex

        p = self._open()
        t = None if timeout == "-" else float(timeout)
        ctx: Any
        if isinstance(p, Mutex):
            _one(units)
            ctx = p.hold(timeout=t, priority=int(priority))
        else:
            ctx = p.hold(int(units), timeout=t, priority=int(priority))
        self.say("queued")
        lease = ctx.__enter__()
        self.holds.append(ctx)
        return {"units": lease.units, "slots": list(lease.slots), "token": lease.token,
                "previous_owner_died": bool(lease.previous_owner_died)}

    def do_unhold(self) -> None:
        if not self.holds:
            raise ValueError("no hold() to leave")
        self.holds.pop().__exit__(None, None, None)

    def do_release(self, units: str = "1") -> None:
        from .._semaphore import Mutex

        p = self._open()
        if isinstance(p, Mutex):
            _one(units)
            p.release()
        else:
            p.release(int(units))

    def do_disown(self, units: str) -> None:
        from .._semaphore import Mutex

        p = self._open()
        if isinstance(p, Mutex):
            raise ValueError("a mutex cannot be disowned")
        p.disown(int(units))

    def do_recover(self) -> int:
        return self._open().recover()

    def do_close(self) -> None:
        self._open().close()

    # ----------------------------------------------------------- process
    def do_pid(self) -> int:
        return os.getpid()

    def do_ident(self) -> list[int]:
        from .._identity import ME

        return [ME.pid, ME.start]

    def do_crashpoint(self, n: str) -> int:
        from .._shm import _ledger

        _ledger.set_crash_point(int(n))
        return int(n)

    def do_handler(self, sig: str) -> int:
        # a handler that returns: a blocked acquire must go on waiting (EINTR)
        signal.signal(int(sig), lambda signum, frame: None)
        return int(sig)

    def do_handler_exit(self, sig: str) -> int:
        # a handler that raises, like most SIGTERM handlers (sys.exit)
        def leave(signum: int, frame: object) -> None:
            raise SystemExit(f"signal {signum}")

        signal.signal(int(sig), leave)
        return int(sig)

    def do_fork_child_release(self) -> int:
        # hazard 13: the child of a holder is another process and holds nothing
        from .._semaphore import Mutex

        p = self._open()
        pid = os.fork()
        if pid == 0:
            try:
                if isinstance(p, Mutex):
                    p.release()
                else:
                    p.release(1)
                os._exit(3)  # must not happen: the child owns nothing
            except ValueError:
                os._exit(0)
            except BaseException:  # noqa: BLE001 - a forked child: any failure is exit status 4
                os._exit(4)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def do_fork_zombie(self, units: str) -> int:
        # hazard 6: a child that takes units and exits; we never reap it
        from .. import _proc
        from .._semaphore import Semaphore

        pid = os.fork()
        if pid == 0:
            try:
                Semaphore(self._open().name, backend=self.backend).acquire(int(units))
            finally:
                os._exit(0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # until it is a zombie (holding its units)
            st = _proc.stat(pid)
            if st is not None and st.state == "Z":
                return pid
            time.sleep(0.005)
        raise RuntimeError(f"child {pid} did not become a zombie in 10 s")

    def do_threads(self, n: str, rounds: str) -> list[str]:

        errors: list[str] = []
        p = self._open()

        def work() -> None:
            try:
                for _ in range(int(rounds)):
                    with p:
                        pass
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(repr(e))

        ts = [threading.Thread(target=work) for _ in range(int(n))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return errors

    def do_admitted(self, directory: str, rounds: str, threads: str = "1") -> int:
        """THREADS threads each take one unit ROUNDS times; while holding,
        each must get one of CAPACITY flocks on DIRECTORY/0..CAPACITY-1
        (the kernel's count, not ipcsem's).  -> how often none was free:
        more holders than capacity (0 when the semaphore is right)."""
        import fcntl

        p = self._open()
        paths = [os.path.join(directory, str(i)) for i in range(p.capacity)]
        over: list[int] = []
        errors: list[str] = []

        def work() -> None:
            # Each thread opens its own descriptions: flocks of two threads conflict.
            fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600) for p in paths]
            try:
                for _ in range(int(rounds)):
                    with p:
                        for fd in fds:
                            try:
                                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            except BlockingIOError:
                                continue
                            fcntl.flock(fd, fcntl.LOCK_UN)
                            break
                        else:
                            over.append(1)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(repr(e))
            finally:
                for fd in fds:
                    os.close(fd)

        ts = [threading.Thread(target=work) for _ in range(int(threads))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise RuntimeError("; ".join(errors))
        return len(over)

    def do_sleep(self, seconds: str) -> None:
        time.sleep(float(seconds))

    def do_exit(self) -> None:
        self.say("ok null")
        os._exit(0)


def _one(units: str) -> None:
    if int(units) != 1:
        raise ValueError(f"a mutex has 1 unit, not {units}")


def _parse_options(words: Iterable[str]) -> dict[str, Any]:
    """``key=value`` words of ``open``/``mutex``: ints (0o660 too), booleans."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, not {word!r}")
        low = value.lower()
        out[key] = (True if low == "true" else False if low == "false" else
                    None if low == "none" else int(value, 0))
    for key in ("slots", "fair", "reentrant", "priority_inheritance"):
        if key in out and out[key] is not None:
            out[key] = bool(out[key])
    return out


class AioAgentLoop:
    """The aio agent process's side of the AsyncAgent protocol."""

    def __init__(self, backend: str | None) -> None:
        self.backend = backend
        self.prims: dict[str, AsyncSemaphore | AsyncMutex] = {}
        self.holds: dict[tuple[str, str], list[Any]] = {}     # (task, name) -> entered holds
        self.queues: dict[str, _asyncio.Queue[tuple[str, list[str]]]] = {}
        self.tasks: dict[str, _asyncio.Task[None]] = {}
        self.busy: set[str] = set()
        self.swarm: list[_asyncio.Task[None]] = []
        self.errors: list[str] = []
        self.swarm_counts: dict[str, Any] = {"granted": 0, "timeouts": 0, "cancelled": 0,
                                             "errors": self.errors}
        self.ticker: Ticker | None = None
        self.done: _asyncio.Future[None] | None = None
        self._buffer = b""

    @staticmethod
    def say(who: str, text: str) -> None:
        sys.stdout.write(f"{who} {text}\n")
        sys.stdout.flush()

    async def serve(self) -> None:
        from .._identity import ME

        loop = _asyncio.get_running_loop()
        self.done = loop.create_future()
        os.set_blocking(0, False)
        loop.add_reader(0, self._readable)
        sys.stdout.write(f"ready {ME.pid} {ME.start}\n")
        sys.stdout.flush()
        try:
            await self.done
        finally:
            loop.remove_reader(0)

    def _readable(self) -> None:
        try:
            chunk = os.read(0, 65536)
        except BlockingIOError:
            return
        if not chunk:
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            parts = line.decode().split()
            if len(parts) >= 2:
                self._dispatch(parts[0], parts[1], parts[2:])

    def _dispatch(self, who: str, cmd: str, args: list[str]) -> None:
        if who == "-":
            try:
                self._answer(who, self._control(cmd, args))
            except BaseException as e:  # noqa: BLE001 - every outcome goes back
                self._fail(who, e)
            return
        q = self.queues.get(who)
        if q is None:
            q = self.queues[who] = _asyncio.Queue()
            self.tasks[who] = _asyncio.get_running_loop().create_task(self._serve_task(who, q),
                                                                       name=f"agent-{who}")
        q.put_nowait((cmd, args))

    def _answer(self, who: str, result: object) -> None:
        self.say(who, "ok " + json.dumps(result))

    def _fail(self, who: str, e: BaseException) -> None:
        text = " ".join(str(e).split())
        self.say(who, f"err {type(e).__name__} {text}")

    async def _serve_task(self, who: str, q: _asyncio.Queue[tuple[str, list[str]]]) -> None:
        me = _asyncio.current_task()
        while True:
            cmd, args = await q.get()
            self.busy.add(who)
            try:
                handler = getattr(self, "t_" + cmd.replace("-", "_"), None)
                if handler is None:
                    raise ValueError(f"unknown command {cmd!r}")
                self._answer(who, await handler(who, *args))
            except _asyncio.CancelledError as e:
                self._fail(who, e)
                if me is not None and hasattr(me, "uncancel"):   # 3.11+
                    while me.uncancel():
                        pass
            except BaseException as e:  # noqa: BLE001
                self._fail(who, e)
            finally:
                self.busy.discard(who)

    # ----------------------------------------------------- task commands
    async def t_open(self, who: str, name: str, *rest: str) -> int:
        from .._aio import AsyncSemaphore

        capacity: int | None = None
        if rest and "=" not in rest[0]:
            capacity, rest = int(rest[0]), rest[1:]
        sem = self.prims[name] = AsyncSemaphore(name, capacity, backend=self.backend,
                                                **_parse_options(rest))
        return sem.capacity

    async def t_mutex(self, who: str, name: str, *rest: str) -> int:
        from .._aio import AsyncMutex

        self.prims[name] = AsyncMutex(name, backend=self.backend, **_parse_options(rest))
        return 1

    def _prim(self, name: str) -> AsyncSemaphore | AsyncMutex:
        try:
            return self.prims[name]
        except KeyError:
            raise ValueError(f"{name!r} is not open (open or mutex it first)") from None

    @staticmethod
    def _wait_args(timeout: str = "-", priority: str = "0",
                   deadlock: str = "wait") -> tuple[float | None, int, str]:
        return (None if timeout == "-" else float(timeout)), int(priority), deadlock

    async def t_acquire(self, who: str, name: str, units: str = "1", *rest: str) -> bool:
        from .._aio import AsyncMutex

        p = self._prim(name)
        timeout, priority, deadlock = self._wait_args(*rest)
        self.say(who, "queued")
        if isinstance(p, AsyncMutex):
            _one(units)
            return await p.acquire(timeout=timeout, priority=priority, deadlock=deadlock)
        return await p.acquire(int(units), timeout=timeout, priority=priority,
                               deadlock=deadlock)

    async def t_hold(self, who: str, name: str, units: str = "1",
                     *rest: str) -> dict[str, object]:
        from .._aio import AsyncMutex

        p = self._prim(name)
        timeout, priority, deadlock = self._wait_args(*rest)
        ctx: Any
        if isinstance(p, AsyncMutex):
            _one(units)
            ctx = p.hold(timeout=timeout, priority=priority, deadlock=deadlock)
        else:
            ctx = p.hold(int(units), timeout=timeout, priority=priority, deadlock=deadlock)
        self.say(who, "queued")
        lease = await ctx.__aenter__()
        self.holds.setdefault((who, name), []).append(ctx)
        return {"units": lease.units, "slots": list(lease.slots), "token": lease.token,
                "previous_owner_died": bool(lease.previous_owner_died)}

    async def t_unhold(self, who: str, name: str) -> None:
        held = self.holds.get((who, name))
        if not held:
            raise ValueError(f"task {who} holds no hold() of {name!r}")
        await held.pop().__aexit__(None, None, None)

    async def t_try(self, who: str, name: str, units: str = "1") -> bool:
        from .._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            _one(units)
            return await p.acquire(timeout=0)
        return p.try_acquire(int(units))

    async def t_release(self, who: str, name: str, units: str = "1") -> None:
        from .._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            _one(units)
            p.release()
        else:
            p.release(int(units))

    async def t_disown(self, who: str, name: str, units: str = "1") -> None:
        from .._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            raise ValueError("a mutex cannot be disowned")
        p.disown(int(units))

    async def t_owner_died(self, who: str, name: str) -> bool:
        from .._aio import AsyncMutex

        p = self._prim(name)
        if not isinstance(p, AsyncMutex):
            raise ValueError(f"{name!r} is not a mutex")
        return bool(p.previous_owner_died)

    async def t_close(self, who: str, name: str) -> None:
        self.prims.pop(name).close()

    async def t_sleep(self, who: str, seconds: str) -> None:
        await _asyncio.sleep(float(seconds))

    # -------------------------------------------------- process commands
    def _control(self, cmd: str, args: list[str]) -> object:
        return _by_name(self, "c_", cmd, args)

    def c_cancel(self, who: str) -> bool:
        task = self.tasks.get(who)
        if task is None or who not in self.busy:
            raise ValueError(f"task {who} runs no command")
        return task.cancel()

    def c_ident(self) -> list[int]:
        from .._identity import ME

        return [ME.pid, ME.start]

    def c_resources(self) -> dict[str, object]:
        r = resources()
        return {"threads": list(r.threads), "fds": r.fds}

    def c_swarm(self, name: str, n: str, timeout: str = "-", deadlock: str = "wait") -> int:
        from .._aio import AsyncMutex

        p = self._prim(name)
        if isinstance(p, AsyncMutex):
            raise ValueError("swarm takes a semaphore")
        t = None if timeout == "-" else float(timeout)
        counts, errors = self.swarm_counts, self.errors

        async def one() -> None:
            try:
                if await p.acquire(1, timeout=t, deadlock=deadlock):
                    p.release(1)
                    counts["granted"] += 1
                else:
                    counts["timeouts"] += 1
            except _asyncio.CancelledError:
                counts["cancelled"] += 1
                raise
            except Exception as e:  # noqa: BLE001 - reported by swarm-state
                errors.append(f"{type(e).__name__} {e}")

        loop = _asyncio.get_running_loop()
        self.swarm += [loop.create_task(one()) for _ in range(int(n))]
        return int(n)

    def c_swarm_state(self) -> dict[str, object]:
        return {**self.swarm_counts, "running": sum(not t.done() for t in self.swarm)}

    def c_swarm_cancel(self) -> int:
        live = [t for t in self.swarm if not t.done()]
        for t in live:
            t.cancel()
        return len(live)

    def c_ticker_start(self, tick: str = "0.001") -> bool:
        self.ticker = Ticker(float(tick))
        self.ticker.start()
        return True

    def c_ticker_stop(self) -> dict[str, Any]:
        if self.ticker is None:
            raise ValueError("no ticker running")
        ticker, self.ticker = self.ticker, None
        # we are inside a reader callback: the ticker task ends on the loop
        _asyncio.get_running_loop().create_task(ticker.stop())
        return ticker.gaps.to_dict()

    def c_exit(self) -> None:
        self.say("-", "ok null")
        os._exit(0)
