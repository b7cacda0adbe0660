"""The weight update for a fixed mask by ADMM, finished by preconditioned conjugate gradients (ALPS, Meng et al.
2024; Boža 2024): min over Ŵ of (W − Ŵ) H (W − Ŵ)ᵀ with Ŵ zero where the mask prunes, H = 2XᵀX/n + λI.

ADMM splits Ŵ = B (free) = D (masked): with one eigendecomposition H = QΛQᵀ every (H + ρI)⁻¹ is cheap,
  B = (W H − V + ρD)(H + ρI)⁻¹,   D = mask-projection of B + V/ρ,   V += ρ(B − D),
with ρ raised ×1.3 every 3 iterations (starting at 0.1·mean diag H). The masked problem is convex, so
conjugate gradients on the kept weights (Jacobi preconditioner, all rows at once) then reach its exact
optimum; a row that has not got below the incoming solver's error keeps the solver's row.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..devices import has_float64
from .base import LayerStats, PruneResult
from .sparsegpt import prepare_hessian


def layer_errors(dense: torch.Tensor, weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    delta = dense - weight
    return ((delta @ hessian) * delta).sum(1)


def shared_eigh(stats: LayerStats, h: torch.Tensor, dampening_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigendecomposition of the damped H from `damped_hessian`, once for all layers sharing `stats`."""
    return stats.cached(("eigh", dampening_frac, h.dtype), lambda: torch.linalg.eigh(h))


def damped_hessian(weight: torch.Tensor, stats: LayerStats, dampening_frac: float, dtype: torch.dtype):
    """(weight with dead inputs zeroed, H + λI with λ = frac · mean diag H), as SparseGPT dampens."""
    w, h = prepare_hessian(weight.float(), stats)
    h = h.to(dtype)
    h.diagonal().add_(dampening_frac * h.diagonal().mean())
    return w.to(dtype), h


def _conjugate_gradients(w: torch.Tensor, target: torch.Tensor, h: torch.Tensor, keep: torch.Tensor,
                         steps: int, tol: float = 1e-10) -> tuple[torch.Tensor, int]:
    """Minimize (W₀ − w) H (W₀ − w)ᵀ per row over the kept entries from w; `target` = W₀ H."""
    diag = h.diagonal().unsqueeze(0)
    r = (target - w @ h) * keep
    z = r / diag
    p = z.clone()
    rz = (r * z).sum(1, keepdim=True)
    start = rz.abs().max()
    done = 0
    for done in range(1, steps + 1):
        ap = (p @ h) * keep
        alpha = rz / (p * ap).sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        w = w + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).sum(1, keepdim=True)
        if rz_new.abs().max() <= tol * start:
            break
        p = z + (rz_new / rz.clamp_min(torch.finfo(w.dtype).tiny)) * p
        rz = rz_new
    return w * keep, done


def admm_iterations(start: torch.Tensor, target: torch.Tensor, h: torch.Tensor, iterations: int,
                    choose_mask: Callable[[torch.Tensor, int], torch.Tensor],
                    eig: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ADMM on min (W₀ − Ŵ) H (W₀ − Ŵ)ᵀ, Ŵ zero on a mask (`target` = W₀ H), from D = `start`: step k's mask
    is `choose_mask(Z, k)` with Z = B + V/ρ (a fixed mask, or one re-chosen as the solver goes).
    `eig`: H's eigendecomposition when already made (layers reading the same input share it).
    Returns the last D and its mask."""
    evals, evecs = eig if eig is not None else torch.linalg.eigh(h)
    rho = 0.1 * float(h.diagonal().mean())
    d, v = start, torch.zeros_like(start)
    mask = torch.zeros_like(start, dtype=torch.bool)
    for k in range(iterations):
        b = ((target - v + rho * d) @ evecs / (evals + rho)) @ evecs.T
        z = b + v / rho
        mask = choose_mask(z, k)
        d = z.masked_fill(mask, 0)
        v = v + rho * (b - d)
        if k % 3 == 2:
            rho *= 1.3
    return d, mask


def admm_update(weight: torch.Tensor, result: PruneResult, stats: LayerStats, iterations: int = 30,
                cg_steps: int = 30, dampening_frac: float = 0.01) -> PruneResult:
    """Re-solve the kept weights of `result.mask` from the dense `weight` (see the module docstring)."""
    dtype = torch.float64 if has_float64(weight.device) else torch.float32
    w0, h = damped_hessian(weight, stats, dampening_frac, dtype)
    keep = (~result.mask).to(dtype)
    target = w0 @ h
    d, _ = admm_iterations(w0 * keep, target, h, iterations, lambda z, k: result.mask,
                           shared_eigh(stats, h, dampening_frac))
    w, steps = _conjugate_gradients(d, target, h, keep, cg_steps)
    before, after = layer_errors(w0, result.weight.to(dtype), h), layer_errors(w0, w, h)
    worse = after > before
    w[worse] = result.weight[worse].to(dtype)
    after = torch.where(worse, before, after)
    info = {**result.info, "update": "admm", "admm_iterations": iterations, "cg_steps": steps,
            "update_error_before": float(before.sum()), "update_error_after": float(after.sum())}
    return PruneResult(w.to(result.weight.dtype), result.mask, info, result.scales)
