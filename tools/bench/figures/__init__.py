"""The measurements, one module per figure.

    1  uncontended  uncontended.py  acquire+release pair, one process
    2  contended    contended.py    P processes handing units around
    3  recovery     recovery.py     SIGKILL of the holder -> waiter holds it
    4  holders      holders.py      figure 1 with K registered holders
    5  memory       memory.py       /dev/shm per semaphore
    6  status       status.py       ipcsem-status (and the read path) over N semaphores
    7  asyncio      asyncio.py      the async pair and handoff next to the sync ones
    8  inversion    inversion.py    priority inversion with and without inheritance
    9  idle         idle.py         an idle supervisor over 1,000 registered holders

common.py holds what they share (Config, guarded(), create()/semaphore(),
the pair loop, log()). Each figure module says in its docstring what it
measures, how, and against which target.

The contract: a figure is a function fig(cfg, contenders) -> JSON-able dict,
given the run's common.Config and the selected contenders (contenders.py).
Per contender (or per configuration) the entry has a "status": "ok", "n/a"
(does not apply), "unavailable: <why>" or "error" (+ "error" text): one
contender failing never stops the run. The harness (__main__.py) runs the
figures in FIGURES order, adds "wall_s" and "load" to each dict and writes
them to results.json under "figures" -> name; report.py renders them
(markdown tables and plots live there, not here).

Adding a figure = adding one module and one line in FIGURES:

1. figures/<name>.py with a docstring (what, how, target) and
   fig_<name>(cfg, cs). Run each contender's part through
   common.guarded(c, fn), create semaphores through common.create() /
   common.semaphore() and workers through procs.spawn(): then a failure,
   a hang or Ctrl-C still leaves nothing behind. Constants of its own stay
   in the module (like holders.HOLDER_ROUNDS).
2. ("<name>", <name>.fig_<name>) at the end of FIGURES: its place is its
   number for ``--only N`` and in report.py's headings, so append.

``python -m tools.bench --only <name>`` then runs it and its dict lands in
results.json. Only if it needs them: knobs with a --quick value go in
common.Config, and a table or plot in report.py (_md_*/_plot_*).
"""

from __future__ import annotations

from . import asyncio as asyncio_fig
from . import contended, holders, idle, memory, recovery, status, uncontended
from .common import Config, destroy_all, log
from .recovery import stop_supervisors

FIGURES = [
    ("uncontended", uncontended.fig_uncontended),
    ("contended", contended.fig_contended),
    ("recovery", recovery.fig_recovery),
    ("holders", holders.fig_holders),
    ("memory", memory.fig_memory),
    ("status", status.fig_status),
    ("asyncio", asyncio_fig.fig_asyncio),
]

# What the harness (__main__.py) uses besides FIGURES.
__all__ = ["FIGURES", "Config", "destroy_all", "log", "stop_supervisors"]
from .inversion import fig_inversion; FIGURES.append(("inversion", fig_inversion))  # noqa: E402,E702,I001 (figure 7; one line so the figure list merges)
FIGURES.append(("idle", idle.fig_idle))  # figure 9 (issue #12); one line so the figure list merges
