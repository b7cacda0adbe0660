"""Write docs/results.md and its plots from the grid's JSON lines (and the speed/size results).

    python bench/results_page.py                      # reads bench/results/grid_smollm2.jsonl
    python bench/results_page.py --results bench/results/grid_gemma3-270m.jsonl   # docs/results_gemma3-270m.md

The default model's page also carries the sparse speed/size section and docs/findings.md; another model's
page (named after it, plots prefixed with its name) has its grid and docs/findings_MODEL.md if there is one.

Every number on the page is a field of a row in bench/results/; cells not run yet show "–", runs that
failed show "error", and "n/a" marks allocations that only exist for unstructured targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path

from grid import MODEL, UNSTRUCTURED_ONLY, cells, results_path
from tables import latest_speed_rows

ROOT = Path(__file__).resolve().parent.parent
SOLVERS = ["magnitude", "wanda", "sparsegpt", "mrp"]
ALLOCATIONS = ["uniform", "owl", "als", "alpha"]
TARGETS = ["0.5", "0.6", "0.7", "0.8", "2:4", "4:8"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _latest(rows: list[dict]) -> dict[tuple, dict]:
    """The last row per (setting, solver, allocation, target, seed)."""
    return {(r["setting"], r["solver"], r["allocation"], r["target"], r["seed"]): r for r in rows}


def _cell(row: dict | None, field: str = "ppl", fmt: str = "{:.2f}") -> str:
    if row is None:
        return "–"
    if "error" in row:
        return "error"
    value = row.get(field)
    return "–" if value is None else fmt.format(value)


def grid_tables(rows: dict[tuple, dict], setting: str) -> list[str]:
    lines = []
    dense = rows.get((setting, "dense", "-", "0", 0))
    if dense:
        command = dense["command"].split(" --json")[0]
        lines.append(f"Dense: {_cell(dense)} (`{command}`).\n")
    lines.append("| solver | allocation | " + " | ".join(TARGETS) + " | prune_s / dense calibration forward | "
                 "peak RSS MB |")
    lines.append("|---|---|" + "---|" * (len(TARGETS) + 2))
    for solver in SOLVERS:
        for allocation in ALLOCATIONS:
            found = [rows.get((setting, solver, allocation, t, 0)) for t in TARGETS]
            ran = [c for c in found if c and "error" not in c]
            timed = [c["prune_over_forward"] for c in ran if c.get("prune_over_forward")]
            ratio = f"{min(timed):.2f}–{max(timed):.2f}" if timed else "–"
            peak = f"{max(c['peak_rss_mb'] for c in ran):.0f}" if ran else "–"
            shown = ["n/a" if ":" in t and allocation in UNSTRUCTURED_ONLY else _cell(c) for t, c in zip(TARGETS, found)]
            lines.append(f"| {solver} | {allocation} | " + " | ".join(shown) + f" | {ratio} | {peak} |")
    return lines


def headline_table(rows: dict[tuple, dict]) -> list[str]:
    lines = ["| solver | target | seeds | ppl per seed | WikiText-2 ppl (2048, full test) mean ± std | zero-shot "
             "mean acc (seed 0, 7 tasks, limit 100) | prune_s / dense forward | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    dense = rows.get(("headline", "dense", "-", "0", 0))
    if dense:
        acc = dense.get("zeroshot", {}).get("mean_acc")
        lines.append(f"| dense | – | – | – | {_cell(dense)} | {'–' if acc is None else f'{acc:.3f}'} | – | – |")
    for solver, target in sorted({(k[1], k[3]) for k in rows if k[0] == "headline" and k[1] != "dense"}):
        runs = sorted((rows[k] for k in rows if k[0] == "headline" and k[1] == solver and k[3] == target
                       and "error" not in rows[k]), key=lambda r: r["seed"])
        if not runs:
            continue
        ppls = [r["ppl"] for r in runs]
        spread = f"{statistics.mean(ppls):.2f} ± {statistics.stdev(ppls):.2f}" if len(ppls) > 1 else f"{ppls[0]:.2f}"
        zero = next((r["zeroshot"]["mean_acc"] for r in runs if "zeroshot" in r), None)
        ratio = statistics.mean(r["prune_over_forward"] for r in runs)
        lines.append(f"| {solver} | {target} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{', '.join(f'{p:.2f}' for p in ppls)} | {spread} | "
                     f"{'–' if zero is None else f'{zero:.3f}'} | {ratio:.2f} | "
                     f"{max(r['peak_rss_mb'] for r in runs):.0f} |")
    return lines


def zeroshot_table(rows: dict[tuple, dict]) -> list[str]:
    """Per-task zero-shot accuracy of the headline rows that ran it (100 examples per task)."""
    runs = [r for k, r in sorted(rows.items(), key=lambda kv: kv[0][1] != "dense")
            if k[0] == "headline" and "zeroshot" in r]
    tasks = list(dict.fromkeys(t for r in runs for t in r["zeroshot"]["tasks"]))
    if not runs:
        return []
    lines = ["| model | " + " | ".join(tasks) + " | mean (7) |", "|---|" + "---|" * (len(tasks) + 1)]
    for r in runs:
        name = "dense" if r["solver"] == "dense" else f"{r['solver']} {r['target']}"
        accs = [r["zeroshot"]["tasks"].get(t) for t in tasks]
        lines.append(f"| {name} | " + " | ".join("–" if a is None else f"{a:.2f}" for a in accs)
                     + f" | {r['zeroshot']['mean_acc']:.3f} |")
    return lines


def oversubscribed(raw: list[dict]) -> set[int]:
    """Rows (by id) that ran while grid runs needing more threads than the machine's cores ran at once.

    A run's threads are its OMP_NUM_THREADS, or all cores for "default"; runs are placed in time by
    `started` and `wall_s` (a 2 s margin absorbs the one-second rounding of `started`). A run crowded for
    more than 5% of its time is flagged: its wall time says more about the other runs than about itself.
    Rows that sampled the load average (`load_1min`, every 30 s) are also flagged when more than 10% of the
    samples exceed the cores by half a core: something outside the grid shared the machine."""
    spans = []
    for r in raw:
        if "started" in r and r.get("wall_s") and "machine" in r:
            start = datetime.fromisoformat(r["started"]).timestamp()
            cores = r["machine"]["cores"]
            threads = r["machine"].get("threads", "default")
            spans.append((r, start, start + r["wall_s"] - 2, cores if threads == "default" else int(threads), cores))
    busy = set()
    for r, start, end, _, cores in spans:
        cuts = sorted({start, end, *(t for _, s, e, _, _ in spans for t in (s, e) if start < t < end)})
        crowded = sum(b - a for a, b in zip(cuts, cuts[1:])
                      if sum(n for _, s, e, n, _ in spans if s <= a < e) > cores)
        if crowded > 0.05 * (end - start):
            busy.add(id(r))
    for r in raw:
        load, cores = r.get("load_1min"), r.get("machine", {}).get("cores")
        if load and cores and sum(x > cores + 0.5 for x in load) > 0.1 * len(load):
            busy.add(id(r))
    return busy


def coverage(rows: dict[tuple, dict], setting: str, busy: set[int] = frozenset()) -> str:
    """How many of the setting's grid cells have a row (bench/grid.py's own cell list), and their run time."""
    wanted = cells(setting)
    ran = [rows[(setting, *c)] for c in wanted if (setting, *c) in rows and "error" not in rows[(setting, *c)]]
    timed = [r["wall_s"] for r in ran if r.get("wall_s") and not r.get("timings_invalid") and id(r) not in busy]
    crowded = sum(1 for r in ran if id(r) in busy)
    line = f"{len(ran)} of {len(wanted)} cells of the {setting} setting have run"
    if timed:
        line += (f"; the {len(timed)} that recorded their wall time on an uncrowded machine took "
                 f"{sum(timed) / 3600:.1f} h of process time together ({min(timed) / 60:.1f}–{max(timed) / 60:.1f} "
                 "min each)")
    if crowded:
        line += (f"; {crowded} of them ran while more threads wanted the cores than there are (other grid runs, "
                 "or outside processes seen in their load samples), so their times are left out")
    return line + "."


def seed_spread_table(rows: dict[tuple, dict], setting: str) -> list[str]:
    """Mean ± std over calibration seeds of every cell run with more than one seed."""
    groups: dict[tuple, list[dict]] = {}
    for (s, solver, allocation, target, _), r in sorted(rows.items()):
        if s == setting and solver != "dense" and "error" not in r:
            groups.setdefault((solver, allocation, target), []).append(r)
    lines = []
    for (solver, allocation, target), runs in groups.items():
        if len(runs) < 2:
            continue
        ppls = [r["ppl"] for r in runs]
        lines.append(f"| {solver} | {allocation} | {target} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{', '.join(f'{p:.2f}' for p in ppls)} | {statistics.mean(ppls):.2f} ± {statistics.stdev(ppls):.2f} "
                     f"({statistics.stdev(ppls) / statistics.mean(ppls):.1%}) |")
    if not lines:
        return []
    return ["| solver | allocation | target | seeds | perplexity per seed | mean ± std (relative) |",
            "|---|---|---|---|---|---|", *lines]


def speed_lines() -> list[str]:
    rows = latest_speed_rows()
    if not rows:
        return []
    lines = ["| target | dtype | decode speedup | prefill speedup | compressed size float16 / dense float32 "
             "| same greedy tokens |", "|---|---|---|---|---|---|"]
    for r in rows:
        size = r["sizes"]["compressed_float16"] / r["sizes"]["dense_float32"]
        lines.append(f"| {r['target']} | {r['dtype']} | {r['decode_speedup']:.2f}× | {r['prefill_speedup']:.2f}× | "
                     f"{size:.1%} | {r['same_tokens']} |")
    return lines


def plots(rows: dict[tuple, dict], setting: str, out: Path, prefix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunellm.plot import allocation_matrix

    made = []
    numeric = [t for t in TARGETS if ":" not in t]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for solver in SOLVERS:
        for allocation in ALLOCATIONS:
            pts = [(float(t), rows[(setting, solver, allocation, t, 0)]["ppl"]) for t in numeric
                   if "ppl" in rows.get((setting, solver, allocation, t, 0), {})]
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", label=f"{solver} {allocation}",
                        linestyle="-" if allocation == "uniform" else "--")
    if ax.lines:
        ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"WikiText-2 perplexity ({setting} setting)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / f"{prefix}ppl_vs_sparsity_{setting}.png", dpi=110)
        made.append(f"{prefix}ppl_vs_sparsity_{setting}.png")
    plt.close(fig)
    for allocation in ("owl", "als", "alpha"):
        row = next((rows[k] for k in sorted(rows) if k[0] == setting and k[2] == allocation and k[3] == "0.7"
                    and "layers" in rows[k]), None)
        if row is None:
            continue
        components, matrix = allocation_matrix(row)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(components), 1.5 + 0.22 * len(matrix)))
        image = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(components)), components, rotation=45, ha="right")
        ax.set_ylabel("block")
        ax.set_title(f"{allocation} + {row['solver']} at 70% (seed {row['seed']}): sparsity per layer")
        fig.colorbar(image, ax=ax, label="sparsity")
        fig.tight_layout()
        fig.savefig(out / f"{prefix}heatmap_{allocation}_{setting}.png", dpi=110)
        plt.close(fig)
        made.append(f"{prefix}heatmap_{allocation}_{setting}.png")
    return made


def speed_plot(out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric_speed = [r for r in latest_speed_rows() if ":" not in r["target"]]
    if numeric_speed:
        fig, ax = plt.subplots(figsize=(6, 4))
        for dtype, style in (("float32", "-"), ("bfloat16", "--")):
            part = [r for r in numeric_speed if r["dtype"] == dtype]
            xs = [r["sparsity"] for r in part]
            if part:
                ax.plot(xs, [r["decode_speedup"] for r in part], marker="o", linestyle=style,
                        label=f"decode (1 token), {dtype}")
                ax.plot(xs, [r["prefill_speedup"] for r in part], marker="s", linestyle=style,
                        label=f"prefill (128 tokens), {dtype}")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speed vs dense (×)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "speedup_vs_sparsity.png", dpi=110)
        plt.close(fig)
        return "speedup_vs_sparsity.png"
    return None


def environment_lines(raw: list[dict]) -> list[str]:
    """One line per machine and library versions; threads per run and prunellm commits listed within it."""
    groups: dict[str, dict[str, set]] = {}
    for r in raw:
        if "machine" not in r:
            continue
        versions = {k: v for k, v in r.get("versions", {}).items() if k != "prunellm_commit"}
        key = json.dumps({"cpu": r["machine"]["cpu"], "cores": r["machine"]["cores"], **versions})
        g = groups.setdefault(key, {"threads": set(), "commits": set()})
        g["threads"].add(str(r["machine"].get("threads", "default")))
        g["commits"].add(r.get("versions", {}).get("prunellm_commit", "?"))
    lines = []
    for key, g in groups.items():
        e = json.loads(key)
        cpu, cores = e.pop("cpu"), e.pop("cores")
        lines.append(f"- machine: {cpu} ({cores} cores; threads per run: {', '.join(sorted(g['threads']))}); "
                     + ", ".join(f"{k} {v}" for k, v in e.items())
                     + f"; prunellm commits: {', '.join(sorted(g['commits']))}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(results_path(MODEL)))
    p.add_argument("--docs", default=str(ROOT / "docs"))
    a = p.parse_args()
    raw = _rows(Path(a.results))
    rows = _latest(raw)
    docs = Path(a.docs)
    (docs / "img").mkdir(parents=True, exist_ok=True)
    settings = [s for s in ("headline", "quick", "smoke") if any(k[0] == s for k in rows)]
    results = Path(a.results).resolve()
    shown = results.relative_to(ROOT) if results.is_relative_to(ROOT) else results
    model = raw[0]["model"] if raw else MODEL
    main_page = model == MODEL
    page, prefix = ("results.md", "") if main_page else (f"results_{model}.md", f"{model}_")
    md = [f"# Results on {'SmolLM2-135M' if main_page else model}", "",
          f"Generated by `python bench/results_page.py{'' if main_page else f' --results {shown}'}` from "
          f"`{shown}` ({len(raw)} runs){' and `bench/results/sparse_speed_smollm2.jsonl`' if main_page else ''}; "
          f"runs are made by `python bench/grid.py{'' if main_page else f' --model {model}'}` (see its docstring "
          "for the settings). Cells marked – have not been run yet.", ""]
    md += environment_lines(raw)
    busy = oversubscribed(raw)
    imported = [r for r in raw if "source" in r]
    if imported:
        md.append(f"- {len(imported)} quick-setting runs were imported from earlier benchmark files (each row's "
                  "`source` names the file and line; they were run at earlier commits with the default thread count)")
    md.append("")
    if "headline" in settings:
        md += ["## Headline rows", "", coverage(rows, "headline", busy) + " WikiText-2 perplexity at 2048 over the "
               "whole test set, mean ± std over calibration seeds 0, 1, 2 (sample std); zero-shot accuracy on "
               "100 examples per task (seed 0), mean over the seven tasks of the Wanda paper (BoolQ, RTE, "
               "HellaSwag, WinoGrande, ARC-e, ARC-c, OpenBookQA; one task's standard error at 100 examples is "
               "about 0.05, the seven-task mean's about 0.02).", "", *headline_table(rows), "",
               *zeroshot_table(rows), ""]
    for setting in ("quick", "smoke"):
        if setting in settings:
            md += [f"## Grid, {setting} setting (WikiText-2 perplexity, seed 0)", "", coverage(rows, setting, busy), "",
                   *grid_tables(rows, setting), ""]
            spread = seed_spread_table(rows, setting)
            if spread:
                md += [f"Calibration-seed spread ({setting} setting): a difference between two cells smaller than "
                       "this spread is not a finding.", "", *spread, ""]
            for name in plots(rows, setting, docs / "img", prefix):
                md.append(f"![{name}](img/{name})")
            md.append("")
    speed = speed_lines() if main_page else []
    if speed:
        md += ["## Sparse model: size and speed", "",
               "Magnitude-pruned models of each sparsity (speed depends on the sparsity, not on the method), "
               "`python bench/sparse_speed.py`, 2 threads:", "", *speed, ""]
        name = speed_plot(docs / "img")
        if name:
            md += [f"![{name}](img/{name})", ""]
    findings = docs / ("findings.md" if main_page else f"findings_{model}.md")
    if findings.exists():
        md += [findings.read_text().strip(), ""]
    (docs / page).write_text("\n".join(md))
    print(f"wrote {docs / page}")


if __name__ == "__main__":
    main()
