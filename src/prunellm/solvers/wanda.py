"""Wanda: score |W_ij|·‖X_j‖₂, lowest pruned within each output row (or N:M group); no update.

With quantization the kept weights are then quantized by GPTQ with the mask fixed (`masked_result`).
"""

from __future__ import annotations

import torch

from ..masks import Target, select
from ..quant import QuantScheme
from .base import LayerStats, PruneResult, register
from .sparsegpt import masked_result


def wanda_scores(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """The Wanda metric |W|·sqrt(scaler_row), shared with allocations that use it (OWL)."""
    return weight.abs() * stats.row_scalars().sqrt().unsqueeze(0)


@register("wanda", needs={"norms"})
def wanda(weight: torch.Tensor, stats: LayerStats, target: Target, quant: QuantScheme | None = None,
          block_size: int = 128, dampening_frac: float = 0.01, **_) -> PruneResult:
    mask = select(wanda_scores(weight, stats), target, per_row=True)
    return masked_result(weight, mask, stats, quant, block_size, dampening_frac)
