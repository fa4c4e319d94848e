"""What a storm is asked to do, checked before anything starts."""
from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from .. import _args, _backend, _names

SPAWNS = ("exec", "fork")
#: the share of self-killing workers on shm (on another backend there is no
#: ledger transaction to die inside: none)
SHM_SELF_KILL_FRACTION = 0.2


@dataclass(frozen=True)
class Options:
    """A storm's settings (``run_storm``'s arguments), with the defaults
    resolved: a fresh name, capacity 3 (a mutex: 1), 1000 kills when neither
    ``kills`` nor ``duration`` is given, a random seed.  ValueError (or
    TypeError) for anything out of range, before anything is created."""

    name: str | None = None
    capacity: int | None = None
    workers: int = 8
    kill_every: float = 0.01
    duration: float | None = None
    kills: int | None = None
    supervisor: bool = True
    self_kill_fraction: float | None = None   # 0.2 on shm, 0 elsewhere (shm only)
    seed: int | None = None
    multi_unit: bool = True
    _: KW_ONLY
    spawn: str = "exec"
    slots: bool = False                   # a slotted semaphore
    mutex: bool = False                   # an ipcsem.Mutex
    oracle_slots: int | None = None       # oracle files (default: capacity); fewer: self-test
    progress: Callable[[str], None] | None = None
    stall_timeout: float = 30.0
    settle_timeout: float = 5.0
    verify_timeout: float = 5.0
    check_every: float = 0.05
    backend: str | None = None            # a backend URL; None: $IPCSEM_BACKEND, else shm

    def __post_init__(self) -> None:
        if self.spawn not in SPAWNS:
            raise ValueError(f"spawn must be 'exec' or 'fork', not {self.spawn!r}")
        if self.slots and self.mutex:
            raise ValueError("a mutex has no slots: give slots or mutex, not both")
        self._resolve("capacity", 1 if self.mutex else 3)
        self._resolve("name", f"chaos-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._resolve("seed", random.SystemRandom().randrange(2**32))
        self._resolve("backend", os.environ.get(_backend.ENV) or _backend.DEFAULT_URL)
        _backend.resolve(self.backend)    # ValueError for an unknown one (connects nothing)
        self._resolve("self_kill_fraction", SHM_SELF_KILL_FRACTION if self.on_shm else 0.0)
        if self.kills is None and self.duration is None:
            self._resolve("kills", 1000)
        limit = _args.MAX_SLOTTED_CAPACITY if self.slots else _args.MAX_CAPACITY
        _args.check_int("capacity", self.capacity, 1, limit)
        if self.mutex and self.capacity != 1:
            raise ValueError(f"a mutex has capacity 1, not {self.capacity}")
        _args.check_int("workers", self.workers, 1, 10_000)
        if self.kills is not None:
            _args.check_int("kills", self.kills, 1, 2**62)
        if self.oracle_slots is not None:
            _args.check_int("oracle_slots", self.oracle_slots, 1, 2**20)
        for what in ("kill_every", "stall_timeout", "settle_timeout", "verify_timeout",
                     "check_every") + (("duration",) if self.duration is not None else ()):
            _args.check_interval(what, getattr(self, what))
        fraction = self.self_kill_fraction
        assert fraction is not None       # resolved above
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("self_kill_fraction must be in 0..1")
        if fraction and not self.on_shm:
            # The crash hook fires at a store inside a shared-memory ledger
            # transaction; another backend has none (its transactions run
            # in the server, which the storm's kills cannot interrupt).
            raise ValueError("self_kill_fraction: workers kill themselves inside a "
                             "shared-memory ledger transaction, which only the shm "
                             f"backend has (backend {self.backend})")
        _names.validate(self.name)

    def _resolve(self, setting: str, default: object) -> None:
        if getattr(self, setting) is None:
            object.__setattr__(self, setting, default)

    @property
    def on_shm(self) -> bool:
        """The storm runs on this machine's shared memory (the ledger's
        crash hook, /dev/shm, its supervisor)."""
        assert self.backend is not None   # resolved in __post_init__
        return _backend.scheme_of(self.backend) == "shm"

    @property
    def kind(self) -> str:
        """"semaphore", "slots" or "mutex" (what the workers are told)."""
        return "mutex" if self.mutex else "slots" if self.slots else "semaphore"

    @property
    def files(self) -> int:
        """How many lock files the oracle has."""
        capacity = self.capacity
        assert capacity is not None       # resolved in __post_init__
        return capacity if self.oracle_slots is None else self.oracle_slots
