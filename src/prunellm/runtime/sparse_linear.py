"""Sparse inference: linear layers that compute from the bitmask layout (CPU) or 2:4 tensor cores (CUDA).

`SparseLinear` keeps only the kept values, the packed mask and row offsets (the layout of
`compressed`), so the model also takes less memory. Small batches (decode) go through the compiled
kernel, which reads only those; larger batches (prefill) and machines without the kernel decompress
the weight for one dense matmul. `sparsify(model)` swaps them in for every sparse enough linear; on a
CUDA model it turns 2:4 weights into torch's semi-structured sparse tensors instead (float16/bfloat16,
compute capability 8.0+), and leaves every other layer dense with a warning.
"""

from __future__ import annotations

import warnings

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
        pad = torch.zeros(8, dtype=weight.dtype, device=weight.device)  # the kernel's last 8-wide load reads past the end
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


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of every row has at most 2 non-zeros."""
    rows, cols = weight.shape
    return cols % 4 == 0 and int(nonzero_bits(weight).view(rows, cols // 4, 4).sum(-1).max()) <= 2


def semi_structured_problem(weight: torch.Tensor) -> str | None:
    """Why torch's CUDA 2:4 kernels cannot take this weight, or None when they can."""
    if weight.device.type != "cuda":
        return f"2:4 sparse kernels are CUDA only (weight on {weight.device})"
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return "2:4 sparse tensor cores need compute capability 8.0 or newer"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"2:4 sparse kernels take float16/bfloat16 weights, not {weight.dtype}"
    if not is_2_4(weight):
        return "the weight is not 2:4 sparse"
    return None


def _sparsify_cuda(model: nn.Module, names: list[str]) -> list[str]:
    """Swap 2:4 linears of a CUDA model to semi-structured weights (dense F.linear calls the sparse kernel)."""
    from torch.sparse import to_sparse_semi_structured

    replaced, skipped = [], {}
    for name in names:
        module = model.get_submodule(name)
        problem = semi_structured_problem(module.weight) if isinstance(module, nn.Linear) else "not an nn.Linear"
        if problem is None:
            try:
                module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
                replaced.append(name)
                continue
            except (RuntimeError, ValueError) as exc:  # shapes the kernels do not tile
                problem = str(exc).splitlines()[0]
        skipped.setdefault(problem, []).append(name)
    for problem, layers in skipped.items():
        warnings.warn(f"{len(layers)} sparse layers stay dense: {problem}", stacklevel=3)
    return replaced


def sparsify(model: nn.Module, min_sparsity: float = 0.3, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Replace every linear whose weight is at least `min_sparsity` zeros by a `SparseLinear` (CPU) or a
    2:4 semi-structured weight (CUDA), in place; returns the replaced module names. Tied or skipped layers
    (the output head) stay dense, and so does everything on other devices (with a warning)."""
    candidates = []
    for name, module in list(model.named_modules()):
        if any(part in name.split(".") for part in skip):
            continue
        wb = _linear_weight_and_bias(module)
        if wb is None:
            continue
        weight = wb[0]
        if 1 - float(nonzero_bits(weight).sum()) / weight.numel() < min_sparsity:
            continue
        candidates.append(name)
    device = next(model.parameters()).device
    if device.type == "cuda":
        return _sparsify_cuda(model, candidates)
    if device.type != "cpu":
        if candidates:
            warnings.warn(f"no sparse kernel for {device.type}: {len(candidates)} sparse layers stay dense", stacklevel=2)
        return []
    replaced = []
    for name in candidates:
        module = model.get_submodule(name)
        weight, bias = _linear_weight_and_bias(module)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SparseLinear(weight.contiguous(), bias))
        replaced.append(name)
    return replaced
