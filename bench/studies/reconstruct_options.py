"""Which reconstruction step size and batch suit the quick setting: SparseGPT on blocks 10–12 of one model.

The first 13 blocks are kept and only blocks 10–12 are pruned (their inputs are the dense model's), then
reconstructed with `--reconstruct block` and the given batch size, learning rate and epochs; prints one
JSON line per block with the relative output error on all 32 calibration samples before/after and the
held-out error after each epoch. The papers' lr 2e-4 at batch 8 is tuned for 128 × 2048 calibration
tokens (16 steps an epoch); the quick setting's 32 × 1024 gives 4.

    python bench/studies/reconstruct_options.py 8 2e-4 4 >> bench/results/reconstruct_options_smollm2.jsonl
    python bench/studies/reconstruct_options.py 2 2e-4 4 --model gemma3-270m --sparsity 0.5 \
        >> bench/results/reconstruct_options_gemma3-270m.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import prunellm
from prunellm.config import PruneConfig

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from grid import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("batch_size", type=int)
    ap.add_argument("lr", type=float)
    ap.add_argument("epochs", type=int)
    ap.add_argument("solver", nargs="?", default="sparsegpt")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.7)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = prunellm.load_model(args.model)
    model.model.layers = model.model.layers[:13]
    model.config.num_hidden_layers = 13
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:13]
    config = PruneConfig(solver=args.solver, sparsity=args.sparsity, num_calibration_samples=32,
                         max_seq_length=1024, ignore=["re:.*lm_head", r"re:model\.layers\.([0-9])\..*"],
                         reconstruct="block", reconstruct_batch_size=args.batch_size, reconstruct_lr=args.lr,
                         reconstruct_epochs=args.epochs)
    t0 = time.perf_counter()
    report = prunellm.prune(model, tok, config, progress=False)
    for block in report["reconstruction"]["blocks"]:
        for part in block["parts"]:
            print(json.dumps({"model": args.model, "sparsity": args.sparsity, "solver": args.solver,
                              "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs,
                              "block": block["block"], "loss_before": round(part["loss_before"], 6),
                              "loss_after": round(part["loss_after"], 6),
                              "heldout_loss": [round(x, 6) for x in part["heldout_loss"]],
                              "best_epoch": part["best_epoch"], "reconstruct_s": block["reconstruct_s"],
                              "total_s": round(time.perf_counter() - t0, 1), "cpu": machine()["cpu"]}), flush=True)


if __name__ == "__main__":
    main()
