"""Shell completion and man pages generated from the parser (issue #13):
the bash script loads in a real bash and completes subcommands, options,
option values and semaphore names (and commands after `run ... --`); the
zsh script does the same in a real interactive zsh (driven through a pty);
the man pages render with groff without a warning and document every
subcommand and option the parser has."""
from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time

import pytest
from cli import IPCSEM, needs_scripts, run

pytestmark = needs_scripts

BASH = shutil.which("bash")
ZSH = shutil.which("zsh")
GROFF = shutil.which("groff")

COMPLETE = r"""
source "$1"; shift
if [[ $1 == ipcsem-status ]]; then f=_ipcsem_status; else f=_ipcsem; fi
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=()
$f
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    r = run(IPCSEM, "completion", "bash")
    assert r.returncode == 0 and r.stderr == ""
    path = tmp_path_factory.mktemp("completion") / "ipcsem.bash"
    path.write_text(r.stdout)
    return path


def complete(script, *words) -> list[str]:
    r = run(BASH, "--norc", "-c", COMPLETE, "complete", str(script), *words)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout.split()


@pytest.mark.skipif(not BASH, reason="bash is not installed")
def test_bash_completion_loads_and_completes(bash_script, name):
    r = run(BASH, "--norc", "-c", f"source {bash_script} && complete -p ipcsem ipcsem-status")
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == [
        "complete -F _ipcsem ipcsem", "complete -F _ipcsem_status ipcsem-status"]
    assert complete(bash_script, "ipcsem", "st") == ["status"]
    every = complete(bash_script, "ipcsem", "")
    for sub in ("status", "ls", "run", "create", "rm", "recover", "supervise", "completion",
                "man", "--version"):
        assert sub in every, (sub, every)
    assert complete(bash_script, "ipcsem", "create", "x", "--mo") == ["--mode"]
    assert complete(bash_script, "ipcsem", "create", "x", "--sl") == ["--slots"]
    assert complete(bash_script, "ipcsem", "completion", "") == ["bash", "zsh"]
    assert complete(bash_script, "ipcsem-status", "--dead") == ["--deadlocks"]
    assert set(complete(bash_script, "ipcsem", "supervise", "--metrics-")) == {
        "--metrics-port", "--metrics-address"}
    # Semaphore names, from /dev/shm, where a NAME goes.
    assert run(IPCSEM, "create", name, "--capacity", "1").returncode == 0
    assert complete(bash_script, "ipcsem", "rm", name[:-2]) == [name]
    assert complete(bash_script, "ipcsem-status", name[:-2]) == [name]
    assert complete(bash_script, "ipcsem", "run", name[:-2]) == [name]
    assert complete(bash_script, "ipcsem", "run", "--units", "") == []     # a number: nothing
    # After `ipcsem run NAME --`: a command.
    assert "true" in complete(bash_script, "ipcsem", "run", name, "--", "tru")


def zsh_complete(script: str, cases: list[tuple[str, list[str]]]) -> list[str]:
    """What an interactive zsh shows after each line typed with a TAB (read
    until all the expected words appear, or 10 s pass)."""
    pid, fd = pty.fork()
    if pid == 0:    # the child: a clean interactive zsh
        os.environ["TERM"] = "dumb"
        os.environ["PATH"] = os.path.dirname(IPCSEM) + ":" + os.environ.get("PATH", "")
        os.execv(ZSH, [ZSH, "-f", "-i"])

    def read_until(words: list[str], seconds: float = 10) -> str:
        out, end = b"", time.monotonic() + seconds
        while time.monotonic() < end:
            text = out.decode(errors="replace")
            if all(w in text for w in words):
                return text
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break
        return out.decode(errors="replace")

    def settle() -> None:
        """Wait for the prompt, then until the shell says nothing more: no
        stale output may be taken for the next answer."""
        read_until([PROMPT], 10)
        while read_until(["\0never"], 0.3):
            pass

    # The prompt as printed ("P%> ") differs from its definition as echoed
    # ("P%%> "), so an echo is never taken for a prompt.
    PROMPT = "P%> "
    try:
        os.write(fd, f"PS1='P%%> '; autoload -Uz compinit; compinit -u -D; "
                     f"source {script}\n".encode())
        settle()
        shown = []
        for line, expect in cases:
            os.write(fd, line.encode() + b"\t")
            shown.append(read_until(expect))
            os.write(fd, b"\x15")       # Ctrl-U: kill the whole line, start afresh
            while read_until(["\0never"], 0.3):
                pass
        return shown
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.skipif(not ZSH, reason="zsh is not installed")
def test_zsh_completion_loads_and_completes(tmp_path, name):
    r = run(IPCSEM, "completion", "zsh")
    assert r.returncode == 0 and r.stdout.startswith("#compdef ipcsem ipcsem-status\n")
    script = tmp_path / "_ipcsem"
    script.write_text(r.stdout)
    assert run(ZSH, "-n", str(script)).returncode == 0
    assert run(IPCSEM, "create", name, "--capacity", "1").returncode == 0
    cases = [("ipcsem st", ["ipcsem status "]),
             (f"ipcsem rm {name[:-2]}", [f"ipcsem rm {name} "]),
             ("ipcsem create x --mo", ["ipcsem create x --mode "]),
             ("ipcsem-status --prom", ["ipcsem-status --prometheus "]),
             ("ipcsem completion ", ["bash", "zsh"])]
    for (line, expect), text in zip(cases, zsh_complete(str(script), cases), strict=True):
        assert all(w in text for w in expect), (line, text)


@pytest.mark.skipif(not GROFF, reason="groff is not installed")
def test_man_pages_render_and_document_every_option(tmp_path):
    r = run(IPCSEM, "man", "--dir", str(tmp_path))
    assert r.returncode == 0 and r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["ipcsem-status.1", "ipcsem.1"]
    assert run(IPCSEM, "man").stdout == (tmp_path / "ipcsem.1").read_text()
    texts = {}
    for page in ("ipcsem", "ipcsem-status"):
        rr = subprocess.run([GROFF, "-man", "-Tutf8", "-ww", str(tmp_path / f"{page}.1")],
                            capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        assert rr.returncode == 0 and rr.stderr == "", rr.stderr
        plain = re.sub(".\x08", "", rr.stdout)      # no overstrike (bold, underline)
        texts[page] = plain.replace("\u2010", "-").replace("\u2212", "-")
    from ipcsem.cli import spec

    top, status = spec.full()
    man = texts["ipcsem"]
    for sub in top.commands:
        assert f"ipcsem {sub.name}" in man, sub.name
        for opt in sub.options:
            for flag in opt.flags:
                assert flag in man, (sub.name, flag)
    for opt in status.options:
        for flag in opt.flags:
            assert flag in texts["ipcsem-status"], flag
    assert texts["ipcsem-status"].startswith("IPCSEM-STATUS(1)")
    assert len(top.commands) >= 9 and len(status.options) >= 6    # the walk found them
