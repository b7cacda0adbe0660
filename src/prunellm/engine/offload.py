"""Models larger than memory: one block materialized at a time from the safetensors shards.

For `from_disk.prune_from_disk` the model is built as a skeleton on the meta device (buffers such as
rotary frequencies stay real). `DiskResidency` loads a block's tensors from the checkpoint, onto the
compute device, just before the engine runs it and, once the engine is done with it, writes the pruned
block to its own output shard and returns it to meta. Modules before the blocks (embeddings) are loaded
on first call during input capture and released right after. Peak memory is one block, its calibration
activations and statistics, plus the embedding during capture, whatever the number of blocks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from .blocks import BlockStack
from .memory import available_mb, return_freed_memory
from .residency import InMemory, direct_tensors, move_tensor

INDEX = "model.safetensors.index.json"
_COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class Checkpoint:
    """Tensors of a safetensors model folder (one file or an index of shards), read one at a time.

    Reads each tensor's bytes straight into its own buffer (`readinto` at the offset the header gives)
    instead of memory-mapping whole shards, so what is resident is exactly the tensors asked for."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise UsageError(f"{self.folder} has no model.safetensors or {INDEX}; offloading reads safetensors folders")
        self.entries: dict[str, tuple[str, int, dict]] = {}  # name -> (file, data start, header entry)
        for file in files:
            with open(self.folder / file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            for name, entry in header.items():
                if name != "__metadata__":
                    self.entries[name] = (file, 8 + size, entry)
        self.weight_map = {name: file for name, (file, _, _) in self.entries.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> torch.Tensor:
        if name not in self.entries:
            raise UsageError(f"{name} is not in the checkpoint {self.folder}; offloading needs a folder saved by "
                             "transformers whose tensor names match the model's")
        file, base, entry = self.entries[name]
        start, end = entry["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8, device="cpu")
        with open(self.folder / file, "rb") as f:
            f.seek(base + start)
            if f.readinto(memoryview(raw.numpy())) != end - start:
                raise UsageError(f"{self.folder / file} is truncated (reading {name})")
        return raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def numel(self) -> int:
        """Elements over all tensors, from the file headers (nothing loaded)."""
        total = 0
        for _, _, entry in self.entries.values():
            size = 1
            for dim in entry["shape"]:
                size *= dim
            total += size
        return total


def should_offload(folder: str | Path, dtype: torch.dtype) -> bool:
    """`--offload auto`: offload when the weights in the compute dtype take more than 60% of free memory."""
    try:
        need_mb = Checkpoint(folder).numel() * torch.finfo(dtype).bits / 8 / 2**20
    except UsageError:
        return False
    free = available_mb()
    return bool(free) and need_mb > 0.6 * free


def skeleton(folder: str | Path, dtype: torch.dtype):
    """The model with parameters on the meta device (no memory at all) and its tokenizer.

    Built as transformers itself builds before loading: under `torch.device("meta")`, then the
    non-persistent buffers (rotary frequencies, embedding scales) made real and set by the model's own
    `_init_weights`, which is how transformers restores them after a meta-device load."""
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    owners = []
    for name, module in model.named_modules():
        for buffer_name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(buffer_name)
            if buffer is not None and buffer.is_meta:
                full = f"{name}.{buffer_name}" if name else buffer_name
                set_module_tensor_to_device(model, full, "cpu", value=torch.zeros(buffer.shape, dtype=buffer.dtype, device="cpu"))
                owners.append(module)
    with torch.device("cpu"):  # the model's own initializers build the buffers' values on the CPU
        for module in owners:
            model._init_weights(module)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder) if (Path(folder) / "tokenizer_config.json").exists() else None
    return model, tokenizer


class DiskResidency(InMemory):
    """Materialize blocks of a meta skeleton from `checkpoint` one at a time, on `device`; write pruned ones
    to `output` and return them to meta."""

    def __init__(self, model: nn.Module, stack: BlockStack, checkpoint: Checkpoint, dtype: torch.dtype,
                 output: Path | None = None, device: torch.device | None = None):
        super().__init__(model, stack, device or torch.device("cpu"))
        self.checkpoint, self.dtype, self.output = checkpoint, dtype, output
        prefix = stack.path + "."
        self.outer_names = sorted(n for n in checkpoint.weight_map if not n.startswith(prefix))
        self.shards = len(stack) + len(self.outer_names)
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def _read(self, name: str) -> torch.Tensor:
        return self.checkpoint.get(name)

    def _set(self, name: str, value: torch.Tensor | None) -> None:
        from accelerate.utils import set_module_tensor_to_device

        if value is None:
            set_module_tensor_to_device(self.model, name, "meta")
        else:
            dtype = self.dtype if value.is_floating_point() else None
            set_module_tensor_to_device(self.model, name, self.device, value=value, dtype=dtype)

    def load(self, index: int) -> None:
        """Read block `index` from the checkpoint onto the device (its non-persistent buffers moved there)."""
        block, prefix = self.stack.blocks[index], f"{self.stack.path}.{index}"
        for sub_name, sub in block.named_modules():
            for name, tensor in list(direct_tensors(sub)):
                full = ".".join(p for p in (prefix, sub_name, name) if p)
                if full in self.checkpoint or name in sub._parameters:
                    self._set(full, self.checkpoint.get(full))
                elif tensor.device != self.device:
                    move_tensor(sub, name, self.device)
        self.moves.append(("in", index))

    def release(self, index: int, save: bool) -> None:
        """Write block `index` to its output shard (`save`), then return its parameters to meta."""
        block, prefix = self.stack.blocks[index], f"{self.stack.path}.{index}"
        if save and self.output is not None:
            tensors = {f"{prefix}.{n}": t.detach().to("cpu").contiguous() for n, t in block.state_dict().items()}
            self._write(index, tensors)
        for sub_name, sub in block.named_modules():
            for name, tensor in list(direct_tensors(sub)):
                full = ".".join(p for p in (prefix, sub_name, name) if p)
                if name in sub._parameters or full in self.checkpoint:
                    self._set(full, None)
                elif tensor.device.type != "cpu":
                    move_tensor(sub, name, torch.device("cpu"))
        self.moves.append(("out", index))
        return_freed_memory()

    def _write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        file = f"model-{index + 1:05d}-of-{self.shards:05d}.safetensors"
        save_file(tensors, self.output / file, metadata={"format": "pt"})
        for name, tensor in tensors.items():
            self.weight_map[name] = file
            self.total_size += tensor.numel() * tensor.element_size()

    def finish(self) -> None:
        """Copy the tensors outside the blocks (cast to the compute dtype), then the index, config and tokenizer."""
        assert self.output is not None
        for k, name in enumerate(self.outer_names):
            tensor = self.checkpoint.get(name)
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            self._write(len(self.stack) + k, {name: tensor.contiguous()})
            del tensor
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.output / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        self.model.config.save_pretrained(self.output)
        for name in _COPIED:
            source = self.checkpoint.folder / name
            if source.is_file():
                shutil.copy2(source, self.output / name)
