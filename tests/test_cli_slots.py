"""The semaphore family on the command line (issue #9): `create --slots`,
`--no-fair`, `--mutex`; `ipcsem run` telling CMD which units it got
(IPCSEM_SLOTS, IPCSEM_TOKEN, --export VAR); status, --json and -p PID
showing slots, kind, fairness and a mutex's owner.  Real processes; slot
disjointness is judged by an oracle that does not trust the ledger (each
slot a flock'ed file)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cli import IPCSEM, STATUS, needs_scripts, run, sem_json, status_json, wait_for

pytestmark = needs_scripts

SHOW = 'echo "slots=${IPCSEM_SLOTS-unset} cuda=${CUDA_VISIBLE_DEVICES-unset} ' \
       'token=${IPCSEM_TOKEN-unset} died=${IPCSEM_PREVIOUS_OWNER_DIED-unset}"'


def shown(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return dict(kv.split("=", 1) for kv in r.stdout.split())


def test_create_slots_and_run_exports_them(name):
    r = run(IPCSEM, "create", name, "--capacity", "4", "--slots")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{name}: capacity 4, 4 available, mode 0600, slots 0..3"
    got = shown(run(IPCSEM, "run", name, "--units", "2", "--export", "CUDA_VISIBLE_DEVICES",
                    "--export", "MY_GPUS", "--", "sh", "-c", SHOW + '; echo "mine=$MY_GPUS"'))
    assert got["slots"] == got["cuda"] == got["mine"] == "0,1"   # lowest free first
    assert int(got["token"]) >= 1 and got["died"] == "unset"
    obj = sem_json(name)
    assert (obj["slots"], obj["kind"], obj["fair"]) == (True, "semaphore", True)
    assert obj["available"] == 4


def test_concurrent_runs_get_disjoint_slots_and_increasing_tokens(name, tmp_path, procs):
    """Three runs of 1 unit each at once on 3 slots: each must find its slot
    file free (flock, LOCK_NB): a slot handed out twice fails loudly."""
    oracle = ("import fcntl, os, sys, time\n"
              "slot = os.environ['IPCSEM_SLOTS']\n"
              f"f = open('{tmp_path}/slot-' + slot, 'a')\n"
              "try:\n"
              "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
              "except BlockingIOError:\n"
              "    sys.exit('SLOT ' + slot + ' TAKEN TWICE')\n"
              "print(slot, os.environ['IPCSEM_TOKEN'], flush=True)\n"
              "time.sleep(0.6)\n")
    ps = [procs([IPCSEM, "run", name, "--capacity", "3", "--slots", "--", sys.executable,
                 "-c", oracle], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(6)]
    outs = []
    for p in ps:
        o, e = p.communicate(timeout=60)
        assert p.returncode == 0, e
        outs.append(o.split())
    slots = [int(s) for s, _t in outs]
    tokens = sorted(int(t) for _s, t in outs)
    assert set(slots) <= {0, 1, 2} and len(set(slots)) >= 2      # more than one slot in use
    assert len(set(tokens)) == 6                                  # every grant its own token
    assert sem_json(name)["available"] == 3


def test_status_json_and_pid_view_show_slots(name, procs):
    assert run(IPCSEM, "create", name, "--capacity", "4", "--slots").returncode == 0
    a = procs([IPCSEM, "run", name, "--units", "2", "--", "sleep", "60"])
    wait_for(lambda: sem_json(name)["holders"], what="the first holder")
    b = procs([IPCSEM, "run", name, "--units", "1", "--", "sleep", "60"])
    wait_for(lambda: len(sem_json(name)["holders"]) == 2, what="the second holder")
    obj = sem_json(name)
    assert {h["pid"]: h["slots"] for h in obj["holders"]} == {a.pid: [0, 1], b.pid: [2]}
    r = run(STATUS, name)
    assert "units numbered 0..3 (slots)" in r.stdout
    row = next(x for x in r.stdout.splitlines() if x.split()[:1] == [str(a.pid)])
    assert row.split()[5] == "0,1" and "SLOTS" in r.stdout
    r = run(STATUS, "-p", str(b.pid))
    assert r.returncode == 0
    holds = r.stdout.split("WAITS FOR")[0].splitlines()
    assert holds[1] == "HOLDS"
    assert holds[2].split() == ["UNITS", "OF", "HELD", "FOR", "STATE", "SLOTS", "SEMAPHORE"]
    assert holds[3].split() == ["1", "4", holds[3].split()[2], "alive", "2", name]
    (o,) = [x for x in status_json("-p", str(b.pid))["semaphores"] if x["name"] == name]
    assert [h["slots"] for h in o["holders"]] == [[2]]


def test_no_slots_exports_only_the_token_and_export_is_refused(name):
    got = shown(run(IPCSEM, "run", name, "--capacity", "2", "--", "sh", "-c", SHOW,
                    env={**os.environ, "IPCSEM_SLOTS": "9", "CUDA_VISIBLE_DEVICES": "7"}))
    assert got["slots"] == "unset" and got["cuda"] == "7" and int(got["token"]) >= 1
    second = shown(run(IPCSEM, "run", name, "--", "sh", "-c", SHOW))
    assert int(second["token"]) > int(got["token"])
    r = run(IPCSEM, "run", name, "--export", "CUDA_VISIBLE_DEVICES", "--", "true")
    assert r.returncode == 2 and "--export needs slots" in r.stderr
    # Slots are fixed at creation: asking an existing plain semaphore for them.
    r = run(IPCSEM, "run", name, "--capacity", "2", "--slots", "--", "true")
    assert r.returncode == 1 and "slots" in r.stderr and "Traceback" not in r.stderr


def test_no_fair_is_created_and_shown(name):
    r = run(IPCSEM, "create", name, "--capacity", "2", "--no-fair")
    assert r.returncode == 0 and r.stdout.strip().endswith(", unfair")
    obj = sem_json(name)
    assert obj["fair"] is False and obj["kind"] == "semaphore"
    assert "unfair (fair=False" in run(STATUS, name).stdout
    r = run(IPCSEM, "create", name, "--capacity", "2", "--exist-ok")     # fair is asked
    assert r.returncode == 1 and "fair" in r.stderr
    assert run(IPCSEM, "create", name, "--capacity", "2", "--no-fair", "--exist-ok",
               "-q").returncode == 0


def test_mutex_create_run_owner_and_previous_owner_died(name, procs):
    r = run(IPCSEM, "create", name, "--mutex")
    assert r.returncode == 0 and r.stdout.strip() == f"{name}: mutex, unlocked, mode 0600"
    holder = procs([IPCSEM, "run", name, "--", "sleep", "60"])
    wait_for(lambda: sem_json(name)["holders"], what="the mutex owner")
    obj = sem_json(name)
    assert obj["kind"] == "mutex" and obj["mutex_owner_pid"] == holder.pid
    assert obj["mutex_owner_tid"] == holder.pid            # `ipcsem run`'s main thread
    assert obj["holders"][0]["tid"] == holder.pid and obj["previous_owner_died"] is False
    assert f"mutex, owned by pid {holder.pid} thread {holder.pid}" in run(STATUS, name).stdout
    # A waiter says whom it waits for.
    waiter = procs([IPCSEM, "run", name, "--", "sh", "-c", SHOW],
                   stdout=subprocess.PIPE, text=True)
    wait_for(lambda: sem_json(name)["waiters"], what="the waiter")
    assert sem_json(name)["head_reason"] == f"owned by pid {holder.pid} (thread {holder.pid})"
    # The owner dies holding it: the next owner is told.
    holder.kill()
    holder.wait()
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0
    assert dict(kv.split("=", 1) for kv in out.split())["died"] == "1"
    # ... and after a normal release, no more.
    got = shown(run(IPCSEM, "run", name, "--", "sh", "-c", SHOW))
    assert got["died"] == "0" and got["slots"] == "unset"


def test_run_interrupted_on_a_slotted_semaphore_leaves_nothing(name, procs):
    holder = procs([IPCSEM, "run", name, "--capacity", "1", "--slots", "--", "sleep", "60"])
    wait_for(lambda: os.path.exists(f"/dev/shm/ipcsem.{name}") and sem_json(name)["holders"])
    waiter = procs([IPCSEM, "run", name, "--", "true"], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: sem_json(name)["waiters"], what="the waiter")
    waiter.send_signal(signal.SIGINT)
    assert waiter.wait(10) == 128 + signal.SIGINT
    assert "Traceback" not in waiter.stderr.read()
    holder.send_signal(signal.SIGTERM)
    holder.wait(10)
    deadline = time.monotonic() + 10
    while sem_json(name)["available"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sem_json(name)["waiters"] == []
