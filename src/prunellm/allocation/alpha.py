"""AlphaPruning (Lu et al. 2024, haiquanlu/AlphaPruning): data-free, from heavy-tailed weight spectra.

α of each matrix is the power-law exponent of the eigenvalues of WᵀW (Hill estimator, x_min chosen
near the histogram peak by the smallest KS distance: `net_esd_estimator(fix_fingers="xmin_peak")`),
averaged per block; blocks with higher α (less heavy-tailed) are pruned more: ratios are mapped
linearly to [1−ε, 1+ε] and rescaled so the parameter-weighted mean equals the target.
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..masks import Target
from . import AllocationResult, LayerInfo, register


def esd_alpha(weight: torch.Tensor, bins: int = 100) -> float:
    """The reference's alpha_peak metric of one weight matrix (same quirks, e.g. its x_min window)."""
    eigs = torch.sort(torch.linalg.svdvals(weight.float()).square()).values
    n_all = len(eigs)
    log_eigs = torch.log(eigs)
    hist = torch.log10(eigs)
    lo, hi = hist.min(), hist.max()
    counts = torch.histc(hist, bins, min=float(lo), max=float(hi))
    edges = torch.linspace(float(lo), float(hi), bins + 1)
    xmin_peak = 10 ** edges[torch.argmax(counts)]
    xmin_min, xmin_max = torch.log10(0.95 * xmin_peak), 1.5 * xmin_peak  # as in the reference
    alphas, ds = torch.zeros(n_all - 1), torch.ones(n_all - 1)
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < xmin_min:
            continue
        if xmin > xmin_max:
            break
        n = float(n_all - i)
        a = 1 + n / (log_eigs[i:].sum() - n * log_eigs[i])
        alphas[i] = a
        if a > 1:
            seq = torch.arange(n)
            ds[i] = torch.max(torch.abs(1 - (eigs[i:] / xmin) ** (-a + 1) - seq / n))
    return float(alphas[torch.argmin(ds)])


def measure(weights, stats=None, **_) -> dict:
    return {"alpha": {name: esd_alpha(w) for name, w in weights.items()}}


def _ratios(norm: torch.Tensor, numel: torch.Tensor, sparsity: float, epsilon: float) -> torch.Tensor:
    """The reference's map: α-rank to [1−ε, 1+ε], then scaled so the parameter-weighted mean is the target."""
    ratios = norm * 2 * epsilon + (1 - epsilon)
    return ratios * sparsity * numel.sum() / (numel * ratios).sum()


def allocate(layers: list[LayerInfo], measures: list[dict], target: Target, alpha_epsilon: float = 0.3,
             **_) -> AllocationResult:
    if target.is_nm:
        raise UsageError("AlphaPruning allocates unstructured ratios; use --sparsity with --allocation alpha")
    block_alpha = [sum(m["alpha"].values()) / len(m["alpha"]) for m in measures]
    scores = torch.tensor([block_alpha[layer.block] for layer in layers], dtype=torch.float64)
    numel = torch.tensor([layer.numel for layer in layers], dtype=torch.float64)
    spread = scores.max() - scores.min()
    norm = (scores - scores.min()) / spread if spread > 0 else torch.zeros_like(scores)
    ratios = _ratios(norm, numel, target.sparsity, alpha_epsilon)
    if ratios.max() >= 1:
        feasible = [e / 100 for e in range(int(alpha_epsilon * 100), 0, -1)
                    if _ratios(norm, numel, target.sparsity, e / 100).max() < 0.99]
        hint = f"; --alpha-epsilon {feasible[0]:g} or less keeps every layer below 99%" if feasible else ""
        raise UsageError(f"alpha_epsilon {alpha_epsilon} gives a layer sparsity of {float(ratios.max()):.3f} "
                         f"at target {target.sparsity}{hint}")
    targets = {layer.name: Target(sparsity=float(r)) for layer, r in zip(layers, ratios)}
    return AllocationResult(targets, block_alpha, "alpha")


register("alpha", allocate, measure)
