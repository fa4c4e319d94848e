"""What-ifs: proposed library changes, measured before anyone makes them.

    tools/bench/whatif/ledger-cwait-lfsettle-enqfirst.patch
        _ledger.c, three switches read from the environment (all off by
        default, so the patched build behaves as the unpatched one):
        IPCSEM_EXP_CWAIT     a refused C fast take queues and waits in C
                             (Ledger_wait) instead of the Python slow path
                             (no healing slices, no pidfd watcher: a what-if)
        IPCSEM_EXP_LFSETTLE  a GRANTED entry is settled without the ledger
                             lock and freed in the handle's next transaction
        IPCSEM_EXP_ENQFIRST  a blocking acquire() goes straight to the C wait,
                             whose enqueue grants at once when it can
    tools/bench/experiments.py
        IPCSEM_BENCH_EXPERIMENT=nowatch|lazywatch: the watcher, off or kept
        across waits, swapped in inside the benchmark's workers only.

Never apply a patch to a worktree you commit from.  Measure in a scratch
copy:

    git archive HEAD | tar -x -C /tmp/scratch && cd /tmp/scratch
    git apply -p1 tools/bench/whatif/ledger-cwait-lfsettle-enqfirst.patch
    /path/to/.venv/bin/python setup.py build_ext --inplace
    /path/to/.venv/bin/python -m tools.bench.whatif.ab \\
        '[["sysv","sysv",{}],["base","ipcsem",{}],["cwait","ipcsem",{"IPCSEM_EXP_CWAIT":"1"}]]' \\
        8:1:0,8:2:0 3 1.5

(run from the scratch copy: its ipcsem is found before the venv's editable
install).  docs/perf.md quotes the results.
"""
