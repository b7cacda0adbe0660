"""Compressed sparse checkpoints: bit-exact round trips, the N:M layout, sizes, and clean errors."""

import json

import numpy as np
import pytest
import torch

import prunellm
from conftest import ARCHS, calib_ids, tiny_model
from prunellm.cli import main
from prunellm.runtime.compressed import (CONFIG, WEIGHTS, compress_folder, decode, encode, load_state, pack_bits,
                                 unpack_bits)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _sparse(rows, cols, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return w


def test_pack_bits_is_numpy_packbits_little():
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) < 0.5
    expected = np.packbits(mask.numpy(), axis=-1, bitorder="little")
    assert np.array_equal(pack_bits(mask).numpy(), expected)
    assert torch.equal(unpack_bits(pack_bits(mask), 13), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 13), (1, 1), (8, 64), (3, 9)])
def test_bitmask_round_trip_is_bit_exact(dtype, shape):
    w = _sparse(*shape, 0.7, dtype)
    w[0] = 0  # an all-zero row
    if w.numel() > 2:
        w.view(-1)[-1] = -0.0  # negative zero is a value, not a pruned weight
    encoding, parts = encode(w)
    assert encoding == "sparse-bitmask"
    assert torch.equal(_bits(decode("w", encoding, parts)), _bits(w))


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_nm_layout_is_dense_kept_values_and_round_trips(n, m):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 32, generator=g)
    scores = torch.rand(6, 32 // m, m, generator=g)
    drop = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.argsort(-1)[..., :n], True)
    w[drop.view(6, 32)] = 0
    w[0, :m] = 0  # a group with more zeros than N: still fits the layout
    encoding, parts = encode(w, (n, m))
    assert encoding == f"sparse-{n}:{m}-bitmask"
    assert parts["compressed"].shape == (6, 32 * (m - n) // m)
    assert torch.equal(_bits(decode("w", encoding, parts)), _bits(w))
    w[1, :m] = 1.0  # a group with too few zeros falls back to the general bitmask
    assert encode(w, (n, m))[0] == "sparse-bitmask"


def test_decode_rejects_inconsistent_parts():
    encoding, parts = encode(_sparse(4, 16, 0.5))
    bad = dict(parts, compressed=parts["compressed"][:-1])
    with pytest.raises(prunellm.UsageError, match="bits set"):
        decode("w", encoding, bad)
    bad = dict(parts, row_offsets=parts["row_offsets"] + 1)
    with pytest.raises(prunellm.UsageError, match="row offsets"):
        decode("w", encoding, bad)
    with pytest.raises(prunellm.UsageError, match="missing"):
        decode("w", encoding, {k: v for k, v in parts.items() if k != "bitmask"})


def _state_bits_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)


@pytest.mark.parametrize("arch, pattern", [("llama", None), ("llama", "2:4"), ("opt", "4:8"), ("gpt2", "2:4"),
                                           ("mamba", None)])
def test_pruned_model_round_trips_through_a_compressed_folder(tmp_path, arch, pattern):
    assert arch in ARCHS
    model = tiny_model(arch)
    config = prunellm.PruneConfig(solver="wanda", sparsity=0.6, mask_structure=pattern or "0:0")
    report = prunellm.prune(model, None, config, calibration_ids=calib_ids(), progress=False)
    dense_dir, sparse_dir = tmp_path / "dense", tmp_path / "sparse"
    prunellm.save_pruned(model, None, report, dense_dir)
    prunellm.save_pruned(model, None, report, sparse_dir, save_format="compressed")
    sparse_config = json.loads((sparse_dir / CONFIG).read_text())
    pruned = {r["name"] + ".weight" for r in report["layers"]}
    encoded = {k for k, v in sparse_config["tensors"].items() if v != "dense"}
    assert pruned <= encoded
    if pattern and arch != "gpt2":  # GPT-2's Conv1D stores W transposed: its N:M groups run down columns
        assert {sparse_config["tensors"][k] for k in pruned} == {f"sparse-{pattern}-bitmask"}
    loaded, _ = prunellm.load(str(sparse_dir))
    assert _state_bits_equal(loaded.state_dict(), model.state_dict())
    ids = calib_ids()[:1]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    dense_bytes = sum(f.stat().st_size for f in dense_dir.glob("*.safetensors"))
    assert (sparse_dir / WEIGHTS).stat().st_size < dense_bytes


def test_mixed_n_owl_model_stores_each_block_with_its_own_n(tmp_path):
    model = tiny_model("llama")
    config = prunellm.PruneConfig(solver="wanda", mask_structure="2:4", allocation="owl")
    report = prunellm.prune(model, None, config, calibration_ids=calib_ids(), progress=False)
    assert len({row["pattern"] for row in report["layers"]}) > 1  # OWL's default λ mixes 1:4 / 2:4 / 3:4
    prunellm.save_pruned(model, None, report, tmp_path / "sparse", save_format="compressed")
    tensors = json.loads((tmp_path / "sparse" / CONFIG).read_text())["tensors"]
    for row in report["layers"]:
        assert tensors[row["name"] + ".weight"] == f"sparse-{row['pattern']}-bitmask", row["name"]
    loaded, _ = prunellm.load(str(tmp_path / "sparse"))
    assert _state_bits_equal(loaded.state_dict(), model.state_dict())


def test_corrupt_or_truncated_files_are_errors(tmp_path):
    model = tiny_model("llama")
    report = prunellm.prune(model, None, prunellm.PruneConfig(solver="magnitude", sparsity=0.5), progress=False)
    folder = tmp_path / "s"
    prunellm.save_pruned(model, None, report, folder, save_format="compressed")
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(prunellm.UsageError, match="checksum"):
        load_state(folder)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (folder / WEIGHTS).write_bytes(bytes(flipped))
    with pytest.raises(prunellm.UsageError, match="checksum"):
        load_state(folder)
    (folder / WEIGHTS).unlink()
    with pytest.raises(prunellm.UsageError, match="missing"):
        prunellm.load(str(folder))


def test_cli_compress_a_dense_folder(tmp_path, capsys):
    model = tiny_model("qwen2")
    report = prunellm.prune(model, None, prunellm.PruneConfig(solver="magnitude", sparsity=0.7), progress=False)
    prunellm.save_pruned(model, None, report, tmp_path / "d")
    assert main(["compress", str(tmp_path / "d"), str(tmp_path / "c"), "--dtype", "bfloat16"]) == 0
    assert "compressed" in capsys.readouterr().out
    state = load_state(tmp_path / "c")
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items() if k in state}
    assert _state_bits_equal(state, expected)
    assert main(["compress", str(tmp_path / "d"), str(tmp_path / "c")]) == 2  # exists, no --overwrite
    assert main(["compress", str(tmp_path / "c"), str(tmp_path / "c2")]) == 2  # already compressed
    with pytest.raises(prunellm.UsageError, match="no config.json"):
        compress_folder(tmp_path / "nothing", tmp_path / "x")
