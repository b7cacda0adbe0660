"""Optimal multiple removal (Zhao et al., EMNLP 2024 Findings): prune a row's chosen weights together.

For one row w, inverse Hessian H⁻¹ and pruned set P, the exact optimum of ½ δ H δᵀ with (w + δ)_P = 0 is
    δ = −w_P (H⁻¹[P,P])⁻¹ H⁻¹[P,:],   loss = ½ w_P (H⁻¹[P,P])⁻¹ w_Pᵀ.
Blockwise form (as `vectozavr/thanos`): per column block B the inverse Hessian of the columns not yet
fixed is Uᵀ[i1:,i1:]U[i1:,i1:] with U the upper Cholesky factor of H⁻¹, so H⁻¹_rem[B, i1:] = U_Bᵀ U[B, i1:].
Every row's |P|×|P| system is solved in one batched Cholesky call (rows padded with identity),
the update is applied to the block and all later columns at once. `block_size ≥ columns` is the
whole-row exact solver. Masks: "score" = w²/[H⁻¹]_jj (Solution S); "loss" = for N:M, the group
pattern of least multiple-removal loss among all C(M, N) (Solution M).
"""

from __future__ import annotations

import itertools

import torch

from ..devices import wide_float
from ..errors import UsageError
from ..masks import Target, lowest_k
from ..quant import QuantScheme, dequantize
from .base import LayerStats, PruneResult, register
from .sparsegpt import column_pass, inverse_hessian_factor, prepare_hessian, quantizer_for, shared_factor

ROW_CHUNK = 512  # rows solved per batched call, bounds the (rows × q × q) workspace


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Solve a batch of SPD systems a x = b; systems that fail Cholesky get 10× growing jitter.

    Returns the solutions and how many systems needed the jitter.
    """
    chol, info = torch.linalg.cholesky_ex(a)
    bad = info != 0
    if bad.any():
        scale = torch.diagonal(a[bad], dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-12)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        for k in range(1, 12):
            fixed, finfo = torch.linalg.cholesky_ex(a[bad] + (10.0**k * 1e-12) * scale[:, None, None] * eye)
            if (finfo == 0).all():
                chol[bad] = fixed
                break
        else:
            raise torch.linalg.LinAlgError("multiple-removal system is not positive definite")
    return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1), int(bad.sum())


def solve_rows(w: torch.Tensor, a: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """λ with λ_P = (A[P,P])⁻¹ w_P per row (zero off P), and each row's loss ½ w_P·λ_P.

    `w` (rows × B) current weights of the block, `a` (B × B) the block's inverse Hessian, `mask` the
    pruned positions. Rows are solved in chunks of similar |P|; shorter rows are padded with identity
    (indices into an identity block appended to `a`), so each chunk is one batched Cholesky call.
    """
    rows, width = w.shape
    lam = torch.zeros_like(w)
    counts = mask.sum(1)
    fallbacks = 0
    a_ext = torch.block_diag(a, torch.eye(width, dtype=a.dtype, device=a.device))
    w_ext = torch.cat([w, torch.zeros_like(w)], dim=1)
    slot = torch.arange(width, device=w.device)
    # pruned positions first (stable: in column order), then pad indices width + slot
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    by_count = torch.argsort(counts, stable=True)
    for c0 in range(0, rows, ROW_CHUNK):
        chunk = by_count[c0 : c0 + ROW_CHUNK]
        q = int(counts[chunk].max())
        if q == 0:
            continue
        valid = slot[:q] < counts[chunk, None]
        idx = torch.where(valid, order[chunk, :q], width + slot[:q])
        sub = a_ext[idx[:, :, None], idx[:, None, :]]
        x, bad = _spd_solve(sub, torch.gather(w_ext[chunk], 1, idx))
        fallbacks += bad
        lam[chunk] = torch.zeros(len(chunk), 2 * width, dtype=w.dtype, device=w.device).scatter_(1, idx, x)[:, :width]
    return lam, 0.5 * (lam * w).sum(1), fallbacks


def group_patterns(n: int, m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """All C(m, n) ways to prune n of m positions, as a boolean (patterns × m) table."""
    combos = list(itertools.combinations(range(m), n))
    table = torch.zeros(len(combos), m, dtype=torch.bool, device=device)
    for i, combo in enumerate(combos):
        table[i, list(combo)] = True
    return table


def best_group_patterns(w: torch.Tensor, a: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Solution M for N:M: in each group of m columns, the pattern with the least multiple-removal loss.

    The loss of pattern P in a group is ½ w_P (A[P,P])⁻¹ w_Pᵀ with A the group's inverse Hessian block.
    """
    rows, width = w.shape
    patterns = group_patterns(n, m, w.device)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for g in range(0, width, m):
        wg, ag = w[:, g : g + m], a[g : g + m, g : g + m]
        idx = torch.stack([torch.nonzero(p).squeeze(1) for p in patterns])  # (patterns × n)
        sub = ag[idx[:, :, None], idx[:, None, :]]  # (patterns × n × n)
        inv = torch.linalg.inv(sub)
        wp = wg[:, idx]  # (rows × patterns × n)
        loss = torch.einsum("rpi,pij,rpj->rp", wp, inv, wp)
        mask[:, g : g + m] = patterns[loss.argmin(1)]  # argmin: first of equal losses, deterministic
    return mask


