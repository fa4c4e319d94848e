"""The classic semaphore scenarios, each across real processes.

    python -m tools.scenarios.server        [--chaos] [--seconds S]
    python -m tools.scenarios.prodcons      [--chaos] [--seconds S] [--windows]
    python -m tools.scenarios.rooms         [--chaos] [--seconds S]
    python -m tools.scenarios.logins        [--chaos] [--seconds S]
    python -m tools.scenarios.philosophers  [--chaos] [--seconds S]

Each starts its participants as separate interpreters
(``python -m tools.scenarios.NAME ROLE ...``), checks its invariants while it
runs and at the end, prints what happens (80 columns) and exits 0 only when
they held.  ``--chaos`` SIGKILLs random participants, respawns them, and
checks the same invariants.  See docs/scenarios.md.
"""
