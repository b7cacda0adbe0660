"""Quantization: the grid, group boundaries, and joint (error-compensated) quantization against rounding."""

import pytest
import torch

from prunellm.errors import UsageError
from prunellm.masks import Target
from prunellm.quant import QuantScheme, dequantize, quantize_rtn, scheme
from prunellm.solvers import SOLVERS
from prunellm.solvers.sparsegpt import quantize_with_mask

from test_solvers import correlated_inputs, output_error, stats_for

SCHEMES = [QuantScheme(8, 0), QuantScheme(4, 32), QuantScheme(4, 0), QuantScheme(8, 32)]


def on_grid(weight: torch.Tensor, scales: torch.Tensor, q: QuantScheme) -> torch.Tensor:
    """The codes of `weight`, asserting that every entry is exactly code · its group's scale."""
    width = q.width(weight.shape[1])
    per_entry = scales.repeat_interleave(width, dim=1)[:, : weight.shape[1]]
    codes = torch.round(weight / per_entry)
    assert codes.abs().max() <= q.qmax
    assert torch.equal(dequantize(codes, scales, q), weight)
    return codes


def test_scheme_defaults_and_errors():
    assert scheme("none") is None
    assert scheme("int8") == QuantScheme(8, 0) and scheme("int4") == QuantScheme(4, 128)
    with pytest.raises(UsageError, match="unknown quantization"):
        scheme("int3")
    with pytest.raises(UsageError, match="multiple of 32"):
        scheme("int4", 48)


@pytest.mark.parametrize("q", SCHEMES, ids=str)
def test_rtn_on_grid_with_group_boundaries(q):
    w = torch.randn(12, 96)
    w[:, 40:] *= 10  # a group of large weights: its scale must not leak into its neighbours
    keep = torch.rand_like(w) > 0.5
    out, scales = quantize_rtn(w, q, keep)
    assert scales.shape == (12, q.groups(96))
    codes = on_grid(out, scales, q)
    assert not out[~keep].any()
    width = q.width(96)
    for g in range(q.groups(96)):
        block = slice(g * width, (g + 1) * width)
        expected = w[:, block].abs().masked_fill(~keep[:, block], 0).amax(1) / q.qmax
        assert torch.allclose(scales[:, g], torch.where(expected > 0, expected, torch.ones_like(expected)))
        assert codes[:, block].abs().amax(1).le(q.qmax).all()
    assert (out - w.masked_fill(~keep, 0)).abs().le(scales.repeat_interleave(width, 1)[:, :96] / 2 + 1e-6).all()


@pytest.mark.parametrize("q", SCHEMES, ids=str)
def test_joint_quantization_beats_rounding_on_correlated_inputs(q):
    """With the mask fixed, GPTQ's layer error ‖(W − Ŵ)X‖ is at most round-to-nearest's."""
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    x = correlated_inputs(width=64)
    mask = torch.rand_like(w) < 0.5
    joint = quantize_with_mask(w, stats_for(x), mask, q, block_size=32)
    on_grid(joint.weight, joint.scales, q)
    assert not joint.weight[mask].any()
    rtn, _ = quantize_rtn(w.masked_fill(mask, 0), q, ~mask)
    pruned = w.masked_fill(mask, 0)
    assert output_error(pruned, joint.weight, x) <= output_error(pruned, rtn, x)


@pytest.mark.parametrize("solver", ["magnitude", "wanda", "sparsegpt", "mrp"])
@pytest.mark.parametrize("target", [Target(sparsity=0.5), Target(n=2, m=4), Target(sparsity=0.0)], ids=str)
def test_every_solver_returns_weights_on_the_grid(solver, target):
    q = QuantScheme(4, 32)
    w = torch.randn(16, 64)
    x = correlated_inputs(width=64)
    res = SOLVERS[solver].fn(w.clone(), stats_for(x), target, block_size=32, dampening_frac=0.01, quant=q)
    on_grid(res.weight, res.scales, q)
    assert not res.weight[res.mask].any()
    assert float(res.mask.float().mean()) == pytest.approx(target.sparsity if not target.is_nm else 0.5, abs=0.01)
    plain = SOLVERS[solver].fn(w.clone(), stats_for(x), target, block_size=32, dampening_frac=0.01)
    if solver in ("magnitude", "wanda"):  # the mask does not depend on quantization
        assert torch.equal(res.mask, plain.mask)


def test_sparsegpt_joint_beats_prune_then_round():
    """SparseGPT's joint mode (round in the column loop) is better than pruning and rounding after."""
    q = QuantScheme(4, 32)
    w = torch.randn(32, 64)
    x = correlated_inputs(width=64)
    joint = SOLVERS["sparsegpt"].fn(w.clone(), stats_for(x), Target(sparsity=0.5), block_size=32, quant=q)
    plain = SOLVERS["sparsegpt"].fn(w.clone(), stats_for(x), Target(sparsity=0.5), block_size=32)
    rounded, _ = quantize_rtn(plain.weight, q, ~plain.mask)
    assert output_error(w, joint.weight, x) < output_error(w, rounded, x)


def test_group_must_fit_the_column_block():
    w = torch.randn(8, 64)
    with pytest.raises(UsageError, match="multiple of the quantization group"):
        SOLVERS["sparsegpt"].fn(w, stats_for(correlated_inputs(width=64)), Target(sparsity=0.5), block_size=48,
                                quant=QuantScheme(4, 32))
