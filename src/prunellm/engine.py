"""The sequential pruning engine: block by block, gather statistics, solve each layer, propagate.

Holds one block's calibration activations at a time. For each block: run it on the calibration
inputs with hooks that stream statistics, prune its linears with the chosen solver, then re-run
the pruned block to make the next block's inputs (the reference behaviour; `propagate="dense"`
feeds the dense outputs instead).
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .blocks import BlockStack, derived_inputs, find_blocks, get_weight, prunable_layers, set_weight
from .capture import capture_inputs, run_block
from .config import PruneConfig
from .data import calibration_batch
from .errors import UsageError
from .masks import Target
from .solvers import SOLVERS, LayerStats, PruneResult
from .stats import StatsCollector

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_layers(model: nn.Module, config: PruneConfig) -> tuple[BlockStack, list[dict[str, nn.Module]]]:
    """The block stack and, per block, its prunable layers keyed by full module name."""
    stack = find_blocks(model)
    per_block = []
    for i, block in enumerate(stack.blocks):
        prefix = f"{stack.path}.{i}"
        layers = prunable_layers(block, prefix, config.targets, config.ignore)
        per_block.append({f"{prefix}.{name}": module for name, module in layers.items()})
    return stack, per_block


def _check_targets(per_block: list[dict[str, nn.Module]], targets: Mapping[str, Target]) -> None:
    for layers in per_block:
        for name, module in layers.items():
            target = targets[name]
            width = get_weight(module).shape[1]
            if target.is_nm and width % target.m:
                raise UsageError(f"{name}: input width {width} is not divisible by M={target.m}")
            if not target.is_nm and not 0.0 <= target.sparsity < 1.0:
                raise UsageError(f"{name}: sparsity must be in [0, 1), got {target.sparsity}")


@torch.no_grad()
def prune(
    model: nn.Module,
    tokenizer=None,
    config: PruneConfig | None = None,
    *,
    calibration_ids: torch.Tensor | None = None,
    layer_targets: Mapping[str, Target] | None = None,
    progress: bool = True,
    on_layer: Callable[[str, torch.Tensor, LayerStats, PruneResult], None] | None = None,
) -> dict:
    """Prune `model` in place and return the report (per-layer targets and sparsity, timings, memory).

    `layer_targets` overrides the uniform target per layer (full module name → Target); this is how
    a layer-wise allocation feeds the engine. `calibration_ids` (N × T) skips loading calibration data.
    `on_layer(name, dense_weight, stats, result)` sees every solved layer (benchmarks, diagnostics).
    """
    config = (config or PruneConfig()).validate()
    solver = SOLVERS[config.solver]
    stack, per_block = model_layers(model, config)
    uniform = config.target()
    targets = {name: uniform for layers in per_block for name in layers}
    targets.update(layer_targets or {})
    _check_targets(per_block, targets)
    model.eval()

    t_start = time.perf_counter()
    forward_s = 0.0
    hook_s = 0.0  # time spent in on_layer, excluded from prune_s
    inputs = None
    if solver.needs:
        if calibration_ids is None:
            if tokenizer is None:
                raise UsageError(f"solver {config.solver!r} needs calibration data: pass a tokenizer or calibration_ids")
            calibration_ids = calibration_batch(
                tokenizer,
                config.dataset,
                config.num_calibration_samples,
                config.max_seq_length,
                config.seed,
                config.data_dir,
            )
        t0 = time.perf_counter()
        inputs = capture_inputs(model, stack, calibration_ids, config.calibration_batch_size)
        forward_s += time.perf_counter() - t0

    rows = []
    bar = tqdm(list(enumerate(stack.blocks)), desc=f"{config.solver} prune", unit="block", disable=not progress)
    for i, block in bar:
        layers = per_block[i]
        collector = None
        dense_out = []
        if inputs is not None:
            bar.set_postfix_str("calibrate")
            collector = StatsCollector(layers, solver.needs, derived_inputs(block, f"{stack.path}.{i}"))
            for j, hidden in enumerate(inputs.hidden):
                out = run_block(block, hidden, inputs.calls[i][j])
                collector.end_batch()
                if config.propagate == "dense":
                    dense_out.append(out)
            collector.remove()
        bar.set_postfix_str("solve")
        for name, module in layers.items():
            t0 = time.perf_counter()
            stats = collector.get(name) if collector else LayerStats()
            dense_weight = get_weight(module)
            if on_layer is not None:
                dense_weight = dense_weight.clone()  # set_weight writes in place; keep the dense copy
            result = solver.fn(
                dense_weight,
                stats,
                targets[name],
                block_size=config.block_size,
                dampening_frac=config.dampening_frac,
                mask_selection=config.mask_selection,
            )
            set_weight(module, result.weight)
            solve_s = time.perf_counter() - t0
            weight = module.weight
            rows.append(
                {
                    "name": name,
                    "target": targets[name].ratio,
                    **({"pattern": str(targets[name])} if targets[name].is_nm else {}),
                    "sparsity": float((weight == 0).sum()) / weight.numel(),
                    "numel": weight.numel(),
                    "solve_s": round(solve_s, 4),
                    **result.info,
                }
            )
            if on_layer is not None:
                t0 = time.perf_counter()
                on_layer(name, dense_weight, stats, result)
                hook_s += time.perf_counter() - t0
        del collector
        if inputs is not None:
            if config.propagate == "dense":
                inputs.hidden = dense_out
            else:
                bar.set_postfix_str("propagate")
                t0 = time.perf_counter()
                inputs.hidden = [run_block(block, h, inputs.calls[i][j]) for j, h in enumerate(inputs.hidden)]
                forward_s += time.perf_counter() - t0
    prune_s = time.perf_counter() - t_start - hook_s

    total = sum(r["numel"] for r in rows)
    zeros = sum(r["sparsity"] * r["numel"] for r in rows)
    return {
        "config": config.to_dict(),
        "blocks": {"path": stack.path, "count": len(stack)},
        "sparsity": zeros / total if total else 0.0,
        "layers": rows,
        "timings": {"calib_forward_s": round(forward_s, 3), "prune_s": round(prune_s, 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
