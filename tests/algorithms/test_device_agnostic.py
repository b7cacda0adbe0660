"""The algorithms create no tensor off the device of their inputs.

With `torch.device("meta")` as the default device, any tensor made without an explicit device lands on
meta and the computation fails or gives meta results: exactly the mistake that breaks CUDA runs, caught
on the CPU. Each function must give bit for bit what it gives without the trick.
"""

from __future__ import annotations

import pytest
import torch

from prunellm.allocation import ALLOCATIONS, LayerInfo
from prunellm.masks import Target
from prunellm.quant import QuantScheme, quantize_rtn
from prunellm.solvers import SOLVERS, LayerStats


def _stats(n: int = 32, tokens: int = 256, seed: int = 0) -> LayerStats:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n, generator=g) * torch.linspace(0.2, 3.0, n)
    return LayerStats(sq_norms=x.square().sum(0).double(), xtx=x.T @ x, features=x[::4].clone(), tokens=tokens,
                      samples=8)


def _weight(rows: int = 24, cols: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


CASES = [(name, target, selection) for name in sorted(SOLVERS)
         for target in (Target(sparsity=0.6), Target(n=2, m=4)) for selection in ("score",)]
CASES.append(("mrp", Target(n=2, m=4), "loss"))
QUANT = [None, QuantScheme(8, 0), QuantScheme(4, 16)]


@pytest.mark.parametrize("quant", QUANT, ids=str)
@pytest.mark.parametrize("solver,target,selection", CASES, ids=lambda v: str(v))
def test_solvers_on_a_meta_default_device(solver, target, selection, quant):
    weight, stats, fresh = _weight(), _stats(), _stats()  # fresh: no factorization made off the trick is reused
    options = {"block_size": 16, "mask_selection": selection, "quant": quant}
    expected = SOLVERS[solver].fn(weight.clone(), stats, target, **options)
    with torch.device("meta"):
        got = SOLVERS[solver].fn(weight.clone(), fresh, target, **options)
    assert got.weight.device.type == "cpu" and got.mask.device.type == "cpu"
    assert torch.equal(got.weight, expected.weight) and torch.equal(got.mask, expected.mask)
    assert got.info == expected.info
    if quant is not None:
        assert got.scales.device.type == "cpu" and torch.equal(got.scales, expected.scales)


@pytest.mark.parametrize("name", sorted(ALLOCATIONS))
def test_allocations_on_a_meta_default_device(name):
    blocks, layers, measures = 4, [], []
    for b in range(blocks):
        weights = {f"b{b}.{c}": _weight(seed=10 * b + i) * (1 + b) for i, c in enumerate(("q", "up"))}
        stats = {n: _stats(seed=10 * b + i) for i, n in enumerate(weights)}
        layers += [LayerInfo(n, b, n.split(".")[1], w.numel()) for n, w in weights.items()]
        measures.append(weights | {"_stats": stats})
    allocation = ALLOCATIONS[name]
    target = Target(sparsity=0.5)

    def run():
        measured = []
        for m in measures:
            weights = {k: v for k, v in m.items() if k != "_stats"}
            stats = m["_stats"] if allocation.needs else None
            measured.append(allocation.measure(weights, stats) if allocation.measure else {})
        return allocation.allocate(layers, measured, target)

    expected = run()
    with torch.device("meta"):
        got = run()
    assert got.targets == expected.targets and got.block_stat == expected.block_stat


def test_round_to_nearest_on_a_meta_default_device():
    weight = _weight()
    expected = quantize_rtn(weight, QuantScheme(4, 16), weight.abs() > 0.5)
    with torch.device("meta"):
        got = quantize_rtn(weight, QuantScheme(4, 16), weight.abs() > 0.5)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_channel_permutation_on_a_meta_default_device():
    from prunellm.permute import nm_permutation

    scores = _weight(24, 64).abs()
    expected = nm_permutation(scores, 2, 4)
    with torch.device("meta"):
        got = nm_permutation(scores, 2, 4)
    assert got.device.type == "cpu" and torch.equal(got, expected)
