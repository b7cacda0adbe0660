"""`--solver admm`: the mask chosen gradually inside ADMM; exact targets, exact kept weights, lower error."""

import itertools

import pytest
import torch

from prunellm.masks import Target
from prunellm.solvers import SOLVERS
from prunellm.solvers.admm import damped_hessian, layer_errors
from prunellm.solvers.gradual_admm import schedule

from test_admm import exact_optimum
from test_solvers import correlated_inputs, stats_for


def test_cubic_schedule_reaches_the_target_and_leaves_nm_alone():
    steps = [schedule(Target(sparsity=0.6), k, ramp=10).sparsity for k in range(14)]
    assert all(a < b for a, b in zip(steps[:10], steps[1:10])) and steps[9:] == [0.6] * 5
    assert steps[0] == pytest.approx(0.6 * (1 - 0.9 ** 3))
    assert schedule(Target(n=2, m=4), 0, ramp=10) == Target(n=2, m=4)


@pytest.mark.parametrize("target", [Target(sparsity=0.6), Target(sparsity=0.8), Target(n=2, m=4)])
def test_mask_is_the_target_and_kept_weights_are_its_optimum(target):
    w, x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)), correlated_inputs(seed=1)
    stats = stats_for(x)
    result = SOLVERS["admm"].fn(w.clone(), stats, target, dampening_frac=0.01)
    if target.is_nm:
        assert (result.mask.view(16, 8, 4).sum(-1) == 2).all()
    else:
        assert (result.mask.sum(1) == int(32 * target.sparsity)).all()
    assert (result.weight[result.mask] == 0).all()
    w0, h = damped_hessian(w, stats, 0.01, torch.float64)
    best = layer_errors(w0, exact_optimum(w0, h, result.mask), h)
    torch.testing.assert_close(layer_errors(w0, result.weight.double(), h), best, rtol=1e-4, atol=1e-6)
    assert result.info["layer_error"] == pytest.approx(float(best.sum()), rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [Target(sparsity=0.6), Target(n=2, m=4)])
def test_lower_layer_error_than_sparsegpt_and_mrp_on_correlated_inputs(seed, target):
    w, x = torch.randn(16, 32, generator=torch.Generator().manual_seed(seed)), correlated_inputs(seed=seed)
    stats = stats_for(x)
    w0, h = damped_hessian(w, stats, 0.01, torch.float64)
    error = {name: float(layer_errors(w0, SOLVERS[name].fn(w.clone(), stats, target, block_size=8,
                                                            dampening_frac=0.01).weight.double(), h).sum())
             for name in ("sparsegpt", "mrp", "admm")}
    assert error["admm"] < min(error["sparsegpt"], error["mrp"])


def test_near_the_brute_force_best_mask_and_never_behind_sparsegpt_or_mrp():
    # one row of 10 inputs at 50%, 8 layers: all 252 masks, each with its exact kept weights
    optimal = 0
    for seed in range(8):
        w, x = torch.randn(1, 10, generator=torch.Generator().manual_seed(seed)), correlated_inputs(seed=seed)[:, :10]
        stats = stats_for(x)
        w0, h = damped_hessian(w, stats, 0.01, torch.float64)
        every = [float(layer_errors(w0, exact_optimum(w0, h, torch.tensor([[j in pruned for j in range(10)]])), h))
                 for pruned in itertools.combinations(range(10), 5)]
        error = {name: float(layer_errors(w0, SOLVERS[name].fn(w.clone(), stats, Target(sparsity=0.5), block_size=8,
                                                                dampening_frac=0.01).weight.double(), h))
                 for name in ("sparsegpt", "mrp", "admm")}
        assert error["admm"] <= min(error["sparsegpt"], error["mrp"]) * (1 + 1e-9)
        assert sum(e < error["admm"] * (1 - 1e-9) for e in every) < 10  # within the best 4% of masks
        optimal += min(every) >= error["admm"] * (1 - 1e-9)
    assert optimal >= 4


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_engine_prunes_with_the_admm_solver(arch):
    from conftest import prune_tiny

    report = prune_tiny(arch, solver="admm", sparsity=0.5)
    assert abs(report["sparsity"] - 0.5) < 1e-9
    assert all(r["layer_error"] >= 0 and r["admm_iterations"] == 30 for r in report["layers"])
