"""Choosing the compute device: auto, explicit devices, torchrun ranks, and one clear error for a bad one."""

from __future__ import annotations

import json

import pytest
import torch

from prunellm import devices
from prunellm.cli import main
from prunellm.errors import UsageError


def _fake_gpus(monkeypatch, count: int) -> None:
    """Pretend torch sees `count` CUDA devices (torch.device objects need no real GPU)."""
    real = devices._available
    monkeypatch.setattr(devices, "_available", lambda kind: count if kind == "cuda" else real(kind))


def test_cpu_and_auto_on_a_machine_without_accelerators():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    if not any(devices._available(k) for k in ("cuda", "xpu", "mps")):
        assert devices.resolve_device("auto") == torch.device("cpu")
        assert devices.default_dtype(devices.resolve_device("auto")) == "float32"


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cpu:1", "gpu"])
def test_malformed_devices_are_usage_errors(spec):
    with pytest.raises(UsageError):
        devices.resolve_device(spec)


def test_unavailable_cuda_is_a_usage_error(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(UsageError, match="not available"):
        devices.resolve_device("cuda")


def test_cuda_choices_with_two_gpus(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("auto", model_device=torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(UsageError, match="cuda:7 does not exist: torch sees 2"):
        devices.resolve_device("cuda:7")
    # under torchrun every rank takes its own GPU
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve_device("cuda") == torch.device("cuda", 1)
    assert devices.resolve_device("auto") == torch.device("cuda", 1)
    assert devices.default_dtype(torch.device("cuda", 1)) == "auto"


def test_float64_where_the_device_has_it():
    assert devices.wide_float(torch.device("cpu")) == torch.float64
    assert devices.wide_float(torch.device("mps")) == torch.float32


@pytest.mark.parametrize("command", [
    ["eval", "--device", "cuda:7"],
    ["prune", "--device", "cuda:7", "--output", "never-written"],
    ["run", "some-folder", "--prompt", "x", "--device", "cuda:7"],
    ["bench", "some-folder", "--device", "cuda:7"],
])
def test_cli_refuses_a_device_it_cannot_use(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda:7" in err[0]
    assert not (tmp_path / "never-written").exists()


def test_cli_refuses_cuda_without_cuda(capsys, monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert main(["eval", "--device", "cuda"]) == 2
    assert "not available" in capsys.readouterr().err


def test_cli_device_cpu_is_bit_identical_to_the_default(tiny_folder, shared_data, tmp_path):
    from safetensors.torch import load_file

    common = ["prune", str(tiny_folder), "--solver", "sparsegpt", "--sparsity", "0.5", "--allocation", "owl",
              "--nsamples", "4", "--seqlen", "32", "--data-dir", shared_data]
    assert main([*common, "--output", str(tmp_path / "default")]) == 0
    assert main([*common, "--device", "cpu", "--output", str(tmp_path / "cpu")]) == 0
    default, cpu = (load_file(tmp_path / d / "model.safetensors") for d in ("default", "cpu"))
    assert default.keys() == cpu.keys() and all(torch.equal(default[k], cpu[k]) for k in default)
    report = json.loads((tmp_path / "cpu" / "prune_report.json").read_text())
    assert report["device"] == "cpu" and report["config"]["device"] == "cpu" and report["dtype"] == "float32"
