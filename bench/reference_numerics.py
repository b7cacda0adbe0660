"""Re-run `prunellm prune` with the reference code's numerical conventions swapped in.

Explains what is left of the gap to `bench/reference/wanda_reference.py` once the algorithms agree.
prunellm deliberately differs from the reference in two places that do not change the method:

- selection: exactly k weights per matrix/block with ties broken by position, where the reference
  prunes every score `<=` the k-th (overshooting on ties) and takes whatever `torch.topk` leaves
  among tied N:M candidates (std::nth_element order, not documented);
- accumulation: input norms summed in float64 across batches and Σ xxᵀ summed in float32, where the
  reference keeps a float32 running mean updated one calibration sample at a time.

`--selection reference` and `--accumulation reference` patch those two spots in-process (nothing
else changes) and then call the CLI with the remaining arguments, so the result shows whether the
remaining perplexity gap comes from these conventions alone. Diagnostic only, not a product option.

    python bench/reference_numerics.py --selection reference --accumulation reference -- \\
        smollm2-135m --solver wanda --sparsity 0.7 --calib wikitext2 --nsamples 32 --seqlen 1024 \\
        --seed 0 --eval-ppl wikitext2 --eval-seqlen 1024 --eval-max-windows 64 --output out/x --overwrite
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import prunellm.masks
import prunellm.solvers.sparsegpt
from prunellm import cli
from prunellm.engine.stats import StatsCollector
from prunellm.solvers import LayerStats


def _threshold_le(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Reference unstructured rule: prune every score <= the k-th smallest (ties all go)."""
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    return scores <= torch.sort(scores)[0][k]


def _topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Reference N:M rule: `torch.topk(largest=False)` on the last dimension."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, torch.topk(scores, k, dim=-1, largest=False)[1], True)


def patch_selection() -> None:
    stable = prunellm.masks.lowest_k

    def masks_lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
        # 1-D: matrix threshold (magnitude); 2-D: Wanda's per-row stable sort (same as ours); 3-D: N:M groups
        return {1: _threshold_le, 2: stable, 3: _topk}[scores.dim()](scores, k)

    def sparsegpt_lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
        # 1-D: the 128-column block threshold; 2-D: one N:M group of columns
        return {1: _threshold_le, 2: _topk}[scores.dim()](scores, k)

    prunellm.masks.lowest_k = masks_lowest_k
    prunellm.solvers.sparsegpt.lowest_k = sparsegpt_lowest_k


def patch_accumulation() -> None:
    """Per-sample float32 running means, as the reference's WrappedGPT and SparseGPT.add_batch."""

    def add(self: StatsCollector, name: str, x: torch.Tensor) -> None:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = LayerStats()
            width = x.shape[-1]
            st.sq_norms = torch.zeros(width) if "norms" in self.needs else None
            st.xtx = torch.zeros(width, width) if "hessian" in self.needs else None
        for sample in x.reshape(-1, x.shape[-2], x.shape[-1]):
            n = st.samples
            inp = sample.float().t()
            if st.sq_norms is not None:
                st.sq_norms *= n / (n + 1)
                st.sq_norms += torch.norm(inp, p=2, dim=1) ** 2 / (n + 1)
            if st.xtx is not None:
                st.xtx *= n / (n + 1)
                inp = math.sqrt(2 / (n + 1)) * inp
                st.xtx += inp.matmul(inp.t())
            st.samples += 1
            st.tokens += sample.shape[0]

    StatsCollector._add = add
    LayerStats.row_scalars = lambda self: self.sq_norms  # already the mean
    LayerStats.hessian = lambda self: self.xtx  # already (2/n) Σ x xᵀ


def result_row(prune_args: list[str], selection: str, accumulation: str) -> dict:
    """One JSON line from the run's prune_report.json, tagged with the conventions used."""
    report = json.loads((Path(prune_args[prune_args.index("--output") + 1]) / "prune_report.json").read_text())
    cfg = report["config"]
    target = cfg["mask_structure"] if cfg["mask_structure"] != "0:0" else f"{cfg['sparsity']:g}"
    return {"solver": cfg["solver"], "target": target, "allocation": cfg.get("allocation", "uniform"),
            "selection": selection, "accumulation": accumulation,
            "ppl": report["perplexity"]["wikitext2"], "sparsity": report["sparsity"], "command": " ".join(prune_args),
            **({"per_block": report["allocation"]["per_block"]} if "allocation" in report else {})}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--selection", choices=["prunellm", "reference"], default="prunellm")
    p.add_argument("--accumulation", choices=["prunellm", "reference"], default="prunellm")
    p.add_argument("--out", help="append a JSON line with the result to this file")
    p.add_argument("prune_args", nargs=argparse.REMAINDER, help="arguments of `prunellm prune` after --")
    a = p.parse_args()
    if a.selection == "reference":
        patch_selection()
    if a.accumulation == "reference":
        patch_accumulation()
    args = a.prune_args[1:] if a.prune_args[:1] == ["--"] else a.prune_args
    rc = cli.main(["prune", *args])
    if rc == 0 and a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(result_row(args, a.selection, a.accumulation)) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
