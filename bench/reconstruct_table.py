"""Block-wise reconstruction on SmolLM2-135M or Gemma-3-270M (quick setting): perplexity and cost with and without it.

Each cell `solver:allocation:target:reconstruct[:seed]` (reconstruct none, block or halves) runs `prunellm prune`
with the quick setting (32 × 1024 WikiText-2 validation tokens, perplexity at 1024 on the first 64 test
windows) and the default reconstruction options, plus any `--extra` flags. Rows without reconstruction
can come from the grid instead (`bench/results/grid_smollm2.jsonl`, same setting). Appends one JSON line
per cell (with the CPU and the load average) and prints a Markdown table. Run alone on the machine.

    python bench/reconstruct_table.py --cells sparsegpt:uniform:0.5:block,mrp:alpha:0.7:block \
        --out bench/results/reconstruct_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grid import SETTINGS, LoadSampler, _target_flags, cell_fields, machine, read_rows, versions


def parse_cell(cell: str) -> tuple[str, str, str, str, int]:
    """"mrp:alpha:0.7:block" or "sparsegpt:uniform:2:4:halves:1" → (solver, allocation, target, mode, seed)."""
    solver, allocation, target, mode, *rest = cell_fields(cell)
    return solver, allocation, target, mode, int(rest[0]) if rest else 0


def run_cell(cell: str, workdir: Path, model: str, extra: list[str]) -> dict:
    solver, allocation, target, mode, seed = parse_cell(cell)
    s = SETTINGS["quick"]
    out = workdir / "model"
    cmd = ["prunellm", "prune", model, "--solver", solver, "--allocation", allocation, *_target_flags(target),
           "--calib", "wikitext2", "--nsamples", str(s["nsamples"]), "--seqlen", str(s["seqlen"]), "--seed", str(seed),
           "--eval-ppl", "wikitext2", "--eval-seqlen", str(s["eval_seqlen"]),
           "--eval-max-windows", str(s["eval_windows"]), "--reconstruct", mode, *extra,
           "--output", str(out), "--overwrite"]
    code = versions()  # before the run: the working tree may change while it runs
    t0 = time.perf_counter()
    with LoadSampler() as load:
        subprocess.run([sys.executable, "-m", "prunellm", *cmd[1:]], check=True)
    report = json.loads((out / "prune_report.json").read_text())
    t = report["timings"]
    parts = [p for b in report.get("reconstruction", {}).get("blocks", []) for p in b["parts"]]
    return {
        "setting": "quick", "model": model, "solver": solver, "allocation": allocation, "target": target,
        "reconstruct": mode, "seed": seed, "extra": extra, "command": " ".join(cmd),
        "ppl": report["perplexity"]["wikitext2"], "sparsity": report["sparsity"],
        "inputs": report.get("reconstruction", {}).get("inputs", report["config"]["propagate"] or "pruned"),
        "calib_forward_s": t["calib_forward_s"], "prune_s": t["prune_s"], "reconstruct_s": t.get("reconstruct_s"),
        "prune_over_forward": round(t["prune_s"] / t["calib_forward_s"], 3) if t["calib_forward_s"] else None,
        "mean_loss_ratio": round(sum(p["loss_after"] / p["loss_before"] for p in parts if p["loss_before"])
                                 / max(1, len(parts)), 4) if parts else None,
        "epochs": [p["epochs"] for p in parts], "best_epochs": [p["best_epoch"] for p in parts],
        "peak_rss_mb": report["peak_rss_mb"], "wall_s": round(time.perf_counter() - t0, 1),
        "load": load.samples, "machine": machine(), "versions": code,
    }


def table(rows: list[dict]) -> str:
    lines = ["| solver | allocation | target | reconstruct | seed | WikiText-2 ppl | loss after / before (mean over parts) "
             "| prune_s / calib_forward_s | CPU |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['mean_loss_ratio']:.3f}" if r.get("mean_loss_ratio") is not None else "—"
        lines.append(f"| {r['solver']} | {r['allocation']} | {r['target']} | {r['reconstruct']} | {r['seed']} "
                     f"| {r['ppl']:.2f} | {ratio} | {r['prune_over_forward']:.2f} | {r['machine']['cpu']} |")
    return "\n".join(lines)


def _step(extra: list[str]) -> str:
    """The cell's Adam step size and batch as `lr / batch` (the defaults where --extra leaves them)."""
    flags = dict(zip(extra[::2], extra[1::2]))
    return f"{flags.get('--reconstruct-lr', '2e-4')} / {flags.get('--reconstruct-batch-size', '8')}"


