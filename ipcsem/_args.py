"""Argument checking shared by the public classes and the command line: one
rule per kind of value, each raising TypeError or ValueError with a plain
message, before anything changes."""
from __future__ import annotations

import math

PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
MAX_CAPACITY = 2**31 - 1
MAX_TABLE = 1 << 20
MAX_SLOTTED_CAPACITY = 4096


def check_int(what: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in low..high."""
    if value.__class__ is not int:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, got {value}")
    return value


def check_priority(priority: object) -> int:
    return check_int("priority", priority, PRIORITY_MIN, PRIORITY_MAX)


def check_bool(what: str, value: object) -> bool:
    if value.__class__ is not bool:
        raise TypeError(f"{what} must be True or False, not {value!r}")
    return value


def check_timeout(timeout: object, negative: str = "error") -> float | None:
    """A timeout in seconds, or None (no timeout).  What a negative one means
    follows the standard library class being stood in for: ``"now"``
    (threading.Semaphore, multiprocessing: do not wait), ``"lock"``
    (threading.Lock: -1 is forever, other negatives are errors), ``"error"``
    (ipcsem's own calls: hold(), the async classes)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout == math.inf:
        raise ValueError(f"timeout must be finite, got {timeout}")
    if timeout < 0:
        if negative == "now":
            return 0.0
        if negative == "lock" and timeout == -1:
            return None
        raise ValueError(f"timeout must be >= 0{' (or -1: forever)' if negative == 'lock' else ''}"
                         f", got {timeout}")
    return float(timeout)


def check_units(units: object, capacity: int) -> int:
    """A unit count: an int (never a bool) in 1..capacity."""
    return check_int("units", units, 1, capacity)


def check_deadlock(deadlock: object) -> bool:
    """``deadlock="wait"`` (default) or ``"raise"``; True for raise."""
    if deadlock == "wait":
        return False
    if deadlock == "raise":
        return True
    raise ValueError(f"deadlock must be 'wait' or 'raise', not {deadlock!r}")


def check_interval(what: str, seconds: object) -> float:
    """A positive, finite number of seconds (supervisor poll/sweep intervals)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(seconds).__name__}")
    if not 0 < seconds < math.inf:
        raise ValueError(f"{what} must be a positive number of seconds, got {seconds}")
    return float(seconds)
