"""Per-layer reconstruction error of SparseGPT vs the multiple-removal solver on identical statistics.

Runs the engine once with SparseGPT and dense propagation (so every layer's calibration inputs are the
dense model's, independent of either solver), and for every layer also solves `mrp` on the same
statistics. Error = ‖(W − Ŵ)X‖² over the calibration tokens, from the gathered XᵀX. Also records each
solver's solve time on that layer.

    python bench/layer_error.py --targets 0.5,0.7,2:4 --out bench/results/layer_error_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from prunellm import PruneConfig, load_model, prune
from prunellm.solvers import SOLVERS


def reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, xtx: torch.Tensor) -> float:
    d = (dense - pruned).double()
    return float(torch.einsum("ri,ij,rj->", d, xtx.double(), d))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", default="0.5,0.7,2:4")
    p.add_argument("--against", default="mrp", help="solver compared with sparsegpt on the same statistics")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    other = SOLVERS[a.against]
    for target in a.targets.split(","):
        model, tok = load_model(a.model)
        nm = ":" in target
        config = PruneConfig(solver="sparsegpt", sparsity=0.5 if nm else float(target),
                             mask_structure=target if nm else "0:0", num_calibration_samples=a.nsamples,
                             max_seq_length=a.seqlen, propagate="dense")
        rows = []

        def compare(name, dense, stats, result):
            t0 = time.perf_counter()
            alt = other.fn(dense, stats, config.target(), block_size=config.block_size,
                           dampening_frac=config.dampening_frac)
            rows.append({
                "name": name, "target": target,
                "sparsegpt": reconstruction_error(dense, result.weight, stats.xtx),
                a.against: reconstruction_error(dense, alt.weight, stats.xtx),
                f"{a.against}_solve_s": time.perf_counter() - t0,
            })

        report = prune(model, tok, config, on_layer=compare)
        for row, layer in zip(rows, report["layers"]):
            row["sparsegpt_solve_s"] = layer["solve_s"]
        with open(a.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        wins = sum(r[a.against] < r["sparsegpt"] for r in rows)
        ratio = torch.tensor([r[a.against] / r["sparsegpt"] for r in rows])
        t_s = sum(r["sparsegpt_solve_s"] for r in rows)
        t_o = sum(r[f"{a.against}_solve_s"] for r in rows)
        print(f"{target}: {a.against} below sparsegpt on {wins}/{len(rows)} layers, error ratio median "
              f"{ratio.median():.4f} (min {ratio.min():.4f}, max {ratio.max():.4f}); solve time "
              f"sparsegpt {t_s:.1f}s, {a.against} {t_o:.1f}s")


if __name__ == "__main__":
    main()
