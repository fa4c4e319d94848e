"""``ipcsem run``: run a command while holding units (placeholder: being ported)."""
from __future__ import annotations

_RUN_VALUE_OPTS = {"--capacity", "--units", "--timeout", "--priority", "--export"}


def split_run(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For `ipcsem run`, split off CMD: everything after the first `--`, or,
    without `--`, from the first word after NAME that is not an option of
    run.  argparse alone would take CMD's own options for ours."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 2 if argv[i] == "--backend" else 1
    if i >= len(argv) or argv[i] != "run":
        return argv, None
    if "--" in argv[i:]:
        j = argv.index("--", i)
        return argv[:j], argv[j + 1:]
    positionals, k = 0, i + 1
    while k < len(argv):
        a = argv[k]
        if a in _RUN_VALUE_OPTS:
            k += 2
            continue
        if a.startswith("-"):
            k += 1
            continue
        positionals += 1
        if positionals == 2:
            return argv[:k], argv[k:]
        k += 1
    return argv, None


def add_parser(sub) -> None:
    pass
