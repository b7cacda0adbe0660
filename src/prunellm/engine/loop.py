"""The sequential pruning engine: block by block, gather statistics, solve each layer, propagate.

Holds one block's calibration activations at a time. For each block: run it on the calibration
inputs with hooks that stream statistics, prune its linears with the chosen solver, then re-run
the pruned block to make the next block's inputs (the reference behaviour; `propagate="dense"`
feeds the dense outputs instead). With `reconstruct`, each pruned block's kept weights are then fitted
to the dense block's outputs (`reconstruct`) before the next block's inputs are made.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ..allocation import ALLOCATIONS
from ..config import PruneConfig
from ..data import calibration_batch
from ..devices import peak_memory_mb, reset_peak_memory, resolve_device
from ..errors import UsageError
from ..masks import Target
from ..quant import QuantScheme, quantize_rtn
from ..solvers import SOLVERS, LayerStats, PruneResult
from ..solvers.admm import admm_update
from ..solvers.dsnot import dsnot_repair
from . import distributed
from .activations import activation_store
from .blocks import BlockStack, find_blocks, get_weight, prunable_layers, set_weight
from .folds import find_fold, permute_inputs
from .memory import current_rss_mb, peak_rss_mb, reset_peak_rss
from .profile import allocate_targets
from .reconstruct import Options, block_parts, reconstruct_block
from .residency import InMemory, module_device
from .stream import BlockStream

log = logging.getLogger(__name__)


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


def _calibration_ids(tokenizer, config: PruneConfig) -> torch.Tensor:
    if tokenizer is None:
        raise UsageError(f"solver {config.solver!r} needs calibration data: pass a tokenizer or calibration_ids")
    return calibration_batch(tokenizer, config.dataset, config.num_calibration_samples, config.max_seq_length,
                             config.seed, config.data_dir)


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        if config is not None and getattr(config, key, None):
            return int(getattr(config, key))
    return 0


def _relative(name: str, stack: BlockStack, i: int) -> str:
    """A layer's name inside its block."""
    return name[len(f"{stack.path}.{i}") + 1:]


def _layer_row(name: str, module: nn.Module, target: Target, solve_s: float, result: PruneResult) -> dict:
    weight = module.weight
    return {
        "name": name,
        "target": target.ratio,
        **({"pattern": str(target)} if target.is_nm else {}),
        "sparsity": float((weight == 0).sum()) / weight.numel(),
        "numel": weight.numel(),
        "solve_s": round(solve_s, 4),
        **result.info,
    }


def remember_quant(module: nn.Module, scheme: QuantScheme | None, scales: torch.Tensor | None) -> None:
    """Keep a quantized layer's scheme and scales on the module (on the CPU), for saving and the runtime."""
    if scheme is not None and scales is not None:
        module.prunellm_quant = scheme
        module.prunellm_scales = scales.detach().cpu()


