"""The public Python API: prune a model already in memory, evaluate it, save it."""

import json

import torch
from transformers import AutoModelForCausalLM

import prunellm
from conftest import calib_ids, tiny_model


def test_public_api_round_trip(tmp_path):
    model = tiny_model("qwen2")
    config = prunellm.PruneConfig(solver="wanda", sparsity=0.5, num_calibration_samples=4, max_seq_length=16)
    report = prunellm.prune(model, None, config, calibration_ids=calib_ids(4, 16), progress=False)
    assert abs(report["sparsity"] - 0.5) < 1e-6
    out = prunellm.save_pruned(model, None, report, tmp_path / "out")
    assert json.loads((out / "prune_report.json").read_text())["config"]["solver"] == "wanda"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = calib_ids(1, 16)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
    assert set(prunellm.SOLVERS) >= {"magnitude", "wanda", "sparsegpt"}
