"""The ADMM update for a fixed mask: it reaches the exact least-squares optimum and never loses to OBS."""

import pytest
import torch

from prunellm.masks import Target
from prunellm.solvers import SOLVERS
from prunellm.solvers.admm import admm_update, damped_hessian, layer_errors

from test_solvers import correlated_inputs, stats_for


def exact_optimum(w0: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, independently: solve H_KK w_K = (w₀ H)_K on the kept set K."""
    out = torch.zeros_like(w0)
    for r in range(w0.shape[0]):
        k = (~mask[r]).nonzero().flatten()
        out[r, k] = torch.linalg.solve(h[k][:, k], (w0[r] @ h)[k])
    return out


@pytest.mark.parametrize("solver", ["magnitude", "wanda", "sparsegpt", "mrp"])
@pytest.mark.parametrize("target", [Target(sparsity=0.6), Target(n=2, m=4)])
def test_admm_reaches_the_masked_least_squares_optimum(solver, target):
    w, x = torch.randn(16, 32, generator=torch.Generator().manual_seed(3)), correlated_inputs(seed=3)
    stats = stats_for(x)
    result = SOLVERS[solver].fn(w.clone(), stats, target, block_size=8, dampening_frac=0.01)
    updated = admm_update(w, result, stats, iterations=30, cg_steps=100, dampening_frac=0.01)
    assert torch.equal(updated.mask, result.mask) and (updated.weight[updated.mask] == 0).all()
    w0, h = damped_hessian(w, stats, 0.01, torch.float64)
    best = layer_errors(w0, exact_optimum(w0, h, result.mask), h)
    got = layer_errors(w0, updated.weight.double(), h)
    torch.testing.assert_close(got, best, rtol=1e-4, atol=1e-6)
    incoming = layer_errors(w0, result.weight.double(), h)
    assert (got <= incoming * (1 + 1e-6)).all()  # never above the solver's (OBS) update on the same mask


def test_admm_alone_converges_as_rho_grows():
    # without the CG finish, more ADMM iterations get closer to the optimum
    w, x = torch.randn(8, 32, generator=torch.Generator().manual_seed(4)), correlated_inputs(seed=4)
    stats = stats_for(x)
    result = SOLVERS["wanda"].fn(w.clone(), stats, Target(sparsity=0.5))
    w0, h = damped_hessian(w, stats, 0.01, torch.float64)
    best = float(layer_errors(w0, exact_optimum(w0, h, result.mask), h).sum())
    gaps = [float(layer_errors(w0, admm_update(w, result, stats, iterations=n, cg_steps=1).weight.double(), h).sum())
            - best for n in (3, 30, 120)]
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-9


def test_engine_update_option():
    from conftest import assert_layers_improved, prune_tiny

    assert_layers_improved(prune_tiny(solver="wanda", sparsity=0.5, update="admm"), "update")
