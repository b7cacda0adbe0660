"""Symmetric integer quantization of weights: the grid per group of input columns, and the GPTQ column step.

A `QuantScheme` is int8 or int4 with one float scale per row and group of `group_size` consecutive input
columns (0: the whole row, per output channel). Codes lie in [-qmax, qmax] (qmax = 127 or 7), a weight is
`code · scale`, and a group's scale is `max|w| / qmax` over the weights it keeps. `GroupQuantizer` rounds
column by column for the error-compensated solvers (GPTQ, SparseGPT's joint mode), fixing each group's
scale when the loop reaches its first column, as GPTQ does. Tensors in, tensors out; no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UsageError

SCHEMES = ("none", "int8", "int4")


@dataclass(frozen=True)
class QuantScheme:
    """int8 / int4 codes, one scale per row and group of `group_size` columns (0: per output channel)."""

    bits: int
    group_size: int = 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def width(self, cols: int) -> int:
        """Columns per group for a matrix of `cols` inputs."""
        return cols if self.group_size in (0, None) or self.group_size >= cols else self.group_size

    def groups(self, cols: int) -> int:
        return -(-cols // self.width(cols))

    @property
    def name(self) -> str:
        return f"int{self.bits}"


def scheme(name: str, group_size: int | None = None) -> QuantScheme | None:
    """The scheme for `--quantize NAME --group-size G` (None for "none"); defaults: int8 per output
    channel, int4 groups of 128. A group size must be a multiple of 32 (the kernels' vector width)."""
    if name not in SCHEMES:
        raise UsageError(f"unknown quantization {name!r}; choose one of {', '.join(SCHEMES)}")
    if name == "none":
        return None
    bits = int(name[3:])
    if group_size is None:
        group_size = 0 if bits == 8 else 128
    if group_size < 0 or group_size % 32:
        raise UsageError(f"group size must be 0 (per output channel) or a positive multiple of 32, got {group_size}")
    return QuantScheme(bits, group_size)


def grid_values(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """code · scale, with −0.0 made +0.0 (a code of 0 stores no sign, so the round trip stays exact)."""
    return codes * scale + 0.0


def group_scales(weight: torch.Tensor, keep: torch.Tensor | None, qmax: int) -> torch.Tensor:
    """max|w| / qmax per row over the kept entries of `weight` (rows × group columns); 1 where all are 0."""
    magnitude = weight.abs() if keep is None else weight.abs().masked_fill(~keep, 0)
    scale = magnitude.amax(dim=1) / qmax
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def entry_scales(scales: torch.Tensor, scheme: QuantScheme, cols: int) -> torch.Tensor:
    """Each entry's scale (rows × cols) from the scales of its row and group (rows × groups)."""
    return scales.repeat_interleave(scheme.width(cols), dim=1)[:, :cols]


def to_grid(weight: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer codes (as floats) of `weight` on each row's grid `scale` (rows × columns, scale per row)."""
    return torch.clamp(torch.round(weight / scale.unsqueeze(1)), -qmax, qmax)


class GroupQuantizer:
    """Round a (rows × cols) weight to its scheme's grid one column at a time, remembering every scale.

    `column(j, w, keep_block)` returns the quantized column j (pruned entries 0); when j starts a group it
    first fixes that group's scale from `keep_block`'s weights, the current (already error-updated) values
    of the group's columns with their mask: SparseGPT / GPTQ call it with the block they are working on."""

    def __init__(self, scheme: QuantScheme, rows: int, cols: int, device: torch.device, dtype: torch.dtype):
        self.scheme, self.cols = scheme, cols
        self.width = scheme.width(cols)
        self.scales = torch.ones(rows, scheme.groups(cols), dtype=dtype, device=device)

    def start_group(self, group: int, weight: torch.Tensor, keep: torch.Tensor | None) -> None:
        """Fix the scale of `group` from its columns' current weights (rows × group columns) and mask."""
        self.scales[:, group] = group_scales(weight, keep, self.scheme.qmax)

    def column(self, j: int, w: torch.Tensor) -> torch.Tensor:
        """Column j (length rows) rounded to its group's grid."""
        scale = self.scales[:, j // self.width]
        return grid_values(to_grid(w.unsqueeze(1), scale, self.scheme.qmax).squeeze(1), scale)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The int8 codes of a weight already on the grid (exact: code · scale rounds back to the code)."""
        return torch.round(weight / entry_scales(self.scales, self.scheme, self.cols)).to(torch.int8)


def quantize_rtn(weight: torch.Tensor, scheme: QuantScheme, keep: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest of every group: (dequantized weight with pruned entries 0, scales rows × groups)."""
    rows, cols = weight.shape
    quantizer = GroupQuantizer(scheme, rows, cols, weight.device, weight.dtype)
    out = torch.zeros_like(weight)
    for g in range(scheme.groups(cols)):
        block = slice(g * quantizer.width, min(cols, (g + 1) * quantizer.width))
        kept = None if keep is None else keep[:, block]
        quantizer.start_group(g, weight[:, block], kept)
        grid = grid_values(to_grid(weight[:, block], quantizer.scales[:, g], scheme.qmax), quantizer.scales[:, g : g + 1])
        out[:, block] = grid if kept is None else grid.masked_fill(~kept, 0)
    return out, quantizer.scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """code · scale with each column's group scale (rows × cols)."""
    return grid_values(codes.to(scales.dtype), entry_scales(scales, scheme, codes.shape[1]))
