"""Where one block's calibration activations live: on the compute device, in CPU memory, or spilled to files.

The engine keeps the hidden states of one block at a time, one tensor per calibration batch. On an
accelerator they stay on the device when they fit (`device`), else in CPU memory (`cpu`, pinned so the
copies overlap) and are handed to the device one batch at a time. For long calibration sets on big
models even CPU memory is too small (128 × 4096 tokens × 8192 features in float32 is 17 GB, twice while
a block turns its inputs into outputs), so `DiskActivations` writes each batch to its own file and reads
it back when the block runs on it: one batch in memory at a time. On the CPU `device` and `cpu` are one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from ..devices import free_memory_mb
from .memory import available_mb

MODES = ("auto", "device", "cpu", "disk", "memory")  # "memory": the earlier name of "cpu"
_CPU = torch.device("cpu")


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy, in pinned memory when it comes from CUDA (so copying it back can overlap)."""
    if tensor.device.type != "cuda":
        return tensor.to(_CPU)
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, device=_CPU, pin_memory=True)
    return pinned.copy_(tensor)


class MemoryActivations:
    """A list of per-batch tensors, kept in CPU memory (`keep_on_cpu`) or where they were made, handed out
    on `device` (None: as stored)."""

    def __init__(self, device: torch.device | None = None, keep_on_cpu: bool = False) -> None:
        self.device, self.keep_on_cpu = device, keep_on_cpu
        self._items: list[torch.Tensor] = []

    def append(self, tensor: torch.Tensor) -> None:
        self._items.append(_to_cpu(tensor) if self.keep_on_cpu and tensor.device != _CPU else tensor)

    @property
    def mode(self) -> str:
        on_cpu = self.keep_on_cpu or self.device is None or self.device.type == "cpu"
        return "cpu" if on_cpu else "device"

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for j in range(len(self._items)):
            yield self.get(j)

    def get(self, j: int) -> torch.Tensor:
        """Batch j, on `device`."""
        tensor = self._items[j]
        return tensor if self.device is None else tensor.to(self.device, non_blocking=True)

    def new(self) -> "MemoryActivations":
        """An empty store of the same kind (for the next block's inputs)."""
        return MemoryActivations(self.device, self.keep_on_cpu)

    def close(self) -> None:
        self._items.clear()


class DiskActivations:
    """Per-batch tensors saved as files under a private temporary folder, loaded one at a time onto `device`."""

    def __init__(self, parent: str | Path | None = None, _root: Path | None = None,
                 device: torch.device | None = None) -> None:
        self.root = _root or Path(tempfile.mkdtemp(prefix="prunellm-activations-", dir=parent))
        self.folder = Path(tempfile.mkdtemp(dir=self.root))
        self.device = device
        self._count = 0

    def append(self, tensor: torch.Tensor) -> None:
        torch.save(tensor.detach().to(_CPU), self.folder / f"{self._count}.pt")
        self._count += 1

    mode = "disk"

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[torch.Tensor]:
        for j in range(self._count):
            yield self.get(j)

    def get(self, j: int) -> torch.Tensor:
        return torch.load(self.folder / f"{j}.pt", weights_only=True, map_location=self.device or _CPU)

    def new(self) -> "DiskActivations":
        return DiskActivations(_root=self.root, device=self.device)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if not any(self.root.iterdir()):
            shutil.rmtree(self.root, ignore_errors=True)


def choose_mode(mode: str, tokens: int, hidden_size: int, device: torch.device = _CPU, value_bytes: int = 4) -> str:
    """`auto` → `device` when two copies of the activations take under half the device's free memory,
    else `cpu` when they take under half of free CPU memory, else `disk`; other modes as given."""
    if mode not in MODES:
        raise ValueError(f"activations must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "memory":
        return "cpu"
    if mode != "auto":
        return mode
    needed_mb = 2 * tokens * hidden_size * value_bytes / 2**20
    free_device = free_memory_mb(device)
    if free_device is not None and needed_mb <= free_device / 2:
        return "device"
    free = available_mb()
    return "disk" if free and needed_mb > free / 2 else "cpu"


def activation_store(mode: str, tokens: int, hidden_size: int, spill_dir: str | Path | None = None,
                     device: torch.device = _CPU, value_bytes: int = 4):
    """The store for `choose_mode(mode, ...)`, handing batches out on `device`."""
    mode = choose_mode(mode, tokens, hidden_size, device, value_bytes)
    if mode == "disk":
        return DiskActivations(spill_dir, device=device)
    return MemoryActivations(device, keep_on_cpu=mode == "cpu" and device.type != "cpu")
