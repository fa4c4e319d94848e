"""The kit's helper processes: ``python -m ipcsem.testing
hold|take|agent|aio-agent|churn|loop-load``."""
from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

from ._child import EXIT_TIMEOUT, READY, RELEASED

if TYPE_CHECKING:
    import argparse


USAGE = ("usage: python -m ipcsem.testing hold NAME UNITS [--capacity N] [--timeout S] "
         "[--backend URL]\n"
         "       python -m ipcsem.testing take NAME UNITS [--timeout S] [--backend URL]\n"
         "       python -m ipcsem.testing agent [--backend URL]\n"
         "       python -m ipcsem.testing aio-agent [--loop asyncio|uvloop] [--backend URL]\n"
         "       python -m ipcsem.testing churn NAME SECONDS HOLD [--units N] [--backend URL]\n"
         "       python -m ipcsem.testing loop-load ipcsem|asyncio NAME,... TASKS HOLD SECONDS "
         "[--samples]")


def _argparser(prog: str, description: str) -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m ipcsem.testing {prog}",
                                description=description)
    p.add_argument("--backend", default=None, metavar="URL",
                   help="the backend URL (default: $IPCSEM_BACKEND, else shm)")
    return p


def hold_main(argv: list[str]) -> int:
    """The holder process: acquire UNITS of NAME, print
    ``holding NAME UNITS PID START TOKEN SLOTS`` (SLOTS: comma-separated
    unit numbers, or ``-``), then block until stdin says ``release`` (or
    closes): release, print ``released``, exit 0.  Exit 75 if the units did
    not come within --timeout, 1 on an ipcsem error (one line on stderr), 2
    on bad arguments."""
    from .._errors import IpcsemError, Timeout
    from .._identity import ME
    from .._semaphore import Semaphore

    p = _argparser("hold", "Hold units of a semaphore until told to release "
                           "(a helper process for tests).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("units", metavar="UNITS", type=int)
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="create NAME with N units if it does not exist")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up (exit 75) if the units are not had within S seconds")
    args = p.parse_args(argv)
    try:
        sem = Semaphore(args.name, args.capacity, backend=args.backend)
        try:
            with sem.hold(args.units, timeout=args.timeout) as lease:
                slots = ",".join(map(str, lease.slots)) or "-"
                try:
                    print(f"{READY} {args.name} {args.units} {ME.pid} {ME.start} "
                          f"{lease.token} {slots}", flush=True)
                    for line in sys.stdin:       # blocks; end of file: our parent is gone
                        if line.strip() == "release":
                            break
                except OSError:                  # our parent is gone (broken pipe)
                    pass
        except Timeout:
            print(f"hold: {args.units} unit(s) of {args.name!r} not acquired within "
                  f"{args.timeout} s", file=sys.stderr, flush=True)
            return EXIT_TIMEOUT
        sem.close()
    except (IpcsemError, ValueError) as e:
        print(f"hold: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:            # Ctrl-C in the test's terminal
        return 130
    try:
        print(RELEASED, flush=True)
    except BrokenPipeError:
        pass
    return 0


def take_main(argv: list[str]) -> int:
    """The oracle process: acquire UNITS of NAME within --timeout, release
    them, exit 0; exit 75 if they did not come, 1 on an ipcsem error."""
    from .._errors import IpcsemError
    from .._semaphore import Semaphore

    p = _argparser("take", "Take units of a semaphore and give them back "
                           "(the independent oracle of tests).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("units", metavar="UNITS", type=int)
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    args = p.parse_args(argv)
    try:
        sem = Semaphore(args.name, backend=args.backend)
        if not sem.acquire(args.units, timeout=args.timeout):
            return EXIT_TIMEOUT
        sem.release(args.units)
        sem.close()
    except (IpcsemError, ValueError) as e:
        print(f"take: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def agent_main(argv: list[str]) -> int:
    """The agent process: answer commands on stdin (see Agent) until end of
    file or ``exit``."""
    p = _argparser("agent", "A process driven command by command over stdin "
                            "(the Agent of ipcsem.testing).")
    args = p.parse_args(argv)
    from ._agent_side import AgentLoop  # (imported here: the loop-load program goes without)

    try:
        AgentLoop(args.backend).serve()
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    return 0


def aio_agent_main(argv: list[str]) -> int:
    """The aio agent process: an event loop serving AsyncAgent commands on
    stdin until end of file or ``exit``."""
    p = _argparser("aio-agent", "An event loop driven task by task over stdin "
                                "(the AsyncAgent of ipcsem.testing).")
    p.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = p.parse_args(argv)
    from ._agent_side import AioAgentLoop
    from .loop_gaps import new_event_loop

    ev = new_event_loop(args.loop)
    try:
        ev.run_until_complete(AioAgentLoop(args.backend).serve())
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    return 0


def churn_main(argv: list[str]) -> int:
    """A churner (``loop_load.start_churners``): print ``ready``, then take
    N units of NAME, hold them HOLD s, give them back and pause as long, for
    SECONDS."""
    from .loop_load import churn

    p = _argparser("churn", "Take and give back a unit of a semaphore in a loop "
                            "(the other processes of the loop-gap workload).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("seconds", metavar="SECONDS", type=float)
    p.add_argument("hold", metavar="HOLD", type=float)
    p.add_argument("--units", type=int, default=1, metavar="N", help="units taken at a time")
    args = p.parse_args(argv)
    try:
        churn(args.name, args.seconds, args.hold, args.backend, args.units)
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    return 0


def loop_load_main(argv: list[str]) -> int:
    """The measured program of the loop-gap workload
    (``loop_load.run_loop_load``): its report as one line of JSON."""
    import argparse
    import json

    from .loop_load import loop_load

    p = argparse.ArgumentParser(prog="python -m ipcsem.testing loop-load",
                                description="1,000 waiting tasks and a 1 ms ticker "
                                            "(the loop-gap workload's measured program).")
    p.add_argument("kind", choices=["ipcsem", "asyncio"])
    p.add_argument("names", metavar="NAME,...")
    p.add_argument("tasks", metavar="TASKS", type=int)
    p.add_argument("hold", metavar="HOLD", type=float)
    p.add_argument("seconds", metavar="SECONDS", type=float)
    p.add_argument("--samples", action="store_true", help="every gap, not only the summary")
    args = p.parse_args(argv)
    report = loop_load(args.kind, args.names.split(","), args.tasks, args.hold, args.seconds,
                       args.samples)
    print(json.dumps(report), flush=True)
    return 0


def _main(argv: list[str]) -> int:
    # A test's Ctrl-C (SIGINT) must reach a kit process even when the test
    # run was started in the background: a shell starts background jobs with
    # SIGINT ignored, and that disposition survives exec, so Python would
    # never raise KeyboardInterrupt in it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    commands = {"hold": hold_main, "take": take_main, "agent": agent_main,
                "aio-agent": aio_agent_main, "churn": churn_main, "loop-load": loop_load_main}
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
