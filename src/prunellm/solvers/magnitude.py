"""Magnitude pruning: |W|, one threshold per matrix (unstructured) or per N:M group; no data.

With quantization the kept weights are then quantized by GPTQ with the mask fixed (`masked_result`),
which needs the layer's Hessian after all.
"""

from __future__ import annotations

import torch

from ..masks import Target, select
from ..quant import QuantScheme
from .base import LayerStats, PruneResult, register
from .sparsegpt import masked_result


@register("magnitude")
def magnitude(weight: torch.Tensor, stats: LayerStats, target: Target, quant: QuantScheme | None = None,
              block_size: int = 128, dampening_frac: float = 0.01, **_) -> PruneResult:
    mask = select(weight.abs(), target, per_row=False)
    return masked_result(weight, mask, stats, quant, block_size, dampening_frac)
