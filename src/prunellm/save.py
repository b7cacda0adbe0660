"""Write a pruned model folder atomically: a normal Hugging Face folder plus prune_report.json.

Everything is written into a hidden temporary folder beside the destination and renamed into
place at the end, so an interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError
from .report import write_json

REPORT = "prune_report.json"
RECIPE = "recipe.yaml"


def check_output(output: str | Path, overwrite: bool) -> Path:
    """Fail early (before any pruning) if the output folder exists and may not be replaced."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise UsageError(f"output folder {output} exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} exists and is not a folder")
    return output


@contextmanager
def atomic_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder beside `output`; on success it replaces `output` in one rename."""
    output = check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.partial-"))
    try:
        yield staging
        if output.exists():
            trash = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
            output.rename(trash / "old")
            staging.rename(output)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_pruned(model, tokenizer, report: dict, output: str | Path, overwrite: bool = False,
                save_format: str = "dense") -> Path:
    """Save model (safetensors), tokenizer, recipe and report to `output`, atomically.

    `save_format="compressed"` stores sparse weights as kept values + bitmask (see `compressed`).
    """
    import yaml

    if save_format not in ("dense", "compressed"):
        raise UsageError(f"save_format must be dense or compressed, got {save_format!r}")
    with atomic_folder(output, overwrite) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / RECIPE).write_text(yaml.safe_dump(report.get("config", {}), sort_keys=False))
        write_json(staging / REPORT, report)
        if save_format == "compressed":
            from .compressed import compress_in_place

            compress_in_place(staging)
    return Path(output)
