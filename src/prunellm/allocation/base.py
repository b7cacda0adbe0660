"""What every allocation shares: the layer description it reads, the result it returns, the registry and helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..masks import Target


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer as the allocation sees it."""

    name: str
    block: int
    component: str  # name inside the block, e.g. "self_attn.q_proj"
    numel: int


@dataclass
class AllocationResult:
    targets: dict[str, Target]
    block_stat: list[float]  # the per-block statistic the allocation came from (for reports and plots)
    stat_name: str
    info: dict[str, Any] = field(default_factory=dict)


MeasureFn = Callable[..., dict]  # (weights: {name: W}, stats: {name: LayerStats} | None, **options) -> measures
AllocateFn = Callable[..., AllocationResult]  # (layers, measures per block, target, **options)


@dataclass(frozen=True)
class Allocation:
    name: str
    measure: MeasureFn | None
    allocate: AllocateFn
    needs: frozenset[str]


ALLOCATIONS: dict[str, Allocation] = {}


def register(name: str, allocate: AllocateFn, measure: MeasureFn | None = None, needs: set[str] = frozenset()):
    ALLOCATIONS[name] = Allocation(name, measure, allocate, frozenset(needs))


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    return float((values.double() * weights.double()).sum() / weights.double().sum())


def per_block(layers: list[LayerInfo], block_values: list[float], target: Target) -> dict[str, Target]:
    """Give every layer of block b the unstructured ratio block_values[b]."""
    return {layer.name: Target(sparsity=float(block_values[layer.block])) for layer in layers}


def block_numels(layers: list[LayerInfo]) -> torch.Tensor:
    counts = torch.zeros(max(layer.block for layer in layers) + 1, dtype=torch.float64, device="cpu")
    for layer in layers:
        counts[layer.block] += layer.numel
    return counts

