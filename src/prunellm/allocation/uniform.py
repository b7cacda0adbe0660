"""Uniform allocation: every layer gets the overall target."""

from __future__ import annotations

from ..masks import Target
from .base import AllocationResult, LayerInfo, register


def allocate(layers: list[LayerInfo], measures: list[dict], target: Target, **_) -> AllocationResult:
    blocks = max(layer.block for layer in layers) + 1
    return AllocationResult({layer.name: target for layer in layers}, [target.ratio] * blocks, "target")


register("uniform", allocate)
