"""A process the tests drive over stdin/stdout: one command per line, one
answer line per command ("ok <repr>" or "err <ExceptionType> <message>").

Started with subprocess by tests/procs.py, so it is an unrelated process in
every sense that matters to ipcsem (its own pid, start time, mapping).
Commands: open NAME [CAPACITY] | acquire UNITS [TIMEOUT|-] [PRIORITY] |
try UNITS | release UNITS | disown UNITS | crashpoint N | pid | fork-child-release |
threads N ROUNDS | sleep S | exit
"""
import os
import sys
import threading

import ipcsem
from ipcsem._shm import _ledger

sem = None


def answer(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run(cmd: str, args: list[str]):
    global sem
    if cmd == "open":
        sem = ipcsem.Semaphore(args[0], int(args[1])) if len(args) > 1 else ipcsem.Semaphore(args[0])
        return sem.capacity
    if cmd == "acquire":
        timeout = None if len(args) < 2 or args[1] == "-" else float(args[1])
        priority = int(args[2]) if len(args) > 2 else 0
        answer("queued")  # the test may now watch the ledger for our entry
        return sem.acquire(int(args[0]), timeout=timeout, priority=priority)
    if cmd == "try":
        return sem.try_acquire(int(args[0]))
    if cmd == "release":
        return sem.release(int(args[0]))
    if cmd == "disown":
        return sem.disown(int(args[0]))
    if cmd == "crashpoint":
        _ledger.set_crash_point(int(args[0]))
        return int(args[0])
    if cmd == "pid":
        return os.getpid()
    if cmd == "fork-child-release":
        # hazard 13: the child of a holder is another process and holds nothing
        pid = os.fork()
        if pid == 0:
            try:
                sem.release(1)
                os._exit(3)  # must not happen: the child owns nothing
            except ValueError:
                os._exit(0)
            except BaseException:
                os._exit(4)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if cmd == "threads":
        n, rounds = int(args[0]), int(args[1])
        errors = []

        def work():
            try:
                for _ in range(rounds):
                    with sem:
                        pass
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(repr(e))

        ts = [threading.Thread(target=work) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return errors
    if cmd == "handler":
        # a handler that does not raise: the blocked acquire must go on waiting
        import signal

        signal.signal(int(args[0]), lambda *a: None)
        return int(args[0])
    if cmd == "handler-exit":
        # a handler that raises, like most SIGTERM handlers (sys.exit)
        import signal

        def leave(signum, frame):
            raise SystemExit(f"signal {signum}")

        signal.signal(int(args[0]), leave)
        return int(args[0])
    if cmd == "recover":
        return sem.recover()
    if cmd == "fork-zombie":
        # hazard 6: a child that takes units and exits; we never reap it
        pid = os.fork()
        if pid == 0:
            child = ipcsem.Semaphore(sem.name)
            child.acquire(int(args[0]))
            os._exit(0)
        import time

        for _ in range(2000):  # wait until it is a zombie holding units
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.005)
        return pid
    if cmd == "sleep":
        import time

        time.sleep(float(args[0]))
        return None
    if cmd == "exit":
        answer("ok None")
        os._exit(0)
    raise ValueError(f"unknown command {cmd!r}")


def main() -> None:
    answer("ready")
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            result = run(parts[0], parts[1:])
            answer(f"ok {result!r}")
        except BaseException as e:
            answer(f"err {type(e).__name__} {e}")


if __name__ == "__main__":
    main()
