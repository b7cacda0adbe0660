"""Draw a pruned folder's allocation from its prune_report.json: a block × component sparsity heatmap
and the per-block statistic the allocation came from (outlier ratio, redundancy sum, α)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UsageError


def allocation_matrix(report: dict) -> tuple[list[str], list[list[float]]]:
    """Components and the block × component sparsity matrix of a report (layers as dicts or [name, sparsity])."""
    path = report["blocks"]["path"]
    components: list[str] = []
    cells: dict[tuple[int, str], float] = {}
    for row in report["layers"]:
        name, sparsity = (row["name"], row["sparsity"]) if isinstance(row, dict) else row
        rest = name.removeprefix(path + ".")
        block, _, comp = rest.partition(".")
        if comp not in components:
            components.append(comp)
        cells[(int(block), comp)] = sparsity
    blocks = report["blocks"]["count"]
    return components, [[cells.get((b, c), float("nan")) for c in components] for b in range(blocks)]


def plot_allocation(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write `allocation_heatmap.png` (and `allocation_statistic.png` if an allocation ran); returns the paths."""
    folder = Path(folder)
    report_path = folder / "prune_report.json"
    if not report_path.is_file():
        raise UsageError(f"{report_path} not found: plot needs a folder written by `prunellm prune`")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'prunellm[plot]'") from None
    report = json.loads(report_path.read_text())
    out = Path(out) if out else folder
    out.mkdir(parents=True, exist_ok=True)
    components, matrix = allocation_matrix(report)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(components), 1.5 + 0.22 * len(matrix)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(components)), components, rotation=45, ha="right")
    ax.set_ylabel("block")
    name = report.get("allocation", {}).get("name", "uniform")
    ax.set_title(f"sparsity per layer ({report['config']['solver']}, {name}, overall {report['sparsity']:.3f})")
    fig.colorbar(image, ax=ax, label="sparsity")
    fig.tight_layout()
    paths = [out / "allocation_heatmap.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    allocation = report.get("allocation")
    if allocation:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(range(len(allocation["per_block"])), allocation["per_block"])
        ax.set_xlabel("block")
        ax.set_ylabel(allocation["statistic"])
        ax.set_title(f"{allocation['name']}: per-block {allocation['statistic']}")
        fig.tight_layout()
        paths.append(out / "allocation_statistic.png")
        fig.savefig(paths[1], dpi=120)
        plt.close(fig)
    return paths
