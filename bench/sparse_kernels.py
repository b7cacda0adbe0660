"""Per-layer speed of the sparse kernels against dense, per dtype and input rows: where decode ends.

On SmolLM2's layer shapes (q/o 576×576, k/v 192×576, gate/up 1536×576, down 576×1536) at 50% and 70%
random unstructured sparsity, with enough copies of each layer that they do not fit in the cache (as in
a real forward pass), it times per layer:
  - `direct`: the bitmask kernel (reads only the kept values and the mask);
  - `decompress`: decompress into the shared buffer + one dense GEMM (the path for long inputs);
  - the dense baselines: `F.linear` in the dtype, and for 16-bit dtypes also `F.linear` in float32 on a
    float32 copy made per call (torch's other dense path for a 16-bit weight); the faster is the baseline.
`crossover` is the most rows for which `direct` beats `decompress` on every shape: the value of
`SparseLinear.DIRECT_MAX_TOKENS`. Run alone on the machine.

    python bench/sparse_kernels.py --out bench/results/sparse_kernels_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from prunellm.runtime import kernels
from prunellm.runtime.sparse_linear import SparseLinear, _buffer

from grid import machine, versions

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
ROWS = [1, 2, 4, 8, 12, 16, 24, 32, 64, 128]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(shape: tuple[int, int], dtype: torch.dtype, sparsity: float, copies: int, repeats: int) -> list[dict]:
    module = kernels.load()
    g = torch.Generator().manual_seed(0)
    rows, cols = shape
    weights = []
    for _ in range(copies):
        w = torch.randn(rows, cols, generator=g)
        w[torch.rand(rows, cols, generator=g) < sparsity] = 0
        weights.append(w.to(dtype))
    layers = [SparseLinear(w) for w in weights]
    compute = torch.float32 if dtype == torch.float16 else dtype
    width = (cols + 31) // 32 * 32
    out = []
    for n in ROWS:
        x = torch.randn(n, cols, generator=g).to(dtype)
        buf = _buffer(rows, width, compute)
        paths = {
            "direct": lambda: [module.bitmask_matmul(s.values, s.bitmask, s.row_offsets, x) for s in layers],
            "decompress": lambda: [(module.bitmask_decompress_into(s.values, s.bitmask, s.row_offsets, buf),
                                    F.linear(x.to(compute), buf[:, :cols]).to(dtype)) for s in layers],
            "dense": lambda: [F.linear(x, w) for w in weights],
        }
        if dtype != torch.float32:
            paths["dense_via_float32"] = lambda: [F.linear(x.float(), w.float()).to(dtype) for w in weights]
        row = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "sparsity": sparsity, "rows": n}
        row.update({f"{k}_us": round(_time(fn, repeats) / copies * 1e6, 2) for k, fn in paths.items()})
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=24, help="distinct copies of each layer (beyond the cache)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    module = kernels.load()
    assert module is not None, kernels.load_error()
    rows = []
    for name, dtype in DTYPES.items():
        for sparsity in (0.5, 0.7):
            for shape in SHAPES:
                rows += measure(shape, dtype, sparsity, a.copies, a.repeats)
            part = [r for r in rows if r["dtype"] == name and r["sparsity"] == sparsity]
            faster = [n for n in ROWS if all(r["direct_us"] < r["decompress_us"] for r in part if r["rows"] == n)]
            crossover = max((n for n in faster if all(m in faster for m in ROWS if m <= n)), default=0)
            print(f"{name} at {sparsity:.0%}: direct faster up to {crossover} rows")
            for n in ROWS:
                sel = [r for r in part if r["rows"] == n]
                dense = sum(min(r["dense_us"], r.get("dense_via_float32_us", float("inf"))) for r in sel)
                print(f"  rows {n:4d}: dense {dense:8.1f} us, direct {sum(r['direct_us'] for r in sel):8.1f}, "
                      f"decompress {sum(r['decompress_us'] for r in sel):8.1f} (sum over the 4 shapes)")
            rows.append({"summary": True, "dtype": name, "sparsity": sparsity, "crossover_rows": crossover})
    common = {"isa": module.isa(), "threads": torch.get_num_threads(), "machine": machine(), "versions": versions()}
    if a.out:
        with open(a.out, "a") as f:
            for row in rows:
                f.write(json.dumps({**row, **common}) + "\n")


if __name__ == "__main__":
    main()
