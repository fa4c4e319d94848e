"""Every code block of README.md and docs/*.md that is meant to run, runs.

A ```python block runs as a script in a fresh process; one whose first line
is ``# test_NAME.py`` is a test file and runs under pytest with the kit as a
plugin (`pytest -p ipcsem.testing`), and must pass.  A block right after an
HTML comment ``<!-- not run: why -->`` is shown, not run (the reason says
why: two columns of a protocol, a fragment of a larger program); the bug
records (docs/*-bugs.md) show code as it was before each fix.  Shell and
output blocks are illustrations.  As root, each block runs with a private
/dev/shm (a mount namespace), so examples may use plain names like "gpu"
without meeting anyone else's semaphores.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks() -> list[tuple[str, int, str]]:
    """(file, first line, code) of every python block not marked "not run"
    (the marker applies to the next python block of the file)."""
    found = []
    for name in ["README.md", *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        if name.endswith("-bugs.md"):
            continue      # records of fixed bugs: their code is how it was before the fix
        path = os.path.join(ROOT, name)
        with open(path) as f:
            lines = f.read().splitlines()
        skip_next = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if re.match(r"\s*<!--\s*not run:", line):
                skip_next = True
            elif line.strip() == "```python":
                j = i + 1
                while j < len(lines) and lines[j].strip() != "```":
                    j += 1
                if not skip_next:
                    found.append((os.path.relpath(path, ROOT), i + 2,
                                  "\n".join(lines[i + 1:j]) + "\n"))
                skip_next = False
                i = j
            i += 1
    return found


def private_shm() -> list[str]:
    """A command prefix giving the child its own /dev/shm (root only)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return []
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh"]


BLOCKS = blocks()


def test_the_docs_have_runnable_blocks():
    where = {path for path, _line, _code in BLOCKS}
    assert "README.md" in where and len(BLOCKS) >= 6, where


@pytest.mark.parametrize("path, line, code", BLOCKS,
                         ids=[f"{p}:{n}" for p, n, _c in BLOCKS])
def test_block_runs(path, line, code, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = code.splitlines()[0] if code.strip() else ""
    m = re.match(r"#\s*(test_\w+\.py)", first)
    if m:
        (tmp_path / m.group(1)).write_text(code)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "ipcsem.testing",
                "-p", "no:cacheprovider", m.group(1)]
    else:
        (tmp_path / "block.py").write_text(code)
        argv = [sys.executable, "block.py"]
    r = subprocess.run(private_shm() + argv, cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{path}:{line} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
