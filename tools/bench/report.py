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
           f"- ratios are vs **{label(REF)}** (< 1× = faster/lower than it)", ""]
    if results.get("interrupted"):
        md += [f"**INTERRUPTED: {results['interrupted']}**", ""]
    busy = [n for n, f in figs.items()
            if isinstance(f, dict) and f.get("load", {}).get("foreign_cpu_pct", 0) > 10]
    if busy:
        md += ["**Warning:** other processes used > 10 % of the CPU during "
               + ", ".join(f"{n} ({_load_text(figs[n]['load'])})" for n in busy)
               + ": those numbers are inflated; rerun on a quiet machine.", ""]
    md += ["## Contenders", ""]
    md.append(table(["contender", "key", "version", "status"],
                    [[c["label"], f"`{k}`", c.get("version") or "–", c["status"]]
                     for k, c in results["contenders"].items()]))
    md.append("")

    if "uncontended" in figs:
        md += _md_uncontended(figs["uncontended"])
    if "contended" in figs:
        md += _md_contended(figs["contended"])
    if "recovery" in figs:
        md += _md_recovery(figs["recovery"])
    if "holders" in figs:
        md += _md_holders(figs["holders"])
    if "memory" in figs:
        md += _md_memory(figs["memory"])
    if "status" in figs:
        md += _md_status(figs["status"])
    for name, f in figs.items():
        if isinstance(f, dict) and f.get("status") == "error" and "traceback" in f:
            md += [f"## {name}: failed", "", "```", f["traceback"], "```", ""]
    if results.get("cleanup"):
        md += ["## Cleanup", ""] + [f"- {x}" for x in results["cleanup"]] + [""]
    if plots:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    path = os.path.join(out_dir, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


def _md_uncontended(f):
    cs = f["contenders"]
    ref = cs.get(REF, {}).get("ns")
    rows = []
    for k, r in cs.items():
        if r.get("status") == "ok":
            rows.append([label(k), fmt_ns(r["ns"]), ratio(r["ns"], ref),
                         f"{r['reps']} × {r['pairs']:,}"])
        else:
            rows.append([label(k), status_text(r), "", ""])
    return ["## 1. Uncontended acquire+release pair", "",
            "One process, best of N runs, ns per pair. The harness loop itself "
            f"(two no-op C calls) costs {fmt_ns(f.get('loop_overhead_ns'))}; "
            "it is included in every number.", "",
            table(["contender", "per pair", f"vs {label(REF)}", "runs × pairs"], rows), ""]


def _md_contended(f):
    md = ["## 2. Contended handoff", "",
          f"P processes loop acquire → (hold) → release for {f['duration_s']} s from a "
          "common start instant. Separate `python -m tools.bench.worker` processes "
          "(multiprocessing: forked children). Every acquire is timed (two clock reads per "
          "op), so the fastest contenders run slower here than in figure 1. "
          "Jain = (Σx)²/(n·Σx²) over per-process op counts; wait = time inside acquire.", ""]
    cells = f["cells"]
    keys = []
    for cell in cells:
        for k in cell["contenders"]:
            if k not in keys:
                keys.append(k)
    # throughput matrix
    heads = ["contender"] + [f"P={c['procs']} cap={c['capacity']}"
                             + (f" hold {c['hold_us']}µs" if c["hold_us"] else "")
                             for c in cells]
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
    # fairness + waits
    rows = []
    for cell in cells:
        for k in keys:
            r = cell["contenders"].get(k, {})
            if r.get("status") != "ok":
                continue
            rows.append([cell["procs"], cell["capacity"], cell["hold_us"], label(k),
                         fmt_rate(r["ops_per_s"]), f"{r['jain']:.3f}" if r["jain"] else "–",
                         fmt_ns(r["wait_p50_ns"]), fmt_ns(r["wait_p99_ns"]),
                         fmt_ns(r["wait_max_ns"]),
                         " / ".join(f"{x:,}" for x in r["per_process"])])
    md += ["### Fairness and wait time", "",
           table(["P", "cap", "hold µs", "contender", "ops/s", "Jain", "wait p50",
                  "wait p99", "wait max", "per-process ops"], rows), ""]
    return md


def _md_recovery(f):
    vs = f["variants"]
    ref = vs.get(REF, {}).get("median_ns")
    rows = []
    for vid, r in vs.items():
        if r.get("status") != "ok":
            rows.append([r.get("label", vid), status_text(r), "", "", "", "", "", ""])
            continue
        n_ok = len(r["latencies_ns"])
        if not n_ok:
            rows.append([r["label"], f"**never** ({r['timeouts']}/{r['attempted']} timed out)",
                         "", "", "", "", f"0/{r['attempted']}", "; ".join(r["notes"])])
            continue
        rows.append([r["label"], fmt_ns(r["median_ns"]), fmt_ns(r["p90_ns"]),
                     fmt_ns(r["p99_ns"]), fmt_ns(r["max_ns"]), ratio(r["median_ns"], ref),
                     f"{n_ok}/{r['attempted']}"
                     + (f" ({r['timeouts']} timed out)" if r["timeouts"] else ""),
                     "; ".join(r["notes"] + ([f"{r['violations']} MUTUAL-EXCLUSION VIOLATIONS"]
                                             if r["violations"] else []))])
    return ["## 3. Recovery after SIGKILL of the holder", "",
            f"Capacity 1. Holder acquires then sleeps; waiter blocks in acquire; the harness "
            f"SIGKILLs (and reaps) the holder. Latency = CLOCK_MONOTONIC from `os.kill` to the "
            f"waiter's acquire returning. Up to {f['trials']} trials, timeout "
            f"{f['timeout_s']} s (a variant stops early after repeated timeouts with no success).", "",
            table(["variant", "median", "p90", "p99", "max", f"vs {label(REF)} (median)",
                   "recovered", "notes"], rows), ""]


def _md_holders(f):
    rows = []
    for k, r in f["contenders"].items():
        if r.get("status") != "ok":
            rows.append([label(k), status_text(r), "", "", "", "", "", ""])
            continue
        for row in r["rows"]:
            shm = row.get("shm")
            rounds = " / ".join(fmt_ns(x) for x in row.get("rounds_ns", [row["ns"]]))
            rows.append([label(k), row["k"], fmt_ns(row["ns"]), ratio(row["ns"], r["rows"][0]["ns"]),
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
    return ["## 5. Shared memory per semaphore", "",
            "Files in /dev/shm carrying the semaphore's name, with one process holding a unit. "
            "st_size = apparent size, allocated = st_blocks × 512.", "",
            table(["contender", "capacity", "files", "st_size", "allocated", "files / note"], rows), ""]


def _md_status(f):
    md = ["## 6. Status over N semaphores", ""]
    if f.get("status") != "ok":
        return md + [f"{status_text(f)}" + (f": {f['why']}" if f.get("why") else ""), ""]
    rows = []
    for r in f["rows"]:
        cli = r["cli"]
        rows.append([r["n"], r["names_total"], f"{r['names_ms']:.2f} ms",
                     f"{r['snapshot_ms']:.2f} ms" if "snapshot_ms" in r else r.get("snapshot_error", ""),
                     f"{cli['ms']:.0f} ms" if cli.get("status") == "ok"
                     else f"{cli['status']} {cli.get('why', cli.get('error', ''))}"[:80]])
    return md + ["N semaphores created by this run. names() lists every semaphore on the "
                 "machine (column 2); the snapshot opens only this run's N and reads "
                 "`stats()` from each; the CLI (`python -m ipcsem status`, no NAME) "
                 "covers every semaphore on the machine and includes interpreter start-up.", "",
                 table(["N created", "names() returned", "names()", "open + stats() all N",
                        "`python -m ipcsem status`"], rows), ""]


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
    items = [(label(k), r["ns"]) for k, r in f["contenders"].items() if r.get("status") == "ok"]
    if not items:
        return None
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(items) + 1.5))
    ax.barh([x[0] for x in items], [x[1] for x in items], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("ns per acquire+release pair (log)")
    ax.set_title("1. Uncontended pair, one process")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, " " + fmt_ns(v), va="center", fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fname = "fig1_uncontended.png"
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    return fname


def _plot_contended(plt, f, out_dir):
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
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(cells) + 3), 8), sharex=True)
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
    ax2.set_ylabel("Jain fairness")
    ax2.set_ylim(0, 1.05)
    ax2.set_xticks(range(len(cells)))
    ax2.set_xticklabels(names, fontsize=8)
    fig.tight_layout()
    fname = "fig2_contended.png"
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    return fname


def _plot_recovery(plt, f, out_dir):
    vs = [(r.get("label", vid), r) for vid, r in f["variants"].items() if r.get("status") == "ok"]
    if not vs:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(vs) + 1.8))
    timeout_ms = f["timeout_s"] * 1e3
    for i, (lab, r) in enumerate(vs):
        lat = [x / 1e6 for x in r["latencies_ns"]]
        if lat:
            ax.scatter(lat, [i] * len(lat), s=12, alpha=0.6, color="tab:blue")
            ax.scatter([r["median_ns"] / 1e6], [i], marker="|", s=300, color="black")
        if r["timeouts"]:
            ax.scatter([timeout_ms], [i], marker=">", s=60, color="tab:red")
            ax.text(timeout_ms, i, f"  never ×{r['timeouts']}", va="center", fontsize=8,
                    color="tab:red")
    ax.set_yticks(range(len(vs)))
    ax.set_yticklabels([x[0] for x in vs], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms from SIGKILL of holder to waiter holding the unit (log)")
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
