"""SparseGPT (Frantar & Alistarh 2023): OBS updates with a shared inverse Hessian, lazy column blocks.

Follows IST-DASLab/sparsegpt `fasterprune`: 1% mean-diagonal dampening, Cholesky inverse, upper
factor U of H⁻¹ (U_cc² is the OBS denominator after earlier columns are gone), 128-column blocks
whose mask is chosen at the block start (unstructured) or every M columns from current weights (N:M).
The one deliberate difference: exactly `int(numel·s)` weights per block (stable tie-break) instead of
the reference's `<= threshold`, which overshoots when scores tie.
"""

from __future__ import annotations

import torch

from ..devices import wide_float
from ..masks import Target, lowest_k
from .base import LayerStats, PruneResult, register


def inverse_hessian_factor(hessian: torch.Tensor, dampening_frac: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = frac·mean(diag H); retries with 10× λ if H is singular.

    Returns the factor and the dampening fraction that worked.
    """
    mean_diag = torch.diag(hessian).mean()
    frac = dampening_frac
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(hessian + frac * mean_diag * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                return upper, frac
        frac *= 10
    raise torch.linalg.LinAlgError("Hessian is not positive definite even with heavy dampening")


def prepare_hessian(weight: torch.Tensor, stats: LayerStats) -> tuple[torch.Tensor, torch.Tensor]:
    """H with dead inputs (H_jj = 0) set to 1 and their weights zeroed, as the reference does."""
    weight = weight.clone()
    hessian = stats.hessian().clone()
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    return weight, hessian


@register("sparsegpt", needs={"hessian"})
def sparsegpt(
    weight: torch.Tensor,
    stats: LayerStats,
    target: Target,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    **_,
) -> PruneResult:
    W, H = prepare_hessian(weight.float(), stats)
    Hinv, used_damp = inverse_hessian_factor(H, dampening_frac)
    rows, cols = W.shape
    mask = torch.zeros_like(W, dtype=torch.bool)
    losses = torch.zeros(rows, dtype=wide_float(W.device), device=W.device)
    n, m = target.n, target.m

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if target.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            scores = W1**2 / d.unsqueeze(0) ** 2
            mask1 = lowest_k(scores.flatten(), int(scores.numel() * target.sparsity)).view_as(W1)
        for i in range(i2 - i1):
            if target.is_nm and i % m == 0:
                group = W1[:, i : i + m] ** 2 / d[i : i + m].unsqueeze(0) ** 2
                mask1[:, i : i + m] = lowest_k(group, n)
            err = W1[:, i].masked_fill(~mask1[:, i], 0) / d[i]  # (w − q) / d: only pruned weights move
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        # column i is never touched after its own step, so its kept entries are the reference's q
        W[:, i1:i2] = W1.masked_fill_(mask1, 0)
        losses += (Err1.to(losses.dtype) ** 2).sum(1) / 2
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    info = {"loss": float(losses.sum())}
    if used_damp != dampening_frac:
        info["dampening_frac"] = used_damp
    return PruneResult(W, mask, info)
