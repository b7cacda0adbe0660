"""Sequential onloading: where each block is while the engine works on it, and how it gets there.

The model stays where it was loaded (CPU memory, or the meta skeleton of `offload.DiskResidency`). For
each pass the engine asks `load(i)` before block i runs and `release(i, save)` when it is done with it,
so only one block is on the compute device at a time; the modules before the blocks (embeddings, rotary
tables) are moved to the device when input capture first calls them and moved back after it (`outer`).
With the device the model already lives on, every move is a no-op. `moves` logs each move for tests.
`on_device` runs a whole model on a device for evaluation: moved whole when it fits, else block by block.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..devices import free_memory_mb
from .blocks import BlockStack, find_blocks
from .memory import return_freed_memory


def direct_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """A module's own parameters and buffers (persistent or not), not its children's."""
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def move_tensor(module: nn.Module, name: str, device: torch.device) -> None:
    """Move one parameter or buffer in place; a parameter keeps its identity, so tied weights stay tied."""
    if name in module._parameters:
        param = module._parameters[name]
        param.data = param.data.to(device)
    else:
        module._buffers[name] = module._buffers[name].to(device)


def module_device(module: nn.Module) -> torch.device:
    """Where a module's first real (non-meta) tensor lives; cpu when it has none."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if not tensor.is_meta:
            return tensor.device
    return torch.device("cpu")


class InMemory:
    """A loaded model whose blocks visit `device` one at a time (no device: nothing moves).

    Blocks go back to where they came from on release; `moves` records ("in" | "out", block index)."""

    def __init__(self, model: nn.Module | None = None, stack: BlockStack | None = None,
                 device: torch.device | None = None):
        self.model, self.stack, self.device = model, stack, device
        self.moves: list[tuple[str, int]] = []
        self._home: dict[int, torch.device] = {}

    def _read(self, name: str) -> torch.Tensor:
        """The value of a tensor that is still on the meta device (only a disk skeleton has those)."""
        raise RuntimeError(f"{name} is on the meta device and there is no checkpoint to read it from")

    def _set(self, name: str, value: torch.Tensor | None) -> None:
        raise NotImplementedError  # only a disk skeleton materializes tensors

    @contextmanager
    def outer(self) -> Iterator[None]:
        """Onload the modules outside the blocks when input capture first calls them; put them back after."""
        if self.model is None or self.stack is None:
            yield
            return
        device = self.device or module_device(self.model)
        loaded: list[str] = []
        moved: list[tuple[nn.Module, str, torch.device]] = []
        inside = {id(m) for b in self.stack.blocks for m in b.modules()}

        def hook(module: nn.Module, args, prefix: str) -> None:
            for tensor_name, tensor in list(direct_tensors(module)):
                full = f"{prefix}.{tensor_name}" if prefix else tensor_name
                if tensor.is_meta:
                    self._set(full, self._read(full))
                    loaded.append(full)
                elif tensor.device != device:
                    moved.append((module, tensor_name, tensor.device))
                    move_tensor(module, tensor_name, device)

        handles = [module.register_forward_pre_hook(lambda mod, args, name=name: hook(mod, args, name))
                   for name, module in self.model.named_modules()
                   if id(module) not in inside and next(direct_tensors(module), None) is not None]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for full in loaded:
                self._set(full, None)
            for module, tensor_name, home in moved:
                move_tensor(module, tensor_name, home)
            return_freed_memory()

    def load(self, index: int) -> None:
        """Bring block `index` to the compute device."""
        if self.stack is None or self.device is None:
            return
        block = self.stack.blocks[index]
        self._home[index] = module_device(block)
        block.to(self.device)
        self.moves.append(("in", index))

    def release(self, index: int, save: bool) -> None:
        """Send block `index` back to where it was loaded from (`save` matters only to a disk residency)."""
        if index not in self._home:
            return
        self.stack.blocks[index].to(self._home.pop(index))
        self.moves.append(("out", index))


def _fits(model: nn.Module, device: torch.device, share: float = 0.8) -> bool:
    """Whether the model's tensors take at most `share` of the device's free memory (the CPU: always)."""
    free = free_memory_mb(device)
    if free is None:
        return True
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return size / 2**20 <= share * free


@contextmanager
def on_device(model: nn.Module, device: torch.device, whole: bool | None = None) -> Iterator[InMemory | None]:
    """Run `model` on `device` inside the block, then put it back: moved whole when it fits in free device
    memory (or `whole=True`), else (or `whole=False`, even on its own device) the modules outside the
    blocks moved whole and each block moved in for its own forward and out after it; that case yields
    the block residency (its `moves`), the others None."""
    home = module_device(model)
    if home == device and whole is not False:
        yield None
        return
    if whole if whole is not None else _fits(model, device):
        model.to(device)
        try:
            yield None
        finally:
            model.to(home)
        return
    stack = find_blocks(model)
    residency = InMemory(model, stack, device)
    inside = {id(m) for b in stack.blocks for m in b.modules()}
    outer = [m for m in model.modules() if id(m) not in inside]
    for module in outer:
        for name, _ in list(direct_tensors(module)):
            move_tensor(module, name, device)
    handles = []
    for i, block in enumerate(stack.blocks):
        handles.append(block.register_forward_pre_hook(lambda mod, args, i=i: residency.load(i)))
        handles.append(block.register_forward_hook(lambda mod, args, out, i=i: residency.release(i, False)))
    try:
        yield residency
    finally:
        for handle in handles:
            handle.remove()
        for module in outer:
            for name, _ in list(direct_tensors(module)):
                move_tensor(module, name, home)
