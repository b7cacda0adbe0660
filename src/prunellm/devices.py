"""Which torch device a job runs on, and what that device can do (float64, free memory, synchronization).

`resolve_device("auto" | "cpu" | "cuda" | "cuda:N" | "mps" | "xpu")` turns the user's choice into a
`torch.device`, or a `UsageError` saying why it cannot be used here. Under torchrun on CUDA each rank
takes `cuda:LOCAL_RANK`. Imports only `errors`.
"""

from __future__ import annotations

import os

import torch

from .errors import UsageError

CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps", "xpu")
_ACCELERATORS = ("cuda", "xpu", "mps")


def _available(kind: str) -> int:
    """How many devices of this kind torch can use here (0 when none or the backend is missing)."""
    if kind == "cpu":
        return 1
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu.device_count() if xpu is not None and xpu.is_available() else 0
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return 1 if mps is not None and mps.is_available() else 0
    return 0


def _local_rank() -> int | None:
    """This process's LOCAL_RANK under torchrun with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return None


def resolve_device(spec: str | torch.device | None = "auto", model_device: torch.device | None = None) -> torch.device:
    """The device for `spec`; "auto" is the model's own accelerator, else the first one torch reports, else cpu.

    Under torchrun (WORLD_SIZE > 1) a CUDA or XPU choice without an index becomes `cuda:LOCAL_RANK`.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if model_device is not None and model_device.type in _ACCELERATORS:
            return model_device
        spec = next((kind for kind in _ACCELERATORS if _available(kind)), "cpu")
    kind, _, index_text = spec.partition(":")
    if kind not in ("cpu", *_ACCELERATORS):
        raise UsageError(f"unknown device {spec!r}; choose one of {', '.join(CHOICES)}")
    count = _available(kind)
    if not count:
        raise UsageError(f"device {spec!r} is not available here (torch {torch.__version__} sees no {kind} device)")
    if kind in ("cpu", "mps"):
        if index_text not in ("", "0"):
            raise UsageError(f"device {spec!r}: {kind} has no index {index_text}")
        return torch.device(kind)
    if index_text:
        if not index_text.isdigit():
            raise UsageError(f"bad device index in {spec!r}; expected e.g. {kind}:0")
        index = int(index_text)
    else:
        index = _local_rank() or 0
    if index >= count:
        raise UsageError(f"device {kind}:{index} does not exist: torch sees {count} {kind} device(s)")
    return torch.device(kind, index)


def has_float64(device: torch.device) -> bool:
    """Whether the device computes in float64 (MPS does not)."""
    return device.type != "mps"


def wide_float(device: torch.device) -> torch.dtype:
    """The widest float the device has: float64 for sums and exact solves, float32 on MPS."""
    return torch.float64 if has_float64(device) else torch.float32


def free_memory_mb(device: torch.device) -> float | None:
    """Free memory on an accelerator (MiB, `mem_get_info`); None for the CPU or where torch cannot tell."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    if device.type == "xpu" and hasattr(torch.xpu, "mem_get_info"):
        free, _ = torch.xpu.mem_get_info(device)
        return free / 2**20
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def default_dtype(device: torch.device) -> str:
    """The compute dtype when none is given: float32 on the CPU, the checkpoint's own ("auto") elsewhere."""
    return "float32" if device.type == "cpu" else "auto"


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory allocated by torch on an accelerator since the last reset (MiB); None on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
