"""results.json, results.md and PNG plots from the figures' raw results."""

from __future__ import annotations

import json
import os
import sys

from . import contenders as C

REF = C.REFERENCE  # ratios are taken against sysv_ipc SEM_UNDO


def write_json(results, out_dir):
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return path


# ---------------------------------------------------------------------------
# formatting


def fmt_ns(v):
    if v is None:
        return "–"
    v = float(v)
    if v < 1e3:
        return f"{v:.0f} ns"
    if v < 1e6:
        return f"{v / 1e3:.3g} µs"
    if v < 1e9:
        return f"{v / 1e6:.3g} ms"
    return f"{v / 1e9:.3g} s"


def fmt_rate(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.3g}M/s"
    if v >= 1e3:
        return f"{v / 1e3:.3g}k/s"
    return f"{v:.3g}/s"


def fmt_bytes(v):
    if v is None:
        return "–"
    if v < 1024:
        return f"{v} B"
    if v < 1024 ** 2:
        return f"{v / 1024:.3g} KiB"
    return f"{v / 1024 ** 2:.3g} MiB"


def ratio(v, ref):
    if v is None or not ref:
        return "–"
    return f"{v / ref:.3g}×"


def label(key):
    return C.BY_KEY[key].label if key in C.BY_KEY else key


def status_text(r):
    st = r.get("status", "?")
    if st == "error":
        return "error: " + r.get("error", "")[:200]
    if st == "n/a":
        return "N/A" + (f" ({r['why']})" if r.get("why") else "")
    return st


def md_cell(x):
    """Markdown-table-safe text: one line, no bare pipes."""
    return " ".join(str(x).split()).replace("|", "\\|")


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# markdown


def _load_text(load):
    if not load:
        return "unknown"
    return (f"other processes {load['foreign_cpu_pct']} % of all CPU, "
            f"steal {load['steal_pct']} %")


