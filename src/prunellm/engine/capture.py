"""Capture what a model passes to each of its blocks, then run blocks one at a time on those inputs.

One forward pass per chunk of calibration samples runs with every block replaced by a recorder:
block 0's hidden states are kept, and every block's other arguments (attention masks, position
ids, rotary `position_embeddings`, which differ per layer type in e.g. Gemma 3) are recorded as the
model passed them. The pass stops at the last block, so the head never runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .activations import MemoryActivations
from .blocks import BlockStack


class _Stop(Exception):
    pass


@dataclass
class Call:
    """The arguments a block receives besides its hidden states."""

    args: tuple
    kwargs: dict


@dataclass
class BlockInputs:
    """Hidden states of the current block (one tensor per chunk) and every block's call arguments."""

    hidden: object  # a MemoryActivations / DiskActivations store (one tensor per chunk)
    calls: list[list[Call]] = field(default_factory=list)  # [block][chunk]


def _same(a, b) -> bool:
    """Structural equality of captured arguments, so identical masks are stored once."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return type(a) is type(b) and a == b


def _dedupe(call: Call, seen: list[Call]) -> Call:
    for old in seen:
        if _same(old.args, call.args) and _same(old.kwargs, call.kwargs):
            return old
    seen.append(call)
    return call


def _hidden_arg(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), args, kwargs


@torch.no_grad()
def capture_inputs(model: nn.Module, stack: BlockStack, ids: torch.Tensor, batch_size: int,
                   store=None, device: torch.device | None = None) -> BlockInputs:
    """Run the model up to its blocks on `ids` (N × T) in chunks and record every block's inputs.

    The ids go to `device` (default: where the model's first real parameter is); block 0's hidden states
    go to `store` (default: a list in memory)."""
    if device is None:
        device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    result = BlockInputs(hidden=store if store is not None else MemoryActivations(), calls=[[] for _ in stack.blocks])
    seen: list[list[Call]] = [[] for _ in stack.blocks]
    last = len(stack.blocks) - 1

    def recorder(index: int):
        def forward(*args, **kwargs):
            hidden, rest, kw = _hidden_arg(args, kwargs)
            if index == 0:
                if hidden.is_meta:
                    raise RuntimeError("the model ran a layer before its blocks whose weights were not loaded")
                result.hidden.append(hidden)
            result.calls[index].append(_dedupe(Call(rest, kw), seen[index]))
            if index == last:
                raise _Stop
            return hidden

        return forward

    for index, block in enumerate(stack.blocks):
        block.forward = recorder(index)
    try:
        for start in range(0, ids.shape[0], batch_size):
            try:
                model(ids[start : start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for block in stack.blocks:
            del block.forward
    return result


@torch.no_grad()
def run_block(block: nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    """Run one block on one chunk; returns its output hidden states."""
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
