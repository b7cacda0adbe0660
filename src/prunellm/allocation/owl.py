"""OWL (Yin et al. 2024, luuyin/OWL `prune_wanda_outlier`): blocks with more outliers stay denser.

Per block, the Wanda scores |W|·‖X_j‖ of all its linears are pooled; the outlier ratio D is the
percentage of scores above M × their mean. D is scaled to [0, 2λ], centred on the target's density
(parameter-weighted, which is the reference's plain mean for equal blocks), and every linear of the
block gets the block's ratio. For N:M, the scaled D (range [0, λ], λ an integer) is rounded into a
per-block N (e.g. 4:8 / 5:8 / 6:8 around 5:8). λ defaults to 0.08 for ratios and to 2 for N:M (the
reference's mixed N:M setting; the λ used is in the result's info, like AlphaPruning's ε): a λ below 0.5
cannot round to any shift, so it is refused for N:M.
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..masks import Target
from ..solvers.base import LayerStats
from ..solvers.wanda import wanda_scores
from .base import AllocationResult, LayerInfo, block_numels, per_block, register, weighted_mean


def outlier_ratio(weights: dict[str, torch.Tensor], stats: dict[str, LayerStats], owl_m: float = 5.0) -> float:
    """100 × fraction of the block's pooled Wanda scores above owl_m × their mean."""
    scores = torch.cat([wanda_scores(w, stats[name]).flatten() for name, w in weights.items()])
    return 100.0 * float((scores > owl_m * scores.mean()).sum()) / scores.numel()  # exact count, any device


def measure(weights, stats, owl_m: float = 5.0, **_) -> dict:
    return {"outlier_ratio": outlier_ratio(weights, stats, owl_m)}


DEFAULT_LAMBDA = 0.08
DEFAULT_LAMBDA_NM = 2.0


def allocate(layers: list[LayerInfo], measures: list[dict], target: Target, owl_lambda: float | None = None,
             **_) -> AllocationResult:
    if owl_lambda is None:
        owl_lambda = DEFAULT_LAMBDA_NM if target.is_nm else DEFAULT_LAMBDA
    if target.is_nm and owl_lambda < 0.5:
        raise UsageError(f"OWL with {target.n}:{target.m} shifts each block's N by round(λ·D̃ − mean), so λ = "
                         f"{owl_lambda:g} cannot change any block; use an integer λ such as 1 or 2 (default 2)")
    info = {"lambda": owl_lambda}
    d = torch.tensor([m["outlier_ratio"] for m in measures], dtype=torch.float64, device="cpu")
    spread = d.max() - d.min()
    norm = (d - d.min()) / spread if spread > 0 else torch.zeros_like(d)
    if target.is_nm:
        shift = torch.round(norm * owl_lambda - (norm * owl_lambda).mean()).long()
        ns = (target.n - shift).clamp(1, target.m - 1)
        targets = {layer.name: Target(n=int(ns[layer.block]), m=target.m) for layer in layers}
        return AllocationResult(targets, d.tolist(), "outlier_ratio", {**info, "n_per_block": ns.tolist()})
    scaled = norm * 2 * owl_lambda
    density = scaled - weighted_mean(scaled, block_numels(layers)) + (1 - target.sparsity)
    sparsity = 1 - density
    sparsity = torch.where(sparsity <= 0, torch.full_like(sparsity, 0.01), sparsity)
    return AllocationResult(per_block(layers, sparsity.tolist(), target), d.tolist(), "outlier_ratio", info)


register("owl", allocate, measure, needs={"norms"})
