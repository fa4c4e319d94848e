"""Shared by the tests of the console scripts: where they are, how to run
them, how to read `ipcsem-status --json`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from procs import wait_until

BIN = os.path.dirname(sys.executable)
IPCSEM = shutil.which("ipcsem", path=BIN)
STATUS = shutil.which("ipcsem-status", path=BIN)

needs_scripts = pytest.mark.skipif(not (IPCSEM and STATUS),
                                   reason="console scripts not installed: pip install -e .")


def run(*args, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)


def status_json(*args) -> dict:
    r = run(STATUS, "--json", *args)
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def sem_json(name: str) -> dict:
    doc = status_json(name)
    assert doc["version"] == 1
    (obj,) = doc["semaphores"]
    assert obj["name"] == name
    return obj


def wait_for(pred, timeout=10.0, what="condition"):
    return wait_until(pred, timeout=timeout, interval=0.05, what=what)