def write_md(results, out_dir, plots):
    meta = results["meta"]
    figs = results["figures"]
    md = [f"# ipcsem benchmark{' (quick)' if meta.get('quick') else ''}", ""]
    md += [f"- date: {meta['date']}",
           f"- command: `{meta['command']}`",
           f"- python: {meta['python']} ({meta['python_impl']})",
           f"- machine: {meta['cpu']} × {meta['ncpu']}, {meta['mem_gib']} GiB, "
           f"kernel {meta['kernel']}",
           f"- git: {meta.get('git') or 'no commit yet'}",
           f"- wall time: {meta.get('wall_s', 0):.1f} s",
           "- background load: " + _load_text(meta.get("load", {}))
           + f" (load average {meta.get('loadavg_start', 0):.1f} at start)",
           f"- ratios are vs **{label(REF)}** unless a row says otherwise "
           "(< 1× = faster/lower than it)", ""]
    if results.get("interrupted"):
        md += [f"**INTERRUPTED: {results['interrupted']}**", ""]
    busy = [n for n, f in figs.items()
            if isinstance(f, dict) and f.get("load", {}).get("foreign_cpu_pct", 0) > 10]
    if busy:
        md += ["**Warning:** other processes used > 10 % of the CPU during "
               + ", ".join(f"{n} ({_load_text(figs[n]['load'])})" for n in busy)
               + ": those numbers are inflated; rerun on a quiet machine.", ""]
    md += _md_targets(results)
    md += ["## Contenders", ""]
    md.append(table(["contender", "key", "version", "status"],
                    [[c["label"], f"`{k}`", c.get("version") or "–", c["status"]]
                     for k, c in results["contenders"].items()]))
    md.append("")

    for name, f in figs.items():
        if not isinstance(f, dict):
            continue
        render = RENDERERS.get(name)
        if render is not None:
            try:
                md += render(f)
            except Exception as e:  # a half-filled dict (interrupted run): say so, go on
                md += [f"## {name}", "", f"(could not render: {type(e).__name__}: {e})", ""]
        elif f.get("md"):
            md += [*f["md"], ""]   # a figure that renders itself
        if f.get("status") == "error" and "traceback" in f:
            md += [f"## {name}: failed", "", "```", f["traceback"], "```", ""]
    if results.get("cleanup"):
        md += ["## Cleanup", ""] + [f"- {x}" for x in results["cleanup"]] + [""]
    if plots:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    path = os.path.join(out_dir, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


# ---------------------------------------------------------------------------
# targets (issue #12): one row per target, measured, a check mark or a miss


def _ok(x):
    return "–" if x is None else ("✔" if x else "✘ miss")


def targets(results):
    """[{"target", "measured", "ok" (True/False/None: not measured), "figure"}].
    Figures may add their own rows as f["targets"] (same keys)."""
    figs = results["figures"]
    rows = []
    f = figs.get("uncontended")
    if f:
        from .figures.uncontended import PAIR_TARGETS
        cs = f.get("contenders", {})
        for key, ref, limit, what in PAIR_TARGETS:
            a, b = cs.get(key, {}), cs.get(ref, {})
            if a.get("status") == "ok" and b.get("status") == "ok":
                r = a["ns"] / b["ns"]
                rows.append({"figure": 1, "target": f"{what}: ≤ {limit:g}×",
                             "measured": f"{fmt_ns(a['ns'])} vs {fmt_ns(b['ns'])} = {r:.2f}×",
                             "ok": r <= limit})
            else:
                rows.append({"figure": 1, "target": f"{what}: ≤ {limit:g}×",
                             "measured": "not measured", "ok": None})
    f = figs.get("asyncio")
    if f and f.get("rows"):
        a = f["rows"].get("pair async AsyncSemaphore", {})
        b = f["rows"].get("pair sync ipcsem.Semaphore", {})
        what = "async pair (AsyncSemaphore) vs the plain pair: ≤ 1.2×"
        if a.get("status") == "ok" and b.get("status") == "ok":
            r = a["ns"] / b["ns"]
            rows.append({"figure": 7, "target": what,
                         "measured": f"{fmt_ns(a['ns'])} vs {fmt_ns(b['ns'])} = {r:.2f}×",
                         "ok": r <= 1.2})
        else:
            rows.append({"figure": 7, "target": what, "measured": "not measured", "ok": None})
    f = figs.get("contended")
    if f and f.get("cells"):
        from .figures.contended import CONTENDED_TARGETS
        for key, ref, limit, jmin, what in CONTENDED_TARGETS:
            met, n, worst, jworst = 0, 0, None, None
            for cell in f["cells"]:
                a = cell["contenders"].get(key, {})
                b = cell["contenders"].get(ref, {})
                if a.get("status") != "ok" or b.get("status") != "ok":
                    continue
                n += 1
                r = a["ops_per_s"] / b["ops_per_s"]
                ok = r >= limit and (jmin is None or (a["jain"] or 0) >= jmin)
                met += ok
                name = _cell_name(cell)
                if worst is None or r < worst[0]:
                    worst = (r, name)
                if jmin is not None and (jworst is None or (a["jain"] or 0) < jworst[0]):
                    jworst = (a["jain"] or 0, name)
            if not n:
                rows.append({"figure": 2, "target": what, "measured": "not measured", "ok": None})
                continue
            m = f"{met}/{n} cells; lowest {worst[0]:.2f}× ({worst[1]})"
            if jworst:
                m += f"; lowest Jain {jworst[0]:.3f} ({jworst[1]})"
            rows.append({"figure": 2, "target": f"{what}: ≥ {limit:g}× in every cell",
                         "measured": m, "ok": met == n})
    f = figs.get("recovery")
    if f and f.get("variants"):
        from .figures.recovery import RECOVERY_TARGETS
        vs = f["variants"]
        ref = vs.get("sysv", {})
        for vid, (mult, p99_ms) in RECOVERY_TARGETS.items():
            r = vs.get(vid, {})
            what = (f"{r.get('label', vid)}: median ≤ {mult:g}× kernel undo, "
                    f"p99 ≤ {p99_ms:g} ms")
            if r.get("status") != "ok" or not r.get("latencies_ns") or not ref.get("median_ns"):
                rows.append({"figure": 3, "target": what, "measured": "not measured", "ok": None})
                continue
            ratio_ = r["median_ns"] / ref["median_ns"]
            ok = (ratio_ <= mult and r["p99_ns"] <= p99_ms * 1e6 and not r["timeouts"]
                  and not r["violations"])
            rows.append({"figure": 3, "target": what,
                         "measured": f"median {fmt_ns(r['median_ns'])} = {ratio_:.2f}× "
                                     f"({fmt_ns(ref['median_ns'])}), p99 {fmt_ns(r['p99_ns'])}, "
                                     f"{len(r['latencies_ns'])} trials"
                                     + (f", {r['timeouts']} timed out" if r["timeouts"] else ""),
                         "ok": ok})
    f = figs.get("memory")
    if f and isinstance(f.get("geometry"), dict) and "defaults" in f["geometry"]:
        g = f["geometry"]
        rows.append({"figure": 5, "target": "memory per semaphore at the defaults: stated",
                     "measured": f"{fmt_bytes(g['defaults'])} (1,024 holders × {g['per_holder']} B"
                                 f" + 1,024 queued acquires × {g['per_waiter']} B"
                                 f" + {fmt_bytes(g['fixed'])} header and undo log)",
                     "ok": True})
    f = figs.get("status")
    if f and f.get("rows"):
        big = max(f["rows"], key=lambda r: r["n"])
        cli = big.get("cli", {}).get("list", {})
        lim = f.get("target_s", 1.0)
        what = f"`ipcsem-status` of {big['n']:,} semaphores: < {lim:g} s"
        if "wall_s" in cli:
            rows.append({"figure": 6, "target": what,
                         "measured": f"{cli['wall_s']:.2f} s wall, {cli['cpu_s']:.2f} s CPU "
                                     f"(start-up alone {big['startup_s']:.2f} s; read path "
                                     f"{big['read_view_ms'] / 1e3:.2f} s)",
                         "ok": cli["wall_s"] < lim})
        else:
            rows.append({"figure": 6, "target": what, "measured": big.get("error", "?"),
                         "ok": None})
    f = figs.get("idle")
    if f and f.get("status") == "ok":
        rows.append({"figure": 9, "target": f"idle supervisor, {f['holders']:,} holders over "
                                            f"{f['semaphores']} semaphores: "
                                            f"< {f['target_pct']:g} % "
                                            "of one core",
                     "measured": f"{f['cpu_pct']:.2f} % ({f['wakeups_per_s']:.0f} wake-ups/s)",
                     "ok": f["cpu_pct"] < f["target_pct"]})
    for name, f in figs.items():
        if isinstance(f, dict):
            for t in f.get("targets", []):
                rows.append({"figure": name, **t})
    return rows


def _md_targets(results):
    rows = targets(results)
    if not rows:
        return []
    met = sum(1 for r in rows if r["ok"])
    judged = sum(1 for r in rows if r["ok"] is not None)
    return ["## Targets (issue #12)", "",
            f"{met} of {judged} measured targets met. A miss is reported as measured; "
            "docs/perf.md says where the time goes.", "",
            table(["fig", "target", "measured", ""],
                  [[r["figure"], r["target"], r["measured"], _ok(r["ok"])] for r in rows]), ""]


def _cell_name(cell):
    return (f"P={cell['procs']} cap={cell['capacity']}"
            + (f" hold {cell['hold_us']}µs" if cell["hold_us"] else ""))


def _md_uncontended(f):
    cs = f["contenders"]
    ref = cs.get(REF, {}).get("ns")
    posix = cs.get("posix", {}).get("ns")
    plain = cs.get("ipcsem", {}).get("ns")
    rows = []
    for k, r in cs.items():
        if r.get("status") == "ok":
            rows.append([label(k), fmt_ns(r["ns"]), ratio(r["ns"], ref), ratio(r["ns"], posix),
                         ratio(r["ns"], plain) if k.startswith("ipcsem") else "",
                         f"{r['reps']} × {r['pairs']:,}"])
        else:
            rows.append([label(k), status_text(r), "", "", "", ""])
    return ["## 1. Uncontended acquire+release pair", "",
            "One process, best of N runs, ns per pair. The harness loop itself "
            f"(two no-op C calls) costs {fmt_ns(f.get('loop_overhead_ns'))}; "
            "it is included in every number. Instructions per pair by function: "
            "`python -m tools.bench.profile_pair` (docs/perf.md).", "",
            table(["contender", "per pair", f"vs {label(REF)}", "vs posix_ipc raw",
                   "vs ipcsem", "runs × pairs"], rows), ""]


def _md_contended(f):
    md = ["## 2. Contended handoff", "",
          f"P processes loop acquire → (hold) → release from a common start instant: "
          f"{f.get('warmup_s', 0)} s of warm-up, not counted (with more processes than CPUs "
          "not all of them leave the start barrier at once, and a fast contender runs "
          f"thousands of pairs alone meanwhile), then {f['duration_s']} s counted. "
          "Separate `python -m tools.bench.worker` processes "
          "(multiprocessing: forked children). Every acquire is timed (two clock reads per "
          "op), so the fastest contenders run slower here than in figure 1. "
          "Jain = (Σx)²/(n·Σx²) over per-process op counts; wait = time inside acquire; "
          "CPU/op and context switches/op from each worker's getrusage (all its threads).", ""]
    cells = f["cells"]
    keys = []
    for cell in cells:
        for k in cell["contenders"]:
            if k not in keys:
                keys.append(k)
    heads = ["contender"] + [_cell_name(c) for c in cells]
    rows = []
    for k in keys:
        row = [label(k)]
        for cell in cells:
            r = cell["contenders"].get(k, {})
            ref = cell["contenders"].get(REF, {}).get("ops_per_s")
            if r.get("status") == "ok":
                row.append(f"{fmt_rate(r['ops_per_s'])} ({ratio(r['ops_per_s'], ref)})")
            else:
                row.append("N/A" if r.get("status") == "n/a" else status_text(r)[:60])
        rows.append(row)
    md += ["### Throughput, total ops/s (ratio vs sysv_ipc SEM_UNDO)", "", table(heads, rows), ""]
    from .figures.contended import CONTENDED_TARGETS
    rows = []
    for key, refk, limit, jmin, _what in CONTENDED_TARGETS:
        row = [f"{label(key)} vs {label(refk)} (≥ {limit:g}×"
               + (f", Jain ≥ {jmin}" if jmin else "") + ")"]
        for cell in cells:
            a, b = cell["contenders"].get(key, {}), cell["contenders"].get(refk, {})
            if a.get("status") == "ok" and b.get("status") == "ok":
                r = a["ops_per_s"] / b["ops_per_s"]
                ok = r >= limit and (jmin is None or (a["jain"] or 0) >= jmin)
                row.append(f"{r:.2f}×" + (f" J {a['jain']:.3f}" if jmin else "")
                           + (" ✔" if ok else " ✘"))
            else:
                row.append("–")
        rows.append(row)
    md += ["### Targets per cell", "", table(["target"] + [_cell_name(c) for c in cells], rows),
           ""]
    rows = []
    for cell in cells:
        for k in keys:
            r = cell["contenders"].get(k, {})
            if r.get("status") != "ok":
                continue
            cpu = r.get("cpu_us_per_op")
            rows.append([cell["procs"], cell["capacity"], cell["hold_us"], label(k),
                         fmt_rate(r["ops_per_s"]), f"{r['jain']:.3f}" if r["jain"] else "–",
                         fmt_ns(r["wait_p50_ns"]), fmt_ns(r["wait_p99_ns"]),
                         fmt_ns(r["wait_max_ns"]),
                         f"{cpu:.2f} µs ({100 * (r.get('sys_share') or 0):.0f}% sys)"
                         if cpu is not None else "–",
                         f"{r['vcsw_per_op']:.2f} / {r['ivcsw_per_op']:.2f}"
                         if r.get("vcsw_per_op") is not None else "–",
                         " / ".join(f"{x:,}" for x in r["per_process"])])
    md += ["### Fairness, wait time and cost per op", "",
           table(["P", "cap", "hold µs", "contender", "ops/s", "Jain", "wait p50",
                  "wait p99", "wait max", "CPU/op", "ctx sw/op vol / invol",
                  "per-process ops"], rows), ""]
    return md


def _md_recovery(f):
    vs = f["variants"]
    ref = vs.get(REF, {}).get("median_ns")
    rows = []
    for vid, r in vs.items():
        if r.get("status") != "ok":
            rows.append([r.get("label", vid), status_text(r), "", "", "", "", "", "", ""])
            continue
        n_ok = len(r["latencies_ns"])
        if not n_ok:
            rows.append([r["label"], f"**never** ({r['timeouts']}/{r['attempted']} timed out)",
                         "", "", "", "", "", f"0/{r['attempted']}", "; ".join(r["notes"])])
            continue
        rows.append([r["label"], fmt_ns(r["median_ns"]), fmt_ns(r["p90_ns"]),
                     fmt_ns(r["p99_ns"]), fmt_ns(r["max_ns"]), ratio(r["median_ns"], ref),
                     fmt_ns(r.get("exit_median_ns")),
                     f"{n_ok}/{r['attempted']}"
                     + (f" ({r['timeouts']} timed out)" if r["timeouts"] else ""),
                     "; ".join(r["notes"] + ([f"{r['violations']} MUTUAL-EXCLUSION VIOLATIONS"]
                                             if r["violations"] else []))])
    return ["## 3. Recovery after SIGKILL of the holder", "",
            "Capacity 1. Holder acquires then sleeps; waiter blocks in acquire; the harness "
            "SIGKILLs (and reaps) the holder. Latency = CLOCK_MONOTONIC from `os.kill` to the "
            f"waiter's acquire returning. {f['trials']} trials for kernel undo and ipcsem "
            f"in {f.get('rounds', 1)} interleaved rounds (p99 by nearest rank: the "
            f"{max(1, -(-99 * f['trials'] // 100))}th of {f['trials']}), fewer for the others; "
            "every holder imports every contender's library (equal teardown); timeout "
            f"{f['timeout_s']} s (a variant stops early after repeated timeouts with no "
            "success). \"pidfd seen\": median time from the kill until the harness, polling "
            "the holder's pidfd, saw it readable (the thread group has exited): the kernel's "
            "teardown plus one wake-up of one more process -- roughly what a watcher that "
            "learns of deaths from pidfds pays before it can start recovering. On a loaded "
            "machine that wake-up alone can exceed kernel undo's whole time.",
            "",
            table(["variant", "median", "p90", "p99", "max", f"vs {label(REF)} (median)",
                   "pidfd seen", "recovered", "notes"], rows), ""]


def _md_holders(f):
    rows = []
    for k, r in f["contenders"].items():
        if r.get("status") != "ok":
            rows.append([label(k), status_text(r), "", "", "", "", "", ""])
            continue
        for row in r["rows"]:
            shm = row.get("shm")
            rounds = " / ".join(fmt_ns(x) for x in row.get("rounds_ns", [row["ns"]]))
            rows.append([label(k), row["k"], fmt_ns(row["ns"]),
                         ratio(row["ns"], r["rows"][0]["ns"]),
                         rounds, fmt_bytes(shm["allocated"]) if shm else "kernel",
                         f"{row['ready_s']:.2f} s", row.get("units_free", "–"),
                         row.get("warning", "")])
    return ["## 4. Uncontended pair vs number of registered holders", "",
            f"Capacity {f['capacity']}. K holder processes (forked by one helper; each opens "
            "the semaphore itself, acquires 1 unit and pauses), then the uncontended pair "
            "is timed in the harness process. The Ks are measured in interleaved rounds; "
            "each K shows its best round, and every round is listed.", "",
            table(["contender", "K holders", "per pair", "vs K=1", "rounds",
                   "/dev/shm allocated", "K ready after", "units free", "check"], rows), ""]


def _md_memory(f):
    rows = []
    for k, r in f["contenders"].items():
        if r.get("status") == "ok":
            for row in r["rows"]:
                rows.append([label(k), row["capacity"], len(row["files"]),
                             fmt_bytes(row["st_size"]), fmt_bytes(row["allocated"]),
                             ", ".join(os.path.basename(x["path"]) for x in row["files"])])
        elif r.get("status") == "n/a":
            rows.append([label(k), "", "", "", "", r.get("note", "")])
        else:
            rows.append([label(k), status_text(r), "", "", "", ""])
    md = ["## 5. Shared memory per semaphore", "",
          "Files in /dev/shm carrying the semaphore's name, with one process holding a unit. "
          "st_size = apparent size, allocated = st_blocks × 512 (ipcsem preallocates, so "
          "the memory is committed at creation).", "",
          table(["contender", "capacity", "files", "st_size", "allocated", "files / note"], rows),
          ""]
    g = f.get("geometry") or {}
    if "defaults" in g:
        md += ["What the default size buys (the ledger's own size function taken apart): "
               f"a fixed {fmt_bytes(g['fixed'])} (header, robust lock, undo log), "
               f"{g['per_holder']} B per holder slot (a process holding or queued: "
               f"max_holders), {g['per_waiter']} B per waiter entry (one queued acquire: "
               f"max_waiters), {g['per_slotted_unit']:g} B per unit of a slots=True "
               f"semaphore (unit table + its undo entries; capacity 4,096: "
               f"{fmt_bytes(g['slotted_4096'])}).", "",
               table(["max_holders", "max_waiters", "ledger size"],
                     [[t["max_holders"], t["max_waiters"], fmt_bytes(t["bytes"])]
                      for t in g["tables"]]), ""]
    return md


def _md_status(f):
    md = ["## 6. Status over N semaphores", ""]
    if f.get("status") != "ok":
        return [*md, f"{status_text(f)}" + (f": {f['why']}" if f.get("why") else ""), ""]
    rows = []
    for r in f["rows"]:
        if "error" in r:
            rows.append([f"{r['n']:,}", r["error"][:120], "", "", "", "", ""])
            continue
        cli = r.get("cli", {})
        rows.append([f"{r['n']:,}", f"{r['held']:,}", f"{r['names_ms']:.1f} ms",
                     f"{r['read_view_ms']:.0f} ms",
                     *[f"{cli[k]['wall_s']:.2f} s ({cli[k]['cpu_s']:.2f} s CPU)"
                       if k in cli else "–" for k in ("list", "json")],
                     f"{r['startup_s']:.2f} s"])
    where = ("a private tmpfs on /dev/shm (`unshare -m`): only these N exist"
             if f.get("private_shm") else "/dev/shm: the CLI lists other semaphores too")
    return [*md, f"N semaphores at the default table sizes (capacity 2; a tenth held by one "
                 f"live process), in {where}. Best of 3. The library's read path: "
                 "`ipcsem.names()` and `read_view(name)` (pread copy + parse) of every name, "
                 "in-process; the CLI as a fresh process, interpreter start-up included "
                 "(last column: `python -c 'import ipcsem'` alone).", "",
                 table(["N", "held", "names()", "read_view() × N", "`ipcsem-status`",
                        "`ipcsem-status --json`", "start-up"], rows), ""]


def _md_idle(f):
    md = ["## 9. Idle supervisor", ""]
    if f.get("status") != "ok":
        return [*md, status_text(f), ""]
    return [*md, f"`python -m ipcsem supervise` over {f['semaphores']} semaphores with "
                 f"{f['holders']:,} registered holders (forked processes holding a unit "
                 f"each), nothing happening. CPU of its process tree ({f['processes']} "
                 f"process(es)) over {f['window_s']:.0f} s after it settled "
                 f"({f['settle_s']:.1f} s), clock tick {f['clock_tick_s'] * 1e3:.0f} ms.", "",
                 table(["CPU (% of one core)", "target", "wake-ups/s", "fds", "threads", "RSS"],
                       [[f"{f['cpu_pct']:.2f} %", f"< {f['target_pct']:g} %",
                         f"{f['wakeups_per_s']:.0f}", f["fds"], f["threads"],
                         fmt_bytes(f["rss_kib"] * 1024)]]), ""]


def _md_asyncio(f):
    md = ["## 7. asyncio", ""]
    rows = f.get("rows") or {}
    if f.get("status") not in (None, "ok") or not rows:
        return [*md, status_text(f), ""]
    sync = rows.get("pair sync ipcsem.Semaphore", {}).get("ns")
    aio = rows.get("pair asyncio.Semaphore", {}).get("ns")
    out = []
    for k, r in rows.items():
        if r.get("status") == "ok":
            out.append([k, fmt_ns(r["ns"]), ratio(r["ns"], sync) if k.startswith("pair") else "",
                        ratio(r["ns"], aio) if k.startswith("pair") else "",
                        f"{r['reps']} × {r['n']:,}"])
        else:
            out.append([k, status_text(r), "", "", ""])
    return [*md, "ns per operation (pair: one acquire + release; handoff: one grant through "
                 "the queue), best of N runs. tools/bench/figures/asyncio.py says how.", "",
                 table(["row", "per op", "vs sync pair", "vs asyncio.Semaphore pair",
                        "runs × n"], out), "",
                 *_md_loop_gaps(f)]


def _md_loop_gaps(f):
    if f.get("loop_gaps_error"):
        return ["Loop gaps with 1,000 waiting tasks: " + f["loop_gaps_error"], ""]
    if not f.get("loop_gaps_table"):
        return []
    return ["Loop gaps with 1,000 waiting tasks (a 1 ms ticker; 4 semaphores of capacity 2, "
            "8 churners; fresh processes; tools/bench/loopgaps.py says how):", "",
            *f["loop_gaps_table"], ""]


def _md_inversion(f):
    md = ["## 8. Priority inversion", ""]
    if f.get("status") != "ok":
        return [*md, status_text(f), ""]
    out = []
    for cid, c in f.get("cells", {}).items():
        if c.get("status") != "ok":
            out.append([cid, status_text(c), "", "", ""])
            continue
        out.append([cid, f"{c['median_wait_s'] * 1e3:.0f} ms",
                    f"{c['median_owner_share']:.2f}", f"{c['restored']}/{c['runs']}",
                    f"{f['ratios'][c['waiter']]:.1f}×" if c["waiter"] in f.get("ratios", {})
                    and c["inheritance"] else ""])
    return [*md, f"A high-priority waiter, a nice-19 owner doing {f['work_s']} s of work "
                 f"under the mutex and a CPU hog, all on core {f['core']}; {f['runs']} runs "
                 "per cell (tools/bench/figures/inversion.py).", "",
                 table(["waiter / inheritance", "median wait", "owner's share of the core",
                        "priority restored", "no-pi / pi"], out), ""]


# figure name -> markdown renderer; a figure not listed may render itself
# (a "md" list of lines in its dict) and add rows to the targets table
# (a "targets" list of {"target", "measured", "ok"}).
RENDERERS = {"uncontended": _md_uncontended, "contended": _md_contended,
             "recovery": _md_recovery, "holders": _md_holders, "memory": _md_memory,
             "status": _md_status, "idle": _md_idle, "asyncio": _md_asyncio,
             "inversion": _md_inversion}


# ---------------------------------------------------------------------------
# plots


def write_plots(results, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        print(f"warning: matplotlib unavailable ({e}); skipping plots", file=sys.stderr)
        return []
    figs = results["figures"]
    made = []
    for name, fn in (("uncontended", _plot_uncontended), ("contended", _plot_contended),
                     ("recovery", _plot_recovery), ("holders", _plot_holders)):
        if name not in figs:
            continue
        try:
            fname = fn(plt, figs[name], out_dir)
            if fname:
                made.append(fname)
        except Exception as e:
            print(f"warning: plot {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            plt.close("all")
    return made


def _plot_uncontended(plt, f, out_dir):
    cs = f["contenders"]
    items = [(label(k), r["ns"]) for k, r in cs.items() if r.get("status") == "ok"]
    if not items:
        return None
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(items) + 2))
    colors = ["tab:orange" if lab.startswith("ipcsem") else "tab:blue" for lab, _ in items]
    ax.barh([x[0] for x in items], [x[1] for x in items], color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("ns per acquire+release pair (log)")
    ax.set_title("1. Uncontended pair, one process")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, " " + fmt_ns(v), va="center", fontsize=8)
    # Targets as lines: ipcsem <= 2x the raw posix pair, variants <= 1.2x ipcsem.
    if cs.get("posix", {}).get("status") == "ok":
        x = 2.0 * cs["posix"]["ns"]
        ax.axvline(x, color="tab:red", ls="--", lw=1)
        ax.text(x, -0.6, " target: ipcsem ≤ 2× posix raw", color="tab:red", fontsize=7)
    if cs.get("ipcsem", {}).get("status") == "ok":
        x = 1.2 * cs["ipcsem"]["ns"]
        ax.axvline(x, color="tab:purple", ls=":", lw=1)
        ax.text(x, len(items) - 0.3, " target: slots / mutex ≤ 1.2× ipcsem",
                color="tab:purple", fontsize=7)
    ax.invert_yaxis()
    fig.tight_layout()
    fname = "fig1_uncontended.png"
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    return fname


def _plot_contended(plt, f, out_dir):
    from .figures.contended import CONTENDED_TARGETS
    cells = f["cells"]
    keys = []
    for cell in cells:
        for k, r in cell["contenders"].items():
            if r.get("status") == "ok" and k not in keys:
                keys.append(k)
    if not keys:
        return None
    names = [f"P{c['procs']} c{c['capacity']}" + (f"\nh{c['hold_us']}µs" if c["hold_us"] else "")
             for c in cells]
    fig, (ax1, ax3, ax2) = plt.subplots(3, 1, figsize=(max(8, 1.1 * len(cells) + 3), 11),
                                        sharex=True)
    w = 0.8 / len(keys)
    for i, k in enumerate(keys):
        xs, ops, js = [], [], []
        for j, cell in enumerate(cells):
            r = cell["contenders"].get(k, {})
            if r.get("status") == "ok":
                xs.append(j + i * w - 0.4 + w / 2)
                ops.append(r["ops_per_s"])
                js.append(r["jain"] or 0)
        ax1.bar(xs, ops, w, label=label(k))
        ax2.bar(xs, js, w, label=label(k))
    ax1.set_yscale("log")
    ax1.set_ylabel("total ops/s (log)")
    ax1.set_title("2. Contended handoff")
    ax1.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.02))
    # The targets: each ratio against its reference, with the target as a line.
    styles = [("tab:orange", "o", "tab:red"), ("tab:green", "s", "tab:olive")]
    for (key, ref, limit, _jmin, _what), (col, mk, lcol) in zip(CONTENDED_TARGETS, styles,
                                                                 strict=True):
        xs, rs = [], []
        for j, cell in enumerate(cells):
            a, b = cell["contenders"].get(key, {}), cell["contenders"].get(ref, {})
            if a.get("status") == "ok" and b.get("status") == "ok":
                xs.append(j)
                rs.append(a["ops_per_s"] / b["ops_per_s"])
        if xs:
            ax3.plot(xs, rs, marker=mk, ls="-", color=col, label=f"{label(key)} / {label(ref)}")
            ax3.axhline(limit, color=lcol, ls="--", lw=1)
            ax3.text(len(cells) - 0.5, limit, f" target ≥ {limit:g}×", color=lcol, fontsize=7,
                     va="bottom", ha="right")
    ax3.set_yscale("log")
    ax3.set_ylabel("throughput ratio (log)")
    ax3.legend(fontsize=7, loc="upper left")
    ax2.axhline(0.99, color="tab:red", ls="--", lw=1)
    ax2.text(len(cells) - 0.5, 0.99, " fair target: Jain ≥ 0.99", color="tab:red", fontsize=7,
             va="bottom", ha="right")
    ax2.set_ylabel("Jain fairness")
    ax2.set_ylim(0, 1.05)
    ax2.set_xticks(range(len(cells)))
    ax2.set_xticklabels(names, fontsize=8)
    fig.tight_layout()
    fname = "fig2_contended.png"
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    return fname


