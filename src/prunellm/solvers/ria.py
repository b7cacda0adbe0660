"""RIA (relative importance and activations, "Plug-and-Play", ICLR 2024): a weight's share of its row's and its
column's absolute sum, times the input norm to the power a (0.5); lowest pruned within each output row
(or N:M group); no update. With quantization the kept weights get GPTQ with the mask fixed, as Wanda's.
"""

from __future__ import annotations

import torch

from ..masks import Target, select
from ..quant import QuantScheme
from .base import LayerStats, PruneResult, register
from .sparsegpt import masked_result

POWER = 0.5  # the paper's a


def ria_scores(weight: torch.Tensor, stats: LayerStats, power: float = POWER) -> torch.Tensor:
    """(|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · ‖X_j‖₂^power (a zero row or column sum scores 0)."""
    a = weight.abs()
    relative = a / a.sum(0, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny) \
        + a / a.sum(1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return relative * stats.row_scalars().sqrt().pow(power).unsqueeze(0)


@register("ria", needs={"norms"})
def ria(weight: torch.Tensor, stats: LayerStats, target: Target, quant: QuantScheme | None = None,
        block_size: int = 128, dampening_frac: float = 0.01, **_) -> PruneResult:
    mask = select(ria_scores(weight, stats), target, per_row=True)
    return masked_result(weight, mask, stats, quant, block_size, dampening_frac)
