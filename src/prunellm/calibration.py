"""Calibration activations flowing through the block stack, one block at a time.

`BlockStream` captures the first block's inputs, then for each block runs every calibration batch
through it with statistic hooks and yields the collected statistics; when the consumer is done with
the block (e.g. pruned it), the next block's inputs are made by re-running it ("pruned", the reference
behaviour) or from the outputs of the statistics pass ("dense"). Only one block's activations are held.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch
from torch import nn

from .blocks import BlockStack, derived_inputs
from .capture import capture_inputs, run_block
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
    ):
        self.model, self.stack, self.per_block = model, stack, per_block
        self.calibration_ids, self.needs = calibration_ids, needs
        self.batch_size, self.propagate = batch_size, propagate
        self.feature_tokens = feature_tokens
        self.feature_stride = max(1, calibration_ids.numel() // feature_tokens)  # spread over all samples
        self.forward_s = 0.0  # capture + one forward of every block (the propagating one)
        self.phase = ""

    def __iter__(self) -> Iterator[tuple[int, StatsCollector]]:
        t0 = time.perf_counter()
        inputs = capture_inputs(self.model, self.stack, self.calibration_ids, self.batch_size)
        self.forward_s += time.perf_counter() - t0
        for i, block in enumerate(self.stack.blocks):
            self.phase = "calibrate"
            collector = StatsCollector(self.per_block[i], self.needs, derived_inputs(block, f"{self.stack.path}.{i}"),
                                       self.feature_tokens, self.feature_stride)
            dense = self.propagate == "dense"
            t0 = time.perf_counter()
            outputs = []
            for j, hidden in enumerate(inputs.hidden):
                out = run_block(block, hidden, inputs.calls[i][j])
                collector.end_batch()
                if dense:
                    outputs.append(out)
            collector.remove()
            if dense:
                self.forward_s += time.perf_counter() - t0
            yield i, collector
            del collector
            if not dense:
                self.phase = "propagate"
                t0 = time.perf_counter()
                outputs = [run_block(block, h, inputs.calls[i][j]) for j, h in enumerate(inputs.hidden)]
                self.forward_s += time.perf_counter() - t0
            inputs.hidden = outputs
