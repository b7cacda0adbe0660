"""The methods beyond SparseGPT (issue 28) on SmolLM2-135M or Gemma-3-270M, quick setting: perplexity and cost.

A cell is `method:allocation:target[:seed]`, where method is a solver with `+flag=value` options, e.g.
`admm:alpha:0.7`, `wanda+update=admm:uniform:0.5`, `ria+repair=dsnot:uniform:2:4:1` or
`sparsegpt+permute=on:uniform:2:4` (`+permute` alone for a bare flag). Each runs `prunellm prune` with the
quick setting (32 × 1024 WikiText-2 validation tokens, perplexity at 1024 on the first 64 test windows),
no reconstruction, and appends one JSON line (CPU, load average, prune_s over calib_forward_s).
`--table` prints the README table: every cell beside the grid's SparseGPT and mrp rows at its target.

    python bench/beyond_table.py --cells admm:uniform:0.5,wanda+update=admm:uniform:0.5 \
        --out bench/results/beyond_smollm2.jsonl
    python bench/beyond_table.py --table --out bench/results/beyond_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from grid import cell_fields, method_flags, read_rows, results_path
from reconstruct_table import run_cell


def run(cell: str, model: str) -> dict:
    method, allocation, target, *rest = cell_fields(cell)
    seed = int(rest[0]) if rest else 0
    solver, flags = method_flags(method)
    with tempfile.TemporaryDirectory() as tmp:
        row = run_cell(f"{solver}:{allocation}:{target}:none:{seed}", Path(tmp), model, flags)
    return {**row, "method": method}


def _short_cpu(name: str) -> str:
    """"Intel(R) Xeon(R) Processor @ 2.1GHz" → "Intel Xeon"."""
    return re.sub(r"\((R|TM)\)", "", name).split(" Processor")[0].split("@")[0].strip()


def readme_table(rows: list[dict], grid: list[dict]) -> str:
    """Per target: the grid's SparseGPT and mrp (seed 0, quick) at the same allocation, then each method run."""
    base = {(r["solver"], r["allocation"], r["target"]): r for r in grid
            if r.get("setting") == "quick" and r.get("seed", 0) == 0}
    lines = ["| target | allocation | method | WikiText-2 ppl | vs SparseGPT | prune_s / calib_forward_s | CPU | commit |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["target"], r["allocation"]) for r in rows}, key=lambda k: (":" in k[0], k[0], k[1]))
    for target, allocation in keys:
        ref = base.get(("sparsegpt", allocation, target))
        here = [("sparsegpt (grid)", ref), ("mrp (grid)", base.get(("mrp", allocation, target)))]
        here += [(r["method"], r) for r in rows if (r["target"], r["allocation"]) == (target, allocation)]
        for name, r in here:
            if r is None:
                continue
            gain = f"{100 * (r['ppl'] / ref['ppl'] - 1):+.1f}%" if ref else "—"
            ratio = r.get("prune_over_forward") or (r["timings"]["prune_s"] / r["timings"]["calib_forward_s"]
                                                    if r.get("timings", {}).get("calib_forward_s") else None)
            cpu = _short_cpu(r.get("machine", {}).get("cpu", "not recorded"))
            commit = r.get("versions", {}).get("prunellm_commit", "—")
            lines.append(f"| {target} | {allocation} | {name} | {r['ppl']:.2f} | {gain} "
                         f"| {f'{ratio:.2f}' if ratio else '—'} | {cpu} | {commit} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", help="comma-separated method:allocation:target[:seed]")
    p.add_argument("--table", action="store_true", help="run nothing: print the README table from --out")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    if a.table:
        print(readme_table([r for r in read_rows(out) if r.get("seed", 0) == 0], read_rows(results_path(a.model))))
        return
    if not a.cells:
        p.error("--cells or --table")
    for cell in a.cells.split(","):
        row = run(cell, a.model)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[beyond_table] {cell}: ppl {row['ppl']:.2f}, prune_s / calib_forward_s "
              f"{row['prune_over_forward']}", flush=True)


if __name__ == "__main__":
    main()