def _plot_recovery(plt, f, out_dir):
    from .figures.recovery import RECOVERY_TARGETS
    vs = [(vid, r.get("label", vid), r) for vid, r in f["variants"].items()
          if r.get("status") == "ok"]
    if not vs:
        return None
    fig, ax = plt.subplots(figsize=(9.5, 0.6 * len(vs) + 2.2))
    timeout_ms = f["timeout_s"] * 1e3
    for i, (vid, _lab, r) in enumerate(vs):
        lat = [x / 1e6 for x in r["latencies_ns"]]
        if lat:
            ax.scatter(lat, [i] * len(lat), s=12, alpha=0.5, color="tab:blue")
            ax.scatter([r["median_ns"] / 1e6], [i], marker="|", s=300, color="black")
            ax.scatter([r["p99_ns"] / 1e6], [i], marker="|", s=200, color="tab:gray")
        if r["timeouts"]:
            ax.scatter([timeout_ms], [i], marker=">", s=60, color="tab:red")
            ax.text(timeout_ms, i, f"  never ×{r['timeouts']}", va="center", fontsize=8,
                    color="tab:red")
        # This variant's targets, drawn on its own row: median (red) and p99 (orange).
        ref = f["variants"].get("sysv", {}).get("median_ns")
        if vid in RECOVERY_TARGETS and ref:
            mult, p99 = RECOVERY_TARGETS[vid]
            ax.plot([mult * ref / 1e6] * 2, [i - 0.4, i + 0.4], color="tab:red", ls="--", lw=1.5)
            ax.plot([p99] * 2, [i - 0.4, i + 0.4], color="tab:orange", ls="--", lw=1.5)
    ax.set_yticks(range(len(vs)))
    ax.set_yticklabels([x[1] for x in vs], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms from SIGKILL of holder to waiter holding the unit (log)\n"
                  "black | median, grey | p99; dashed: targets (red median, orange p99)",
                  fontsize=8)
    ax.set_title("3. Recovery latency")
    ax.axvline(timeout_ms, color="tab:red", ls=":", lw=1)
    ax.set_xlim(right=timeout_ms * 8)  # room for the "never" labels
    ax.invert_yaxis()
    fig.tight_layout()
    fname = "fig3_recovery.png"
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    return fname


def _plot_holders(plt, f, out_dir):
    series = [(label(k), r["rows"]) for k, r in f["contenders"].items()
              if r.get("status") == "ok" and r.get("rows")]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lab, rows in series:
        ax.plot([r["k"] for r in rows], [r["ns"] for r in rows], marker="o", label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("registered holders K (log)")
    ax.set_ylabel("ns per uncontended pair (log)")
    ax.set_title(f"4. Cost vs holders (capacity {f['capacity']})")
    ax.legend()
    fig.tight_layout()
    fname = "fig4_holders.png"
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    return fname
