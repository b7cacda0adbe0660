"""Scale: out-of-core pruning (one block in memory at a time) and calibration over several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers as T
from safetensors.torch import load_file

from conftest import ARCHS, calib_ids, tiny_model
from prunellm import PruneConfig, prune, prune_from_disk
from prunellm.engine.activations import DiskActivations, activation_store
from prunellm.cli import main
from prunellm.errors import UsageError
from prunellm.models import load_model


def _folder_state(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("solver,allocation", [("wanda", "uniform"), ("sparsegpt", "owl"), ("magnitude", "alpha")])
def test_offload_equals_in_memory(tmp_path, arch, solver, allocation):
    model = tiny_model(arch)
    model.save_pretrained(tmp_path / "dense")
    config = PruneConfig(solver=solver, sparsity=0.5, allocation=allocation, calibration_batch_size=2)
    ids = calib_ids()
    expected = prune(model, None, config, calibration_ids=ids, progress=False)
    report = prune_from_disk(tmp_path / "dense", tmp_path / "out", config, calibration_ids=ids, progress=False,
                             activations="disk")
    state, reference = _folder_state(tmp_path / "out"), model.state_dict()
    assert set(state) <= set(reference) and len(state) >= len(reference) - 1  # the tied head is not stored
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[name]), name
    assert report["sparsity"] == expected["sparsity"]
    assert [r["sparsity"] for r in report["layers"]] == [r["sparsity"] for r in expected["layers"]]
    # A plain Hugging Face folder: from_pretrained gives the same model, tied head included.
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids[:2]).logits, model(ids[:2]).logits, rtol=0, atol=0)
    assert json.loads((tmp_path / "out" / "prune_report.json").read_text())["offload"] == "disk"


def test_disk_activations_round_trip_and_clean_up(tmp_path):
    store = DiskActivations(tmp_path)
    tensors = [torch.randn(2, 3, 4), torch.randn(1, 3, 4)]
    for t in tensors:
        store.append(t)
    assert len(store) == 2 and all(torch.equal(a, b) for a, b in zip(store, tensors))
    nxt = store.new()
    nxt.append(tensors[0])
    store.close()
    assert list(nxt)[0].equal(tensors[0])
    nxt.close()
    assert not any(tmp_path.iterdir())  # nothing left behind
    assert isinstance(activation_store("memory", 10**12, 10**4), type(activation_store("memory", 1, 1)))
    assert isinstance(activation_store("auto", 10**12, 10**4, tmp_path), DiskActivations)  # 80 PB: spill


_MEMORY_CHILD = textwrap.dedent('''
    import json, resource, sys, torch
    from prunellm import PruneConfig, prune, prune_from_disk
    from prunellm.engine.memory import peak_rss_mb, reset_peak_rss, current_rss_mb
    import transformers as T

    src, out, limit_mb = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    # Warm every code path on a small model first (lazy imports, thread pools, allocator arenas).
    small = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    warm = T.AutoModelForCausalLM.from_config(small).eval()
    warm.save_pretrained(out + "-warm")
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    config = PruneConfig(solver="wanda", sparsity=0.5, calibration_batch_size=2)
    prune_from_disk(out + "-warm", out + "-warm-out", config, calibration_ids=ids, progress=False)
    del warm

    def vm(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    # Enforce: private writable memory (what malloc and torch allocate) may grow by at most limit_mb.
    resource.setrlimit(resource.RLIMIT_DATA, (vm("VmData") + int(limit_mb * 2**20), resource.RLIM_INFINITY))
    base = current_rss_mb()
    reset_peak_rss()
    report = prune_from_disk(src, out, config, calibration_ids=ids, progress=False)
    print(json.dumps({"peak_growth_mb": peak_rss_mb() - base, "sparsity": report["sparsity"]}))
''')


def test_offload_peak_memory_stays_under_an_enforced_limit(tmp_path):
    # 24 blocks of 6.8 MiB (float32) = 162 MiB of weights, pruned with Wanda under an 80 MiB limit on the
    # growth of private address space (loading the whole model would need all 162 MiB). Measured: peak RSS
    # growth about 23 MiB on an AMD EPYC; on an Intel Xeon 30-36 MiB of RSS and 50-60 MiB of address space
    # (one block, its statistics, the solver's temporaries and the math library's scratch).
    config = T.LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=24, num_attention_heads=8,
                           num_key_value_heads=8, vocab_size=256, max_position_embeddings=256)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "big")
    weights_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    limit_mb = 80.0
    assert weights_mb > 2 * limit_mb
    result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(tmp_path / "big"), str(tmp_path / "out"),
                             str(limit_mb)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["peak_growth_mb"] < limit_mb
    # The output equals pruning the whole model in memory, with the child's one thread (matmul summation
    # order, and with it Wanda's statistics, can depend on the thread count).
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prune(model, None, PruneConfig(solver="wanda", sparsity=0.5, calibration_batch_size=2),
              calibration_ids=ids, progress=False)
    finally:
        torch.set_num_threads(threads)
    state, reference = _folder_state(tmp_path / "out"), model.state_dict()
    assert all(torch.equal(t, reference[n]) for n, t in state.items()) and len(state) == len(reference)


def _distributed_worker(rank: int, world: int, init_file: str, out: str, solver: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_model("llama")
        config = PruneConfig(solver=solver, sparsity=0.5, allocation="owl", calibration_batch_size=2)
        report = prune(model, None, config, calibration_ids=calib_ids(n=8), progress=False)
        if rank == 0:
            torch.save({"state": model.state_dict(), "report": report}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("solver", ["wanda", "sparsegpt"])
def test_two_processes_match_one(tmp_path, solver):
    out = tmp_path / "two.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(out), solver), nprocs=2, join=True)
    two = torch.load(out, weights_only=False)
    model = tiny_model("llama")
    one = prune(model, None, PruneConfig(solver=solver, sparsity=0.5, allocation="owl", calibration_batch_size=2),
                calibration_ids=calib_ids(n=8), progress=False)
    assert two["report"]["processes"] == 2
    assert [r["target"] for r in two["report"]["layers"]] == [r["target"] for r in one["layers"]]
    flipped = total = 0
    for name, weight in model.state_dict().items():
        other = two["state"][name]
        flipped += int(((weight == 0) != (other == 0)).sum())
        total += weight.numel()
        if solver == "wanda":  # norms are summed in float64: the same masks and weights
            assert torch.equal(weight, other), name
        else:  # Hessians are float32 sums in another order: weights within float noise
            torch.testing.assert_close(weight, other, rtol=1e-3, atol=1e-4)
    assert flipped <= 1e-3 * total  # sparsegpt: at most 0.1% of masks flip on summation order


def _offload_worker(rank: int, world: int, init_file: str, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        prune_from_disk(folder, out, PruneConfig(solver="wanda", sparsity=0.5, calibration_batch_size=2),
                        calibration_ids=calib_ids(n=8), progress=False, activations="disk")
    finally:
        dist.destroy_process_group()


def test_two_processes_with_offload(tmp_path):
    # Both scale-outs at once: each rank materializes the same block from disk, rank 0 writes it.
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense")
    mp.spawn(_offload_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "dense"), str(tmp_path / "two")),
             nprocs=2, join=True)
    prune(model, None, PruneConfig(solver="wanda", sparsity=0.5, calibration_batch_size=2),
          calibration_ids=calib_ids(n=8), progress=False)
    state, reference = _folder_state(tmp_path / "two"), model.state_dict()
    assert state and all(torch.equal(t, reference[n]) for n, t in state.items())
    assert json.loads((tmp_path / "two" / "prune_report.json").read_text())["processes"] == 2


def test_cli_nproc_two_processes(tiny_folder, tmp_path):
    # `--nproc 2` relaunches itself under torchrun; the folder equals the single-process one.
    args = ["prune", str(tiny_folder), "--solver", "wanda", "--sparsity", "0.5", "--calib",
            f"text:{_text(tmp_path)}", "--nsamples", "4", "--seqlen", "16", "--calib-batch-size", "2"]
    assert main(args + ["--nproc", "2", "--output", str(tmp_path / "two")]) == 0
    assert main(args + ["--output", str(tmp_path / "one")]) == 0
    report = json.loads((tmp_path / "two" / "prune_report.json").read_text())
    assert report["processes"] == 2 and abs(report["sparsity"] - 0.5) < 0.01
    one, two = _folder_state(tmp_path / "one"), _folder_state(tmp_path / "two")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    return path


def test_offload_cli_and_errors(tiny_folder, tmp_path):
    out = tmp_path / "off"
    text = _text(tmp_path)
    args = ["prune", str(tiny_folder), "--solver", "wanda", "--calib", f"text:{text}", "--nsamples", "4",
            "--seqlen", "16", "--offload", "disk"]
    assert main(args + ["--output", str(out)]) == 0
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    model, _ = load_model(str(out))
    assert abs(json.loads((out / "prune_report.json").read_text())["sparsity"] - 0.5) < 0.01
    assert model.model.layers[0].mlp.up_proj.weight.eq(0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert main(args + ["--output", str(tmp_path / "x"), "--eval-ppl", "wikitext2"]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="no model.safetensors"):
        prune_from_disk(tmp_path, tmp_path / "y")