def _quantize_head(model: nn.Module) -> str | None:
    """Round the output head to int8 per output channel (no calibration reaches it); a tied embedding
    shares the rounded weight. Returns the head's module name, or None when it is not a linear."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return None
    scheme = QuantScheme(8, 0)
    weight, scales = quantize_rtn(get_weight(head), scheme)
    set_weight(head, weight)
    remember_quant(head, scheme, scales)
    return next(name for name, module in model.named_modules() if module is head)


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
    residency=None,
    activations: str = "auto",
    spill_dir: str | None = None,
) -> dict:
    """Prune `model` in place and return the report (per-layer targets and sparsity, timings, memory).

    `layer_targets` overrides the uniform target per layer (full module name → Target); this is how
    a layer-wise allocation feeds the engine. `calibration_ids` (N × T) skips loading calibration data.
    `on_layer(name, dense_weight, stats, result)` sees every solved layer (benchmarks, diagnostics).
    Blocks are onloaded one at a time to `config.device` (see `residency`; "auto": the model's accelerator,
    else the first one torch has, else the CPU) and go back to where the model lives; `residency` replaces
    that (a disk skeleton, see `offload`). `activations` (auto, device, cpu, disk) says where a block's
    calibration activations live, `spill_dir` where spilled ones go. Under torchrun each process
    calibrates on its share of the samples (see `distributed`).
    """
    config = (config or PruneConfig()).validate()
    solver = SOLVERS[config.solver]
    stack, per_block = model_layers(model, config)
    uniform = config.target()
    targets = {name: uniform for layers in per_block for name in layers}
    model.eval()
    quant = config.quant_scheme()
    if quant is not None and any(not isinstance(m, nn.Linear) for layers in per_block for m in layers.values()):
        raise UsageError("--quantize covers nn.Linear layers only (GPT-2's Conv1D layers are not supported)")
    hessian_too = quant is not None or config.repair != "none" or config.update != "solver"  # GPTQ, DSnoT, ADMM
    needs = solver.needs | ({"hessian"} if hessian_too else set())
    if config.quantize_head and getattr(residency, "checkpoint", None) is not None:
        raise UsageError("quantize_head needs the model in memory (the head is never loaded with --offload disk)")
    device = getattr(residency, "device", None) or resolve_device(config.device, module_device(model))
    residency = residency or InMemory(model, stack, device)
    progress = progress and distributed.is_main()
    value_bytes = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    stores: list[str] = []

    def store():
        made = activation_store(activations, calibration_ids.numel() // distributed.world_size(),
                                _hidden_size(model), spill_dir, device, value_bytes)
        stores.append(made.mode)
        return made

    start_rss = current_rss_mb()
    peak_is_own = reset_peak_rss()  # so the peak below is this pruning step's, not the model load's
    reset_peak_memory(device)
    t_start = time.perf_counter()
    allocation = None
    if layer_targets is None and config.allocation != "uniform":
        needs_data = needs or ALLOCATIONS[config.allocation].needs
        if needs_data and calibration_ids is None:
            calibration_ids = _calibration_ids(tokenizer, config)
        result, profile_s = allocate_targets(model, stack.path, stack, per_block, config, calibration_ids, progress,
                                             residency,
                                             store() if ALLOCATIONS[config.allocation].needs else None)
        result = distributed.share_object(result)  # every rank prunes to rank 0's targets
        layer_targets = result.targets
        allocation = {"name": config.allocation, "statistic": result.stat_name, "per_block": result.block_stat,
                      "profile_s": round(profile_s, 3), **result.info}
    targets.update(layer_targets or {})
    _check_targets(per_block, targets)
    hook_s = 0.0  # time spent in on_layer, excluded from prune_s
    rows: list[dict] = []
    if needs and calibration_ids is None:
        calibration_ids = _calibration_ids(tokenizer, config)
    reconstructing = config.reconstruct != "none"
    if reconstructing and calibration_ids is None:
        calibration_ids = _calibration_ids(tokenizer, config)
    options = Options.from_config(config)
    bar = tqdm(total=len(stack), desc=f"{config.solver} prune", unit="block", disable=not progress)
    stream = None
    rebuilt: list[dict] = []
    if needs or reconstructing:
        def watch(i: int) -> nn.Module | None:
            parts = block_parts(stack.blocks[i], per_block[i], config.reconstruct)
            return parts[0].output if parts else None

        stream = BlockStream(model, stack, per_block, calibration_ids, needs,
                             config.calibration_batch_size, config.inputs,
                             residency=residency, save=True, activations=store(),
                             keep_targets=reconstructing, watch=watch)
        blocks = iter(stream)
    else:
        blocks = ((i, None) for i in range(len(stack)))
    for i, collector in blocks:
        bar.set_postfix_str("solve")
        if collector is None:
            residency.load(i)
        items = list(per_block[i].items())
        owners = distributed.assign([get_weight(m).numel() for _, m in items])
        block_rows: dict[int, dict] = {}
        block_perms: dict[int, torch.Tensor] = {}  # consumer k → the row order its producers must take
        for k, (name, module) in enumerate(items):
            if owners[k] != distributed.rank():
                continue  # another process solves this layer
            stats = collector.get(name) if collector else LayerStats()
            dense_weight = get_weight(module)
            if on_layer is not None:
                dense_weight = dense_weight.clone()  # set_weight writes in place; keep the dense copy
            t0 = time.perf_counter()
            permutation = None
            if config.permute and targets[name].is_nm:
                dense_weight, stats, permutation = permute_inputs(stack.blocks[i], _relative(name, stack, i),
                                                                   model.config, dense_weight, stats, targets[name])
            result = solver.fn(
                dense_weight,
                stats,
                targets[name],
                block_size=config.block_size,
                dampening_frac=config.dampening_frac,
                mask_selection=config.mask_selection,
                quant=quant,
            )
            if config.repair == "dsnot":
                result = dsnot_repair(dense_weight, result, stats, targets[name], config.repair_cycles)
            if config.update == "admm":
                result = admm_update(dense_weight, result, stats, dampening_frac=config.dampening_frac)
            set_weight(module, result.weight)
            remember_quant(module, quant, result.scales)
            block_rows[k] = _layer_row(name, module, targets[name], time.perf_counter() - t0, result)
            if permutation is not None:
                block_rows[k]["permutation"] = permutation.pop("report")
                block_perms[k] = permutation["rows"]
            if on_layer is not None:
                t0 = time.perf_counter()
                on_layer(name, dense_weight, stats, result)
                hook_s += time.perf_counter() - t0
        for k, (name, module) in enumerate(items):
            distributed.share_weight(module.weight, owners[k])
            rows.append(distributed.share_object(block_rows.get(k), owners[k]))
            if quant is not None:
                remember_quant(module, quant, distributed.share_object(getattr(module, "prunellm_scales", None),
                                                                        owners[k]))
            if config.permute:
                rows_order = distributed.share_object(block_perms.get(k), owners[k])
                if rows_order is not None:  # every rank reorders the producers alike: the block's function stays
                    find_fold(stack.blocks[i], _relative(name, stack, i), model.config).apply_to_producers(rows_order)
        if reconstructing and per_block[i]:
            bar.set_postfix_str("reconstruct")
            row = reconstruct_block(stack.blocks[i], per_block[i], stream.data, options, i,
                                    dense_inputs=config.inputs == "dense")
            rebuilt.append({"block": i, **row})
            bar.set_postfix_str(" ".join(f"{r['part']} {r['loss_before']:.3g}→{r['loss_after']:.3g}"
                                         for r in row["parts"]))
        if collector is None:
            residency.release(i, save=True)
        bar.update(1)
    bar.close()
    head = _quantize_head(model) if config.quantize_head else None
    forward_s = stream.forward_s if stream else 0.0
    prune_s = time.perf_counter() - t_start - hook_s

    total = sum(r["numel"] for r in rows)
    zeros = sum(r["sparsity"] * r["numel"] for r in rows)
    return {
        "config": config.to_dict(),
        "blocks": {"path": stack.path, "count": len(stack)},
        "sparsity": zeros / total if total else 0.0,
        **({"allocation": allocation} if allocation else {}),
        **({"quantization": {"scheme": quant.name, "group_size": quant.group_size, "head": head}} if quant else {}),
        "layers": rows,
        **({"reconstruction": {"mode": config.reconstruct, "inputs": config.inputs, "blocks": rebuilt}}
           if reconstructing else {}),
        "timings": {"calib_forward_s": round(forward_s, 3), "prune_s": round(prune_s, 3),
                    **({"reconstruct_s": round(sum(r["reconstruct_s"] for r in rebuilt), 3)}
                       if reconstructing else {})},
        **({"processes": distributed.world_size()} if distributed.is_active() else {}),
        "device": str(device),
        **({"activations": stores[-1]} if stores else {}),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **({"peak_device_mb": round(peak, 1)} if (peak := peak_memory_mb(device)) is not None else {}),
        "memory_mb": {
            "rss_at_start": round(start_rss, 1),
            "peak_is_this_step": peak_is_own,
            "parameters": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
            "block_activations": round(calibration_ids.numel() * _hidden_size(model) * 4 / 2**20, 1)
            if calibration_ids is not None else 0.0,
            "largest_hessian": round(max((get_weight(m).shape[1] ** 2 * 4 for layers in per_block
                                          for m in layers.values()), default=0) / 2**20, 1),
        },
    }
