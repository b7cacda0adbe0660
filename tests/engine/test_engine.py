"""Engine: discovery on every architecture, faithful block capture, pruning, determinism, save and reload."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ARCHS, calib_ids, tiny_model
from prunellm.engine.blocks import find_blocks, prunable_layers
from prunellm.engine.capture import capture_inputs, run_block
from prunellm.config import PruneConfig
from prunellm.engine.loop import prune
from prunellm.errors import UsageError
from prunellm.outputs import REPORT
from prunellm.save import save_pruned

EXPECTED_LAYERS = {
    "llama": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "opt": ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"],
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "mamba": ["mixer.in_proj", "mixer.x_proj", "mixer.dt_proj", "mixer.out_proj"],
}
EXPECTED_LAYERS["mistral"] = EXPECTED_LAYERS["qwen2"] = EXPECTED_LAYERS["gemma3"] = EXPECTED_LAYERS["llama"]
EXPECTED_PATH = {"opt": "model.decoder.layers", "gpt2": "transformer.h", "mamba": "backbone.layers"}


@pytest.mark.parametrize("arch", ARCHS)
def test_discovery(arch):
    model = tiny_model(arch)
    stack = find_blocks(model)
    assert stack.path == EXPECTED_PATH.get(arch, "model.layers")
    assert len(stack) == model.config.num_hidden_layers
    assert list(prunable_layers(stack.blocks[0])) == EXPECTED_LAYERS[arch]


def test_targets_and_ignore_patterns():
    block = find_blocks(tiny_model("llama")).blocks[0]
    only_mlp = prunable_layers(block, "model.layers.0", ["re:.*mlp.*"], [])
    assert list(only_mlp) == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    no_down = prunable_layers(block, "model.layers.0", ["Linear"], ["re:.*down_proj"])
    assert "mlp.down_proj" not in no_down and len(no_down) == 6


@pytest.mark.parametrize("arch", ARCHS)
def test_captured_inputs_replay_the_model(arch):
    # Running the captured inputs through the blocks one by one must reproduce the model's own
    # last hidden state (before the final norm): masks, positions and rotary embeddings all right.
    model = tiny_model(arch)
    ids = calib_ids(n=5)
    stack = find_blocks(model)
    inputs = capture_inputs(model, stack, ids, batch_size=2)
    assert [h.shape[0] for h in inputs.hidden] == [2, 2, 1]
    hidden = inputs.hidden
    for i, block in enumerate(stack.blocks):
        hidden = [run_block(block, h, inputs.calls[i][j]) for j, h in enumerate(hidden)]
    captured = {}
    handle = stack.blocks[-1].register_forward_hook(lambda m, a, o: captured.setdefault("out", o))
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    expected = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    torch.testing.assert_close(torch.cat(hidden), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("solver", ["magnitude", "wanda", "sparsegpt", "mrp"])
def test_prune_every_arch(arch, solver):
    model = tiny_model(arch)
    report = prune(model, None, PruneConfig(solver=solver, sparsity=0.5, calibration_batch_size=4),
                   calibration_ids=calib_ids(), progress=False)
    assert report["layers"] and abs(report["sparsity"] - 0.5) < 0.02
    for row in report["layers"]:
        assert row["target"] == 0.5
        if solver != "sparsegpt":  # per-row / per-matrix methods hit the target exactly
            module = model.get_submodule(row["name"])
            assert row["sparsity"] == pytest.approx(int(module.weight.shape[-1 if arch != "gpt2" else 0] * 0.5)
                                                    / module.weight.shape[-1 if arch != "gpt2" else 0], abs=0.02)


def test_per_row_methods_hit_target_exactly():
    model = tiny_model("llama")
    report = prune(model, None, PruneConfig(solver="wanda", sparsity=0.75), calibration_ids=calib_ids(), progress=False)
    for row in report["layers"]:
        weight = model.get_submodule(row["name"]).weight
        assert ((weight == 0).sum(1) == int(weight.shape[1] * 0.75)).all()
        assert row["sparsity"] == 0.75


def test_nm_pattern_end_to_end_and_layer_targets():
    model = tiny_model("llama")
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    from prunellm.masks import Target

    report = prune(model, None, PruneConfig(solver="sparsegpt", mask_structure="2:4"), calibration_ids=calib_ids(),
                   layer_targets={names[0]: Target(n=4, m=8), names[1]: Target(sparsity=0.25)}, progress=False)
    by_name = {r["name"]: r for r in report["layers"]}
    assert by_name[names[0]]["pattern"] == "4:8"
    w = model.get_submodule(names[0]).weight
    assert ((w == 0).view(w.shape[0], -1, 8).sum(-1) >= 4).all()
    q = model.get_submodule("model.layers.0.self_attn.q_proj").weight
    assert ((q == 0).view(q.shape[0], -1, 4).sum(-1) >= 2).all()
    assert by_name[names[1]]["target"] == 0.25


def test_nm_width_not_divisible_is_a_usage_error():
    model = tiny_model("mamba")  # x_proj etc. have width 64; dt_proj width 8 fails 16:32
    with pytest.raises(UsageError, match="not divisible by M=32"):
        prune(model, None, PruneConfig(solver="magnitude", mask_structure="16:32", block_size=128), progress=False)


@pytest.mark.parametrize("solver", ["wanda", "sparsegpt", "mrp"])
def test_deterministic(solver):
    masks = []
    for _ in range(2):
        model = tiny_model("llama")
        prune(model, None, PruneConfig(solver=solver, sparsity=0.6), calibration_ids=calib_ids(), progress=False)
        masks.append([m.weight == 0 for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert all(torch.equal(a, b) for a, b in zip(*masks))


def test_propagate_dense_differs_from_pruned_only_after_first_block():
    reports = {}
    for mode in ("pruned", "dense"):
        model = tiny_model("llama")
        prune(model, None, PruneConfig(solver="sparsegpt", sparsity=0.5, propagate=mode), calibration_ids=calib_ids(),
              progress=False)
        reports[mode] = [model.get_submodule(f"model.layers.{i}.mlp.down_proj").weight.clone() for i in range(2)]
    assert torch.equal(reports["pruned"][0], reports["dense"][0])
    assert not torch.equal(reports["pruned"][1], reports["dense"][1])


def test_saved_folder_reloads_with_same_logits(tmp_path):
    model = tiny_model("llama")
    report = prune(model, None, PruneConfig(solver="wanda"), calibration_ids=calib_ids(), progress=False)
    out = save_pruned(model, None, report, tmp_path / "pruned")
    assert (out / REPORT).is_file() and (out / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = calib_ids(n=2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = tiny_model("llama")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_pruned(model, None, {"config": {}}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="exists"):
        save_pruned(model, None, {"config": {}}, tmp_path / "out")


def test_on_layer_sees_dense_weight_and_result():
    model = tiny_model("llama")
    q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    seen = {}
    prune(model, None, PruneConfig(solver="sparsegpt", sparsity=0.5), calibration_ids=calib_ids(), progress=False,
          on_layer=lambda name, dense, stats, result: seen.setdefault(name, (dense, stats, result)))
    dense, stats, result = seen["model.layers.0.self_attn.q_proj"]
    assert len(seen) == 14 and torch.equal(dense, q) and stats.xtx is not None
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, result.weight)
