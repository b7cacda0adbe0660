"""Find the structure of any decoder model: its stack of repeated blocks and their prunable linears.

Discovery is by structure, not by attribute paths: the block class comes from the model's
`_no_split_modules` (what Hugging Face itself treats as the unit of a layer), and the stack is the
`nn.ModuleList` holding those blocks; failing that, the longest `ModuleList` of one repeated class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import UsageError

PRUNABLE = (nn.Linear, Conv1D)


@dataclass
class BlockStack:
    """The repeated blocks of a model and where they live."""

    path: str  # e.g. "model.layers"
    blocks: list[nn.Module]

    def __len__(self) -> int:
        return len(self.blocks)


def find_blocks(model: nn.Module) -> BlockStack:
    """Locate the stack of decoder blocks (Llama/Mistral/Qwen2/Gemma/OPT/GPT-2/Mamba and kin)."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            classes = {type(child).__name__ for child in module}
            if len(classes) == 1:
                preferred = classes <= no_split
                candidates.append((preferred, len(module), name, module))
    if not candidates:
        raise UsageError(f"no stack of repeated blocks found in {type(model).__name__}")
    _, _, name, module = max(candidates, key=lambda c: (c[0], c[1]))
    return BlockStack(name, list(module))


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    """llm-compressor style target: a class name, an exact module name, or `re:<regex>` on the name."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return pattern == type(module).__name__ or pattern == name or (pattern == "Linear" and isinstance(module, PRUNABLE))


def prunable_layers(
    block: nn.Module, prefix: str = "", targets: list[str] | None = None, ignore: list[str] | None = None
) -> dict[str, nn.Module]:
    """Linear layers (nn.Linear, GPT-2 Conv1D) of a block, filtered by `targets` / `ignore` patterns.

    Names are relative to the block; `prefix` (the block's full name) is used for pattern matching.
    """
    targets = targets or ["Linear"]
    ignore = ignore or []
    found = {}
    for name, module in block.named_modules():
        if not isinstance(module, PRUNABLE):
            continue
        full = f"{prefix}.{name}" if prefix else name
        if any(_matches(t, full, module) for t in targets) and not any(_matches(i, full, module) for i in ignore):
            found[name] = module
    return found


def derived_inputs(block: nn.Module, prefix: str = "") -> dict[str, tuple[str, Callable]]:
    """Layers whose weight the model applies without calling the module, and where their input comes from.

    Mamba's mixer computes `dt_proj.weight @ time_step`, where time_step is the first
    `time_step_rank` features of `x_proj`'s output, so hooks on dt_proj never fire. Returns
    {layer: (source layer, function of the source's output giving the layer's input)}.
    """
    found = {}
    for name, module in block.named_modules():
        if all(hasattr(module, a) for a in ("dt_proj", "x_proj", "time_step_rank")):
            base = ".".join(p for p in (prefix, name) if p)
            rank = int(module.time_step_rank)
            found[f"{base}.dt_proj"] = (f"{base}.x_proj", lambda y, r=rank: y[..., :r])
    return found


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) float32 matrix; Conv1D stores it transposed."""
    weight = module.weight.detach()
    return (weight.t() if isinstance(module, Conv1D) else weight).float()


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write an (out, in) matrix back into the module in its own dtype and layout."""
    if isinstance(module, Conv1D):
        weight = weight.t()
    module.weight.data.copy_(weight.to(module.weight.dtype))
