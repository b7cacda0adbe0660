"""Compare prunellm's solver table with the reference implementation's, run on the same model and data.

Reads the JSON lines of `bench/solver_table.py` and of `bench/reference/wanda_reference.py`, prints a
Markdown table of both perplexities and their relative difference and, when the pruned folders and
reference masks are given, the fraction of weights on which the two masks agree.

    python bench/compare_reference.py bench/results/quick_smollm2.jsonl bench/results/reference_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def _key(solver: str, target: str) -> str:
    return f"{solver}_{target.replace(':', '-')}"


def _ref_target(row: dict) -> str:
    return row["pattern"] or f"{row['sparsity']:g}"


def mask_agreement(folder: Path, ref_masks: Path) -> float:
    """Fraction of decoder-linear weights whose pruned/kept status matches the reference mask."""
    weights = {}
    for shard in folder.glob("*.safetensors"):
        weights.update(load_file(shard))
    ref = torch.load(ref_masks)
    same = total = 0
    for name, mask in ref.items():
        ours = weights[f"{name}.weight"] == 0
        same += int((ours == mask).sum())
        total += mask.numel()
    return same / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ours")
    p.add_argument("reference")
    p.add_argument("--ours-dir", help="pruned folders kept by solver_table.py --keep")
    p.add_argument("--ref-masks", help="folder of masks saved by wanda_reference.py --save-masks")
    a = p.parse_args()
    ours = {_key(r["solver"], r["target"]): r for r in map(json.loads, Path(a.ours).read_text().splitlines())}
    ref = {_key(r["method"], _ref_target(r)): r for r in map(json.loads, Path(a.reference).read_text().splitlines())}
    print("| solver | target | reference ppl | prunellm ppl | difference | reference sparsity | prunellm sparsity |"
          + (" mask agreement |" if a.ours_dir else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if a.ours_dir else ""))
    for key, r in ref.items():
        if key not in ours:
            continue
        o = ours[key]
        diff = (o["ppl"] - r["ppl"]) / r["ppl"]
        line = (f"| {o['solver']} | {o['target']} | {r['ppl']:.3f} | {o['ppl']:.3f} | {diff:+.2%} | "
                f"{r['achieved_sparsity']:.5f} | {o['sparsity']:.5f} |")
        if a.ours_dir and a.ref_masks:
            agree = mask_agreement(Path(a.ours_dir) / key.replace("_", "-"), Path(a.ref_masks) / f"{key}.pt")
            line += f" {agree:.4%} |"
        print(line)


if __name__ == "__main__":
    main()
