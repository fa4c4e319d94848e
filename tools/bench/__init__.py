"""ipcsem benchmark harness.

Run from the repository root::

    python -m tools.bench [--quick] [--out DIR] [--only FIGURE,...] [--contenders KEY,...]

One run measures every contender side by side on the same machine and writes
``DIR/results.json`` (raw numbers + machine info), ``DIR/results.md`` (tables,
ratios vs ``sysv_ipc SEM_UNDO``) and PNG plots (if matplotlib is importable).

Modules:
    contenders  one small class per semaphore implementation, common interface
    procs       launching worker processes (subprocess or fork) + cleanup
    worker      code that runs inside worker processes (``python -m tools.bench.worker``)
    figures/    the measurements, one module per figure (+ common.py)
    stats       percentiles, Jain fairness index
    report      results.json / results.md / plots, the targets table (issue #12)

Profilers (not part of the run; docs/perf.md quotes them):
    profile_pair      callgrind instructions per uncontended pair, by function
    profile_handoff   per contended op: syscalls, futex calls by object, context
                      switches per thread, CPU, ledger transactions (perf + uprobes)
    profile_idle      py-spy over figure 9's idle supervisor
    experiments       proposed library changes emulated in the workers only
    holders_inprocess figure 4's control: K fake registrations in one process
"""
