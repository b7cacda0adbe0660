"""How often magnitude N:M selection meets a tie in the dequantized SmolLM2 weights.

A group of M consecutive inputs of a row ties at the N:M boundary when its N-th and (N+1)-th largest
|w| are equal; which of them survives is then up to the tie rule. GGUF dequantization makes many weights
in a row exactly equal, so this happens far more often than in float-trained weights.

    python bench/studies/weight_ties.py --out bench/results/weight_ties_smollm2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from prunellm.models import ensure_builtin


def boundary_ties(weight: torch.Tensor, n: int, m: int) -> tuple[int, int]:
    """(groups whose (M−N)-th and (M−N+1)-th largest |w| are equal, groups) over a row-major weight."""
    groups = weight.abs().reshape(-1, m).sort(dim=1, descending=True).values
    keep = m - n
    return int((groups[:, keep - 1] == groups[:, keep]).sum()), groups.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", help="write the counts as JSON here")
    a = p.parse_args()
    folder = ensure_builtin(a.model)
    weights = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(shard))
    pruned = {k: v.float() for k, v in weights.items() if ".layers." in k and k.endswith("_proj.weight")}
    result = {"model": a.model, "layers": len(pruned)}
    for n, m in ((2, 4), (4, 8)):
        ties, groups = map(sum, zip(*(boundary_ties(w, n, m) for w in pruned.values())))
        result[f"{n}:{m}"] = {"groups": groups, "boundary_ties": ties, "fraction": ties / groups}
        print(f"{n}:{m}: {ties} of {groups} groups ({ties / groups:.1%}) tie at the boundary")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
