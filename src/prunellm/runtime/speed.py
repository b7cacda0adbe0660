"""Prefill and decode speed of a model, dense vs with its sparse linears swapped in.

Greedy generation through `model.generate`, so every architecture's cache works as usual. Prefill is
timed as a one-token generation; decode as the extra time of N more tokens, per token. On an
accelerator each timing waits for the device to finish.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..devices import synchronize
from . import kernels
from .sparse_linear import sparsify


@torch.inference_mode()
def greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    ids = ids.to(model.device)
    mask = torch.ones_like(ids)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, num_beams=1, pad_token_id=0)


def _best_of(fn, repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(model: nn.Module, ids: torch.Tensor, new_tokens: int, repeats: int = 3) -> dict:
    """Best-of-`repeats` prefill tokens/s and decode tokens/s, and the greedy tokens."""
    greedy(model, ids[:, :8], 2)  # warm-up (allocations, kernel build)
    prefill = _best_of(lambda: greedy(model, ids, 1), repeats, model.device)
    full = _best_of(lambda: greedy(model, ids, new_tokens + 1), repeats, model.device)
    tokens = greedy(model, ids, new_tokens + 1)[0, ids.shape[1]:]
    decode = max(full - prefill, 1e-9) / new_tokens
    return {"prefill_tokens_per_s": ids.shape[1] / prefill, "decode_tokens_per_s": 1 / decode,
            "prefill_s": prefill, "decode_s_per_token": decode, "tokens": tokens.tolist()}


def weight_bytes(model: nn.Module) -> int:
    """Bytes held in parameters and buffers (tied tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _kernel(device: torch.device) -> dict:
    """Which sparse kernel the sparse model runs: the CPU bitmask extension or CUDA's 2:4 semi-structured one."""
    if device.type == "cuda":
        return {"kernel": "cuda 2:4 semi-structured", "kernel_error": None}
    if device.type != "cpu":
        return {"kernel": False, "kernel_error": f"no sparse kernel for {device.type}"}
    return {"kernel": kernels.load() is not None, "kernel_error": kernels.load_error()}


def compare(model: nn.Module, ids: torch.Tensor, new_tokens: int = 32, repeats: int = 3,
            min_sparsity: float = 0.3) -> dict:
    """Dense vs sparse speed of the same weights; `model` itself is left dense."""
    dense = measure(model, ids, new_tokens, repeats)
    sparse_model = copy.deepcopy(model)
    replaced = sparsify(sparse_model, min_sparsity)
    sparse = measure(sparse_model, ids, new_tokens, repeats)
    return {
        "device": str(model.device), "threads": torch.get_num_threads(), "prompt_tokens": ids.shape[1],
        "new_tokens": new_tokens, **_kernel(model.device), "sparse_layers": len(replaced),
        "dense": {k: v for k, v in dense.items() if k != "tokens"},
        "sparse": {k: v for k, v in sparse.items() if k != "tokens"},
        "decode_speedup": sparse["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
        "prefill_speedup": sparse["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
        "same_tokens": dense["tokens"] == sparse["tokens"],
        "memory_bytes": {"dense": weight_bytes(model), "sparse": weight_bytes(sparse_model)},
    }
