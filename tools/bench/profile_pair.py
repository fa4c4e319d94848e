"""Where the uncontended pair's time goes: instructions per acquire+release
pair, split by function, counted by valgrind's callgrind (deterministic, so
a loaded machine does not disturb it).

    .venv/bin/python -m tools.bench.profile_pair [--variants ipcsem,posix,...] [--top 25]

How: each variant runs in a child under callgrind twice, with N1 and N2
pairs of the same minimal loop figure 1 uses (bound methods in locals); the
difference of the two runs' per-function self costs, divided by N2 - N1,
is the cost of one pair with start-up, imports and set-up cancelled out.
Variants are the contenders of figure 1 (tools/bench/contenders.py) plus
"noop" (the loop around two no-op C calls: the harness floor) and
"ipcsem-with" (``with sem:``: __enter__/__exit__, a Lease built each time).

Output: a table per variant (instructions per pair by function, grouped
into the ledger (C), libc/pthread, the interpreter, and the rest) and, with
--json PATH, the raw numbers.  Not part of ``make bench`` (a minute per
variant under valgrind); docs/perf.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from . import procs

N1, N2 = 2_000, 22_000
DEFAULT_VARIANTS = ["noop", "posix", "sysv", "ipcsem", "ipcsem-unfair", "ipcsem-slots",
                    "ipcsem-mutex", "ipcsem-with"]


def _child(variant: str, n: int) -> None:
    """Runs under valgrind: set up, one warm-up pair, then n pairs."""
    from . import contenders as C

    spec = c = None
    if variant == "noop":
        noop = ().__len__
        acquire = release = noop
    else:
        key = "ipcsem" if variant == "ipcsem-with" else variant
        c = C.get(key)
        spec = c.create(1)
        h = c.open(spec)
        acquire, release = h.acquire, h.release
        if variant == "ipcsem-with":
            sem = h.obj
            acquire, release = sem.__enter__, sem.__exit__
            release = _exit_caller(sem)
    try:
        acquire()
        release()
        _loop(acquire, release, n)
    finally:
        if c is not None:
            c.destroy(spec)


def _exit_caller(sem):
    # __exit__ takes (type, value, tb); a C partial keeps it free of Python frames.
    import functools

    return functools.partial(sem.__exit__, None, None, None)


def _loop(acquire, release, n):
    for _ in range(n):
        acquire()
        release()


_FN = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)\s*$")


def _self_costs(outfile: str) -> tuple[int, dict]:
    """(total Ir, {function: self Ir}) from callgrind_annotate."""
    txt = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          "--inclusive=no", outfile], capture_output=True, text=True,
                         check=True).stdout
    total, fns, body = 0, {}, False
    for line in txt.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
            continue
        if re.match(r"^-+$", line.strip()) and fns == {} and total:
            body = True
            continue
        if not body:
            if line.strip().startswith("Ir") and total:
                body = True
            continue
        m = _FN.match(line)
        if not m:
            continue
        name = m.group(2)
        # "file:function [object]" -> "function [object basename]"
        obj = ""
        mo = re.search(r"\[(.*)\]$", name)
        if mo:
            obj = os.path.basename(mo.group(1))
            name = name[:mo.start()].strip()
        fn = name.rsplit(":", 1)[-1]
        key = f"{fn} [{obj}]" if obj else fn
        fns[key] = fns.get(key, 0) + int(m.group(1).replace(",", ""))
    return total, fns


def _group(key: str) -> str:
    if "_ledger" in key:
        return "ledger (C)"
    if "libc" in key or "pthread" in key or "ld-linux" in key:
        return "libc / pthread"
    if "libpython" in key or "python3" in key:
        return "interpreter"
    if "posix_ipc" in key or "sysv_ipc" in key:
        return "extension"
    return "other"


def measure(variant: str, tmp: str) -> dict:
    runs = {}
    for n in (N1, N2):
        out = os.path.join(tmp, f"cg.{variant}.{n}")
        env = dict(os.environ)
        env["PYTHONPATH"] = procs.ROOT + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-m", "tools.bench.profile_pair", "--child",
                        variant, str(n)], cwd=procs.ROOT, env=env, check=True,
                       capture_output=True, timeout=900)
        runs[n] = _self_costs(out)
    d = N2 - N1
    total = (runs[N2][0] - runs[N1][0]) / d
    a, b = runs[N1][1], runs[N2][1]
    per = {k: (b.get(k, 0) - a.get(k, 0)) / d for k in set(a) | set(b)}
    per = {k: v for k, v in per.items() if abs(v) >= 0.5}
    groups: dict = {}
    for k, v in per.items():
        groups[_group(k)] = groups.get(_group(k), 0) + v
    return {"ir_per_pair": total, "functions": dict(sorted(per.items(), key=lambda x: -x[1])),
            "groups": groups, "n1": N1, "n2": N2}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m tools.bench.profile_pair")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ipcsem-cg-") as tmp:
        for raw in args.variants.split(","):
            v = raw.strip()
            try:
                results[v] = r = measure(v, tmp)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                err = getattr(e, "stderr", b"") or b""
                results[v] = {"error": f"{type(e).__name__}: {err[-400:].decode(errors='replace')}"}
                print(f"{v}: failed: {results[v]['error']}", file=sys.stderr)
                continue
            print(f"\n## {v}: {r['ir_per_pair']:,.0f} instructions per pair")
            print("  by group: " + ", ".join(f"{g} {x:,.0f}" for g, x in
                                             sorted(r["groups"].items(), key=lambda x: -x[1])))
            for k, x in list(r["functions"].items())[:args.top]:
                print(f"  {x:8,.0f}  {k}")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
