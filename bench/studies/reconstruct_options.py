"""Which reconstruction step size and batch suit the quick setting: SparseGPT 70% on blocks 10–12 of SmolLM2.

The first 13 blocks are kept and only blocks 10–12 are pruned (their inputs are the dense model's), then
reconstructed with `--reconstruct block` and the given batch size, learning rate and epochs; prints one
JSON line per block with the relative output error on all 32 calibration samples before/after and the
held-out error after each epoch. The papers' lr 2e-4 at batch 8 is tuned for 128 × 2048 calibration
tokens (16 steps an epoch); the quick setting's 32 × 1024 gives 4.

    python bench/studies/reconstruct_options.py 8 2e-4 4 >> bench/results/reconstruct_options_smollm2.jsonl
"""

from __future__ import annotations

import json
import sys
import time

import torch

import prunellm
from prunellm.config import PruneConfig

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from grid import machine  # noqa: E402


def main() -> None:
    bs, lr, epochs = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    solver = sys.argv[4] if len(sys.argv) > 4 else "sparsegpt"
    torch.manual_seed(0)
    model, tok = prunellm.load_model("smollm2-135m")
    model.model.layers = model.model.layers[:13]
    model.config.num_hidden_layers = 13
    config = PruneConfig(solver=solver, sparsity=0.7, num_calibration_samples=32, max_seq_length=1024,
                         ignore=["re:.*lm_head", r"re:model\.layers\.([0-9])\..*"], reconstruct="block",
                         reconstruct_batch_size=bs, reconstruct_lr=lr, reconstruct_epochs=epochs)
    t0 = time.perf_counter()
    report = prunellm.prune(model, tok, config, progress=False)
    for block in report["reconstruction"]["blocks"]:
        for part in block["parts"]:
            print(json.dumps({"solver": solver, "batch_size": bs, "lr": lr, "epochs": epochs, "block": block["block"],
                              "loss_before": round(part["loss_before"], 6), "loss_after": round(part["loss_after"], 6),
                              "heldout_loss": [round(x, 6) for x in part["heldout_loss"]],
                              "best_epoch": part["best_epoch"], "reconstruct_s": block["reconstruct_s"],
                              "total_s": round(time.perf_counter() - t0, 1), "cpu": machine()["cpu"]}))


if __name__ == "__main__":
    main()
