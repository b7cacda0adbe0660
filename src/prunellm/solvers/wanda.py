"""Wanda: score |W_ij|·‖X_j‖₂, lowest pruned within each output row (or N:M group); no update."""

from __future__ import annotations

import torch

from ..masks import Target, select
from .base import LayerStats, PruneResult, register


def wanda_scores(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """The Wanda metric |W|·sqrt(scaler_row), shared with allocations that use it (OWL)."""
    return weight.abs() * stats.row_scalars().sqrt().unsqueeze(0)


@register("wanda", needs={"norms"})
def wanda(weight: torch.Tensor, stats: LayerStats, target: Target, **_) -> PruneResult:
    mask = select(wanda_scores(weight, stats), target, per_row=True)
    return PruneResult(weight.masked_fill(mask, 0), mask)
