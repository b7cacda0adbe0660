"""Sparse inference: linear layers that compute from the bitmask layout (CPU) or 2:4 tensor cores (CUDA).

`SparseLinear` keeps only the kept values, the packed mask and row offsets (the layout of `compressed`),
in the model's dtype (float32, bfloat16 or float16), so the model also takes less memory. Up to
`DIRECT_MAX_TOKENS[dtype]` input rows (decode, small batches) go through the compiled kernel, which reads
only those; longer inputs (prefill) are compute-bound, so the weight is decompressed into a buffer shared
by all layers and multiplied with one dense GEMM (float16 in float32: torch's float16 GEMM on CPUs without
AVX512-FP16 is far slower). Machines without the kernel decompress for a dense matmul. `sparsify(model)`
swaps them in for every sparse enough linear; on a CUDA model it turns 2:4 weights into torch's
semi-structured sparse tensors instead (float16/bfloat16, compute capability 8.0+), and leaves every
other layer dense with a warning.
"""

from __future__ import annotations

import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..quant import QuantScheme, entry_scales
from . import kernels
from .compressed import Quant, nonzero_bits, pack_bits, pack_int4, quantized_codes, unpack_bits, unpack_int4

# The most input rows for which the direct kernel beats decompress + GEMM on every SmolLM2 layer shape,
# per dtype, at 50% sparsity (at 70% the direct kernel wins longer: float32 16, float16 32); measured by
# bench/sparse_kernels.py, results in bench/results/sparse_kernels_smollm2.jsonl.
DIRECT_MAX_TOKENS = {torch.float32: 12, torch.bfloat16: 8, torch.float16: 12}
KERNEL_DTYPES = tuple(DIRECT_MAX_TOKENS)
PAD = 32  # the kernels' last vector load reads up to 32 values past the end
_scratch: dict[torch.dtype, torch.Tensor] = {}


