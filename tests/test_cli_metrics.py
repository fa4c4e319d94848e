"""Prometheus metrics (issue #13): `ipcsem-status --prometheus` prints the
text exposition format; `ipcsem supervise --metrics-port` serves /metrics
on loopback; `--textfile DIR` keeps DIR/ipcsem.prom for node_exporter.
Judged by parsing with prometheus_client's own parser and by scraping the
live endpoint over loopback; the figures must agree with --json."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest
from cli import IPCSEM, STATUS, needs_scripts, run, sem_json, wait_for

parser = pytest.importorskip("prometheus_client.parser")

pytestmark = needs_scripts

PINNED = ("ipcsem_capacity_units", "ipcsem_available_units", "ipcsem_held_units",
          "ipcsem_waiting_requests", "ipcsem_longest_wait_seconds", "ipcsem_acquisitions_total",
          "ipcsem_recovered_units_total", "ipcsem_recoveries_total", "ipcsem_lock_repairs_total",
          "ipcsem_up")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def of(got: dict, metric: str, name: str, **labels) -> float:
    key = (metric, tuple(sorted({"semaphore": name, **labels}.items())))
    assert key in got, f"{key} not in {sorted(k for k in got if k[0] == metric)}"
    return got[key]


def test_status_prometheus_agrees_with_json(names, procs):
    a, bad = names(), names()
    assert run(IPCSEM, "create", a, "--capacity", "3").returncode == 0
    with open(f"/dev/shm/ipcsem.{bad}", "wb") as f:
        f.write(b"not a ledger" * 400)
    holder = procs([IPCSEM, "run", a, "--units", "2", "--", "sleep", "60"])
    wait_for(lambda: sem_json(a)["holders"], what="the holder")
    w1 = procs([IPCSEM, "run", a, "--units", "2", "--", "true"])
    wait_for(lambda: sem_json(a)["waiters"], what="a waiter")
    w2 = procs([IPCSEM, "run", a, "--units", "2", "--priority", "5", "--", "true"])
    wait_for(lambda: len(sem_json(a)["waiters"]) == 2, what="two waiters")

    r = run(STATUS, "--prometheus", a, bad)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    got = samples(r.stdout)
    names_seen = {k[0] for k in got}
    for metric in PINNED:
        assert metric in names_seen, metric
    obj = sem_json(a)
    assert of(got, "ipcsem_up", a, reason="") == 1
    assert of(got, "ipcsem_capacity_units", a) == obj["capacity"] == 3
    assert of(got, "ipcsem_available_units", a) == obj["available"] == 1
    assert of(got, "ipcsem_held_units", a) == obj["held"] == 2
    assert of(got, "ipcsem_waiting_requests", a, priority="0") == 1
    assert of(got, "ipcsem_waiting_requests", a, priority="5") == 1
    assert of(got, "ipcsem_longest_wait_seconds", a, priority="0") > 0
    assert of(got, "ipcsem_acquisitions_total", a) == obj["acquisitions"]
    assert of(got, "ipcsem_recovered_units_total", a) == 0
    assert of(got, "ipcsem_recoveries_total", a) == 0
    assert of(got, "ipcsem_lock_repairs_total", a) == 0
    # The unreadable one: up 0 with a reason, nothing else about it.
    assert of(got, "ipcsem_up", bad, reason="corrupt") == 0
    assert not any(dict(k[1]).get("semaphore") == bad for k in got if k[0] != "ipcsem_up")
    # No pid labels anywhere (unbounded cardinality).
    assert not any("pid" in dict(k[1]) for k in got)

    # After a death and recovery the counters say so.
    holder.kill()
    holder.wait()
    assert run(IPCSEM, "recover", a).returncode == 0
    got = samples(run(STATUS, "--prometheus", a).stdout)
    assert of(got, "ipcsem_recovered_units_total", a) == 2
    assert of(got, "ipcsem_recoveries_total", a) == 1
    for p in (w1, w2):
        p.wait(10)


def test_status_prometheus_of_a_missing_name(name):
    r = run(STATUS, "--prometheus", name)
    assert r.returncode == 1
    assert r.stderr == f"ipcsem-status: no ipcsem semaphore named {name!r}\n"
    assert of(samples(r.stdout), "ipcsem_up", name, reason="not_found") == 0


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return samples(resp.read().decode())


def test_supervise_serves_metrics_on_loopback(names, procs):
    a = names()
    assert run(IPCSEM, "create", a, "--capacity", "2").returncode == 0
    sup = procs([IPCSEM, "supervise", a, "--metrics-port", "0", "--sweep", "0.2"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sup.stdout.readline().startswith(f"supervising {a} (pid ")
    line = sup.stdout.readline().strip()
    assert line.startswith("metrics url=http://127.0.0.1:") and line.endswith("/metrics")
    url = line.split("=", 1)[1]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    # Listening on loopback only (the default), on the port it said.
    listening = [c for c in psutil.Process(sup.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]

    got = scrape(url)
    assert of(got, "ipcsem_up", a, reason="") == 1
    assert of(got, "ipcsem_capacity_units", a) == 2
    assert of(got, "ipcsem_available_units", a) == 2
    assert 0 < got[("ipcsem_supervisor_start_time_seconds", ())] <= time.time()
    holder = procs([IPCSEM, "run", a, "--", "sleep", "60"])
    wait_for(lambda: of(scrape(url), "ipcsem_held_units", a) == 1, what="the scrape to see it")
    holder.kill()
    holder.wait()
    wait_for(lambda: sem_json(a)["available"] == 2, what="the supervisor to recover it")
    got = scrape(url)
    assert of(got, "ipcsem_recovered_units_total", a) == 1
    assert of(got, "ipcsem_supervisor_recoveries_total", a) == 1
    assert of(got, "ipcsem_supervisor_recovered_units_total", a) == 1
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(10) == 0
    assert "Traceback" not in sup.stderr.read()


def test_supervise_writes_the_textfile_atomically(names, procs, tmp_path):
    a = names()
    assert run(IPCSEM, "create", a, "--capacity", "2").returncode == 0
    sup = procs([IPCSEM, "supervise", a, "--textfile", str(tmp_path), "--textfile-interval",
                 "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sup.stdout.readline().startswith(f"supervising {a}")
    path = tmp_path / "ipcsem.prom"
    assert sup.stdout.readline().strip() == f"metrics textfile={path} every=0.1s"
    got = samples(path.read_text())
    assert of(got, "ipcsem_available_units", a) == 2
    # The file as it was (closed by the `with first` below): it must be
    # replaced, never rewritten in place.
    first = open(path)  # noqa: SIM115
    holder = procs([IPCSEM, "run", a, "--", "sleep", "60"])

    def held() -> bool:
        return of(samples(path.read_text()), "ipcsem_held_units", a) == 1

    wait_for(held, what="the textfile to show the holder")
    with first:
        assert os.fstat(first.fileno()).st_nlink == 0      # renamed over: the old one is gone
        assert of(samples(first.read()), "ipcsem_held_units", a) == 0   # and intact
    holder.kill()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(10) == 0
    assert os.listdir(tmp_path) == ["ipcsem.prom"]   # no temporary file left behind


def test_metrics_usage_errors(tmp_path):
    r = run(IPCSEM, "supervise", "x", "--textfile", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stdout == "" and "not a directory" in r.stderr
    r = run(IPCSEM, "supervise", "x", "--metrics-address", "0.0.0.0")
    assert r.returncode == 2 and "--metrics-port" in r.stderr
    # A port in use: one line, exit 1, nothing supervised.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        r = run(IPCSEM, "supervise", "x", "--metrics-port", str(s.getsockname()[1]))
    finally:
        s.close()
    assert r.returncode == 1 and r.stdout == "" and "cannot serve metrics" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_grafana_dashboard_uses_only_metrics_we_export(name):
    """The sample dashboard is valid JSON and every metric its queries use
    is one `--prometheus` prints (a renamed metric breaks it here)."""
    import json
    import re

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "contrib", "grafana-ipcsem.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    used = {m for e in exprs for m in re.findall(r"\bipcsem_[a-z_]+", e)}
    assert run(IPCSEM, "create", name, "--capacity", "1").returncode == 0
    exported = {k[0] for k in samples(run(STATUS, "--prometheus", name).stdout)}
    assert used and used <= exported, used - exported
