"""Magnitude pruning: |W|, one threshold per matrix (unstructured) or per N:M group; no data."""

from __future__ import annotations

import torch

from ..masks import Target, select
from .base import LayerStats, PruneResult, register


@register("magnitude")
def magnitude(weight: torch.Tensor, stats: LayerStats, target: Target, **_) -> PruneResult:
    mask = select(weight.abs(), target, per_row=False)
    return PruneResult(weight.masked_fill(mask, 0), mask)
