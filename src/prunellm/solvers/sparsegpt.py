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
from ..errors import UsageError
from ..masks import Target, lowest_k
from ..quant import GroupQuantizer, QuantScheme
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


def shared_factor(stats: LayerStats, hessian: torch.Tensor, dampening_frac: float) -> tuple[torch.Tensor, float]:
    """`inverse_hessian_factor` of the H these statistics give, computed once for all layers sharing them."""
    return stats.cached(("inverse_factor", dampening_frac, hessian.dtype),
                        lambda: inverse_hessian_factor(hessian, dampening_frac))


def prepare_hessian(weight: torch.Tensor, stats: LayerStats) -> tuple[torch.Tensor, torch.Tensor]:
    """H with dead inputs (H_jj = 0) set to 1 and their weights zeroed, as the reference does."""
    weight = weight.clone()
    hessian = stats.hessian().clone()
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    return weight, hessian


def column_pass(W: torch.Tensor, Hinv: torch.Tensor, i1: int, i2: int, mask: torch.Tensor,
                nm: tuple[int, int] | None = None, quantizer: GroupQuantizer | None = None) -> torch.Tensor:
    """Fix columns i1..i2 of W one at a time, OBS / GPTQ style, in place; returns the errors (rows × block).

    Each column's pruned entries (`mask`, True = pruned; for N:M chosen every M columns from the current
    weights into `mask`) go to 0 and its kept ones to the quantizer's grid (or stay); the change, divided
    by the diagonal of `Hinv` (the upper Cholesky factor of H⁻¹), moves to the later columns of the block
    at once and to the columns after it in one lazy update. A quantization group starting in the block
    gets its scale from the group's current weights and mask (the groups never straddle blocks)."""
    W1 = W[:, i1:i2].clone()
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    Hinv1 = Hinv[i1:i2, i1:i2]
    d = torch.diag(Hinv1)
    mask1 = mask[:, i1:i2]
    per_group = quantizer is not None and quantizer.width < W.shape[1]
    for i in range(i2 - i1):
        if nm is not None and i % nm[1] == 0:
            group = W1[:, i : i + nm[1]] ** 2 / d[i : i + nm[1]].unsqueeze(0) ** 2
            mask1[:, i : i + nm[1]] = lowest_k(group, nm[0])
        if per_group and (i1 + i) % quantizer.width == 0:
            cols = slice(i, i + quantizer.width)
            quantizer.start_group((i1 + i) // quantizer.width, W1[:, cols], ~mask1[:, cols])
        w = W1[:, i]
        q = w.masked_fill(mask1[:, i], 0)
        if quantizer is not None:
            q = quantizer.column(i1 + i, q)
        Q1[:, i] = q
        err = (w - q) / d[i]  # only pruned (and rounded) weights move
        W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
        Err1[:, i] = err
    W[:, i1:i2] = Q1  # column i is never touched after its own step: its kept entries are the reference's q
    W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Err1


def quantizer_for(weight: torch.Tensor, quant: QuantScheme | None, block_size: int) -> GroupQuantizer | None:
    """The column quantizer of a solve (None without quantization); per-output-channel scales are fixed
    from the whole initial row, as GPTQ does, group scales as the column loop reaches each group."""
    if quant is None:
        return None
    rows, cols = weight.shape
    quantizer = GroupQuantizer(quant, rows, cols, weight.device, weight.dtype)
    if quantizer.width >= cols:
        quantizer.start_group(0, weight, None)
    elif block_size % quantizer.width:
        raise UsageError(f"block_size {block_size} must be a multiple of the quantization group size {quantizer.width}")
    return quantizer


def quantize_with_mask(weight: torch.Tensor, stats: LayerStats, mask: torch.Tensor, quant: QuantScheme,
                       block_size: int = 128, dampening_frac: float = 0.01) -> PruneResult:
    """GPTQ on a weight whose mask is fixed (solvers without a Hessian of their own): pruned entries stay 0,
    kept ones are rounded column by column with the error compensated through H⁻¹ (`column_pass`)."""
    W, H = prepare_hessian(weight.float().masked_fill(mask, 0), stats)
    Hinv, used_damp = shared_factor(stats, H, dampening_frac)
    quantizer = quantizer_for(W, quant, block_size)
    losses = torch.zeros(W.shape[0], dtype=wide_float(W.device), device=W.device)
    for i1 in range(0, W.shape[1], block_size):
        Err1 = column_pass(W, Hinv, i1, min(i1 + block_size, W.shape[1]), mask, None, quantizer)
        losses += (Err1.to(losses.dtype) ** 2).sum(1) / 2
    info = {"quant_loss": float(losses.sum())}
    if used_damp != dampening_frac:
        info["dampening_frac"] = used_damp
    return PruneResult(W, mask, info, scales=quantizer.scales)


def masked_result(weight: torch.Tensor, mask: torch.Tensor, stats: LayerStats, quant: QuantScheme | None,
                  block_size: int = 128, dampening_frac: float = 0.01) -> PruneResult:
    """The result of a mask-only solver: the weight with the mask applied, or with `quant` that weight
    quantized by GPTQ with the mask fixed."""
    if quant is None:
        return PruneResult(weight.masked_fill(mask, 0), mask)
    return quantize_with_mask(weight, stats, mask, quant, block_size, dampening_frac)


@register("sparsegpt", needs={"hessian"})
def sparsegpt(
    weight: torch.Tensor,
    stats: LayerStats,
    target: Target,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    quant: QuantScheme | None = None,
    **_,
) -> PruneResult:
    W, H = prepare_hessian(weight.float(), stats)
    Hinv, used_damp = shared_factor(stats, H, dampening_frac)
    rows, cols = W.shape
    mask = torch.zeros_like(W, dtype=torch.bool)
    losses = torch.zeros(rows, dtype=wide_float(W.device), device=W.device)
    quantizer = quantizer_for(W, quant, block_size)
    nm = (target.n, target.m) if target.is_nm else None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        if nm is None:
            d = torch.diag(Hinv[i1:i2, i1:i2])
            scores = W[:, i1:i2] ** 2 / d.unsqueeze(0) ** 2
            mask[:, i1:i2] = lowest_k(scores.flatten(), int(scores.numel() * target.sparsity)).view_as(scores)
        Err1 = column_pass(W, Hinv, i1, i2, mask, nm, quantizer)
        losses += (Err1.to(losses.dtype) ** 2).sum(1) / 2

    info = {"loss": float(losses.sum())}
    if used_damp != dampening_frac:
        info["dampening_frac"] = used_damp
    return PruneResult(W, mask, info, scales=None if quantizer is None else quantizer.scales)
