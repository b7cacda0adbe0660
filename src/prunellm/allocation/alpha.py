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
from .base import AllocationResult, LayerInfo, register

DEFAULT_EPSILON = 0.3  # the paper's spread


def esd_alpha(weight: torch.Tensor, bins: int = 100) -> float:
    """The reference's alpha_peak metric of one weight matrix (same quirks, e.g. its x_min window)."""
    eigs = torch.sort(torch.linalg.svdvals(weight.float()).square()).values
    n_all = len(eigs)
    log_eigs = torch.log(eigs)
    hist = torch.log10(eigs)
    lo, hi = hist.min(), hist.max()
    counts = torch.histc(hist, bins, min=float(lo), max=float(hi))
    edges = torch.linspace(float(lo), float(hi), bins + 1, device=eigs.device)
    xmin_peak = 10 ** edges[torch.argmax(counts)]
    xmin_min, xmin_max = torch.log10(0.95 * xmin_peak), 1.5 * xmin_peak  # as in the reference
    alphas, ds = torch.zeros(n_all - 1, device=eigs.device), torch.ones(n_all - 1, device=eigs.device)
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < xmin_min:
            continue
        if xmin > xmin_max:
            break
        n = float(n_all - i)
        a = 1 + n / (log_eigs[i:].sum() - n * log_eigs[i])
        alphas[i] = a
        if a > 1:
            seq = torch.arange(n, device=eigs.device)
            ds[i] = torch.max(torch.abs(1 - (eigs[i:] / xmin) ** (-a + 1) - seq / n))
    return float(alphas[torch.argmin(ds)])


def measure(weights, stats=None, **_) -> dict:
    return {"alpha": {name: esd_alpha(w) for name, w in weights.items()}}


def _ratios(norm: torch.Tensor, numel: torch.Tensor, sparsity: float, epsilon: float) -> torch.Tensor:
    """The reference's map: α-rank to [1−ε, 1+ε], then scaled so the parameter-weighted mean is the target."""
    ratios = norm * 2 * epsilon + (1 - epsilon)
    return ratios * sparsity * numel.sum() / (numel * ratios).sum()


def _largest_epsilon(norm: torch.Tensor, numel: torch.Tensor, sparsity: float, start: float) -> float | None:
    """The largest ε ≤ start (in 0.01 steps) that keeps every layer below 99% sparsity."""
    for e in range(round(start * 100), 0, -1):
        if _ratios(norm, numel, sparsity, e / 100).max() < 0.99:
            return e / 100
    return None


def allocate(layers: list[LayerInfo], measures: list[dict], target: Target, alpha_epsilon: float | None = None,
             **_) -> AllocationResult:
    """`alpha_epsilon=None`: the paper's 0.3, narrowed where it would push a layer to 99% (high targets)."""
    if target.is_nm:
        raise UsageError("AlphaPruning allocates unstructured ratios; use --sparsity with --allocation alpha")
    block_alpha = [sum(m["alpha"].values()) / len(m["alpha"]) for m in measures]
    scores = torch.tensor([block_alpha[layer.block] for layer in layers], dtype=torch.float64, device="cpu")
    numel = torch.tensor([layer.numel for layer in layers], dtype=torch.float64, device="cpu")
    spread = scores.max() - scores.min()
    norm = (scores - scores.min()) / spread if spread > 0 else torch.zeros_like(scores)
    epsilon = alpha_epsilon
    if epsilon is None:
        epsilon = _largest_epsilon(norm, numel, target.sparsity, DEFAULT_EPSILON) or 0.0
    ratios = _ratios(norm, numel, target.sparsity, epsilon)
    if ratios.max() >= 1:
        feasible = _largest_epsilon(norm, numel, target.sparsity, epsilon)
        hint = f"; --alpha-epsilon {feasible:g} or less keeps every layer below 99%" if feasible else ""
        raise UsageError(f"alpha_epsilon {epsilon} gives a layer sparsity of {float(ratios.max()):.3f} "
                         f"at target {target.sparsity}{hint}")
    targets = {layer.name: Target(sparsity=float(r)) for layer, r in zip(layers, ratios)}
    info = {"epsilon": epsilon}
    if alpha_epsilon is None and epsilon < DEFAULT_EPSILON:
        info["epsilon_narrowed_from"] = DEFAULT_EPSILON
    return AllocationResult(targets, block_alpha, "alpha", info)


register("alpha", allocate, measure)
