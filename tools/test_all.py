"""Run the test suite on every supported Python this machine has.

    python3 tools/test_all.py                   # every interpreter found (make test-all)
    python3 tools/test_all.py --oldest-newest   # the oldest and the newest (CI)
    python3 tools/test_all.py --only 3.13 -- -k supervisor   # pytest arguments after --
    python3 tools/test_all.py --list            # what it would run, and stop

Interpreters: pyenv's (``$(pyenv root)/versions/*``, or ~/.pyenv) and
``python3.10`` ... ``python3.19`` on PATH; CPython >= 3.10 only, one per
minor version (pyenv's first).  For each it keeps a venv ``.venv-3.X`` in
the repository, installs the project into it (editable, with the test
extras, again only when pyproject.toml, setup.py or a C source changed),
runs the whole suite in it, one interpreter at a time, and prints one line
per interpreter.  Exit status 0 only if every suite passed; 1 if one
failed; 2 if no interpreter was found.  Standard library only: it runs on
whatever python3 the machine has.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = (3, 10)  # pyproject.toml: requires-python = ">=3.10"
PROBE = ("import sys, platform; print(sys.executable); "
         "print(platform.python_implementation()); print(*sys.version_info[:3]); "
         "print(int(bool(getattr(sys, '_is_gil_enabled', lambda: 1)())))")


class Interp:
    def __init__(self, path: str, version: tuple[int, int, int], gil: bool) -> None:
        self.path, self.version, self.gil = path, version, gil

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def full(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def venv(self) -> str:
        return os.path.join(ROOT, f".venv-{self.minor}")


def probe(candidate: str) -> Interp | None:
    """The interpreter behind candidate, or None if it is not a usable CPython
    >= 3.10 (a pyenv shim for a version not selected fails here, as it should)."""
    try:
        r = subprocess.run([candidate, "-c", PROBE], capture_output=True, text=True, timeout=30,
                           check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = r.stdout.split("\n")
    if r.returncode != 0 or len(lines) < 4 or lines[1] != "CPython":
        return None
    version = tuple(int(x) for x in lines[2].split())
    if version[:2] < OLDEST:
        return None
    return Interp(lines[0], version, lines[3] == "1")


def candidates() -> list[str]:
    found = []
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if shutil.which("pyenv"):
        r = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip():
            root = r.stdout.strip()

    def key(path: str):
        v = os.path.basename(os.path.dirname(os.path.dirname(path)))
        return [int(x) if x.isdigit() else x for x in re.split(r"[.\-]", v)]

    # Newest patch release of each minor first, so it wins the dedup below.
    found += sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3")),
                    key=key, reverse=True)
    for minor in range(10, 20):
        path = shutil.which(f"python3.{minor}")
        if path:
            found.append(path)
    return found


def interpreters() -> list[Interp]:
    """One per minor version, oldest first."""
    by_minor: dict[str, Interp] = {}
    for c in candidates():
        it = probe(c)
        if it is not None and it.minor not in by_minor:
            by_minor[it.minor] = it
    return sorted(by_minor.values(), key=lambda i: i.version)


def install_key() -> str:
    """What an install depends on: the build configuration and the C sources
    (wherever they are), so a changed extension is rebuilt."""
    h = hashlib.sha256()
    sources = glob.glob(os.path.join(ROOT, "ipcsem", "**", "*.[ch]"), recursive=True)
    files = ["pyproject.toml", "setup.py", *sorted(os.path.relpath(p, ROOT) for p in sources)]
    for rel in files:
        path = os.path.join(ROOT, rel)
        if os.path.exists(path):
            h.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def sh(args: list[str], log) -> int:
    log.write(f"$ {' '.join(args)}\n")
    log.flush()
    return subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          check=False).returncode


def prepare(it: Interp, log) -> str | None:
    """Make .venv-3.X and install the project; an error message or None."""
    py = os.path.join(it.venv, "bin", "python")
    if not os.path.exists(py):
        if sh([it.path, "-m", "venv", it.venv], log) != 0:
            return "could not create the venv"
        if sh([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], log) != 0:
            return "could not upgrade pip"
    stamp = os.path.join(it.venv, ".installed")
    key = install_key()
    try:
        with open(stamp) as f:
            current = f.read().strip() == key
    except OSError:
        current = False
    if not current:
        if sh([py, "-m", "pip", "install", "-q", "-e", ".[test]"], log) != 0:
            return "pip install -e '.[test]' failed"
        # PYTHONDONTWRITEBYTECODE may be set: compile once (as make test does),
        # or each of the hundreds of processes the tests start recompiles.
        sh([py, "-m", "compileall", "-q", "-j", "0", os.path.join(it.venv, "lib")], log)
        with open(stamp, "w") as f:
            f.write(key + "\n")
    sh([py, "-m", "compileall", "-q", "ipcsem", "tests", "tools"], log)
    return None


SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)"
                     r"\b.*?) in [\d.]+s")


def run_suite(it: Interp, pytest_args: list[str]) -> tuple[int, str]:
    """(pytest's exit status, its closing line); the output streams through."""
    py = os.path.join(it.venv, "bin", "python")
    proc = subprocess.Popen([py, "-m", "pytest", "-q", *pytest_args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    closing = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = SUMMARY.match(line.strip())
        if m:
            closing = m.group(1)
    return proc.wait(), closing


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="test_all", description=__doc__.split("\n\n")[0])
    ap.add_argument("--oldest-newest", action="store_true",
                    help="only the oldest and the newest interpreter found")
    ap.add_argument("--only", metavar="3.X[,3.Y]", help="only these minor versions")
    ap.add_argument("--skip", metavar="3.X[,3.Y]", help="not these minor versions")
    ap.add_argument("--list", action="store_true", help="print the interpreters and stop")
    args = ap.parse_args(argv)

    found = interpreters()
    chosen = found
    if args.oldest_newest and found:
        chosen = [found[0]] if len(found) == 1 else [found[0], found[-1]]
    if args.only:
        chosen = [i for i in chosen if i.minor in args.only.split(",")]
    if args.skip:
        chosen = [i for i in chosen if i.minor not in args.skip.split(",")]
    print("interpreters found: " + (", ".join(f"{i.full} ({i.path})" for i in found) or "none"))
    if args.list:
        for i in chosen:
            print(f"would run: {i.full}  {i.path}  -> {os.path.relpath(i.venv, ROOT)}")
        return 0
    if not chosen:
        print("test_all: no interpreter to run (need CPython >= 3.10 from pyenv or python3.1x "
              "on PATH)", file=sys.stderr)
        return 2 if not found else 0

    results = []
    for it in chosen:
        print(f"\n=== Python {it.full} ({it.path}) in {os.path.relpath(it.venv, ROOT)} ===",
              flush=True)
        t0 = time.monotonic()
        py = os.path.join(it.venv, "bin", "python")
        if os.path.isdir(it.venv) and getattr(probe(py), "version", None) != it.version:
            shutil.rmtree(it.venv)  # another patch release, or a broken venv: start again
        os.makedirs(it.venv, exist_ok=True)
        log_path = os.path.join(it.venv, "install.log")
        with open(log_path, "w") as log:
            error = prepare(it, log)
        if error:
            print(f"{error}: see {os.path.relpath(log_path, ROOT)}", flush=True)
            results.append((it, False, error, time.monotonic() - t0))
            continue
        rc, closing = run_suite(it, pytest_args)
        gil = "" if it.gil else ", free-threaded"
        results.append((it, rc == 0, (closing or f"pytest exit status {rc}") + gil,
                        time.monotonic() - t0))

    print("\n=== test_all summary ===")
    for it, ok, what, seconds in results:
        print(f"{'PASS' if ok else 'FAIL'}  Python {it.full:<8} {what}  "
              f"({seconds:.0f} s with install)")
    failed = [r for r in results if not r[1]]
    if failed:
        print(f"{len(failed)} of {len(results)} interpreters failed")
        return 1
    print(f"all {len(results)} interpreters passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
