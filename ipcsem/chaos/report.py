"""What a storm did and found: the Report, and its text and JSON forms
(``ipcsem chaos`` prints one of them; docs/cli.md pins both)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Report:
    """What a storm did and found.  ``ok`` is the verdict."""

    kills: int                 # workers SIGKILLed by the storm
    self_kills: int            # workers that SIGKILLed themselves inside a transaction
    supervisor_kills: int      # supervisor processes SIGKILLed (and restarted)
    cycles: int                # acquire -> oracle -> release rounds completed
    over_admissions: int       # oracle violations: more holders than units (of a slot)
    lost_units: int            # capacity - available after recovery
    check_error: str | None    # the failed end checks (None: all passed)
    elapsed: float             # seconds: storm + verification + clean-up
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def ok(self) -> bool:
        """No over-admission, no lost unit, every end check passed, and no
        error (a worker failing unexpectedly, a mid-storm check() failure,
        something left in /dev/shm: see details["errors"])."""
        return (self.over_admissions == 0 and self.lost_units == 0
                and self.check_error is None and not self.details.get("errors"))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)


def _kind(d: dict[str, Any]) -> str:
    notes: dict[object, str] = {"slots": "; slotted semaphore", "mutex": "; mutex"}
    return notes.get(d.get("kind"), "")


def _backend(d: dict[str, Any]) -> str:
    url = d.get("backend") or "shm"
    return "shm (this machine's shared memory)" if url == "shm" else str(url)


def format_report(r: Report) -> str:
    """The human report: one labelled line per finding, PASS or FAIL last.
    (No self-kills or lock repairs off shm: only its ledger has them.)"""
    d = r.details
    on_shm = (d.get("backend") or "shm") == "shm"
    by_state = ", ".join(f"{k} {v}" for k, v in sorted(d.get("kills_by_state", {}).items(),
                                                       key=lambda kv: -kv[1]))
    lines = [
        f"chaos storm on {d.get('name')!r}: capacity {d.get('capacity')}, "
        f"{d.get('workers')} workers ({d.get('spawn')}), supervisor "
        f"{'on' if d.get('supervisor') else 'off'}, seed {d.get('seed')}{_kind(d)}",
        f"  backend          {_backend(d)}",
        f"  kills            {r.kills} in {d.get('storm_seconds', 0):.1f} s"
        + (f" ({by_state})" if by_state else ""),
    ]
    if on_shm:
        lines += [
            f"  self-kills       {r.self_kills} (SIGKILL at a crash point inside a ledger "
            "transaction)",
            f"  lock repairs     {d.get('lock_repairs')} (ledger lock taken over from a dead "
            "owner)",
        ]
    if d.get("supervisor"):
        lines.append(f"  supervisor       {r.supervisor_kills} kills, "
                     f"{d.get('supervisor_recoveries')} recoveries logged")
    lines += [
        f"  cycles           {r.cycles} (acquire, oracle, release); {d.get('timeouts')} "
        f"timeouts, {d.get('busy')} busy try_acquire",
        f"  recovered        {d.get('recovered_units')} units in {d.get('recoveries')} "
        "recoveries of dead processes" + ("" if on_shm else
                                          " (by this host; session expiries not counted)"),
        f"  over-admissions  {r.over_admissions}",
    ]
    if d.get("kind") == "slots":
        lines.append(f"  bad slots        {d.get('bad_slots', 0)} (leases whose slots were not "
                     "their units' numbers)")
    lines += [
        f"  lost units       {r.lost_units} (fresh process took all units: "
        f"{d.get('independent_acquire')})",
        f"  tokens           {d.get('tokens_checked', 0)} grants checked, "
        + ("strictly increasing" if not d.get("token_failures") else
           f"{d.get('token_failures')} out of order"),
    ]
    if d.get("kind") == "mutex":
        lines.append(f"  owner died       {d.get('owner_died_seen', 0)} grants told so, "
                     f"{d.get('owner_died_checked', 0)} checked, "
                     f"{d.get('owner_died_failures', 0)} wrong")
    lines.append(f"  end checks       {'ok' if r.check_error is None else r.check_error}")
    if not d.get("midstorm_check_failures"):
        lines.append(f"  mid-storm checks {d.get('midstorm_checks')} check() calls during the "
                     "storm, all passed")  # failures are listed under "error"
    for e in d.get("errors", []):
        lines.append(f"  error            {e}")
    for v in d.get("violations", [])[:6]:
        lines.append(f"  violation        {v}")
    lines.append(f"  elapsed          {r.elapsed:.1f} s")
    lines.append("PASS" if r.ok else "FAIL")
    return "\n".join(lines)
