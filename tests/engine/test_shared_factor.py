"""Layers that read one input (q/k/v, gate/up) share one factorization of its Hessian, with identical results."""

from __future__ import annotations

import pytest
import torch

from prunellm import PruneConfig, prune
from prunellm.engine.blocks import find_blocks
from prunellm.solvers import LayerStats

from conftest import calib_ids, tiny_model


def prune_counting(solver: str, share: bool, monkeypatch, **options) -> tuple[dict, int]:
    """The pruned tiny Llama's weights and how many factorizations were made."""
    made = []
    real = LayerStats.cached

    def cached(self, key, compute):
        if not share:
            self.cache.clear()
        if key not in self.cache:
            made.append(key)
        return real(self, key, compute)

    monkeypatch.setattr(LayerStats, "cached", cached)
    model = tiny_model("llama")
    prune(model, None, PruneConfig(solver=solver, calibration_batch_size=2, **options),
          calibration_ids=calib_ids(4, 16), progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}, len(made)


@pytest.mark.parametrize("solver,options", [("sparsegpt", {}), ("sparsegpt", {"mask_structure": "2:4"}),
                                            ("mrp", {}), ("admm", {}), ("wanda", {"update": "admm"}),
                                            ("sparsegpt", {"quantize": "int4", "group_size": 32})])
def test_one_factorization_per_input_and_bit_identical_weights(solver, options, monkeypatch):
    shared, made_shared = prune_counting(solver, True, monkeypatch, **options)
    alone, made_alone = prune_counting(solver, False, monkeypatch, **options)
    blocks = len(find_blocks(tiny_model("llama")))
    assert made_alone == 7 * blocks  # q, k, v, o, gate, up, down
    assert made_shared == 4 * blocks  # {q, k, v}, o, {gate, up}, down
    assert shared.keys() == alone.keys()
    assert all(torch.equal(shared[k], alone[k]) for k in shared)
