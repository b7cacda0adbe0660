"""Block-wise reconstruction: masks kept exactly, block error lowered against an independent measurement,
early stopping, determinism, every architecture, halves, offload and several processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ARCHS, calib_ids, tiny_model
from prunellm import PruneConfig, prune, prune_from_disk
from prunellm.cli import main
from prunellm.engine.blocks import find_blocks, prunable_layers
from prunellm.engine.capture import capture_inputs, run_block
from prunellm.engine.reconstruct import block_parts
from prunellm.errors import UsageError


def _config(**kw) -> PruneConfig:
    base = dict(solver="wanda", sparsity=0.6, calibration_batch_size=4, reconstruct="block", reconstruct_epochs=3,
                reconstruct_lr=1e-3)
    return PruneConfig(**{**base, **kw})


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n}


def _dense_block_errors(dense, pruned, ids) -> list[float]:
    """Independently of the engine: each pruned block's relative output error on the dense model's inputs."""
    stack_d, stack_p = find_blocks(dense), find_blocks(pruned)
    inputs = capture_inputs(dense, stack_d, ids, ids.shape[0])
    hidden = list(inputs.hidden)[0]
    errors = []
    for i, (bd, bp) in enumerate(zip(stack_d.blocks, stack_p.blocks)):
        call = inputs.calls[i][0]
        want, got = run_block(bd, hidden, call), run_block(bp, hidden, call)
        errors.append(float((got - want).square().sum() / want.square().sum()))
        hidden = want
    return errors


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["block", "halves"])
def test_masks_hold_and_block_error_goes_down_on_every_architecture(arch, mode):
    ids = calib_ids(16)
    plain, rebuilt = tiny_model(arch), tiny_model(arch)
    prune(plain, None, _config(reconstruct="none", propagate="dense"), calibration_ids=ids, progress=False)
    report = prune(rebuilt, None, _config(reconstruct=mode), calibration_ids=ids, progress=False)
    before, after = _weights(plain), _weights(rebuilt)
    changed = 0
    for name, w in before.items():
        assert torch.equal(w == 0, after[name] == 0), name  # the same mask, exactly
        changed += int(not torch.equal(w, after[name]))
    assert changed > 0
    rows = [p for b in report["reconstruction"]["blocks"] for p in b["parts"]]
    assert all(r["loss_after"] <= r["loss_before"] for r in rows)
    assert any(r["loss_after"] < r["loss_before"] for r in rows)
    dense = tiny_model(arch)
    errors_plain, errors_rebuilt = _dense_block_errors(dense, plain, ids), _dense_block_errors(dense, rebuilt, ids)
    assert errors_rebuilt[0] < errors_plain[0]  # block 0 sees the same inputs in both runs
    assert sum(errors_rebuilt) < sum(errors_plain)
    assert report["timings"]["reconstruct_s"] > 0 and report["reconstruction"]["inputs"] == "dense"


def test_nm_patterns_hold_exactly():
    model = tiny_model("llama")
    report = prune(model, None, _config(solver="sparsegpt", mask_structure="2:4"), calibration_ids=calib_ids(16),
                   progress=False)
    for layer in report["layers"]:
        weight = dict(model.named_modules())[layer["name"]].weight
        assert torch.all((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2), layer["name"]


def test_a_bfloat16_model_trains_in_float32_and_stays_bfloat16():
    model = tiny_model("llama").to(torch.bfloat16)
    report = prune(model, None, _config(reconstruct="halves"), calibration_ids=calib_ids(16), progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    rows = [p for b in report["reconstruction"]["blocks"] for p in b["parts"]]
    assert any(r["loss_after"] < r["loss_before"] for r in rows)
    assert abs(report["sparsity"] - 0.6) < 0.01


def test_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        model = tiny_model("llama")
        prune(model, None, _config(reconstruct_batch_size=1), calibration_ids=calib_ids(16), progress=False)
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_early_stopping_restores_the_weights_that_came_in():
    # A learning rate this large only makes the held-out error worse: every part keeps its incoming weights.
    ids = calib_ids(16)
    plain, rebuilt = tiny_model("llama"), tiny_model("llama")
    prune(plain, None, _config(reconstruct="none", propagate="dense"), calibration_ids=ids, progress=False)
    report = prune(rebuilt, None, _config(reconstruct_lr=10.0), calibration_ids=ids, progress=False)
    for row in (p for b in report["reconstruction"]["blocks"] for p in b["parts"]):
        assert row["best_epoch"] == 0 and row["loss_after"] == row["loss_before"]
        assert min(row["heldout_loss"][1:]) > row["heldout_loss"][0]
        assert row["epochs"] == 2  # stopped after two epochs without improvement
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), rebuilt.state_dict().values()))


def test_norms_train_only_when_asked():
    ids = calib_ids(16)
    dense = tiny_model("llama")
    norms = {n: p.clone() for n, p in dense.named_parameters() if "norm" in n}
    for params, moved in (("kept", False), ("kept+norms", True)):
        model = tiny_model("llama")
        prune(model, None, _config(reconstruct_params=params), calibration_ids=ids, progress=False)
        state = dict(model.named_parameters())
        block_norms = [n for n in norms if n.startswith("model.layers.")]
        assert any(not torch.equal(state[n], norms[n]) for n in block_norms) == moved
        assert torch.equal(state["model.norm.weight"], norms["model.norm.weight"])  # outside the blocks


@pytest.mark.parametrize("arch,names", [("llama", ["self_attn", "mlp"]), ("opt", ["self_attn", "fc1+fc2"]),
                                        ("gpt2", ["attn", "mlp"]), ("mamba", ["block"])])
def test_halves_split_attention_from_the_rest(arch, names):
    block = find_blocks(tiny_model(arch)).blocks[0]
    layers = prunable_layers(block)
    parts = block_parts(block, layers, "halves")
    assert [p.name for p in parts] == names
    assert sorted(id(m) for p in parts for m in p.layers) == sorted(id(m) for m in layers.values())
    assert [p.name for p in block_parts(block, layers, "block")] == ["block"]


def test_pruned_inputs_and_magnitude_masks():
    model = tiny_model("llama")
    report = prune(model, None, _config(solver="magnitude", propagate="pruned", reconstruct="halves"),
                   calibration_ids=calib_ids(16), progress=False)
    assert report["reconstruction"]["inputs"] == "pruned"
    rows = [p for b in report["reconstruction"]["blocks"] for p in b["parts"]]
    assert all(r["loss_after"] <= r["loss_before"] for r in rows) and any(r["best_epoch"] for r in rows)
    assert abs(report["sparsity"] - 0.6) < 0.01


def test_offload_equals_in_memory(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense")
    ids = calib_ids(16)
    prune(model, None, _config(), calibration_ids=ids, progress=False)
    report = prune_from_disk(tmp_path / "dense", tmp_path / "out", _config(), calibration_ids=ids, progress=False,
                             activations="disk")
    from safetensors.torch import load_file

    state = load_file(next((tmp_path / "out").glob("*.safetensors")))
    reference = model.state_dict()
    assert all(torch.equal(t, reference[n]) for n, t in state.items())
    assert report["reconstruction"]["blocks"]


def test_on_a_meta_default_device():
    ids = calib_ids(16)
    expected = tiny_model("llama")
    prune(expected, None, _config(reconstruct="halves", reconstruct_params="kept+norms"), calibration_ids=ids,
          progress=False)
    model = tiny_model("llama")
    with torch.device("meta"):
        prune(model, None, _config(reconstruct="halves", reconstruct_params="kept+norms"), calibration_ids=ids,
              progress=False)
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values()):
        assert got.device.type == "cpu" and torch.equal(got, want), name


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_model("llama")
        report = prune(model, None, _config(calibration_batch_size=2), calibration_ids=calib_ids(16), progress=False)
        torch.save({"state": model.state_dict(), "report": report}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_one_model(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["state"].values(), ranks[1]["state"].values()))
    single = tiny_model("llama")
    prune(single, None, _config(calibration_batch_size=2), calibration_ids=calib_ids(16), progress=False)
    for name, weight in single.state_dict().items():
        assert torch.equal(weight == 0, ranks[0]["state"][name] == 0), name  # Wanda's masks do not depend on it
    rows = [p for b in ranks[0]["report"]["reconstruction"]["blocks"] for p in b["parts"]]
    assert any(r["loss_after"] < r["loss_before"] for r in rows)


@pytest.mark.parametrize("bad", [dict(reconstruct="layer"), dict(reconstruct_params="all"),
                                 dict(reconstruct_epochs=0), dict(reconstruct_lr=0.0), dict(reconstruct_holdout=1.0),
                                 dict(quantize="int8")])
def test_bad_options_are_usage_errors(bad):
    with pytest.raises(UsageError):
        _config(**bad).validate()


def test_cli_flags_reach_the_report(tiny_folder, tmp_path, shared_data):
    import json

    out = tmp_path / "out"
    main(["prune", str(tiny_folder), "--solver", "wanda", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "16",
          "--reconstruct", "halves", "--reconstruct-epochs", "2", "--reconstruct-params", "kept+norms",
          "--data-dir", shared_data, "--output", str(out)])
    report = json.loads((out / "prune_report.json").read_text())
    assert report["config"]["reconstruct"] == "halves" and report["config"]["reconstruct_epochs"] == 2
    assert len(report["reconstruction"]["blocks"]) == report["blocks"]["count"]
