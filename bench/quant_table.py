"""Prune and quantize SmolLM2-135M in one pass (quick setting): perplexity, bytes of weights, decode speed.

Each cell `solver:target:quantize` (quantize none, int8 or int4; a trailing `:head` also rounds the head,
tied to the embedding, to int8) runs `prunellm prune` with the quick setting (32 × 1024 WikiText-2
validation tokens, perplexity at 1024 on the first 64 test windows), saves the compressed folder, and
runs `prunellm bench` on it in float32 (128-token prompt, 32 new tokens, best of 5; dense = the same
weights dequantized, run by torch, i.e. the dense float32 model's speed). Target 0 with a quantization is
quantize-only (GPTQ). Appends one JSON line per cell and prints a Markdown table. Run alone on the machine.

    python bench/quant_table.py --cells sparsegpt:0.5:none,sparsegpt:0.5:int4 --out bench/results/quant_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grid import SETTINGS, _target_flags, machine, versions

MODEL = "smollm2-135m"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def run_cell(cell: str, workdir: Path, repeats: int, new_tokens: int) -> dict:
    solver, target, quantize, *rest = parse_cell(cell)
    head = rest == ["head"]
    s = SETTINGS["quick"]
    out = workdir / "model"
    cmd = ["prunellm", "prune", MODEL, "--solver", solver, *_target_flags(target), "--calib", "wikitext2",
           "--nsamples", str(s["nsamples"]), "--seqlen", str(s["seqlen"]), "--eval-ppl", "wikitext2",
           "--eval-seqlen", str(s["eval_seqlen"]), "--eval-max-windows", str(s["eval_windows"]),
           "--quantize", quantize, *(["--quantize-head"] if head else []), "--save-format", "compressed",
           "--output", str(out), "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prunellm", *cmd[1:]], check=True)
    wall = time.perf_counter() - t0
    report = json.loads((out / "prune_report.json").read_text())
    sparse_config = json.loads((out / "sparse_config.json").read_text())
    bench_json = workdir / "bench.json"
    subprocess.run([sys.executable, "-m", "prunellm", "bench", str(out), "--dtype", "float32", "--repeats",
                    str(repeats), "--new-tokens", str(new_tokens), "--json", str(bench_json)], check=True)
    speed = json.loads(bench_json.read_text())
    return {
        "model": MODEL, "setting": "quick", "solver": solver, "target": target, "quantize": quantize,
        "quantize_head": head, "quantization": report.get("quantization"), "command": " ".join(cmd),
        "ppl": report["perplexity"]["wikitext2"], "sparsity": report["sparsity"],
        "folder_bytes": folder_bytes(out), "dense_float32_bytes": sparse_config["dense_bytes"],
        "prune_s": report["timings"]["prune_s"], "wall_s": round(wall, 1),
        "decode_tokens_per_s": speed["sparse"]["decode_tokens_per_s"],
        "dense_decode_tokens_per_s": speed["dense"]["decode_tokens_per_s"],
        "decode_speedup": speed["decode_speedup"], "decode_speedup_torch_head": speed.get("decode_speedup_torch_head"),
        "same_tokens": speed["same_tokens"], "kernel": speed["kernel"],
        "machine": machine(), "versions": versions(),
    }


def parse_cell(cell: str) -> list[str]:
    """"wanda:0.7:int8:head" → its parts; an N:M target keeps its colon ("sparsegpt:2:4:int8")."""
    parts = cell.split(":")
    if len(parts) >= 4 and parts[1].isdigit() and parts[2].isdigit():
        parts = [parts[0], f"{parts[1]}:{parts[2]}", *parts[3:]]
    return parts


def table(rows: list[dict]) -> str:
    lines = ["| solver | target | quantize | head | WikiText-2 ppl | folder MiB | × dense float32 folder | decode tok/s | × dense float32 decode |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver'] if r['target'] != '0' else '—'} | {r['target'] if r['target'] != '0' else 'dense'} "
                     f"| {r['quantize']} | {'int8' if r['quantize_head'] else '—'} | {r['ppl']:.2f} "
                     f"| {r['folder_bytes'] / 2**20:.0f} | {r['folder_bytes'] / r['dense_float32_bytes']:.3f} "
                     f"| {r['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", required=True, help="comma-separated solver:target:quantize[:head]")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = []
    for cell in a.cells.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            row = run_cell(cell, Path(tmp), a.repeats, a.new_tokens)
        rows.append(row)
        with Path(a.out).open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
