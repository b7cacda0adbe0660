"""`--permute`: the input orders folded into the producing layers are exact, and the pruned model keeps N:M."""

from __future__ import annotations

import re

import pytest
import torch

from prunellm import PruneConfig, prune
from prunellm.engine import loop
from prunellm.engine.blocks import PRUNABLE, find_blocks, get_weight, set_weight
from prunellm.engine.folds import Fold, find_fold

from conftest import calib_ids, tiny_model

ARCHS = ["llama", "qwen2", "gemma3", "opt", "gpt2"]
CONSUMERS = {"llama": {"self_attn.o_proj", "mlp.down_proj"}, "qwen2": {"self_attn.o_proj", "mlp.down_proj"},
             "gemma3": {"self_attn.o_proj", "mlp.down_proj"}, "opt": {"self_attn.out_proj", "fc2"},
             "gpt2": {"attn.c_proj", "mlp.c_proj"}}


def linears(block: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in block.named_modules() if isinstance(m, PRUNABLE)}


def consumers(block: torch.nn.Module, config) -> dict[str, Fold]:
    return {name: fold for name in linears(block) if (fold := find_fold(block, name, config)) is not None}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(calib_ids(2, 12, seed=5)).logits


def reorder(block, name: str, fold, pi: torch.Tensor, rho: torch.Tensor) -> None:
    """Apply a consumer order π and its producers' order ρ, as the engine does."""
    consumer = block.get_submodule(name)
    set_weight(consumer, get_weight(consumer)[:, pi])
    fold.apply_to_producers(rho)


@pytest.mark.parametrize("arch", ARCHS)
def test_folds_found_where_the_producer_absorbs_the_order_and_exact(arch):
    model = tiny_model(arch)
    before = logits(model)
    gen = torch.Generator().manual_seed(0)
    for block in find_blocks(model).blocks:
        found = consumers(block, model.config)
        assert set(found) == CONSUMERS[arch]
        for name, fold in found.items():
            sigmas = [torch.randperm(len(cols[0]), generator=gen) for cols in fold.columns]
            width = get_weight(block.get_submodule(name)).shape[1]
            pi, rho = fold.permutations(sigmas, width)
            assert not torch.equal(pi, torch.arange(width))
            reorder(block, name, fold, pi, rho)
    torch.testing.assert_close(logits(model), before, rtol=1e-5, atol=1e-5)


def test_grouped_query_heads_share_their_value_heads_order():
    model = tiny_model("llama")  # 4 query heads, 2 key-value heads, head_dim 8
    fold = find_fold(find_blocks(model).blocks[0], "self_attn.o_proj", model.config)
    assert [[c.tolist() for c in cols] for cols in fold.columns] == [
        [list(range(0, 8)), list(range(8, 16))], [list(range(16, 24)), list(range(24, 32))]]
    assert [r.tolist() for r in fold.rows] == [list(range(0, 8)), list(range(8, 16))]


def is_n_m(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    return bool(((weight.view(weight.shape[0], -1, m) == 0).sum(-1) >= n).all())


@pytest.mark.parametrize("arch,solver", [("llama", "sparsegpt"), ("gemma3", "wanda"), ("opt", "mrp"),
                                         ("gpt2", "magnitude"), ("qwen2", "admm")])
def test_pruned_model_keeps_n_m_and_equals_the_unpermuted_computation(arch, solver, monkeypatch):
    chosen, orders = [], []
    real_choose, real_permute = Fold.choose, loop.permute_inputs

    def choose(self, scores, n, m):
        chosen.append(real_choose(self, scores, n, m))
        return chosen[-1]

    def permute(block, name, *args):
        count = len(chosen)
        out = real_permute(block, name, *args)
        if len(chosen) > count:
            orders.append((block, name, *chosen[-1]))
        return out

    monkeypatch.setattr(Fold, "choose", choose)
    monkeypatch.setattr(loop, "permute_inputs", permute)
    model = tiny_model(arch)
    report = prune(model, None, PruneConfig(solver=solver, mask_structure="2:4", permute=True,
                                            calibration_batch_size=2), calibration_ids=calib_ids(4, 16),
                   progress=False)
    permuted = [r for r in report["layers"] if "permutation" in r]
    assert {re.sub(r"^.*?\.\d+\.", "", r["name"]) for r in permuted} == CONSUMERS[arch]
    assert len(orders) == len(permuted) == 2 * len(find_blocks(model))
    assert all(r["permutation"]["kept_score_gain"] >= 0 for r in permuted)
    assert any(r["permutation"]["kept_score_gain"] > 0 for r in permuted)
    assert all(is_n_m(get_weight(m)) for block in find_blocks(model).blocks for m in linears(block).values())
    pruned = logits(model)
    for block, name, pi, rho in reversed(orders):  # the same weights back in the dense model's order
        consumer = block.get_submodule(name)
        set_weight(consumer, get_weight(consumer)[:, torch.argsort(pi)])
        find_fold(block, name, model.config).apply_to_producers(torch.argsort(rho))
    torch.testing.assert_close(logits(model), pruned, rtol=1e-5, atol=1e-5)
    assert not all(is_n_m(get_weight(b.get_submodule(name))) for b, name, *_ in orders)  # the orders mattered


def test_permute_needs_an_n_m_pattern():
    from prunellm.errors import UsageError

    with pytest.raises(UsageError, match="N:M"):
        PruneConfig(permute=True, sparsity=0.5).validate()


def test_quantized_producers_keep_their_scales_with_their_rows():
    model = tiny_model("llama")
    prune(model, None, PruneConfig(solver="sparsegpt", mask_structure="2:4", permute=True, quantize="int8",
                                   calibration_batch_size=2), calibration_ids=calib_ids(4, 16), progress=False)
    for block in find_blocks(model).blocks:
        for name in ("self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            module = block.get_submodule(name)
            codes = get_weight(module) / module.prunellm_scales  # per output channel: one scale a row
            torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)
            assert codes.abs().max() <= 127.5
