"""Memory needed to prune a model out of core (`--offload disk`) or on a GPU, computed from its config and the design.

Counts come from the model built on the meta device (exact parameter counts per block, input widths of
every linear); the solvers' temporary memory is measured here on a 2048-wide layer and scaled by the
layer's size (Wanda: × weight size, SparseGPT/mrp: × Hessian size). Nothing is downloaded or allocated
at full size.

    python bench/memory_plan.py --out bench/results/memory_plan_llama70b.json   # Llama-3.1-70B, README table
    python bench/memory_plan.py --nproc 4 --dtype bfloat16
    python bench/memory_plan.py --gpu --out bench/results/memory_plan_gpu.json  # Llama-3.1-8B and 70B per GPU

The GPU plan is the same sum for sequential onloading (`--device cuda`): the model stays in CPU memory
in bfloat16, the GPU holds one block, its statistics (float32), the float32 copy of the layer being
solved and the solver's temporaries, plus the calibration activations (`--activations device`) or only
the batch being run (`--activations cpu`). The solvers' factors are the CPU's: the same tensor
operations on the same float32 sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers as T

from tables import gpu_plan_markdown

GIB = 2**30


def solver_factors() -> dict[str, float]:
    """Peak temporary bytes of each solver on one layer, per byte of its weight (wanda) or Hessian (others)."""
    from prunellm.masks import Target
    from prunellm.engine.memory import current_rss_mb, peak_rss_mb, reset_peak_rss, return_freed_memory
    from prunellm.solvers import SOLVERS, LayerStats

    n, rows = 2048, 512
    x = torch.randn(4096, n)
    stats = LayerStats(xtx=x.T @ x, sq_norms=(x**2).sum(0).double(), tokens=4096, samples=4)
    weight = torch.randn(rows, n)
    factors = {}
    for name in ("wanda", "sparsegpt", "mrp"):
        small = LayerStats(xtx=stats.xtx[:64, :64].clone(), sq_norms=stats.sq_norms[:64].clone(), tokens=1, samples=1)
        SOLVERS[name].fn(weight[:8, :64], small, Target(sparsity=0.5))  # warm up
        return_freed_memory()
        base = current_rss_mb()
        reset_peak_rss()
        SOLVERS[name].fn(weight, stats, Target(sparsity=0.5))
        grown = (peak_rss_mb() - base) * 2**20
        factors[name] = grown / (weight.numel() * 4 if name == "wanda" else n * n * 4)
    return factors


def plan(config, solver: str, nsamples: int, seqlen: int, batch: int, nproc: int, dtype_bytes: int,
         spill: bool, factors: dict[str, float]) -> dict[str, float]:
    """GiB per process for each term and the peak, for a Llama-style config."""
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(config)
    block = model.model.layers[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    block_params = sum(p.numel() for p in block.parameters())
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    distinct_inputs = [h, h, h, inter]  # (qkv), o, (gate, up), down
    tokens = nsamples * seqlen / nproc
    largest = max(linears.values(), key=lambda m: m.weight.numel())
    widest = max(m.in_features for m in linears.values())
    # solvers read a float32 copy of the weight; in float32 that is the weight itself
    copy = 0 if dtype_bytes == 4 else largest.weight.numel() * 4
    terms = {
        "block weights": block_params * dtype_bytes,
        "embedding (input capture only)": vocab * h * dtype_bytes,
        "calibration activations": 2 * (batch * seqlen if spill else tokens) * h * dtype_bytes,
        "block forward temporaries": 3 * batch * seqlen * inter * dtype_bytes,
    }
    if solver == "wanda":
        terms["statistics"] = sum(distinct_inputs) * 8
        terms["solver temporaries"] = factors["wanda"] * largest.weight.numel() * 4
    else:
        terms["statistics"] = sum(w * w * 4 for w in distinct_inputs)
        terms["solver temporaries"] = factors[solver] * widest * widest * 4
    capture = terms["embedding (input capture only)"] + terms["calibration activations"] / 2
    calibrate = (terms["block weights"] + terms["calibration activations"] + terms["block forward temporaries"]
                 + terms["statistics"])
    solve = (terms["block weights"] + terms["calibration activations"] + terms["statistics"] + copy
             + terms["solver temporaries"])
    out = {k: v / GIB for k, v in terms.items()}
    out["peak"] = max(capture, calibrate, solve) / GIB
    out["whole model (for comparison)"] = sum(p.numel() for p in model.parameters()) * dtype_bytes / GIB
    return out


GPU_MODELS = {  # Llama-3.1 shapes: hidden, intermediate, layers, heads, kv heads, vocabulary
    "Llama-3.1-8B": (4096, 14336, 32, 32, 8, 128256),
    "Llama-3.1-70B": (8192, 28672, 80, 64, 8, 128256),
}
GPU_SIZES_GB = (24, 48, 80)
CUDA_CONTEXT_GIB = 1.0  # what the CUDA context and allocator take before any tensor


def gpu_plan(nsamples: int, seqlen: int, batch: int, factors: dict[str, float]) -> list[dict]:
    """Peak GPU memory per process for each model × solver × where the activations live, and which GPUs fit."""
    rows = []
    for model, (h, inter, layers, heads, kv, vocab) in GPU_MODELS.items():
        config = T.LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab)
        for solver in ("wanda", "sparsegpt", "mrp"):
            for where in ("device", "cpu"):
                p = plan(config, solver, nsamples, seqlen, batch, 1, 2, where == "cpu", factors)
                host = p["whole model (for comparison)"] + (2 * nsamples * seqlen * h * 2 / GIB if where == "cpu" else 0)
                fits = [gb for gb in GPU_SIZES_GB if p["peak"] + CUDA_CONTEXT_GIB <= gb * 1e9 / GIB]
                rows.append({"model": model, "solver": solver, "activations": where, "peak_gpu_gib": p["peak"],
                             "host_gib": host, "fits_gb": fits, "terms_gib": p})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=8192)
    p.add_argument("--intermediate", type=int, default=28672)
    p.add_argument("--layers", type=int, default=80)
    p.add_argument("--heads", type=int, default=64)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1, help="--calib-batch-size")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--gpu", action="store_true", help="the per-GPU plan for Llama-3.1-8B and 70B in bfloat16")
    p.add_argument("--out", help="also write the plan as JSON (bench/tables.py prints it)")
    a = p.parse_args()
    if a.gpu:
        factors = solver_factors()
        rows = gpu_plan(a.nsamples, a.seqlen, a.batch, factors)
        if a.out:
            record = {"arguments": vars(a), "solver_factors": factors, "torch": torch.__version__,
                      "cuda_context_gib": CUDA_CONTEXT_GIB, "rows": rows}
            Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"GiB per GPU (sequential onloading, bfloat16, {a.nsamples} × {a.seqlen} tokens, batch {a.batch})\n")
        print(gpu_plan_markdown(rows))
        return
    config = T.LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                           num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab)
    factors = solver_factors()
    print("solver temporaries measured: " + ", ".join(f"{k} {v:.1f}×" for k, v in factors.items()))
    dtype_bytes = 4 if a.dtype == "float32" else 2
    rows = {(s, spill): plan(config, s, a.nsamples, a.seqlen, a.batch, a.nproc, dtype_bytes, spill, factors)
            for s in ("wanda", "sparsegpt", "mrp") for spill in (False, True)}
    keys = list(next(iter(rows.values())))
    if a.out:
        record = {"arguments": vars(a), "solver_factors": factors, "torch": torch.__version__,
                  "columns": [f"{s}{' (spilled)' if sp else ''}" for s, sp in rows], "terms": keys,
                  "gib": [[rows[c][k] for c in rows] for k in keys]}
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nGiB per process: {a.layers} blocks, {a.nsamples} × {a.seqlen} calibration tokens over {a.nproc} "
          f"process(es), batch {a.batch}, {a.dtype}\n")
    print("| term | " + " | ".join(f"{s}{' (spilled)' if sp else ''}" for s, sp in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.1f}" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
