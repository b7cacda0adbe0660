"""The profiling pass that feeds a layer-wise allocation: dense model, one block at a time.

Runs the calibration set through the dense blocks (dense propagation, as OWL's first pass) with the
statistic hooks the allocation needs, lets the allocation measure each block, then turns all the
measures into per-layer targets. Data-free allocations skip the forward pass entirely.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..allocation import ALLOCATIONS, AllocationResult, LayerInfo
from ..config import PruneConfig
from .blocks import get_weight
from .residency import InMemory
from .stream import BlockStream


def layer_infos(stack_path: str, per_block: list[dict[str, nn.Module]]) -> list[LayerInfo]:
    infos = []
    for i, layers in enumerate(per_block):
        prefix = f"{stack_path}.{i}."
        for name, module in layers.items():
            infos.append(LayerInfo(name, i, name.removeprefix(prefix), module.weight.numel()))
    return infos


@torch.no_grad()
def allocate_targets(
    model: nn.Module,
    stack_path: str,
    stack,
    per_block: list[dict[str, nn.Module]],
    config: PruneConfig,
    calibration_ids: torch.Tensor | None,
    progress: bool = True,
    residency=None,
    activations=None,
) -> tuple[AllocationResult, float]:
    """Per-layer targets from `config.allocation`; returns the result and the profiling seconds.

    `residency` and `activations` are the engine's (offloaded blocks, spilled activations)."""
    residency = residency or InMemory()
    allocation = ALLOCATIONS[config.allocation]
    options = config.allocation_options()
    t0 = time.perf_counter()
    measures: list[dict] = []
    if allocation.measure is not None:
        bar = tqdm(total=len(per_block), desc=f"{config.allocation} profile", unit="block", disable=not progress)
        if allocation.needs:
            if config.profile_samples:
                calibration_ids = calibration_ids[: config.profile_samples]
            stream = BlockStream(model, stack, per_block, calibration_ids, allocation.needs,
                                 config.calibration_batch_size, propagate="dense", residency=residency,
                                 activations=activations)
            for i, collector in stream:
                weights = {name: get_weight(m) for name, m in per_block[i].items()}
                measures.append(allocation.measure(weights, {n: collector.get(n) for n in weights}, **options))
                bar.update(1)
        else:
            for i, layers in enumerate(per_block):
                residency.load(i)
                measures.append(allocation.measure({name: get_weight(m) for name, m in layers.items()}, None,
                                                   **options))
                residency.release(i, save=False)
                bar.update(1)
        bar.close()
    result = allocation.allocate(layer_infos(stack_path, per_block), measures, config.target(), **options)
    return result, time.perf_counter() - t0