def _order(key: tuple) -> tuple:
    """Table order: solvers from cheapest to exact, then target (sparsities before N:M)."""
    solvers = ["magnitude", "wanda", "sparsegpt", "mrp"]
    rank = solvers.index(key[0]) if key[0] in solvers else len(solvers)
    return rank, ":" in key[2], key[2], key[1], key[3:]


def readme_table(rows: list[dict], grid: list[dict]) -> str:
    """Each cell's perplexity without reconstruction (the grid's row, pruned inputs) and with each mode run."""
    base = {(r["solver"], r["allocation"], r["target"]): r for r in grid
            if r.get("setting") == "quick" and r.get("seed", 0) == 0}
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells.setdefault((r["solver"], r["allocation"], r["target"], _step(r.get("extra", []))), {})[r["reconstruct"]] = r
    lines = ["| solver | allocation | target | lr / batch | no reconstruction (grid) | `--reconstruct block` | `halves` "
             "| prune_s / calib_forward_s: block, halves (none: grid) | CPU (grid; reconstruction) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, modes in sorted(cells.items(), key=lambda kv: _order(kv[0])):
        none = base.get(key[:3])
        ppl = [f"{none['ppl']:.2f}" if none else "not run"] + \
            [f"{modes[m]['ppl']:.2f}" if m in modes else "not run" for m in ("block", "halves")]
        cost = ", ".join(f"{modes[m]['prune_over_forward']:.2f}" for m in ("block", "halves") if m in modes)
        if none and none.get("prune_over_forward"):
            cost += f" ({none['prune_over_forward']:.2f})"
        cpus = sorted({r["machine"]["cpu"] for r in modes.values()})
        cpu = f"{none.get('machine', {}).get('cpu', 'not recorded') if none else '–'}; {', '.join(cpus)}"
        lines.append(f"| {' | '.join(key)} | {' | '.join(ppl)} | {cost} | {cpu} |")
    return "\n".join(lines)


def seeds_table(rows: list[dict]) -> str:
    """Cells run at more than one seed: perplexity per seed, mean and spread (max − min)."""
    cells: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        key = (r["solver"], r["allocation"], r["target"], r["reconstruct"], _step(r.get("extra", [])))
        cells.setdefault(key, {})[r.get("seed", 0)] = r
    lines = ["| solver | allocation | target | reconstruct | lr / batch | ppl per seed | mean | max − min | CPU per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, by_seed in cells.items():
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        ppl = [by_seed[s]["ppl"] for s in seeds]
        per = ", ".join(f"{s}: {p:.2f}" for s, p in zip(seeds, ppl))
        cpu = ", ".join(f"{s}: {by_seed[s]['machine']['cpu'].split('(')[0].split(' Processor')[0]}" for s in seeds)
        lines.append(f"| {' | '.join(key)} | {per} | {sum(ppl) / len(ppl):.2f} | {max(ppl) - min(ppl):.2f} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", help="comma-separated solver:allocation:target:reconstruct[:seed]")
    p.add_argument("--table", action="store_true",
                   help="run nothing: print the README tables (seed 0 beside the grid; cells run at several seeds) "
                   "from --out and the model's grid file")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--extra", default="", help="more prunellm prune flags for every cell, e.g. '--reconstruct-epochs 2'")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.table:
        from grid import results_path

        grid, rows = read_rows(results_path(a.model)), read_rows(Path(a.out))
        print(readme_table([r for r in rows if r.get("seed", 0) == 0], grid))
        print()
        print(seeds_table(rows))
        return
    if not a.cells:
        p.error("--cells or --table")
    rows = []
    for cell in a.cells.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            row = run_cell(cell, Path(tmp), a.model, a.extra.split())
        rows.append(row)
        with Path(a.out).open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    print(f"[reconstruct_table] load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
