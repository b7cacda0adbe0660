"""What prunellm writes, written safely: terminal tables, JSON files and whole folders, each atomically.

Folders are staged in a hidden temporary folder beside the destination and renamed into place at the
end, so an interrupted run never leaves a folder that looks complete. Imports only `errors`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError

REPORT = "prune_report.json"
RECIPE = "recipe.yaml"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table; floats get 4 significant decimals."""

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in body)])


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_report(folder: Path, report: dict) -> None:
    """A pruned folder's prune_report.json and its recipe.yaml (the config, replayable with --config)."""
    import yaml

    (folder / RECIPE).write_text(yaml.safe_dump(report.get("config", {}), sort_keys=False))
    write_json(folder / REPORT, report)


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
