"""Training-free mask repair after any solver, in the manner of DSnoT ("Dynamic Sparse No Training", ICLR 2024).

Each row swaps one pruned weight back in and one kept weight out per cycle, as long as the swap lowers the
row's reconstruction error. DSnoT judges swaps by the expected error Σ_j Δ_j·E[x_j] and variance terms; here
the layer's exact quadratic error e(Δ) = Δ H Δᵀ (Δ = dense − pruned row, H the solver's Hessian) decides, so
a swap is taken only when it really helps: the grow candidate is the pruned weight whose return lowers e
most (it comes back at its dense value), the prune candidate the kept weight whose removal then raises e
least (in the same group of M for N:M, so the pattern holds). Kept weights updated by SparseGPT or mrp keep
their updated values. Rows whose best swap would not lower e stop; a row never ends above its start.
"""

from __future__ import annotations

import torch

from ..devices import has_float64
from ..masks import Target
from .base import LayerStats, PruneResult


def row_errors(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per-row quadratic reconstruction error Δ H Δᵀ."""
    delta = dense - pruned
    return ((delta @ hessian) * delta).sum(1)


def dsnot_repair(dense: torch.Tensor, result: PruneResult, stats: LayerStats, target: Target,
                 cycles: int = 50) -> PruneResult:
    """Swap pruned and kept weights per row while the row's error goes down (at most `cycles` swaps a row)."""
    wide = torch.float64 if has_float64(dense.device) else torch.float32
    h = stats.hessian().to(wide)
    w0, w, mask = dense.to(wide), result.weight.to(wide).clone(), result.mask.clone()
    rows_all = torch.arange(w.shape[0], device=w.device)
    diag = h.diagonal()
    g = (w0 - w) @ h  # gradient of e/2 with respect to Δ, kept current through each swap
    start = row_errors(w0, w, h)
    active = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
    swaps = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
    group = torch.arange(w.shape[1], device=w.device) // target.m if target.is_nm else None
    for _ in range(cycles):
        rows = rows_all[active]
        if rows.numel() == 0:
            break
        gr, w0r, wr, mr = g[rows], w0[rows], w[rows], mask[rows]
        grow = (w0r * (w0r * diag - 2 * gr)).masked_fill(~mr, float("inf"))  # Δe of reviving j
        j = grow.argmin(1)
        wj = w0r.gather(1, j[:, None])
        g2 = gr - wj * h[j]
        prune = (wr * (wr * diag + 2 * g2)).masked_fill(mr, float("inf"))  # Δe of pruning k after that
        if group is not None:
            prune = prune.masked_fill(group[None, :] != group[j][:, None], float("inf"))
        k = prune.argmin(1)
        gain = grow.gather(1, j[:, None]).squeeze(1) + prune.gather(1, k[:, None]).squeeze(1)
        take = torch.isfinite(gain) & (gain < 0)
        active[rows[~take]] = False
        rows, j, k, g2 = rows[take], j[take], k[take], g2[take]
        wk = w[rows, k]
        w[rows, j] = w0[rows, j]
        mask[rows, j] = False
        w[rows, k] = 0
        mask[rows, k] = True
        g[rows] = g2 + wk[:, None] * h[k]
        swaps[rows] += 1
    end = row_errors(w0, w, h)
    worse = end > start  # rounding can make a near-zero gain a loss: those rows keep the solver's answer
    w[worse], mask[worse] = result.weight[worse].to(wide), result.mask[worse]
    end = torch.where(worse, start, end)
    info = {**result.info, "repair": "dsnot", "repair_swaps": int(swaps[~worse].sum()),
            "repair_error_before": float(start.sum()), "repair_error_after": float(end.sum())}
    return PruneResult(w.to(result.weight.dtype), mask, info, result.scales)
