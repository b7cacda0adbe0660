"""Solvers against brute force and closed forms on small random layers with correlated inputs."""

import pytest
import torch

from prunellm.masks import Target
from prunellm.solvers import SOLVERS, LayerStats


def correlated_inputs(tokens=512, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g) * 0.3 + torch.eye(width)
    scale = torch.rand(width, generator=g) * 3 + 0.1
    return (torch.randn(tokens, width, generator=g) @ mix) * scale


def stats_for(x: torch.Tensor, samples: int = 4) -> LayerStats:
    x = x.double()
    return LayerStats(sq_norms=(x**2).sum(0), xtx=(x.t() @ x).float(), tokens=x.shape[0], samples=samples)


def output_error(w, w_hat, x):
    return torch.linalg.norm(x @ w.t() - x @ w_hat.t()).item()


def run(name, w, x, target):
    return SOLVERS[name].fn(w.clone(), stats_for(x), target, block_size=8, dampening_frac=0.01)


def test_magnitude_mask_is_global_lowest():
    w = torch.randn(16, 32)
    res = run("magnitude", w, correlated_inputs(), Target(sparsity=0.5))
    k = int(w.numel() * 0.5)
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    expected[w.abs().flatten().argsort()[:k]] = True
    assert torch.equal(res.mask, expected.view_as(w))
    assert torch.equal(res.weight, w.masked_fill(res.mask, 0))


def test_wanda_mask_is_rowwise_lowest_score():
    w, x = torch.randn(16, 32), correlated_inputs()
    res = run("wanda", w, x, Target(sparsity=0.6))
    score = w.abs() * x.norm(dim=0)
    k = int(32 * 0.6)
    for r in range(16):
        assert set(res.mask[r].nonzero().flatten().tolist()) == set(score[r].argsort()[:k].tolist())
    assert (res.mask.sum(1) == k).all()
    assert torch.equal(res.weight, w.masked_fill(res.mask, 0))


def test_ria_mask_is_rowwise_lowest_relative_importance():
    w, x = torch.randn(16, 32), correlated_inputs()
    res = run("ria", w, x, Target(sparsity=0.6))
    k = int(32 * 0.6)
    norms = x.double().norm(dim=0)
    for r in range(16):
        score = [(abs(w[r, j]) / w[:, j].abs().sum() + abs(w[r, j]) / w[r].abs().sum()) * norms[j] ** 0.5
                 for j in range(32)]
        lowest = sorted(range(32), key=lambda j: float(score[j]))[:k]
        assert set(res.mask[r].nonzero().flatten().tolist()) == set(lowest)
    assert torch.equal(res.weight, w.masked_fill(res.mask, 0))
    # a column of large weights is less important to RIA than to Wanda: the masks differ
    w[:, 3] *= 20
    assert not torch.equal(run("ria", w, x, Target(sparsity=0.6)).mask, run("wanda", w, x, Target(sparsity=0.6)).mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_groups_for_every_solver(n, m):
    w, x = torch.randn(16, 32), correlated_inputs()
    for name in SOLVERS:
        res = run(name, w, x, Target(n=n, m=m))
        assert (res.mask.view(16, -1, m).sum(-1) == n).all(), name
        assert (res.weight[res.mask] == 0).all(), name


@pytest.mark.parametrize("target", [Target(sparsity=0.5), Target(sparsity=0.7), Target(n=2, m=4)])
def test_sparsegpt_beats_magnitude_and_wanda_on_reconstruction(target):
    torch.manual_seed(1)
    w, x = torch.randn(24, 32), correlated_inputs(seed=1)
    errors = {name: output_error(w, run(name, w, x, target).weight, x) for name in SOLVERS}
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["magnitude"]


def test_sparsegpt_exact_count_per_block():
    w, x = torch.randn(8, 32), correlated_inputs()
    res = run("sparsegpt", w, x, Target(sparsity=0.5))
    for i in range(0, 32, 8):
        assert res.mask[:, i : i + 8].sum() == 32
    assert (res.weight[res.mask] == 0).all()


def test_sparsegpt_update_single_removal_matches_obs():
    # One pruned weight, in the first column (SparseGPT updates only later columns), so its OBS
    # update must equal the exact least-squares optimum of the kept weights for that mask.
    torch.manual_seed(3)
    w, x = torch.randn(1, 6), correlated_inputs(tokens=200, width=6, seed=3)
    w[0, 0] = 1e-3
    res = SOLVERS["sparsegpt"].fn(w.clone(), stats_for(x), Target(sparsity=1 / 6), block_size=6, dampening_frac=1e-9)
    keep = ~res.mask[0]
    # least squares: best kept weights to reproduce x @ w.T from the kept columns only
    sol = torch.linalg.lstsq(x[:, keep].double(), (x @ w.t()).double()).solution.t().float()
    assert res.mask[0].tolist() == [True] + [False] * 5
    torch.testing.assert_close(res.weight[0, keep], sol[0], rtol=1e-3, atol=1e-4)


def test_sparsegpt_dead_inputs_and_singular_hessian():
    x = correlated_inputs(width=16)
    x[:, 3] = 0  # a dead input
    x[:, 5] = x[:, 4]  # collinear inputs make H singular without dampening
    w = torch.randn(8, 16)
    res = run("sparsegpt", w, x, Target(sparsity=0.5))
    assert torch.isfinite(res.weight).all()
    assert (res.weight[:, 3] == 0).all()
