"""Save a pruned model in memory: a normal Hugging Face folder plus prune_report.json and recipe.yaml.

The folder is written dense first; `save_format="compressed"` then hands it to the sparse runtime's
writer (`runtime.compressed`), which never calls back here. Written atomically (see `outputs`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError
from .outputs import atomic_folder, write_report
from .runtime.compressed import compress_in_place, model_quant, write_scales


def save_pruned(model, tokenizer, report: dict, output: str | Path, overwrite: bool = False,
                save_format: str = "dense") -> Path:
    """Save model (safetensors), tokenizer, recipe and report to `output`, atomically.

    `save_format="compressed"` stores sparse weights as kept values + bitmask (see `runtime.compressed`).
    Quantized weights are saved dequantized, their scales beside them (`quant_scales.safetensors`), or as
    codes in a compressed folder.
    """
    if save_format not in ("dense", "compressed"):
        raise UsageError(f"save_format must be dense or compressed, got {save_format!r}")
    with atomic_folder(output, overwrite) as staging:
        model.save_pretrained(staging)
        write_scales(staging, model_quant(model, _saved_keys(staging)))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_report(staging, report)
        if save_format == "compressed":
            compress_in_place(staging)
    return Path(output)


def _saved_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as handle:
            keys.update(handle.keys())
    return keys
