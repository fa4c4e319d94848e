"""Prometheus metrics: the one place that turns semaphore views into metric
families, used by ``ipcsem-status --prometheus`` (text exposition on
stdout) and ``ipcsem supervise --metrics-port/--textfile`` (a live
``/metrics`` endpoint and node_exporter's textfile collector).

Pinned names (label ``semaphore``; ``priority`` on the queue metrics):
ipcsem_capacity_units, ipcsem_available_units, ipcsem_held_units,
ipcsem_waiting_requests, ipcsem_longest_wait_seconds,
ipcsem_acquisitions_total, ipcsem_recovered_units_total,
ipcsem_recoveries_total, ipcsem_lock_repairs_total, and ipcsem_up (0 when
the ledger cannot be read, with a ``reason``).  No pid labels: pids are
unbounded in number, so they would be unbounded series.

Every scrape reads the ledgers afresh (pread views: never a lock, never a
map), so the endpoint shows what ``ipcsem-status`` would show at that
moment, whoever serves it.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .describe import gather, mark_deadlocks
from .procinfo import Procs

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

TEXTFILE_NAME = "ipcsem.prom"


def _client() -> ModuleType:
    """prometheus_client, or a one-line error for the user."""
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client import core
    except ImportError:  # pragma: no cover - it is a dependency
        from .common import CliError

        raise CliError("metrics need the prometheus_client package: "
                       "pip install prometheus_client") from None
    return core


def _reason(o: dict[str, Any]) -> str:
    """A short, bounded label value for why a semaphore cannot be read."""
    return o.get("error_kind") or "unreadable"


class RecoveryCounters:
    """What a supervisor did, for its own metrics: recoveries and units per
    semaphore.  Updated by the supervisor's thread, read by the scraper's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, list[int]] = {}
        self.started = time.time()

    def recovered(self, name: str, units: int) -> None:
        with self._lock:
            c = self._by_name.setdefault(name, [0, 0])
            c[0] += 1
            c[1] += units

    def items(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [(n, c[0], c[1]) for n, c in sorted(self._by_name.items())]


def families(objs: list[dict[str, Any]], missing: Sequence[str] = (),
             counters: RecoveryCounters | None = None) -> list[Metric]:
    """Metric families for the semaphores described by ``objs`` (--json
    objects), the NAMEs asked for but ``missing``, and a supervisor's
    ``counters``."""
    core = _client()
    G, C = core.GaugeMetricFamily, core.CounterMetricFamily
    sem = ["semaphore"]
    up = G("ipcsem_up", "1 if the semaphore's ledger could be read, 0 if not (reason says why)",
           labels=["semaphore", "reason"])
    capacity = G("ipcsem_capacity_units", "Units of the semaphore in total", labels=sem)
    available = G("ipcsem_available_units", "Units free now", labels=sem)
    held = G("ipcsem_held_units", "Units held by processes", labels=sem)
    unowned = G("ipcsem_unowned_units", "Units out without an owner (initial below capacity, "
                "disown())", labels=sem)
    holders = G("ipcsem_holders", "Processes holding units", labels=sem)
    dead = G("ipcsem_dead_holders", "Holders that died whose units are not recovered yet",
             labels=sem)
    waiting = G("ipcsem_waiting_requests", "Queued acquire requests, by priority",
                labels=["semaphore", "priority"])
    longest = G("ipcsem_longest_wait_seconds", "Longest current wait, by priority",
                labels=["semaphore", "priority"])
    wedged = G("ipcsem_wedged", "1 if the ledger lock is held by a stopped process or an "
               "update is in flight", labels=sem)
    deadlocked = G("ipcsem_deadlocked", "1 if the semaphore is part of a deadlock", labels=sem)
    acquisitions = C("ipcsem_acquisitions", "Grants, ever", labels=sem)
    recovered = C("ipcsem_recovered_units", "Units returned from dead processes, ever",
                  labels=sem)
    recoveries = C("ipcsem_recoveries", "Dead processes whose units were returned, ever",
                   labels=sem)
    repairs = C("ipcsem_lock_repairs", "Times a dead lock owner's half-done update was "
                "rolled back", labels=sem)
    info = core.InfoMetricFamily("ipcsem_semaphore", "Creation-time policy and owner",
                                 labels=sem)
    for o in objs:
        name = o["name"]
        if o["error"] is not None:
            up.add_metric([name, _reason(o)], 0)
            continue
        up.add_metric([name, ""], 1)
        labels = [name]
        capacity.add_metric(labels, o["capacity"])
        available.add_metric(labels, o["available"])
        held.add_metric(labels, o["held"])
        unowned.add_metric(labels, o["unowned"])
        holders.add_metric(labels, len(o["holders"]))
        dead.add_metric(labels, o["dead_holders"])
        by_prio: dict[int, list[float]] = {0: []}
        for w in o["waiters"]:
            by_prio.setdefault(w["priority"], []).append(w["waiting_for"])
        for prio, waits in sorted(by_prio.items()):
            waiting.add_metric([name, str(prio)], len(waits))
            longest.add_metric([name, str(prio)], max(waits, default=0.0))
        wedged.add_metric(labels, 1 if o["wedged"] else 0)
        deadlocked.add_metric(labels, 1 if o["deadlocked"] else 0)
        acquisitions.add_metric(labels, o["acquisitions"])
        recovered.add_metric(labels, o["recovered_units"])
        recoveries.add_metric(labels, o["recoveries"])
        repairs.add_metric(labels, o["lock_repairs"])
        info.add_metric(labels, {"kind": o["kind"], "slots": str(o["slots"]).lower(),
                                 "fair": str(o["fair"]).lower(), "owner": o["owner"] or "",
                                 "mode": o["mode"] or ""})
    for name in missing:
        up.add_metric([name, "not_found"], 0)
    out = [up, capacity, available, held, unowned, holders, dead, waiting, longest, wedged,
           deadlocked, acquisitions, recovered, recoveries, repairs, info]
    if counters is not None:
        s_rec = C("ipcsem_supervisor_recoveries", "Dead processes this supervisor recovered",
                  labels=sem)
        s_units = C("ipcsem_supervisor_recovered_units", "Units this supervisor recovered",
                    labels=sem)
        for name, n, units in counters.items():
            s_rec.add_metric([name], n)
            s_units.add_metric([name], units)
        start = G("ipcsem_supervisor_start_time_seconds", "When this supervisor started "
                  "(Unix time)")
        start.add_metric([], counters.started)
        out += [s_rec, s_units, start]
    return out


class ViewCollector:
    """A prometheus_client collector that reads the semaphores at each
    scrape: ``names`` (all this process may read when None)."""

    def __init__(self, names: list[str] | None = None,
                 counters: RecoveryCounters | None = None) -> None:
        self.names = names
        self.counters = counters

    def collect(self) -> Iterable[Metric]:
        objs, missing = gather(self.names, Procs(), detail=False)
        mark_deadlocks(objs)
        return families(objs, missing, self.counters)


class _Fixed:
    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self) -> Iterable[Metric]:
        return self.fams


