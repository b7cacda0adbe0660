"""What each allocation's profiling pass costs next to one dense forward pass of the calibration set.

In one process and one thread setting: time the full model (embeddings, blocks, head) on the
calibration set in batches, then each allocation's profiling pass on the same samples. Appends one
JSON line per allocation and prints a Markdown table.

    OMP_NUM_THREADS=2 python bench/profile_cost.py --out bench/results/profile_cost_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunellm
from prunellm.engine.loop import _calibration_ids, model_layers
from prunellm.engine.profile import allocate_targets


@torch.inference_mode()
def dense_forward_s(model, ids: torch.Tensor, batch_size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch_size):
        model(ids[i : i + batch_size], use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--allocations", default="owl,als,alpha")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    model, tok = prunellm.load_model(a.model)
    model.eval()
    base = prunellm.PruneConfig(sparsity=a.sparsity, num_calibration_samples=a.nsamples, max_seq_length=a.seqlen,
                                calibration_batch_size=a.batch_size)
    ids = _calibration_ids(tok, base)
    forward = dense_forward_s(model, ids, a.batch_size)
    rows = []
    for name in a.allocations.split(","):
        config = prunellm.PruneConfig(**{**base.__dict__, "allocation": name}).validate()
        stack, per_block = model_layers(model, config)
        _, profile_s = allocate_targets(model, stack.path, stack, per_block, config, ids, progress=False)
        rows.append({"model": a.model, "allocation": name, "nsamples": a.nsamples, "seqlen": a.seqlen,
                     "threads": torch.get_num_threads(), "dense_forward_s": round(forward, 2),
                     "profile_s": round(profile_s, 2), "ratio": round(profile_s / forward, 3)})
    with Path(a.out).open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print("| allocation | profiling (s) | dense forward of the calibration set (s) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['allocation']} | {r['profile_s']} | {r['dense_forward_s']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