def choose_mask(w: torch.Tensor, a: torch.Tensor, target: Target, selection: str) -> torch.Tensor:
    """The block's mask: Solution S (score w²/[H⁻¹]_jj, per block or per N:M group) or Solution M (N:M)."""
    if selection == "loss":
        if not target.is_nm:
            raise UsageError("mrp mask selection 'loss' (Solution M) is defined for N:M patterns only")
        return best_group_patterns(w, a, target.n, target.m)
    scores = w**2 / torch.diagonal(a).unsqueeze(0)
    if target.is_nm:
        rows, width = w.shape
        return lowest_k(scores.reshape(rows, width // target.m, target.m), target.n).view(rows, width)
    return lowest_k(scores.flatten(), int(scores.numel() * target.sparsity)).view_as(w)


def mrp_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    target: Target,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    selection: str = "score",
    fixed_mask: torch.Tensor | None = None,
    quant: QuantScheme | None = None,
    factor: tuple[torch.Tensor, float] | None = None,
) -> PruneResult:
    """Blockwise exact multiple removal; `fixed_mask` (True = prune) skips mask selection (tests, ablations);
    `factor`: `inverse_hessian_factor` of the wide H when already computed (shared by q/k/v, gate/up).

    With `quant`, after each block's update its kept weights are quantized column by column with the
    error propagated through the same factor (GPTQ with the block's mask fixed)."""
    wide = wide_float(weight.device)  # float64 where the device has it
    W = weight.to(wide, copy=True)
    U, used_damp = factor if factor is not None else inverse_hessian_factor(hessian.to(wide), dampening_frac)
    rows, cols = W.shape
    if target.is_nm:
        block_size = max(target.m, block_size - block_size % target.m)
    mask = torch.zeros_like(W, dtype=torch.bool)
    losses = torch.zeros(rows, dtype=wide, device=W.device)
    quantizer = quantizer_for(W, quant, block_size)
    fallbacks = 0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        Ub = U[i1:i2, i1:i2]
        a = Ub.T @ Ub  # H⁻¹ of the not-yet-fixed columns, restricted to this block
        w = W[:, i1:i2]
        block_mask = fixed_mask[:, i1:i2] if fixed_mask is not None else choose_mask(w, a, target, selection)
        lam, loss, bad = solve_rows(w.float(), a.float(), block_mask)  # float32 systems, float64 factor
        lam, loss = lam.to(wide), loss.to(wide)
        W[:, i1:] -= lam @ (Ub.T @ U[i1:i2, i1:])
        W[:, i1:i2].masked_fill_(block_mask, 0)
        mask[:, i1:i2] = block_mask
        losses += loss
        fallbacks += bad
        if quantizer is not None:
            column_pass(W, U, i1, i2, mask, None, quantizer)
    info = {"loss": float(losses.sum())}
    if used_damp != dampening_frac:
        info["dampening_frac"] = used_damp
    if fallbacks:
        info["jittered_systems"] = fallbacks
    if quantizer is None:
        return PruneResult(W.float(), mask, info)
    scales = quantizer.scales.float()  # the grid in float32, so stored codes · scales give these weights exactly
    return PruneResult(dequantize(quantizer.codes(W), scales, quant), mask, info, scales=scales)


@register("mrp", needs={"hessian"})
def mrp(
    weight: torch.Tensor,
    stats: LayerStats,
    target: Target,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    mask_selection: str = "score",
    quant: QuantScheme | None = None,
    **_,
) -> PruneResult:
    W, H = prepare_hessian(weight.float(), stats)
    factor = shared_factor(stats, H.to(wide_float(W.device)), dampening_frac)
    return mrp_prune(W, H, target, block_size, dampening_frac, mask_selection, quant=quant, factor=factor)
