"""DSnoT-style mask repair: rows never get worse, patterns and counts hold, the bookkeeping is exact."""

import pytest
import torch

from prunellm.masks import Target
from prunellm.solvers import SOLVERS
from prunellm.solvers.dsnot import dsnot_repair, row_errors

from test_solvers import correlated_inputs, stats_for


@pytest.mark.parametrize("solver", ["magnitude", "wanda", "ria", "sparsegpt", "mrp"])
@pytest.mark.parametrize("target", [Target(sparsity=0.6), Target(n=2, m=4)])
def test_repair_never_raises_a_rows_error_and_keeps_the_pattern(solver, target):
    w, x = torch.randn(24, 32, generator=torch.Generator().manual_seed(1)), correlated_inputs(seed=1)
    stats = stats_for(x)
    result = SOLVERS[solver].fn(w.clone(), stats, target, block_size=8, dampening_frac=0.01)
    repaired = dsnot_repair(w, result, stats, target, cycles=20)
    h = stats.hessian().double()
    before, after = row_errors(w.double(), result.weight.double(), h), row_errors(w.double(), repaired.weight.double(), h)
    assert (after <= before).all()
    assert (repaired.weight[repaired.mask] == 0).all()
    if target.is_nm:
        assert (repaired.mask.view(24, -1, target.m).sum(-1) == target.n).all()
    assert torch.equal(repaired.mask.sum(1), result.mask.sum(1))  # one in, one out per swap
    revived = result.mask & ~repaired.mask
    assert torch.equal(repaired.weight[revived], w[revived])  # swapped back in at the dense value
    still = ~result.mask & ~repaired.mask
    # the solver's kept values stay, unless swapped out and back in (then at the dense value)
    kept, solver_value, dense_value = repaired.weight[still], result.weight[still], w[still]
    assert ((kept == solver_value) | (kept == dense_value)).all()
    if solver in ("magnitude", "wanda"):  # no weight update: the greedy swaps find real gains
        assert repaired.info["repair_swaps"] > 0 and after.sum() < before.sum()
    assert repaired.info["repair_error_after"] == pytest.approx(float(after.sum()), rel=1e-6)


def test_the_first_swap_is_the_best_grow_then_the_best_prune_by_brute_force():
    w, x = torch.randn(1, 8, generator=torch.Generator().manual_seed(0)), correlated_inputs(width=8, seed=2)
    stats = stats_for(x)
    result = SOLVERS["magnitude"].fn(w.clone(), stats, Target(sparsity=0.5))
    h = stats.hessian().double()
    err = lambda v: float(row_errors(w.double(), v.double(), h))  # noqa: E731
    pruned = result.mask[0].nonzero().flatten().tolist()
    grow = {j: err(result.weight.index_put((torch.tensor([0]), torch.tensor([j])), w[0, j])) for j in pruned}
    j = min(grow, key=grow.get)
    revived = result.weight.clone()
    revived[0, j] = w[0, j]
    kept = [k for k in range(8) if k not in pruned]
    prune = {k: err(revived.index_put((torch.tensor([0]), torch.tensor([k])), torch.tensor(0.0))) for k in kept}
    k = min(prune, key=prune.get)
    repaired = dsnot_repair(w, result, stats, Target(sparsity=0.5), cycles=1)
    assert prune[k] < err(result.weight)  # on this layer the best pair helps, so it is taken
    assert not repaired.mask[0, j] and repaired.mask[0, k]
    assert err(repaired.weight) == pytest.approx(prune[k], rel=1e-9)


def test_engine_repair_option():
    from conftest import assert_layers_improved, prune_tiny

    report = prune_tiny(solver="wanda", sparsity=0.5, repair="dsnot")
    assert_layers_improved(report, "repair")
    assert any(r["repair_swaps"] > 0 for r in report["layers"])
