"""Calibration activations flowing through the block stack, one block at a time.

`BlockStream` captures the first block's inputs, then for each block runs every calibration batch
through it with statistic hooks and yields the collected statistics; when the consumer is done with
the block (e.g. pruned it), the next block's inputs are made by re-running it ("pruned", the reference
behaviour) or from the outputs of the statistics pass ("dense"). With `keep_targets` the statistics pass's
outputs (the dense block's) and, for a `watch`ed module, its outputs stay available as `data` while the
consumer holds the block (block-wise reconstruction). Only one block's activations are held,
in memory or spilled to disk (`activations`); a `residency` materializes each block just in time (offload),
and with several processes each rank runs its shard of the batches and the statistics are summed.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch
from torch import nn

from . import distributed
from .activations import MemoryActivations
from .blocks import BlockStack, derived_inputs
from .capture import capture_inputs, run_block
from .reconstruct import BlockData, first_output
from .residency import InMemory
from .stats import StatsCollector


class BlockStream:
    """Iterate `(block index, StatsCollector)` over a block stack; `forward_s` times the forward passes."""

    def __init__(
        self,
        model: nn.Module,
        stack: BlockStack,
        per_block: list[dict[str, nn.Module]],
        calibration_ids: torch.Tensor,
        needs: set[str] | frozenset[str],
        batch_size: int = 8,
        propagate: str = "pruned",
        feature_tokens: int = 512,
        residency=None,
        save: bool = False,
        activations=None,
        keep_targets: bool = False,
        watch=None,
    ):
        self.model, self.stack, self.per_block = model, stack, per_block
        self.calibration_ids, self.needs = calibration_ids, needs
        self.batch_size, self.propagate = batch_size, propagate
        self.feature_tokens = feature_tokens
        self.residency = residency or InMemory()
        self.save = save  # residency writes each block once the stream is done with it (the pruning pass)
        self.activations = activations or MemoryActivations()
        self.feature_stride = max(1, calibration_ids.numel() // feature_tokens)  # spread over all samples
        self.keep_targets = keep_targets
        self.watch = watch  # block index → a module whose outputs to keep too (or None)
        self.data: BlockData | None = None  # the current block's inputs and dense outputs (keep_targets)
        self.forward_s = 0.0  # capture + one forward of every block (the propagating one)
        self.phase = ""

    def __iter__(self) -> Iterator[tuple[int, StatsCollector]]:
        ids = distributed.shard(self.calibration_ids, self.batch_size)
        t0 = time.perf_counter()
        with self.residency.outer():
            inputs = capture_inputs(self.model, self.stack, ids, self.batch_size, self.activations,
                                    self.residency.device)
        self.forward_s += time.perf_counter() - t0
        try:
            for i, block in enumerate(self.stack.blocks):
                self.phase = "calibrate"
                self.residency.load(i)
                collector = StatsCollector(self.per_block[i], self.needs,
                                           derived_inputs(block, f"{self.stack.path}.{i}"),
                                           self.feature_tokens, self.feature_stride)
                dense = self.propagate == "dense"
                keep = dense or self.keep_targets
                outputs = inputs.hidden.new()
                watched, handle = None, None
                module = self.watch(i) if self.watch is not None and self.keep_targets else None
                if module is not None:
                    watched = inputs.hidden.new()
                    handle = module.register_forward_hook(lambda m, a, out: watched.append(first_output(out)))
                t0 = time.perf_counter()
                for j, hidden in enumerate(inputs.hidden):
                    out = run_block(block, hidden, inputs.calls[i][j])
                    collector.end_batch()
                    if keep:
                        outputs.append(out)
                collector.remove()
                if handle is not None:
                    handle.remove()
                if dense:
                    self.forward_s += time.perf_counter() - t0
                distributed.all_reduce_stats(collector.stats, self.feature_tokens)
                if self.keep_targets:
                    self.data = BlockData(inputs.hidden, inputs.calls[i], outputs, watched)
                yield i, collector
                del collector
                self.data = None
                if watched is not None:
                    watched.close()
                if not dense:
                    if self.keep_targets:
                        outputs.close()
                        outputs = inputs.hidden.new()
                    self.phase = "propagate"
                    t0 = time.perf_counter()
                    for j, hidden in enumerate(inputs.hidden):
                        outputs.append(run_block(block, hidden, inputs.calls[i][j]))
                    self.forward_s += time.perf_counter() - t0
                self.residency.release(i, self.save)
                inputs.hidden.close()
                inputs.hidden = outputs
        finally:
            inputs.hidden.close()
