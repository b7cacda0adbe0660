"""Prune a safetensors model folder into an output folder without ever loading it whole (`--offload disk`).

The high-level job above the engine: a meta skeleton of the model, `engine.offload.DiskResidency` to
materialize one block at a time and write it out pruned, `engine.loop.prune` to do the work, and the
output folder staged and renamed atomically with its report.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from .engine import distributed
from .engine.blocks import find_blocks
from .engine.loop import prune
from .devices import resolve_device
from .engine.offload import Checkpoint, DiskResidency, skeleton
from .models import DTYPES, check_dtype, checkpoint_dtype
from .outputs import atomic_folder, write_report


def prune_from_disk(
    folder: str | Path,
    output: str | Path,
    config=None,
    dtype: str = "float32",
    *,
    tokenizer=None,
    calibration_ids: torch.Tensor | None = None,
    overwrite: bool = False,
    progress: bool = True,
    activations: str = "auto",
    spill_dir: str | Path | None = None,
) -> dict:
    """Prune the safetensors model in `folder` block by block into `output` without ever loading it whole.

    Each block is read onto `config.device`, pruned there and written out; `dtype="auto"` computes in the
    checkpoint's dtype. The output is a sharded Hugging Face folder (one shard per block) with
    prune_report.json; written atomically by rank 0 when several processes take part. Returns the report.
    """
    check_dtype(dtype)
    torch_dtype = checkpoint_dtype(folder) if dtype == "auto" else DTYPES[dtype]
    device = resolve_device(config.device if config is not None else "auto")
    checkpoint = Checkpoint(folder)
    model, own_tokenizer = skeleton(folder, torch_dtype)
    tokenizer = tokenizer or own_tokenizer
    stack = find_blocks(model)
    writer = atomic_folder(output, overwrite) if distributed.is_main() else nullcontext(None)
    with writer as staging:
        residency = DiskResidency(model, stack, checkpoint, torch_dtype, staging, device)
        report = prune(model, tokenizer, config, calibration_ids=calibration_ids, progress=progress,
                       residency=residency, activations=activations,
                       spill_dir=str(spill_dir) if spill_dir else None)
        report = {"model": str(folder), "dtype": str(torch_dtype).removeprefix("torch."), **report, "offload": "disk"}
        if staging is not None:
            residency.finish()
            write_report(staging, report)
    distributed.barrier()
    return report
