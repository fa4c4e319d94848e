"""`ipcsem-status --watch` in a real terminal: tmux runs it in a 100x30
pane, we change the semaphore from outside and read the screen back."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import ipcsem

BIN = os.path.dirname(sys.executable)
IPCSEM = shutil.which("ipcsem", path=BIN)
STATUS = shutil.which("ipcsem-status", path=BIN)
TMUX = shutil.which("tmux")

pytestmark = [
    pytest.mark.skipif(not (IPCSEM and STATUS), reason="console scripts not installed"),
    pytest.mark.skipif(not TMUX, reason="tmux is not installed (apt-get install tmux)"),
]


@pytest.fixture
def tmux():
    sock = f"ipcsem-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def t(*args, check=True) -> str:
        r = subprocess.run([TMUX, "-L", sock, "-f", "/dev/null", *args],
                           capture_output=True, text=True, timeout=10)
        if check:
            assert r.returncode == 0, r.stderr
        return r.stdout

    yield t
    t("kill-server", check=False)


def wait_file(path, deadline) -> str:
    while not (os.path.exists(path) and Path(path).read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    text = Path(path).read_text().strip()
    os.unlink(path)
    return text


def screen_until(tmux, pred, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = tmux("capture-pane", "-p", "-t", "w")
        if pred(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"screen never matched; last screen:\n{text}")
        time.sleep(0.1)


def test_watch_redraws_when_the_semaphore_changes(tmux):
    name = f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    holder = None
    try:
        # Watching a name that does not exist yet is allowed: it shows up.
        # The shell records the exit status: tmux 3.3 sometimes marks a pane
        # dead without ever recording its status.
        exit_file = f"/tmp/{name}.exit"
        tmux("new-session", "-d", "-s", "w", "-x", "100", "-y", "30",
             f"{STATUS} --watch 0.2 {name}; echo $? > {exit_file}", ";",
             "set-option", "-w", "-t", "w", "remain-on-exit", "on")
        screen = screen_until(tmux, lambda s: f"{name}: no such semaphore" in s)
        assert screen.splitlines()[0].startswith(f"every 0.2s: ipcsem-status {name}")

        sem = ipcsem.Semaphore(name, 3)
        screen = screen_until(tmux, lambda s: f"{name}: 3 of 3 available" in s)
        assert "HOLDERS: none" in screen

        holder = subprocess.Popen([IPCSEM, "run", name, "--units", "2", "--", "sleep", "30"])
        screen = screen_until(tmux, lambda s: f"{name}: 1 of 3 available, 2 held" in s)
        row = next(line for line in screen.splitlines()
                   if line.split()[:1] == [str(holder.pid)])
        assert " 2 " in row and "alive" in row and "sleep 30" in row
        assert all(len(line) <= 100 for line in screen.splitlines())

        holder.kill()
        holder.wait()
        screen_until(tmux, lambda s: "dead holder awaiting recovery" in s)
        sem.recover()
        screen_until(tmux, lambda s: f"{name}: 3 of 3 available" in s and "HOLDERS: none" in s)

        # Ctrl-C ends it cleanly: exit status 0, no traceback on the screen.
        tmux("send-keys", "-t", "w", "C-c")
        deadline = time.monotonic() + 10
        while tmux("display-message", "-p", "-t", "w", "#{pane_dead}").strip() != "1":
            assert time.monotonic() < deadline, "watch did not stop on Ctrl-C"
            time.sleep(0.1)
        assert wait_file(exit_file, deadline) == "0"
        assert "Traceback" not in tmux("capture-pane", "-p", "-t", "w")
        sem.close()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        try:
            ipcsem.unlink(name)
        except ipcsem.IpcsemError:
            pass


def test_watch_marks_the_rows_it_cuts(tmux):
    """A view taller than the terminal says how much it left out."""
    names = [f"t-{os.getpid()}-{uuid.uuid4().hex[:6]}-{i:02d}" for i in range(12)]
    tmux("new-session", "-d", "-s", "w", "-x", "100", "-y", "8",
         f"{STATUS} --watch 0.2 {' '.join(names)}")
    screen = screen_until(tmux, lambda s: "more lines" in s)
    lines = [x for x in screen.splitlines() if x.strip()]
    assert lines[0].startswith("every 0.2s: ipcsem-status ")
    shown = [x for x in lines if x.endswith(": no such semaphore (yet)")]
    assert lines[-1].startswith(f"... {len(names) - len(shown)} more lines"), screen
    assert len(shown) >= 1 and len(screen.splitlines()) <= 8
    assert all(len(x) <= 100 for x in screen.splitlines())
    tmux("send-keys", "-t", "w", "C-c")
