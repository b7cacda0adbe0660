"""GPU check: the engine on an accelerator against the CPU, on the same model, data and seed, in one process.

For each cell (Wanda, SparseGPT and mrp at 50%, OWL + Wanda at 70%; quick setting) it prunes a copy of
the model on the CPU and a copy with `--device`, compares the masks (share of weights where they agree)
and the WikiText-2 perplexities (both evaluated on the device), and times both. The perplexity is also
set against the committed CPU grid row of the same cell where there is one. Then it prunes Wanda 2:4 in
float16 on the device and benches it dense against `sparsify` (CUDA 2:4 semi-structured kernels).
One JSON line per cell goes to `--out`; the last line of output says whether every check passed.

    python bench/gpu_check.py --device cuda --out bench/results/gpu_check_smollm2.jsonl
    python bench/gpu_check.py --device cpu --model FOLDER --nsamples 4 --seqlen 64 --windows 2   # smoke run

A CPU "device" runs the same code path (every block moved through the onloading code): its masks and
perplexities equal the CPU's exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import prunellm
from prunellm.data import calibration_batch
from prunellm.devices import peak_memory_mb, reset_peak_memory, resolve_device, synchronize
from prunellm.engine.residency import on_device
from prunellm.runtime.sparse_linear import sparsify
from prunellm.runtime.speed import compare

from grid import machine, results_path, versions

CELLS = [("wanda", "uniform", "0.5"), ("sparsegpt", "uniform", "0.5"), ("mrp", "uniform", "0.5"),
         ("wanda", "owl", "0.7")]
PPL_TOLERANCE = 0.01  # relative, device against CPU
MASK_AGREEMENT = 0.99  # masks may differ where scores tie within float rounding (summation order)


def _config(solver: str, allocation: str, target: str, device: str, a: argparse.Namespace) -> prunellm.PruneConfig:
    structure = {"mask_structure": target} if ":" in target else {"sparsity": float(target)}
    return prunellm.PruneConfig(solver=solver, allocation=allocation, num_calibration_samples=a.nsamples,
                                max_seq_length=a.seqlen, seed=0, device=device, data_dir=a.data_dir, **structure)


def _masks(model: torch.nn.Module, report: dict) -> dict[str, torch.Tensor]:
    return {row["name"]: (model.get_submodule(row["name"]).weight == 0).cpu() for row in report["layers"]}


def _prune(model, tok, config, ids, device: torch.device) -> tuple[dict, float]:
    reset_peak_memory(device)
    synchronize(device)
    t0 = time.perf_counter()
    report = prunellm.prune(model, tok, config, calibration_ids=ids, progress=False)
    synchronize(device)
    return report, time.perf_counter() - t0


def _ppl(model, tok, device: torch.device, a: argparse.Namespace) -> float:
    with on_device(model, device):
        return prunellm.perplexity(model, tok, "wikitext2", a.eval_seqlen, a.windows, data_dir=a.data_dir)[0]


def _grid_ppl(a: argparse.Namespace, solver: str, allocation: str, target: str) -> float | None:
    path = results_path(a.model)
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    match = [r for r in rows if (r.get("setting"), r["solver"], r["allocation"], r["target"], r.get("seed")) ==
             ("quick", solver, allocation, target, 0)]
    same_setting = (a.nsamples, a.seqlen, a.eval_seqlen, a.windows) == (32, 1024, 1024, 64)
    return match[-1]["ppl"] if match and same_setting else None


def check_cell(model, tok, ids, device, cell, a) -> dict:
    solver, allocation, target = cell
    cpu_model, dev_model = copy.deepcopy(model), copy.deepcopy(model)
    cpu_report, cpu_s = _prune(cpu_model, tok, _config(*cell, "cpu", a), ids, torch.device("cpu"))
    dev_report, dev_s = _prune(dev_model, tok, _config(*cell, str(device), a), ids, device)
    cpu_masks, dev_masks = _masks(cpu_model, cpu_report), _masks(dev_model, dev_report)
    total = sum(m.numel() for m in cpu_masks.values())
    agree = sum(int((cpu_masks[n] == dev_masks[n]).sum()) for n in cpu_masks) / total
    ppl_cpu, ppl_dev = _ppl(cpu_model, tok, device, a), _ppl(dev_model, tok, device, a)
    grid = _grid_ppl(a, *cell)
    ok = abs(ppl_dev - ppl_cpu) <= PPL_TOLERANCE * ppl_cpu and agree >= MASK_AGREEMENT
    return {"check": "prune", "solver": solver, "allocation": allocation, "target": target,
            "device": dev_report["device"], "ppl_cpu": ppl_cpu, "ppl_device": ppl_dev, "ppl_grid_row": grid,
            "mask_agreement": agree, "prune_s_cpu": round(cpu_s, 2), "prune_s_device": round(dev_s, 2),
            "peak_device_mb": dev_report.get("peak_device_mb"), "activations": dev_report.get("activations"),
            "ok": ok}


def check_24(model, tok, ids, device, a) -> dict:
    """Wanda 2:4 in float16 on the device, then dense vs `sparsify` decode and prefill speed."""
    half = copy.deepcopy(model).to(device, torch.float16 if device.type != "cpu" else torch.float32)
    prunellm.prune(half, tok, _config("wanda", "uniform", "2:4", str(device), a), calibration_ids=ids, progress=False)
    prompt = ids[:1, : a.prompt_tokens]
    result = compare(half, prompt, a.new_tokens, repeats=3)
    expected_kernel = device.type in ("cuda", "cpu")
    ok = result["sparse_layers"] > 0 if expected_kernel else True
    return {"check": "2:4 bench", "device": str(device), "dtype": str(half.dtype).removeprefix("torch."),
            **{k: result[k] for k in ("kernel", "kernel_error", "sparse_layers", "decode_speedup",
                                       "prefill_speedup", "same_tokens")},
            "dense": result["dense"], "sparse": result["sparse"], "ok": ok}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--cells", default="all", help="comma-separated solver:allocation:target, or all")
    p.add_argument("--no-bench", action="store_true", help="skip the 2:4 speed check")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="append the rows to this JSON-lines file")
    a = p.parse_args()
    device = resolve_device(a.device)
    cells = CELLS if a.cells == "all" else [tuple(c.split(":")) for c in a.cells.split(",")]
    model, tok = prunellm.load_model(a.model, dtype="float32")
    ids = calibration_batch(tok, "wikitext2", a.nsamples, a.seqlen, 0, a.data_dir)
    common = {"model": a.model, "setting": {k: getattr(a, k) for k in ("nsamples", "seqlen", "eval_seqlen", "windows")},
              "machine": machine(), "versions": versions(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    rows = [check_cell(model, tok, ids, device, cell, a) for cell in cells]
    if not a.no_bench:
        rows.append(check_24(model, tok, ids, device, a))
    for row in rows:
        row.update(common)
        print(json.dumps({k: v for k, v in row.items() if k not in ("machine", "versions", "dense", "sparse")}))
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    passed = all(r["ok"] for r in rows)
    print(f"gpu_check: {'all checks passed' if passed else 'CHECKS FAILED'} on {device}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
