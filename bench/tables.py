"""Print the README's result tables (Markdown) from the JSON files in bench/results.

    python bench/tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TARGETS = ["0.5", "0.7", "2:4"]


def scale_table() -> None:
    latest = {(r["solver"], r["mode"]): r for r in _jsonl("scale_smollm2.jsonl")}  # the last run of each
    print("| solver | run | prune_s | speedup over 1 process | peak RSS MB (rank 0) | masks differing from 1 process "
          "| ppl (1024, 64 windows) |")
    print("|---|---|---|---|---|---|---|")
    for (solver, mode), r in latest.items():
        base = latest.get((solver, "1 process"))
        speed = f"{base['prune_s'] / r['prune_s']:.2f}×" if base else "–"
        ppl = f"{r['ppl']:.2f}" if r.get("ppl") else "–"
        print(f"| {solver} | {mode} | {r['prune_s']:.1f} | {speed} | {r['peak_rss_mb']:.0f} | "
              f"{r['mask_differs']} of {r['mask_total']} ({r['mask_differs'] / r['mask_total']:.2%}) | {ppl} |")


def memory_plan_table() -> None:
    path = RESULTS / "memory_plan_llama70b.json"
    if not path.exists():
        return
    plan = json.loads(path.read_text())
    print("| GiB per process | " + " | ".join(plan["columns"]) + " |")
    print("|---|" + "---|" * len(plan["columns"]))
    for term, values in zip(plan["terms"], plan["gib"]):
        label = f"**{term}**" if term == "peak" else term
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


def gpu_plan_markdown(rows: list[dict]) -> str:
    """The per-GPU memory plan (bench/memory_plan.py --gpu) as a Markdown table."""
    lines = ["| model | solver | activations | peak GPU GiB | host GiB | fits on |", "|---|---|---|---|---|---|"]
    for r in rows:
        fits = ", ".join(f"{gb} GB" for gb in r["fits_gb"]) or "none of 24/48/80 GB"
        lines.append(f"| {r['model']} | {r['solver']} | {r['activations']} | {r['peak_gpu_gib']:.1f} | "
                     f"{r['host_gib']:.1f} | {fits} |")
    return "\n".join(lines)


def gpu_plan_table() -> None:
    path = RESULTS / "memory_plan_gpu.json"
    if path.exists():
        print(gpu_plan_markdown(json.loads(path.read_text())["rows"]))


def _jsonl(name: str) -> list[dict]:
    path = RESULTS / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def solver_table() -> None:
    rows = {(r["solver"], r["target"]): r for r in _jsonl("quick_smollm2.jsonl") + _jsonl("mrp_smollm2.jsonl")}
    print("| solver | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for solver in ("magnitude", "wanda", "sparsegpt", "mrp"):
        cells = [f"{rows[(solver, t)]['ppl']:.2f}" if (solver, t) in rows else "–" for t in TARGETS]
        print(f"| {solver} | " + " | ".join(cells) + " |")


def reference_table() -> None:
    ours = {(r["solver"], r["target"]): r for r in _jsonl("quick_smollm2.jsonl")}
    print("| solver | target | reference ppl | prunellm ppl | difference | reference sparsity | prunellm sparsity |")
    print("|---|---|---|---|---|---|---|")
    for r in _jsonl("reference_smollm2.jsonl"):
        target = r["pattern"] or f"{r['sparsity']:g}"
        o = ours.get((r["method"], target))
        if o:
            print(f"| {r['method']} | {target} | {r['ppl']:.3f} | {o['ppl']:.3f} | {(o['ppl'] - r['ppl']) / r['ppl']:+.2%} "
                  f"| {r['achieved_sparsity']:.5f} | {o['sparsity']:.5f} |")


def speed_table() -> None:
    rows = _jsonl("speed_smollm2.jsonl")
    if not rows:
        return
    limits = {"wanda": 2.2, "sparsegpt": 3.0}
    print("| solver | target | calib_forward_s | prune_s | prune_s / calib_forward_s | limit | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['target']} | {r['calib_forward_s']:.1f} | {r['prune_s']:.1f} | "
              f"{r['prune_s'] / r['calib_forward_s']:.2f} | {limits.get(r['solver'], '–')} | {r['peak_rss_mb']:.0f} |")


ALLOC_TARGETS = ["0.5", "0.6", "0.7", "0.8"]


def allocation_table() -> None:
    """Allocation × solver × target with default options; runs with extra flags go to the variants table."""
    rows = _jsonl("allocation_smollm2.jsonl")
    if not rows:
        return
    cells = {(r["solver"], "uniform", r["target"]): r for r in _jsonl("quick_smollm2.jsonl")}
    for r in rows:
        if not r.get("extra"):
            cells[(r["solver"], r.get("allocation", "uniform"), r["target"])] = r
    for r in _jsonl("grid_smollm2.jsonl"):  # the same quick setting, run by bench/grid.py
        if r["setting"] == "quick" and r["seed"] == 0 and "ppl" in r and "source" not in r:
            cells[(r["solver"], r["allocation"], r["target"])] = r
    print("| solver | allocation | " + " | ".join(ALLOC_TARGETS) + " | profile_s / calib_forward_s |")
    print("|---|---|" + "---|" * len(ALLOC_TARGETS) + "---|")
    for solver in ("wanda", "sparsegpt"):
        for alloc in ("uniform", "owl", "als", "alpha"):
            got = [cells.get((solver, alloc, t)) for t in ALLOC_TARGETS]
            ratios = [r["profile_s"] / r["calib_forward_s"] for r in got if r and r.get("profile_s") and r.get("calib_forward_s")]
            cost = f"{min(ratios):.2f}–{max(ratios):.2f}" if ratios else "–"
            print(f"| {solver} | {alloc} | " + " | ".join(f"{r['ppl']:.2f}" if r else "–" for r in got) + f" | {cost} |")
    print()
    print("| solver | target | allocation | options | ppl | profile_s |")
    print("|---|---|---|---|---|---|")
    for r in rows + _jsonl("als_bounds_smollm2.jsonl"):
        if r.get("extra"):
            print(f"| {r['solver']} | {r['target']} | {r['allocation']} | `{r['extra']}` | {r['ppl']:.2f} | "
                  f"{r['profile_s']:.0f} |")


def reference_numerics_table() -> None:
    ref = {(r["method"], r["pattern"] or f"{r['sparsity']:g}"): r["ppl"] for r in _jsonl("reference_smollm2.jsonl")}
    ours = {(r["solver"], r["target"]): r["ppl"] for r in _jsonl("quick_smollm2.jsonl")}
    rows = _jsonl("reference_numerics_smollm2.jsonl")
    if not rows:
        return
    print("| solver | target | reference ppl | prunellm ppl | selection | accumulation | ppl with these conventions "
          "| difference to reference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("allocation", "uniform") != "uniform":
            continue
        key = (r["solver"], r["target"])
        print(f"| {r['solver']} | {r['target']} | {ref[key]:.3f} | {ours[key]:.3f} | {r['selection']} | "
              f"{r['accumulation']} | {r['ppl']:.3f} | {(r['ppl'] - ref[key]) / ref[key]:+.4%} |")


def owl_reference_table() -> None:
    """OWL + Wanda at 70%: the reference procedure vs prunellm, with the per-block outlier ratios compared."""
    ref = _jsonl("reference_owl_smollm2.jsonl")
    if not ref:
        return
    ref = ref[-1]
    ours = [("prunellm (default numerics)", r) for r in _jsonl("allocation_smollm2.jsonl")
            if r.get("allocation") == "owl" and r["solver"] == "wanda" and r["target"] == "0.7" and not r["extra"]]
    ours += [(f"prunellm, {r['accumulation']} accumulation", r) for r in _jsonl("reference_numerics_smollm2.jsonl")
             if r.get("allocation") == "owl"]
    print("| run | ppl | difference to reference | achieved sparsity | max abs difference of block outlier ratios |")
    print("|---|---|---|---|---|")
    print(f"| reference (wanda_reference.py --owl) | {ref['ppl']:.3f} | – | {ref['achieved_sparsity']:.5f} | – |")
    for label, r in ours:
        d = max((abs(a - b) for a, b in zip(r["per_block"], ref["outlier_ratio"])), default=None) \
            if "per_block" in r else None
        print(f"| {label} | {r['ppl']:.3f} | {(r['ppl'] - ref['ppl']) / ref['ppl']:+.2%} | {r['sparsity']:.5f} | "
              f"{'–' if d is None else f'{d:.1e}'} |")


def mrp_table() -> None:
    sgpt = {r["target"]: r for r in _jsonl("quick_smollm2.jsonl") if r["solver"] == "sparsegpt"}
    print("| target | sparsegpt ppl | mrp ppl | layers where mrp error < sparsegpt | median error ratio | "
          "max error ratio | solve s sparsegpt / mrp (same stats) | prune_s sparsegpt / mrp |")
    print("|---|---|---|---|---|---|---|---|")
    for r in _jsonl("mrp_smollm2.jsonl"):
        s = sgpt.get(r["target"])
        print(f"| {r['target']} | {s['ppl']:.2f} | {r['ppl']:.2f} | {r['layers_below_sparsegpt']}/{r['layers']} | "
              f"{r['error_ratio_median']:.3f} | {r['error_ratio_max']:.3f} | "
              f"{r['solve_s_sparsegpt_same_stats']:.0f} / {r['solve_s_mrp']:.0f} | "
              f"{s['prune_s']:.0f} / {r['prune_s']:.0f} ({r['prune_s'] / s['prune_s']:.2f}×) |" if s else "")


def profile_cost_table() -> None:
    rows = _jsonl("profile_cost_smollm2.jsonl")
    if not rows:
        return
    print("| allocation | profiling pass (s) | one dense forward of the calibration set (s) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['allocation']} | {r['profile_s']:.1f} | {r['dense_forward_s']:.1f} | {r['ratio']:.2f} |")


def latest_speed_rows() -> list[dict]:
    """The last sparse_speed run of each target and dtype (earlier runs stay in the file as history; rows
    from before the bfloat16 kernels have no dtype and are float32)."""
    rows = {(r["target"], r.get("dtype", "float32")): {"dtype": "float32", **r}
            for r in _jsonl("sparse_speed_smollm2.jsonl")}
    return sorted(rows.values(), key=lambda r: (r["dtype"] != "float32", r["dtype"]))


def sparse_tables() -> None:
    rows = latest_speed_rows()
    if not rows:
        return
    mib = 2**20
    print("| target | dense folder (MiB) | compressed float32 | compressed float16 | pruned weights alone, float32 "
          "| pruned weights alone, float16 | bound (1−s) + 1/(8·bytes) float32 / float16 |")
    print("|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["dtype"] == "float32"):
        z, s = r["sizes"], r["sparsity"]
        p32, p16 = z["pruned_weights_float32"], z["pruned_weights_float16"]
        print(f"| {r['target']} | {z['dense_float32'] / mib:.0f} | {z['compressed_float32'] / mib:.0f} "
              f"({z['compressed_float32'] / z['dense_float32']:.1%}) | {z['compressed_float16'] / mib:.0f} "
              f"({z['compressed_float16'] / z['dense_float32']:.1%}) | {p32['stored'] / p32['dense']:.1%} | "
              f"{p16['stored'] / p16['dense']:.1%} | {1 - s + 1 / 32:.1%} / {1 - s + 1 / 16:.1%} |")
    print()
    print("| target | dtype | decode tok/s dense | decode tok/s sparse | decode speedup (head through torch) "
          "| prefill tok/s dense | prefill tok/s sparse | greedy tokens identical | weights in memory dense / sparse (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, sp = r["dense"], r["sparse"]
        head = f" ({r['decode_speedup_torch_head']:.2f}×)" if "decode_speedup_torch_head" in r else ""
        print(f"| {r['target']} | {r['dtype']} | {d['decode_tokens_per_s']:.1f} | "
              f"{sp['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.2f}×{head} | {d['prefill_tokens_per_s']:.0f} | "
              f"{sp['prefill_tokens_per_s']:.0f} | {r['same_tokens']} | "
              f"{r['memory_bytes']['dense'] / mib:.0f} / {r['memory_bytes']['sparse'] / mib:.0f} |")


def zeroshot_table() -> None:
    files = {"dense": "zeroshot_dense_limit100.json", "wanda 50%": "zeroshot_wanda50_limit100.json"}
    data = {k: json.loads((RESULTS / f).read_text())["zeroshot"] for k, f in files.items() if (RESULTS / f).exists()}
    if not data:
        return
    tasks = list(next(iter(data.values()))["tasks"])
    print("| task | metric | " + " | ".join(data) + " |")
    print("|---|---|" + "---|" * len(data))
    for task in tasks:
        first = next(iter(data.values()))["tasks"][task]
        metrics = ["acc", "acc_norm"] if "acc_norm" in first and task not in ("boolq", "copa") else ["acc"]
        if "perplexity" in first:
            metrics.append("perplexity")
        for metric in metrics:
            cells = [f"{d['tasks'][task][metric]:.3f}" + (f" ± {d['tasks'][task][metric + '_stderr']:.3f}"
                     if f"{metric}_stderr" in d["tasks"][task] else "") for d in data.values()]
            print(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    print(f"| mean of {len(next(iter(data.values()))['mean_acc_tasks'])} | acc | "
          + " | ".join(f"{d['mean_acc']:.3f}" for d in data.values()) + " |")


if __name__ == "__main__":
    for table in (solver_table, reference_table, reference_numerics_table, speed_table, mrp_table, allocation_table,
                  owl_reference_table, profile_cost_table, sparse_tables, scale_table, memory_plan_table, gpu_plan_table,
                  zeroshot_table):
        table()
        print()
