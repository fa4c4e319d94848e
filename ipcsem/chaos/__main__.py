"""The storm's child processes (not a user entry point: that is
``ipcsem chaos``):

    python -m ipcsem.chaos worker KEY=VALUE ...      one worker (worker.py)
    python -m ipcsem.chaos verify NAME CAPACITY TIMEOUT KIND [BACKEND]
                                                     the fresh process that must
                                                     take every unit (verify.py)
"""
import sys


def _main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        from .worker import WorkerConfig, main

        main(WorkerConfig.from_argv(argv[1:]))
        return 0
    if argv[:1] == ["verify"] and len(argv) in (5, 6):
        from .verify import verify_main

        return verify_main(argv[1], int(argv[2]), float(argv[3]), argv[4], *argv[5:])
    print("python -m ipcsem.chaos is the storm's own child process; run `ipcsem chaos`",
          file=sys.stderr)
    return 2


sys.exit(_main(sys.argv[1:]))
