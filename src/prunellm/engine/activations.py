"""Where one block's calibration activations live: in memory, or spilled to files when they do not fit.

The engine keeps the hidden states of one block at a time, one tensor per calibration batch. For long
calibration sets on big models even that is too much (128 × 4096 tokens × 8192 features in float32
is 17 GB, twice while a block turns its inputs into outputs), so `DiskActivations` writes each batch
to its own file and reads it back when the block runs on it: one batch in memory at a time.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from .memory import available_mb


class MemoryActivations:
    """A list of per-batch tensors."""

    def __init__(self) -> None:
        self._items: list[torch.Tensor] = []

    def append(self, tensor: torch.Tensor) -> None:
        self._items.append(tensor)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._items)

    def new(self) -> "MemoryActivations":
        """An empty store of the same kind (for the next block's inputs)."""
        return MemoryActivations()

    def close(self) -> None:
        self._items.clear()


class DiskActivations:
    """Per-batch tensors saved as files under a private temporary folder, loaded one at a time."""

    def __init__(self, parent: str | Path | None = None, _root: Path | None = None) -> None:
        self.root = _root or Path(tempfile.mkdtemp(prefix="prunellm-activations-", dir=parent))
        self.folder = Path(tempfile.mkdtemp(dir=self.root))
        self._count = 0

    def append(self, tensor: torch.Tensor) -> None:
        torch.save(tensor.detach().cpu(), self.folder / f"{self._count}.pt")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[torch.Tensor]:
        for j in range(self._count):
            yield torch.load(self.folder / f"{j}.pt", weights_only=True)

    def new(self) -> "DiskActivations":
        return DiskActivations(_root=self.root)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if not any(self.root.iterdir()):
            shutil.rmtree(self.root, ignore_errors=True)


def activation_store(mode: str, tokens: int, hidden_size: int, spill_dir: str | Path | None = None):
    """`memory`, `disk`, or `auto`: disk when two copies of the float32 activations exceed half the free memory."""
    if mode not in ("auto", "memory", "disk"):
        raise ValueError(f"activations must be auto, memory or disk, got {mode!r}")
    if mode == "auto":
        needed_mb = 2 * tokens * hidden_size * 4 / 2**20
        free = available_mb()
        mode = "disk" if free and needed_mb > free / 2 else "memory"
    return DiskActivations(spill_dir) if mode == "disk" else MemoryActivations()
