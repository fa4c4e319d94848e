"""The storm's shared counters: one row of ROW_WORDS int64 words per worker
index, in a small file every worker maps.  A worker writes only its own row
(one writer per row: plain aligned 8-byte stores suffice); the storm reads
every row (what a worker is doing when it is picked for a kill, its totals).

Kept free of imports beyond the standard library: every exec'd worker pays
for what this module imports.
"""
from __future__ import annotations

import mmap
import os

ROW_WORDS = 8
(W_CYCLES,       # acquire -> oracle -> release rounds completed
 W_STATE,        # what the worker is doing now (STARTING..CLOSING below)
 W_TIMEOUTS,     # acquires that timed out
 W_BUSY,         # non-blocking attempts that found the units taken
 W_PID,          # the worker's pid, once it runs (0: still starting)
 W_ARMED,        # 1: the crash hook is armed (a SIGKILL now may be its own)
 W_VIOLATIONS,   # oracle violations this worker found
 W_TOKEN,        # fencing token of the grant it holds (HOLDING, RELEASING), else stale
 ) = range(ROW_WORDS)

# Worker states (W_STATE), written by the worker, read by the storm.
STARTING, OPENING, ACQUIRING, HOLDING, RELEASING, IDLE, CLOSING = range(7)
STATE_NAMES = ("starting", "opening", "acquiring", "holding", "releasing", "idle", "closing")


class Counters:
    """The counters file, mapped.  ``Counters(path, rows)`` creates it
    (zeroed); ``Counters(path)`` maps an existing one."""

    def __init__(self, path: str, rows: int | None = None) -> None:
        if rows is not None:
            with open(path, "wb") as f:
                f.write(b"\0" * (8 * ROW_WORDS * rows))
        fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.words = memoryview(self._mm).cast("q")
        self.rows = len(self.words) // ROW_WORDS

    def get(self, row: int, word: int) -> int:
        return self.words[row * ROW_WORDS + word]

    def set(self, row: int, word: int, value: int) -> None:
        self.words[row * ROW_WORDS + word] = value

    def add(self, row: int, word: int, n: int = 1) -> None:
        i = row * ROW_WORDS + word
        self.words[i] = self.words[i] + n  # one writer per row

    def reset(self, row: int) -> None:
        """A new worker in ``row``: state STARTING, not armed, no pid, no
        token (its totals carry on)."""
        for word, value in ((W_STATE, STARTING), (W_ARMED, 0), (W_PID, 0), (W_TOKEN, 0)):
            self.set(row, word, value)

    def total(self, word: int) -> int:
        return sum(self.words[r * ROW_WORDS + word] for r in range(self.rows))

    def close(self) -> None:
        self.words.release()
        self._mm.close()
