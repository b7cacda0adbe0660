"""`admm`: the mask chosen gradually inside ADMM on the layer Hessian (Boža 2024's gradual schedule, ALPS's ρ rule).

The same splitting as the fixed-mask update (`admm.py`): with H = QΛQᵀ,
  B = (W H − V + ρD)(H + ρI)⁻¹,   Z = B + V/ρ,   D = Z with the mask of step k applied,   V += ρ(B − D),
but the mask of step k is re-chosen from Z's scores |Z_ij|·√H_jj (Wanda's metric in the Hessian's units) at
sparsity s·(1 − (1 − k/K)³), raised on a cubic schedule over the first K = 3/4 of the iterations and held at
the target after (so the last step's mask is the target's). N:M targets select the pattern at every step. The
final mask's kept weights are then solved exactly by conjugate gradients, as `--update admm` does; with
`quant`, GPTQ with that mask fixed instead.
"""

from __future__ import annotations

import torch

from ..devices import has_float64
from ..masks import Target, select
from ..quant import QuantScheme
from .admm import _conjugate_gradients, admm_iterations, damped_hessian, layer_errors, shared_eigh
from .base import LayerStats, PruneResult, register
from .sparsegpt import masked_result


def schedule(target: Target, step: int, ramp: int) -> Target:
    """The target of ADMM step `step` (0-based): cubic growth to the target over `ramp` steps; N:M as is."""
    if target.is_nm:
        return target
    done = min(1.0, (step + 1) / max(ramp, 1))
    return Target(sparsity=target.sparsity * (1.0 - (1.0 - done) ** 3))


@register("admm", needs={"hessian"})
def gradual_admm(weight: torch.Tensor, stats: LayerStats, target: Target, iterations: int = 30,
                 cg_steps: int = 30, dampening_frac: float = 0.01, quant: QuantScheme | None = None,
                 block_size: int = 128, **_) -> PruneResult:
    dtype = torch.float64 if has_float64(weight.device) else torch.float32
    w0, h = damped_hessian(weight, stats, dampening_frac, dtype)
    scale = h.diagonal().sqrt().unsqueeze(0)
    ramp = max(1, (3 * iterations) // 4)
    target_wh = w0 @ h
    d, mask = admm_iterations(w0.clone(), target_wh, h, iterations, lambda z, k: select(
        (z.abs() * scale).float(), schedule(target, k, ramp), per_row=True), shared_eigh(stats, h, dampening_frac))
    if quant is not None:
        return masked_result(weight.float(), mask, stats, quant, block_size, dampening_frac)
    keep = (~mask).to(dtype)
    w, steps = _conjugate_gradients(d, target_wh, h, keep, cg_steps)
    info = {"admm_iterations": iterations, "cg_steps": steps, "layer_error": float(layer_errors(w0, w, h).sum())}
    return PruneResult(w.to(weight.dtype), mask, info)
