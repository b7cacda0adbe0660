"""prunellm against llama.cpp on the CPU: SmolLM2-135M, decode and prefill speed, weight bytes, perplexity.

llama.cpp is what a CPU user runs today, so this is the anchor for prunellm's speed claims. In one run:
  - llama.cpp (llama-cpp-python, pinned, built on install into its own environment `.venv-llamacpp`,
    not a prunellm dependency) on the shipped SmolLM2 GGUF (Q4_1), 2 threads;
  - prunellm's dense model (the dequantized float32 weights of that GGUF, and bfloat16), and its pruned
    models (Wanda 50% and 70%, quick setting, the folders `make demo` / the grid write) with `sparsify`,
    in float32 and bfloat16.
Each row: decode tokens/s (128-token prompt, 64 new tokens, greedy, best of 5), prefill tokens/s, bytes
of weights (GGUF file for llama.cpp; parameters and buffers for prunellm), WikiText-2 perplexity on the
first 64 windows of 1024 tokens (the same token ids fed to both; llama.cpp's logits through `logits_all`).
Run alone on the machine.

    python bench/vs_llamacpp.py --setup      # once: the llama.cpp environment (compiles, several minutes)
    python bench/vs_llamacpp.py --pruned out/smollm2-135m-wanda-50 out/smol-wanda-70 \\
        --out bench/results/vs_llamacpp_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_ENV = ROOT / ".venv-llamacpp"
LLAMA_CPP = "llama-cpp-python==0.3.36"
PROMPT, NEW, REPEATS, WINDOWS, SEQLEN, THREADS = 128, 64, 5, 64, 1024, 2


def child(spec_path: str) -> None:
    """Inside the llama.cpp environment: speed and perplexity of the GGUF on the given token ids."""
    import numpy as np
    from llama_cpp import Llama

    spec = json.loads(Path(spec_path).read_text())
    fast = Llama(spec["gguf"], n_ctx=PROMPT + NEW + 8, n_threads=THREADS, n_batch=512, verbose=False)
    prompt = spec["prompt"]

    def run(new: int) -> float:
        fast.reset()
        t0 = time.perf_counter()
        for k, _ in enumerate(fast.generate(prompt, top_k=1, temp=0.0, reset=True)):
            if k + 1 >= new:
                break
        return time.perf_counter() - t0

    run(2)  # warm-up
    prefill = min(run(1) for _ in range(REPEATS))
    full = min(run(NEW + 1) for _ in range(REPEATS))
    scored = Llama(spec["gguf"], n_ctx=SEQLEN, n_threads=THREADS, n_batch=512, logits_all=True, verbose=False)
    nll, count = 0.0, 0
    for window in spec["windows"]:
        scored.reset()
        scored.eval(window)
        logits = np.asarray(scored.scores[: len(window) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll += -float(logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    print(json.dumps({"prefill_tokens_per_s": len(prompt) / prefill, "decode_tokens_per_s": NEW / (full - prefill),
                      "ppl": math.exp(nll / count), "weight_bytes": Path(spec["gguf"]).stat().st_size}))


def setup() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(LLAMA_ENV)], check=True)
    subprocess.run([str(LLAMA_ENV / "bin" / "python"), "-m", "pip", "install", "--quiet", LLAMA_CPP, "numpy"],
                   check=True)


def prunellm_row(folder: str, dtype: str, sparse: bool, ids, windows) -> dict:
    import torch

    import prunellm
    from prunellm.evaluation.perplexity import perplexity_of_tokens
    from prunellm.runtime.sparse_linear import sparsify
    from prunellm.runtime.speed import measure, weight_bytes

    model, _ = prunellm.load_model(folder, dtype=dtype)
    replaced = sparsify(model) if sparse else []
    timed = measure({"m": (model, lambda: None)}, ids, NEW, REPEATS)["m"]
    with torch.inference_mode():
        ppl, _ = perplexity_of_tokens(model, windows.flatten(), SEQLEN)
    return {"prefill_tokens_per_s": timed["prefill_tokens_per_s"], "decode_tokens_per_s": timed["decode_tokens_per_s"],
            "ppl": ppl, "weight_bytes": weight_bytes(model), "sparse_layers": len(replaced)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="create the llama.cpp environment and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--pruned", nargs="*", default=[], help="pruned model folders to run sparse")
    p.add_argument("--out")
    a = p.parse_args()
    if a.child:
        return child(a.child)
    if a.setup:
        return setup()
    import torch

    from prunellm.cli import BENCH_TEXT
    from prunellm.data import eval_tokens
    from prunellm.evaluation.perplexity import windows as cut_windows
    from prunellm.models import BUILTINS, _chunk_paths, ensure_builtin, load_model

    from grid import machine, versions

    torch.set_num_threads(THREADS)
    gguf = _chunk_paths(BUILTINS["smollm2-135m"])[0]
    dense_folder = str(ensure_builtin("smollm2-135m"))
    _, tok = load_model(dense_folder)
    ids = tok(BENCH_TEXT * (1 + PROMPT // 20), return_tensors="pt").input_ids[:, :PROMPT]
    windows = cut_windows(eval_tokens(tok, "wikitext2", SEQLEN), SEQLEN, WINDOWS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"gguf": str(gguf), "prompt": ids[0].tolist(), "windows": windows.tolist()}))
        result = subprocess.run([str(LLAMA_ENV / "bin" / "python"), __file__, "--child", str(spec)],
                                capture_output=True, text=True, check=True)
        rows.append({"runtime": "llama.cpp (llama-cpp-python 0.3.36)", "model": "SmolLM2-135M Q4_1 GGUF",
                     "dtype": "Q4_1", **json.loads(result.stdout.strip().splitlines()[-1])})
    for dtype in ("float32", "bfloat16"):
        rows.append({"runtime": "prunellm dense", "model": "smollm2-135m", "dtype": dtype,
                     **prunellm_row(dense_folder, dtype, False, ids, windows)})
        for folder in a.pruned:
            report = json.loads((Path(folder) / "prune_report.json").read_text())
            target = f"{report['config']['solver']} {report['sparsity']:.0%}"
            rows.append({"runtime": "prunellm sparse", "model": target, "dtype": dtype,
                         **prunellm_row(folder, dtype, True, ids, windows)})
    common = {"threads": THREADS, "prompt_tokens": PROMPT, "new_tokens": NEW, "windows": WINDOWS, "seqlen": SEQLEN,
              "machine": machine(), "versions": versions()}
    print("| runtime | model | dtype | decode tok/s | prefill tok/s | weights MiB | WikiText-2 ppl |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['model']} | {r['dtype']} | {r['decode_tokens_per_s']:.1f} | "
              f"{r['prefill_tokens_per_s']:.0f} | {r['weight_bytes'] / 2**20:.0f} | {r['ppl']:.2f} |")
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, **common}) + "\n")


if __name__ == "__main__":
    main()