def _buffer(rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A rows × width buffer shared by all layers (grown to the largest), for decompressed weights.

    One forward at a time uses it, as inference in one Python thread does."""
    held = _scratch.get(dtype)
    if held is None or held.numel() < rows * width:
        held = _scratch[dtype] = torch.empty(rows * width, dtype=dtype)
    return held[: rows * width].view(rows, width)


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W held as kept values + bitmask, in W's dtype, or, for a quantized W, as the kept
    int8 / int4 codes + bitmask + a float32 scale per row and group (inputs then in any kernel dtype)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, quant: Quant | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._set_scheme(None if quant is None else quant[0], weight.dtype)
        for name, tensor in self.encode(weight, quant).items():
            self.register_buffer(name, tensor)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False))

    def _set_scheme(self, scheme: QuantScheme | None, dtype: torch.dtype) -> None:
        self.scheme, self.compute_dtype = scheme, dtype
        self.bits = 0 if scheme is None else scheme.bits
        # columns per scale, in whole mask bytes (per output channel: the whole padded row)
        self.group_cols = 0 if scheme is None else (scheme.group_size or (self.in_features + 7) // 8 * 8)

    @staticmethod
    def encode(weight: torch.Tensor, quant: Quant | None = None) -> dict[str, torch.Tensor]:
        """The buffers of a weight: kept values (row-major, padded), packed mask, row offsets; for a
        quantized weight the kept codes (int8, or int4 two per byte) and the scales."""
        if quant is None:
            keep = nonzero_bits(weight)
            values = weight[keep]
        else:
            codes = quantized_codes("weight", weight, quant)
            keep = codes != 0
            values = pack_int4(codes[keep]) if quant[0].bits == 4 else codes[keep]
        counts = keep.sum(1)
        pad = torch.zeros(PAD, dtype=values.dtype, device=weight.device)
        buffers = {"values": torch.cat([values, pad]), "bitmask": pack_bits(keep), "row_offsets": counts.cumsum(0) - counts}
        if quant is not None:
            buffers["scales"] = quant[1].float().contiguous().to(weight.device)
        return buffers

    @classmethod
    def skeleton(cls, out_features: int, in_features: int, dtype: torch.dtype, bias: bool,
                 scheme: QuantScheme | None = None) -> "SparseLinear":
        """An empty layer on the meta device, for a loader to fill (`encode`'s buffers, then the bias)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = out_features, in_features
        layer._set_scheme(scheme, dtype)
        meta = torch.device("meta")
        value_dtype = dtype if scheme is None else (torch.int8 if scheme.bits == 8 else torch.uint8)
        layer.register_buffer("values", torch.empty(PAD, dtype=value_dtype, device=meta))
        layer.register_buffer("bitmask", torch.empty(out_features, (in_features + 7) // 8, dtype=torch.uint8, device=meta))
        layer.register_buffer("row_offsets", torch.empty(out_features, dtype=torch.int64, device=meta))
        if scheme is not None:
            layer.register_buffer("scales", torch.empty(out_features, scheme.groups(in_features), device=meta))
        layer.register_parameter("bias", nn.Parameter(torch.empty(out_features, dtype=dtype, device=meta),
                                                      requires_grad=False) if bias else None)
        return layer

    @property
    def kept(self) -> int:
        """The number of stored (kept) weights."""
        return int(unpack_bits(self.bitmask, self.in_features).sum())

    @property
    def density(self) -> float:
        return self.kept / (self.out_features * self.in_features)

    def _kernel(self):
        """The compiled kernels when they can serve this layer (CPU, a kernel dtype), else None."""
        values = self._buffers["values"]
        if values.device.type != "cpu" or (self.bits == 0 and values.dtype not in DIRECT_MAX_TOKENS):
            return None
        return kernels.load()

    def _quant_args(self) -> tuple:
        buffers = self._buffers
        return (buffers["values"], buffers["bitmask"], buffers["row_offsets"], buffers["scales"].float(),
                self.group_cols, self.bits)

    def dense_weight(self) -> torch.Tensor:
        dtype = self.compute_dtype if self.bits else self.values.dtype
        if self.values.is_meta:
            return torch.empty(self.out_features, self.in_features, dtype=dtype, device="meta")
        module = self._kernel()
        if module is not None and self.bits:
            w = torch.empty(self.out_features, (self.in_features + 31) // 32 * 32, dtype=torch.float32)
            module.bitmask_decompress_q_into(*self._quant_args(), w)
            return w[:, : self.in_features].to(dtype)
        if module is not None:
            return module.bitmask_decompress(self.values, self.bitmask, self.row_offsets, self.in_features)
        keep = unpack_bits(self.bitmask, self.in_features)
        w = torch.zeros(self.out_features, self.in_features, dtype=torch.float32 if self.bits else dtype,
                        device=self.values.device)
        if self.bits:
            count = int(keep.sum())
            codes = unpack_int4(self.values[:-PAD], count) if self.bits == 4 else self.values[:count]
            w[keep] = codes.float() * entry_scales(self.scales.float(), self.scheme, self.in_features)[keep]
            return w.to(dtype)
        w[keep] = self.values[:-PAD]
        return w

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, decompressed on each access: for model code that reads `.weight` directly
        (e.g. Mamba's dt_proj), which then stays correct, only slower."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # decode calls this ~200 times per token: buffers read from _buffers, not through Module.__getattr__
        buffers = self._buffers
        values, bitmask, offsets = buffers["values"], buffers["bitmask"], buffers["row_offsets"]
        if self.bits:
            module = self._kernel() if x.dtype in DIRECT_MAX_TOKENS else None
        else:
            module = self._kernel() if x.dtype == values.dtype else None
        if module is None:
            return F.linear(x, self.dense_weight().to(x.dtype), self.bias)
        flat = x.reshape(-1, self.in_features)
        dtype = x.dtype
        if flat.shape[0] <= DIRECT_MAX_TOKENS[dtype]:
            if self.bits:
                y = module.bitmask_matmul_q(*self._quant_args(), flat)
            else:
                y = module.bitmask_matmul(values, bitmask, offsets, flat)
        else:
            compute = torch.float32 if dtype == torch.float16 else dtype
            w = _buffer(self.out_features, (self.in_features + 31) // 32 * 32, compute)
            if self.bits:
                module.bitmask_decompress_q_into(*self._quant_args(), w)
            else:
                module.bitmask_decompress_into(values, bitmask, offsets, w)
            y = F.linear(flat.to(compute), w[:, : self.in_features]).to(dtype)
        bias = self._parameters["bias"]
        if bias is not None:
            y = y + bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        values = f"int{self.bits} group {self.scheme.group_size}" if self.bits else str(self.values.dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.3f}, values={values}"


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


def _decode_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward with decode-sized inputs through the bitmask kernel and an all-ones mask."""
    weight = self.weight
    flat = x.reshape(-1, self.in_features)
    module = kernels.load() if x.dtype == weight.dtype else None
    if module is None or flat.shape[0] > DIRECT_MAX_TOKENS[weight.dtype]:
        return F.linear(x, weight, self.bias)
    codes = getattr(self, "_decode_codes", None)
    if codes is None:
        y = module.bitmask_matmul(weight.view(-1), self._decode_mask, self._decode_offsets, flat)
    else:
        y = module.bitmask_matmul_q(codes, self._decode_mask, self._decode_offsets, self._decode_scales,
                                    self._decode_group_cols, 8, flat)
    if self.bias is not None:
        y = y + self.bias
    return y.view(*x.shape[:-1], self.out_features)


def dense_decode(module: nn.Linear) -> bool:
    """Let a dense CPU linear (the unpruned head) run decode through the kernel: the weight itself is the
    value array, so nothing is copied and tied weights stay tied; the mask is all ones (1/32 of the
    weight's float32 bytes). torch's float32 GEMV reads about a third as fast here (bench/sparse_kernels.py).
    Returns False (unchanged) when the layer cannot: not on the CPU, not a kernel dtype, or a width the
    kernel would read past (not a multiple of 32). A quantized head (int8, `prunellm_quant`) decodes from its
    int8 codes: a quarter of the float32 bytes (the float weight stays for prefill and a tied embedding)."""
    weight = module.weight
    if (weight.device.type != "cpu" or weight.dtype not in DIRECT_MAX_TOKENS or module.in_features % 32
            or not weight.is_contiguous() or kernels.load() is None):
        return False
    rows, bytes_per_row = module.out_features, module.in_features // 8
    module._decode_mask = torch.full((rows, bytes_per_row), 255, dtype=torch.uint8)
    module._decode_offsets = torch.arange(rows, dtype=torch.int64) * module.in_features
    scheme = getattr(module, "prunellm_quant", None)
    if scheme is not None and scheme.bits == 8:
        codes = quantized_codes("head", weight.detach(), (scheme, module.prunellm_scales))
        module._decode_codes = torch.cat([codes.flatten(), codes.new_zeros(PAD)])
        module._decode_scales = module.prunellm_scales.float().contiguous()
        module._decode_group_cols = scheme.group_size or module.in_features
    module.forward = types.MethodType(_decode_forward, module)
    return True


def sparsify(model: nn.Module, min_sparsity: float = 0.3, skip: tuple[str, ...] = ("lm_head",),
             dense_head: bool = True) -> list[str]:
    """Replace every linear whose weight is at least `min_sparsity` zeros (or is quantized) by a `SparseLinear` (CPU) or a
    2:4 semi-structured weight (CUDA), in place; returns the replaced module names. Skipped layers (the
    output head, often tied to the embedding) stay dense; on the CPU `dense_head` runs their decode through
    the kernel too (`dense_decode`). Everything on other devices stays dense (with a warning)."""
    candidates, skipped = [], []
    for name, module in list(model.named_modules()):
        if any(part in name.split(".") for part in skip):
            if isinstance(module, nn.Linear):
                skipped.append(module)
            continue
        wb = _linear_weight_and_bias(module)
        if wb is None:
            continue
        weight = wb[0]
        quantized = getattr(module, "prunellm_quant", None) is not None  # codes beat floats even when dense
        if 1 - float(nonzero_bits(weight).sum()) / weight.numel() < min_sparsity and not quantized:
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
        scheme = getattr(module, "prunellm_quant", None)
        quant = None if scheme is None else (scheme, module.prunellm_scales)
        setattr(parent, child, SparseLinear(weight.contiguous(), bias, quant))
        replaced.append(name)
    if dense_head:
        for module in skipped:
            dense_decode(module)
    return replaced
