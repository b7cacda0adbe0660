"""The engine on any device, tested on the CPU: no tensor made off-device (meta default device), blocks
onloaded one at a time through the same moves a GPU run makes, activations where they were asked to be."""

from __future__ import annotations

import pytest
import torch

from conftest import calib_ids, tiny_model
from prunellm import PruneConfig, prune, prune_from_disk
from prunellm.engine import activations as activations_module
from prunellm.engine.activations import MemoryActivations, activation_store, choose_mode
from prunellm.engine.blocks import find_blocks
from prunellm.engine.residency import InMemory, on_device
from prunellm.engine.stats import StatsCollector
from prunellm.evaluation.perplexity import perplexity_of_tokens

CPU = torch.device("cpu")
PAIRS = [("wanda", "uniform"), ("sparsegpt", "owl"), ("mrp", "als"), ("magnitude", "alpha"), ("sparsegpt", "uniform")]


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "mamba"])
@pytest.mark.parametrize("solver,allocation", PAIRS)
def test_whole_prune_on_a_meta_default_device(arch, solver, allocation):
    config = PruneConfig(solver=solver, sparsity=0.5, allocation=allocation, calibration_batch_size=2)
    ids = calib_ids(4, 16)
    expected = tiny_model(arch)
    prune(expected, None, config, calibration_ids=ids, progress=False)
    model = tiny_model(arch)
    with torch.device("meta"):
        report = prune(model, None, config, calibration_ids=ids, progress=False)
    assert report["device"] == "cpu"
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values()):
        assert got.device == CPU and torch.equal(got, want), name


def test_nm_prune_on_a_meta_default_device():
    config = PruneConfig(solver="mrp", mask_structure="2:4", mask_selection="loss", calibration_batch_size=2)
    ids = calib_ids(4, 16)
    expected = tiny_model("llama")
    prune(expected, None, config, calibration_ids=ids, progress=False)
    model = tiny_model("llama")
    with torch.device("meta"):
        prune(model, None, config, calibration_ids=ids, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))


def test_out_of_core_prune_on_a_meta_default_device(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense")
    config = PruneConfig(solver="sparsegpt", sparsity=0.5, calibration_batch_size=2)
    ids = calib_ids(4, 16)
    expected = prune_from_disk(tmp_path / "dense", tmp_path / "a", config, calibration_ids=ids, progress=False)
    with torch.device("meta"):
        got = prune_from_disk(tmp_path / "dense", tmp_path / "b", config, calibration_ids=ids, progress=False,
                              activations="disk")
    assert [r["sparsity"] for r in got["layers"]] == [r["sparsity"] for r in expected["layers"]]
    shards = sorted(p.name for p in (tmp_path / "a").glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in (tmp_path / "b").glob("*.safetensors"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in shards)


def test_statistics_on_a_meta_default_device_and_compensated_float32_sums():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    batches = [torch.randn(4, 64, 16) * 100 + 1000 for _ in range(50)]

    def collect(float64):
        collector = StatsCollector({"l": layer}, {"norms", "hessian"}, float64=float64)
        for x in batches:
            layer(x)
            collector.end_batch()
        collector.remove()
        return collector.get("l")

    wide = collect(True)
    with torch.device("meta"):
        on_meta = collect(None)
    assert torch.equal(on_meta.sq_norms, wide.sq_norms) and torch.equal(on_meta.xtx, wide.xtx)
    # The float32 path (devices without float64, e.g. MPS) carries each addition's rounding error along:
    # closer to the float64 sum than plain float32 accumulation is.
    kahan = collect(False)
    assert kahan.sq_norms.dtype == torch.float32
    naive = torch.zeros(16)
    for x in batches:
        naive += x.reshape(-1, 16).square().sum(0)
    err_kahan = (kahan.sq_norms.double() - wide.sq_norms).abs().max()
    err_naive = (naive.double() - wide.sq_norms).abs().max()
    assert err_kahan < err_naive / 4


def test_blocks_visit_the_device_one_at_a_time_once_per_pass():
    model = tiny_model("llama")
    stack = find_blocks(model)
    residency = InMemory(model, stack, CPU)
    seen = []

    def on_layer(name, dense, stats, result):
        block = int(name.split(".")[2])
        seen.append((block, residency.moves[-1]))

    config = PruneConfig(solver="sparsegpt", sparsity=0.5, allocation="owl", calibration_batch_size=2)
    reference = tiny_model("llama")
    prune(reference, None, config, calibration_ids=calib_ids(), progress=False)
    report = prune(model, None, config, calibration_ids=calib_ids(), progress=False, residency=residency,
                   on_layer=on_layer)
    one_pass = [move for i in range(len(stack)) for move in (("in", i), ("out", i))]
    assert residency.moves == one_pass * 2  # the OWL profiling pass, then the pruning pass
    assert all(move == ("in", block) for block, move in seen)  # every layer solved while its block is in
    assert report["device"] == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_magnitude_without_data_onloads_each_block_once():
    model = tiny_model("opt")
    residency = InMemory(model, find_blocks(model), CPU)
    prune(model, None, PruneConfig(solver="magnitude", sparsity=0.5), progress=False, residency=residency)
    assert residency.moves == [("in", 0), ("out", 0), ("in", 1), ("out", 1)]


def test_block_by_block_evaluation_gives_the_same_perplexity():
    model = tiny_model("gemma3")
    ids = calib_ids(1, 96).flatten()
    expected = perplexity_of_tokens(model, ids, 32)
    with on_device(model, CPU, whole=False) as residency:
        got = perplexity_of_tokens(model, ids, 32)
    assert got == expected
    assert residency.moves == [m for _ in range(3) for i in range(3) for m in (("in", i), ("out", i))]
    with on_device(model, CPU) as residency:  # its own device: nothing moves
        assert residency is None


def test_activations_go_where_they_fit(monkeypatch):
    gpu = torch.device("cuda", 0)  # never touched: only the choice is tested
    monkeypatch.setattr(activations_module, "free_memory_mb", lambda d: 80_000.0 if d.type == "cuda" else None)
    monkeypatch.setattr(activations_module, "available_mb", lambda: 200_000.0)
    assert choose_mode("auto", 128 * 2048, 4096, gpu, 2) == "device"  # 4 GiB of bfloat16, 80 GB free
    assert choose_mode("auto", 128 * 2048, 8192 * 8, gpu, 2) == "cpu"  # 64 GiB: too much for the GPU, fits in 200 GB of RAM
    assert choose_mode("auto", 128 * 2048 * 16, 8192 * 8, gpu, 2) == "disk"
    assert choose_mode("memory", 1, 1, gpu) == "cpu"
    assert choose_mode("auto", 10, 10, CPU) == "cpu"
    with pytest.raises(ValueError):
        choose_mode("gpu", 1, 1)
    store = activation_store("cpu", 10, 10, device=CPU)
    assert isinstance(store, MemoryActivations) and store.mode == "cpu"
    batches = [torch.randn(2, 3, 4), torch.randn(1, 3, 4)]
    for b in batches:
        store.append(b)
    assert all(torch.equal(a, b) for a, b in zip(store, batches)) and len(store.new()) == 0


def test_report_names_the_device_and_the_activation_store():
    report = prune(tiny_model("llama"), None, PruneConfig(solver="wanda", device="cpu", calibration_batch_size=2),
                   calibration_ids=calib_ids(), progress=False, activations="disk")
    assert report["device"] == "cpu" and report["activations"] == "disk"
    assert report["config"]["device"] == "cpu"
