"""Sparse inference on CPU: linear layers that compute from the bitmask layout instead of a dense weight.

`SparseLinear` keeps only the kept values, the packed mask and row offsets (the layout of
`compressed`), so the model also takes less memory. Small batches (decode) go through the compiled
kernel, which reads only those; larger batches (prefill) and machines without the kernel decompress
the weight for one dense matmul. `sparsify(model)` swaps them in for every sparse enough linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import kernels
from .compressed import nonzero_bits, pack_bits, unpack_bits

KERNEL_MAX_TOKENS = 16  # above this many rows of input, decompress + dense matmul wins (measured: bench/)


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W held as kept values + bitmask (float32 for the kernel path)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        keep = nonzero_bits(weight)
        counts = keep.sum(1)
        self.out_features, self.in_features = weight.shape
        pad = torch.zeros(8, dtype=weight.dtype)  # the kernel's last 8-wide load reads past the end
        self.register_buffer("values", torch.cat([weight[keep], pad]))
        self.register_buffer("bitmask", pack_bits(keep))
        self.register_buffer("row_offsets", counts.cumsum(0) - counts)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.density = float(counts.sum()) / weight.numel()

    def dense_weight(self) -> torch.Tensor:
        module = kernels.load()
        if module is not None and self.values.dtype == torch.float32 and self.values.device.type == "cpu":
            return module.bitmask_decompress(self.values, self.bitmask, self.row_offsets, self.in_features)
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        w[unpack_bits(self.bitmask, self.in_features)] = self.values[:-8]
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, decompressed on each access: for model code that reads `.weight` directly
        (e.g. Mamba's dt_proj), which then stays correct, only slower."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        module = kernels.load()
        if module is not None and flat.shape[0] <= KERNEL_MAX_TOKENS and flat.dtype == torch.float32 \
                and self.values.dtype == torch.float32 and flat.device.type == "cpu":
            y = module.bitmask_matmul(self.values, self.bitmask, self.row_offsets, flat)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}"


def _linear_weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W as out × in, bias) for nn.Linear and GPT-2's Conv1D; None for anything else."""
    if isinstance(module, nn.Linear):
        return module.weight.detach(), module.bias
    if isinstance(module, Conv1D):
        return module.weight.detach().t(), module.bias
    return None


def sparsify(model: nn.Module, min_sparsity: float = 0.3, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Replace every linear whose weight is at least `min_sparsity` zeros by a `SparseLinear`, in place;
    returns the replaced module names. Tied or skipped layers (the output head) stay dense."""
    replaced = []
    for name, module in list(model.named_modules()):
        if any(part in name.split(".") for part in skip):
            continue
        wb = _linear_weight_and_bias(module)
        if wb is None:
            continue
        weight, bias = wb
        if 1 - float(nonzero_bits(weight).double().mean()) < min_sparsity:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SparseLinear(weight.contiguous(), bias))
        replaced.append(name)
    return replaced
