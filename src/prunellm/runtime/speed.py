"""Prefill and decode speed of a model, dense vs with its sparse linears swapped in.

Greedy generation through `model.generate`, so every architecture's cache works as usual. Prefill is
timed as a one-token generation; decode as the extra time of N more tokens, per token. On an
accelerator each timing waits for the device to finish.
"""

from __future__ import annotations

import copy
import time
import types
from typing import Callable

import torch
from torch import nn

from ..devices import synchronize
from . import kernels
from .sparse_linear import _decode_forward, sparsify


@torch.inference_mode()
def greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    ids = ids.to(model.device)
    mask = torch.ones_like(ids)
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, num_beams=1, pad_token_id=0)


def _timed(fn, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def measure(models: dict[str, tuple[nn.Module, Callable[[], None]]], ids: torch.Tensor, new_tokens: int,
            repeats: int = 3) -> dict[str, dict]:
    """Best-of-`repeats` prefill and decode tokens/s of each model, and its greedy tokens.

    `models` maps a name to (model, setup run before each of its timings). The models take turns within
    every repeat, so a slow stretch of the machine hits all of them alike."""
    best = {name: {"prefill": float("inf"), "full": float("inf")} for name in models}
    for model, setup in models.values():  # warm-up (allocations, kernel build)
        setup()
        greedy(model, ids[:, :8], 2)
    for _ in range(repeats):
        for name, (model, setup) in models.items():
            setup()
            best[name]["prefill"] = min(best[name]["prefill"], _timed(lambda: greedy(model, ids, 1), model.device))
            best[name]["full"] = min(best[name]["full"],
                                     _timed(lambda: greedy(model, ids, new_tokens + 1), model.device))
    out = {}
    for name, (model, setup) in models.items():
        setup()
        prefill, full = best[name]["prefill"], best[name]["full"]
        decode = max(full - prefill, 1e-9) / new_tokens
        out[name] = {"prefill_tokens_per_s": ids.shape[1] / prefill, "decode_tokens_per_s": 1 / decode,
                     "prefill_s": prefill, "decode_s_per_token": decode,
                     "tokens": greedy(model, ids, new_tokens + 1)[0, ids.shape[1]:].tolist()}
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes held in parameters and buffers, and in the dense head's decode mask (tied tensors counted once)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        tensors += [getattr(module, a) for a in ("_decode_mask", "_decode_offsets") if hasattr(module, a)]
    seen, total = set(), 0
    for t in tensors:
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
    module = kernels.load()
    return {"kernel": module.isa() if module is not None else False, "kernel_error": kernels.load_error()}


def _head_switch(model: nn.Module, on: bool) -> Callable[[], None]:
    """A setup that turns the dense head's decode kernel (`dense_decode`) on or off."""
    heads = [m for m in model.modules() if hasattr(m, "_decode_mask")]

    def setup() -> None:
        for module in heads:
            if on:
                module.forward = types.MethodType(_decode_forward, module)
            else:
                module.__dict__.pop("forward", None)

    return setup


def compare(model: nn.Module, ids: torch.Tensor, new_tokens: int = 32, repeats: int = 3,
            min_sparsity: float = 0.3) -> dict:
    """Dense vs sparse speed of the same weights; `model` itself is left dense.

    "sparse" is what `sparsify` gives (on the CPU the dense head's decode runs through the kernel too);
    "sparse_torch_head" is the same model with the head left to torch, to show what the head adds."""
    sparse_model = copy.deepcopy(model)
    replaced = sparsify(sparse_model, min_sparsity)
    models = {"dense": (model, lambda: None), "sparse": (sparse_model, _head_switch(sparse_model, True))}
    if any(hasattr(m, "_decode_mask") for m in sparse_model.modules()):
        models["sparse_torch_head"] = (sparse_model, _head_switch(sparse_model, False))
    timed = measure(models, ids, new_tokens, repeats)
    dense, sparse = timed["dense"], timed["sparse"]
    result = {
        "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "prompt_tokens": ids.shape[1], "new_tokens": new_tokens,
        **_kernel(model.device), "sparse_layers": len(replaced),
        **{name: {k: v for k, v in row.items() if k != "tokens"} for name, row in timed.items()},
        "decode_speedup": sparse["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
        "prefill_speedup": sparse["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
        "same_tokens": dense["tokens"] == sparse["tokens"],
        "memory_bytes": {"dense": weight_bytes(model), "sparse": weight_bytes(sparse_model)},
    }
    if "sparse_torch_head" in timed:
        result["decode_speedup_torch_head"] = (timed["sparse_torch_head"]["decode_tokens_per_s"]
                                               / dense["decode_tokens_per_s"])
    return result
