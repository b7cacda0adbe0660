"""from_pretrained / save_pretrained on compressed folders through prunellm's transformers plugin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers as T

import prunellm
from conftest import calib_ids, tiny_model
from prunellm.runtime.compressed import CONFIG, WEIGHTS, load_state
from prunellm.runtime.sparse_linear import SparseLinear


def _compressed(tmp_path, arch: str, **config) -> tuple[torch.nn.Module, object]:
    model = tiny_model(arch)
    report = prunellm.prune(model, None, prunellm.PruneConfig(solver="wanda", **config),
                            calibration_ids=calib_ids(), progress=False)
    folder = tmp_path / arch
    prunellm.save_pruned(model, None, report, folder, save_format="compressed")
    return model, folder


def test_plain_from_pretrained_refuses_a_compressed_folder(tmp_path):
    """Without `import prunellm`, transformers finds no weights file: an error, never random weights."""
    _, folder = _compressed(tmp_path, "llama", sparsity=0.5)
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"] == "prunellm-sparse"
    code = f"import transformers as T; T.AutoModelForCausalLM.from_pretrained({str(folder)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "no file named model.safetensors" in result.stderr
    assert "prunellm" not in sys.modules or "transformers_weights" not in (folder / "config.json").read_text()


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "mamba"])
def test_from_pretrained_gives_sparse_layers_and_save_pretrained_round_trips(tmp_path, arch):
    model, folder = _compressed(tmp_path, arch, sparsity=0.6)
    loaded = T.AutoModelForCausalLM.from_pretrained(folder).eval()
    sparse = [m for m in loaded.modules() if isinstance(m, SparseLinear)]
    encoded = [n for n, v in json.loads((folder / CONFIG).read_text())["tensors"].items() if v != "dense"]
    assert sparse and len(sparse) == sum(n.endswith(".weight") for n in encoded)  # Mamba's A_log: a plain tensor
    ids = calib_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert "transformers_weights" not in loaded.config.to_dict()
    loaded.save_pretrained(tmp_path / "again")
    first, again = load_state(folder), load_state(tmp_path / "again")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert (tmp_path / "again" / WEIGHTS).exists() and not (tmp_path / "again" / "model.safetensors").exists()
    assert json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]["quant_method"] \
        == "prunellm-sparse"


def test_nm_layout_survives_the_round_trip(tmp_path):
    _, folder = _compressed(tmp_path, "llama", mask_structure="2:4")
    loaded = T.AutoModelForCausalLM.from_pretrained(folder)
    loaded.save_pretrained(tmp_path / "again")
    encodings = json.loads((tmp_path / "again" / CONFIG).read_text())["tensors"]
    assert json.loads((folder / CONFIG).read_text())["tensors"] == encodings
    assert "sparse-2:4-bitmask" in encodings.values()


def test_a_corrupt_compressed_folder_is_an_error_through_from_pretrained(tmp_path):
    _, folder = _compressed(tmp_path, "llama", sparsity=0.5)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-100] ^= 0xFF
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(prunellm.UsageError, match="checksum"):
        T.AutoModelForCausalLM.from_pretrained(folder)


def test_lm_eval_runs_on_a_plugin_loaded_model(tiny_folder, tmp_path, shared_data):
    model, tok = prunellm.load_model(str(tiny_folder))
    report = prunellm.prune(model, tok, prunellm.PruneConfig(solver="magnitude", sparsity=0.5), progress=False)
    prunellm.save_pruned(model, tok, report, tmp_path / "c", save_format="compressed")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "c").eval()
    assert any(isinstance(m, SparseLinear) for m in loaded.modules())
    dense = prunellm.evaluate_zeroshot(model, tok, ["piqa"], limit=4, batch_size=2, data_dir=shared_data)
    sparse = prunellm.evaluate_zeroshot(loaded, tok, ["piqa"], limit=4, batch_size=2, data_dir=shared_data)
    assert sparse["tasks"]["piqa"]["samples"] == 4
    assert sparse["tasks"]["piqa"]["acc"] == dense["tasks"]["piqa"]["acc"]
    assert sparse["tasks"]["piqa"]["acc_norm"] == dense["tasks"]["piqa"]["acc_norm"]


@pytest.mark.integration
def test_smollm2_round_trips_through_from_pretrained(tmp_path):
    model, tok = prunellm.load_model("smollm2-135m")
    report = prunellm.prune(model, tok, prunellm.PruneConfig(solver="magnitude", sparsity=0.5), progress=False)
    prunellm.save_pruned(model, tok, report, tmp_path / "c", save_format="compressed")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "c")
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == 30 * 7
    loaded.save_pretrained(tmp_path / "again")
    first, again = load_state(tmp_path / "c"), load_state(tmp_path / "again")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
