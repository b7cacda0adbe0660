"""Magnitude's mask against Wanda's, layer by layer: is one layer's input scaling enough to explain a collapse?

Magnitude keeps the largest |W_ij|; what a weight contributes is |W_ij| · ‖X_j‖ (Wanda's score), so magnitude
is only safe when the input norms ‖X_j‖ of a layer are about equal. For every prunable layer this measures,
on a few calibration windows of the dense model, the spread of ‖X_j‖ (99th percentile over the median) and
the Wanda-score mass that magnitude's per-row 50% mask removes, over the least removable (Wanda's own mask),
and the relative output error ‖ΔW X‖ / ‖W X‖ of either mask (no weight update), per layer.

    python bench/studies/input_spread.py --model smollm2-135m --out bench/results/input_spread.jsonl
    python bench/studies/input_spread.py --model gemma3-270m --out bench/results/input_spread.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from prunellm.data import calibration_batch
from prunellm.engine.blocks import find_blocks, get_weight, prunable_layers
from prunellm.engine.stats import StatsCollector
from prunellm.models import load_model


def input_grams(model: torch.nn.Module, ids: torch.Tensor) -> tuple[dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    """Every prunable layer ("block.name") and its input's XᵀX over all calibration tokens, one dense forward."""
    stack = find_blocks(model)
    layers = {f"{i}.{name}": module for i, block in enumerate(stack.blocks)
              for name, module in prunable_layers(block, f"{stack.path}.{i}").items()}
    collector = StatsCollector(layers, {"hessian"})
    with torch.no_grad():
        for row in ids:
            model(row[None])
            collector.end_batch()
    collector.remove()
    return layers, {name: collector.get(name).xtx for name in layers}


def compare_masks(weight: torch.Tensor, gram: torch.Tensor, sparsity: float = 0.5) -> dict[str, float]:
    """Magnitude's per-row mask against Wanda's: removed Wanda-score mass (ratio) and each one's output error."""
    score = weight.abs() * gram.diagonal().sqrt()
    k = int(weight.shape[1] * sparsity)
    drop = {"magnitude": weight.abs().argsort(1)[:, :k], "wanda": score.argsort(1)[:, :k]}
    dense = torch.einsum("ij,jk,ik->", weight, gram, weight)
    out = {"excess": (torch.gather(score, 1, drop["magnitude"]).sum() / torch.gather(score, 1, drop["wanda"]).sum()).item()}
    for name, idx in drop.items():
        removed = torch.zeros_like(weight).scatter(1, idx, torch.gather(weight, 1, idx))
        out[f"err_{name}"] = (torch.einsum("ij,jk,ik->", removed, gram, removed) / dense).sqrt().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--out", help="append one JSON line here")
    a = p.parse_args()
    model, tokenizer = load_model(a.model)
    model.eval()
    ids = calibration_batch(tokenizer, "wikitext2", a.nsamples, a.seqlen, seed=0)
    modules, grams = input_grams(model, ids)
    layers = {}
    for name, module in modules.items():
        gram = grams[name].double()
        n = gram.diagonal().sqrt()
        masks = compare_masks(get_weight(module).double(), gram)
        layers[name] = {"spread": round((n.quantile(0.99) / n.median()).item(), 3),
                        **{k: round(v, 4) for k, v in masks.items()}}
    spreads = [v["spread"] for v in layers.values()]
    excesses = [v["excess"] for v in layers.values()]
    kinds = sorted({k.split(".", 1)[1] for k in layers})
    by_kind = {kind: {m: round(statistics.median(v[f"err_{m}"] for k, v in layers.items() if k.endswith("." + kind)), 4)
                      for m in ("magnitude", "wanda")} for kind in kinds}
    row = {"model": a.model, "calibration": f"wikitext2 {a.nsamples}x{a.seqlen} seed 0",
           "spread_median": statistics.median(spreads), "spread_max": max(spreads),
           "excess_median": statistics.median(excesses), "excess_max": max(excesses),
           "output_error_median_by_layer": by_kind, "layers": layers}
    print(f"{a.model}: p99/median of ‖X_j‖ median {row['spread_median']:.2f} (max {row['spread_max']:.1f}); "
          f"magnitude 50% removes {row['excess_median']:.2f}× (max {row['excess_max']:.2f}×) the Wanda-score "
          "mass that Wanda's mask removes")
    for kind, errs in by_kind.items():
        print(f"  {kind}: median relative output error, magnitude {errs['magnitude']:.3f}, Wanda {errs['wanda']:.3f}")
    if a.out:
        with Path(a.out).open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
