"""Prune SmolLM2-135M with the multiple-removal solver, and compare it with SparseGPT layer by layer.

For each target: one `mrp` run of the engine (reference protocol: pruned propagation). At every layer
the `on_layer` hook also solves SparseGPT on the *same* statistics, so the two reconstruction errors
‖(W − Ŵ)X‖² (from the gathered XᵀX) are compared on identical inputs; the hook's time is excluded from
`prune_s`. Then WikiText-2 perplexity as in bench/solver_table.py.

    python bench/mrp_table.py --out bench/results/mrp_smollm2.jsonl --layers bench/results/mrp_layers_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prunellm import PruneConfig, evaluate_perplexity, load_model, prune
from prunellm.solvers import SOLVERS


def reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, xtx: torch.Tensor) -> float:
    d = (dense - pruned).double()
    return float(torch.einsum("ri,ij,rj->", d, xtx.double(), d))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", default="0.5,0.7,2:4")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--out", required=True, help="JSON lines: one summary per target")
    p.add_argument("--layers", required=True, help="JSON lines: one row per layer and target")
    a = p.parse_args()
    sparsegpt = SOLVERS["sparsegpt"].fn
    for target in a.targets.split(","):
        model, tok = load_model(a.model)
        nm = ":" in target
        config = PruneConfig(solver="mrp", sparsity=0.5 if nm else float(target), mask_structure=target if nm else "0:0",
                             num_calibration_samples=a.nsamples, max_seq_length=a.seqlen)
        rows = []

        def compare(name, dense, stats, result):
            t0 = time.perf_counter()
            ref = sparsegpt(dense, stats, config.target(), block_size=config.block_size,
                            dampening_frac=config.dampening_frac)
            rows.append({"name": name, "target": target, "sparsegpt_solve_s": time.perf_counter() - t0,
                         "sparsegpt": reconstruction_error(dense, ref.weight, stats.xtx),
                         "mrp": reconstruction_error(dense, result.weight, stats.xtx)})

        report = prune(model, tok, config, on_layer=compare)
        for row, layer in zip(rows, report["layers"]):
            row["mrp_solve_s"] = layer["solve_s"]
        ppl = evaluate_perplexity(model, tok, ["wikitext2"], a.eval_seqlen, a.eval_windows)["perplexity"]["wikitext2"]
        wins = sum(r["mrp"] < r["sparsegpt"] for r in rows)
        ratios = torch.tensor([r["mrp"] / r["sparsegpt"] for r in rows])
        summary = {
            "model": a.model, "solver": "mrp", "target": target, "ppl": ppl, "sparsity": report["sparsity"],
            **report["timings"], "peak_rss_mb": report["peak_rss_mb"],
            "layers_below_sparsegpt": wins, "layers": len(rows),
            "error_ratio_median": float(ratios.median()), "error_ratio_max": float(ratios.max()),
            "solve_s_mrp": sum(r["mrp_solve_s"] for r in rows),
            "solve_s_sparsegpt_same_stats": sum(r["sparsegpt_solve_s"] for r in rows),
        }
        with open(a.layers, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(a.out, "a") as f:
            f.write(json.dumps(summary) + "\n")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
