"""Size on disk and CPU decode/prefill speed of SmolLM2-135M pruned to several sparsities.

For each target: prune with magnitude (speed and size depend on the sparsity, not on which weights
are kept, and magnitude needs no calibration), save the dense and the compressed folder (float32,
bfloat16 and float16 values), then run `prunellm bench` on the compressed folder in its own process, in
float32 and in bfloat16 (dense and sparse take turns within each repeat). Appends one JSON line per
target and dtype and prints Markdown tables. Run it alone on the machine: timings are best-of-N.

    python bench/sparse_speed.py --out bench/results/sparse_speed_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

import prunellm
from prunellm.runtime.compressed import CONFIG, WEIGHTS, compress_folder

from grid import machine, versions


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def pruned_weight_bytes(folder: Path) -> tuple[int, int]:
    """(stored bytes, dense bytes) of the encoded weights alone, leaving out embeddings and norms."""
    tensors = json.loads((folder / CONFIG).read_text())["tensors"]
    stored = dense = 0
    with safe_open(folder / WEIGHTS, "pt") as f:
        for key in f.keys():
            base = key.rsplit(".", 1)[0]
            if tensors.get(base, "dense") == "dense":
                continue
            t = f.get_tensor(key)
            stored += t.numel() * t.element_size()
            if key.endswith(".compressed"):
                dense += math.prod(f.get_tensor(f"{base}.shape").tolist()) * t.element_size()
    return stored, dense


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", default="0.5,0.7,0.8,0.9,2:4")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10, help="best of N timings")
    p.add_argument("--dtypes", default="float32,bfloat16", help="dtypes to bench in")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for target in a.targets.split(","):
            model, tok = prunellm.load_model(a.model)
            nm = ":" in target
            config = prunellm.PruneConfig(solver="magnitude", sparsity=0.5 if nm else float(target),
                                          mask_structure=target if nm else "0:0")
            report = prunellm.prune(model, tok, config, progress=False)
            dense_dir = tmp / f"dense-{target.replace(':', '-')}"
            prunellm.save_pruned(model, tok, report, dense_dir)
            sizes = {"dense_float32": folder_bytes(dense_dir)}
            for dtype in ("float32", "bfloat16", "float16"):
                out = tmp / f"compressed-{dtype}-{target.replace(':', '-')}"
                compress_folder(dense_dir, out, dtype=getattr(torch, dtype))
                sizes[f"compressed_{dtype}"] = folder_bytes(out)
                sizes[f"pruned_weights_{dtype}"] = dict(zip(("stored", "dense"), pruned_weight_bytes(out)))
            for dtype in a.dtypes.split(","):
                bench_json = tmp / "bench.json"
                subprocess.run([sys.executable, "-m", "prunellm", "bench",
                                str(tmp / f"compressed-float32-{target.replace(':', '-')}"), "--dtype", dtype,
                                "--prompt-tokens", str(a.prompt_tokens), "--new-tokens", str(a.new_tokens),
                                "--repeats", str(a.repeats), "--json", str(bench_json)], check=True)
                speed = json.loads(bench_json.read_text())
                row = {"model": a.model, "target": target, "sparsity": report["sparsity"], "dtype": dtype,
                       "sizes": sizes, "machine": {**machine(), "threads": speed["threads"],
                                                   "loadavg_1min_after": os.getloadavg()[0]},
                       "versions": versions(),
                       **{k: speed[k] for k in ("decode_speedup", "decode_speedup_torch_head", "prefill_speedup",
                                                "same_tokens", "kernel", "sparse_layers", "dense", "sparse",
                                                "sparse_torch_head", "memory_bytes", "prompt_tokens", "new_tokens")
                          if k in speed}}
                rows.append(row)
                with Path(a.out).open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print("| target | dtype | decode tok/s dense | decode tok/s sparse | decode speedup | prefill speedup | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['dtype']} | {r['dense']['decode_tokens_per_s']:.2f} | "
              f"{r['sparse']['decode_tokens_per_s']:.2f} | {r['decode_speedup']:.2f}× | {r['prefill_speedup']:.2f}× | "
              f"{r['same_tokens']} |")


if __name__ == "__main__":
    main()