def _registry(collector: Collector) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(objs: list[dict[str, Any]], missing: Sequence[str] = ()) -> str:
    """The text exposition format (what /metrics serves) of ``objs``."""
    from prometheus_client import generate_latest

    return generate_latest(_registry(_Fixed(families(objs, missing)))).decode()


class Exporter:
    """A supervisor's metrics: an HTTP ``/metrics`` endpoint and/or a
    textfile for node_exporter, both from one ViewCollector."""

    def __init__(self, collector: ViewCollector) -> None:
        _client()
        self.registry = _registry(collector)
        self.httpd: WSGIServer | None = None
        self.url: str | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.textfile: str | None = None

    def serve(self, port: int, address: str) -> str:
        """Start the endpoint (a daemon thread); its URL."""
        from prometheus_client import start_http_server

        httpd, _thread = start_http_server(port, addr=address, registry=self.registry)
        self.httpd = httpd
        bound, real_port = httpd.server_address[:2]
        host = str(bound)       # an address string: an AF_INET/AF_INET6 server's
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{real_port}/metrics"
        return self.url

    def write_textfile(self) -> None:
        """Write DIR/ipcsem.prom atomically (a temporary file renamed over it)."""
        from prometheus_client import write_to_textfile

        assert self.textfile is not None        # start_textfile() sets it first
        write_to_textfile(self.textfile, self.registry)

    def start_textfile(self, directory: str, interval: float,
                       on_error: Callable[[str], None]) -> str:
        self.textfile = os.path.join(directory, TEXTFILE_NAME)
        self.write_textfile()      # once now: a bad directory fails at start, not later

        def loop() -> None:
            failing = False
            while not self._stop.wait(interval):
                try:
                    self.write_textfile()
                    failing = False
                except OSError as e:
                    if not failing:
                        on_error(str(e))
                    failing = True

        self._writer = threading.Thread(target=loop, name="ipcsem-textfile", daemon=True)
        self._writer.start()
        return self.textfile

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(5)
            try:
                self.write_textfile()       # the last word: what it saw at the end
            except OSError:
                pass
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
