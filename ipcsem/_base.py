"""What every public semaphore class shares, sync or async: opening a name
on a backend, checking its creation-time policy, and observation.  The
classes add their own way of waiting (threads: ``_semaphore``; event loops:
``_aio``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _args, _backend, _names
from ._errors import IpcsemError, PolicyMismatch
from ._records import Holder, Params, Picture, Stats, Waiter


def make_params(capacity: int, initial: int | None, mode: int, max_holders: int,
                max_waiters: int, *, kind: str = "semaphore", slots: bool = False,
                fair: bool = True, reentrant: bool = False,
                priority_inheritance: bool = False) -> Params:
    _args.check_int("capacity", capacity, 1,
                    _args.MAX_SLOTTED_CAPACITY if slots else _args.MAX_CAPACITY)
    if initial is None:
        initial = capacity
    _args.check_int("initial", initial, 0, capacity)
    _args.check_int("mode", mode, 0, 0o777)
    _args.check_int("max_holders", max_holders, 1, _args.MAX_TABLE)
    _args.check_int("max_waiters", max_waiters, 1, _args.MAX_TABLE)
    return Params(capacity, initial, kind, slots, fair, reentrant, priority_inheritance, mode,
                  max_holders, max_waiters)


def group_id(group: str | int | None) -> int | None:
    if group is None:
        return None
    if isinstance(group, str):
        import grp

        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None
    return _args.check_int("group", group, 0, 2**32 - 2)



class Opened:
    """A name opened on a backend.  Subclasses define the slots ``_name``,
    ``_handle`` and ``_capacity`` (this mixin has none, so it combines with
    a C base type) and call ``_open`` from ``__init__``."""

    # The slots live in the subclasses (with slots of its own this mixin
    # could not combine with the C base type).  Type checkers are shown no
    # __slots__ here, so they accept the attributes set below.
    if not TYPE_CHECKING:
        __slots__ = ()
    _name: str
    _opened_on: _backend.Backend
    _handle: _backend.Handle
    _capacity: int

    def _open(self, name: str, params: Params | None, backend: str | None,
              group: str | int | None, policy: dict[str, object],
              options: dict[str, Any]) -> None:
        _names.validate(name)
        b = _backend.resolve(backend)
        gid = group_id(group)
        kw = dict(options)
        if gid is not None:
            kw["group"] = gid
        self._name = name
        self._opened_on = b
        self._handle = b.open(name, params, **kw)
        self._capacity = self._handle.params.capacity
        found = self._handle.params
        for setting, want in policy.items():
            if want is not None and getattr(found, setting) != want:
                self._handle.close()
                raise PolicyMismatch(name, setting, getattr(found, setting), want)

    # ------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def available(self) -> int:
        """Units free right now, read from the ledger."""
        return self._handle.available

    @property
    def created(self) -> bool:
        """This handle's open created the semaphore (decided under the
        creation lock: of racing creators exactly one sees True)."""
        return self._handle.created

    @property
    def params(self) -> Params:
        """The creation-time policy (capacity, slots, fair, kind, ...)."""
        return self._handle.params

    # ----------------------------------------------------------- observation
    def holders(self) -> list[Holder]:
        """Processes holding units now."""
        return self._handle.holders()

    def waiters(self) -> list[Waiter]:
        """Blocked acquires in the order they will be served."""
        return self._handle.waiters()

    def stats(self) -> Stats:
        return self._handle.stats()

    def picture(self) -> Picture:
        """``stats()``, ``holders()`` and ``waiters()`` from one reading, so
        that they agree (what a monitor should show: three separate calls
        may each see another moment)."""
        return self._handle.picture()

    def recover(self, timeout: float | None = 2.0) -> int:
        """Return the units of dead holders now; the number of units
        recovered.  Wedged if the ledger lock is not free within ``timeout``
        seconds (its holder is stopped or hung; None: wait as long as it
        takes)."""
        return self._handle.recover(timeout)

    def check(self, timeout: float | None = 2.0) -> None:
        """Verify the ledger invariant (see docs/design.md); raise Corrupt if
        broken, Wedged as for recover()."""
        self._handle.check(timeout)

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Let go of the semaphore.  Units this process holds stay held (and
        recoverable)."""
        self._handle.close()

    def unlink(self) -> None:
        """Remove the name on this semaphore's backend (see ipcsem.unlink)."""
        self._opened_on.unlink(self._name)

    def __repr__(self) -> str:
        kind = type(self).__name__
        try:
            return f"<ipcsem.{kind} {self._name!r} {self.available}/{self._capacity} available>"
        except IpcsemError:
            return f"<ipcsem.{kind} {self._name!r} closed>"



def names(backend: str | None = None) -> list[str]:
    """Every semaphore name the backend shows this process."""
    return _backend.resolve(backend).names()


def unlink(name: str, backend: str | None = None) -> None:
    """Remove the name: queued waiters give up with Unlinked; processes that
    have it open keep working on the removed object; a later open creates a
    new one.  NotFound if there is no such name."""
    _names.validate(name)
    _backend.resolve(backend).unlink(name)
