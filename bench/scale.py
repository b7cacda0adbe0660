"""Scale on SmolLM2-135M: one process vs two (torch.distributed, gloo) vs out-of-core (`--offload disk`).

Each configuration is a separate `prunellm prune` run (`prune_s` is pruning alone; `--eval` adds a
perplexity evaluation of each output afterwards); the masks of every run are compared with the first
mode's. Run it on a quiet machine.

    python bench/scale.py --eval --out bench/results/scale_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

MODES = {  # flags, environment
    "1 process": ([], {}),
    "1 process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
    "2 processes": (["--nproc", "2"], {}),
    "offload disk": (["--offload", "disk"], {}),
}


def _masks(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update({k: v == 0 for k, v in load_file(file).items() if k.endswith("proj.weight")})
    return state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--solvers", default="wanda,sparsegpt")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--modes", help="comma-separated subset of: " + ", ".join(MODES) + " (default all)")
    p.add_argument("--eval", action="store_true", help="also WikiText-2 perplexity (1024, first 64 windows)")
    p.add_argument("--out", required=True, help="JSON lines file to append results to")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for solver in a.solvers.split(","):
            reference = None
            for mode, (flags, env) in MODES.items():
                if a.modes and mode not in a.modes.split(","):
                    continue
                out = Path(tmp) / f"{solver}-{mode.replace(' ', '-')}"
                cmd = [sys.executable, "-m", "prunellm", "prune", a.model, "--solver", solver, "--sparsity", "0.5",
                       "--calib", "wikitext2", "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen),
                       *flags, "--output", str(out)]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env={**os.environ, **env})
                wall = time.perf_counter() - t0
                ppl = None
                if a.eval:
                    result = Path(tmp) / "eval.json"
                    subprocess.run([sys.executable, "-m", "prunellm", "eval", str(out), "--ppl", "wikitext2",
                                    "--seqlen", "1024", "--max-windows", "64", "--json", str(result)], check=True)
                    ppl = json.loads(result.read_text())["perplexity"]["wikitext2"]
                report = json.loads((out / "prune_report.json").read_text())
                masks = _masks(out)
                if reference is None:
                    reference = masks
                differ = sum(int((masks[k] != reference[k]).sum()) for k in reference)
                total = sum(m.numel() for m in reference.values())
                row = {"model": a.model, "solver": solver, "mode": mode, "command": " ".join(cmd[2:]),
                       "wall_s": round(wall, 1), **report["timings"], "peak_rss_mb": report["peak_rss_mb"],
                       "sparsity": report["sparsity"], "ppl": ppl, "env": env, "mask_differs": differ, "mask_total": total,
                       "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                       "torch": torch.__version__}
                rows.append(row)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("| solver | mode | prune_s | wall_s | peak RSS MB | masks differing from 1 process |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['mode']} | {r['prune_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['mask_differs']} of {r['mask_total']} |")


if __name__ == "__main__":
    main()
