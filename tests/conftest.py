"""Shared fixtures: tiny randomly initialised models of every supported architecture, built from configs."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as T

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

_COMMON = dict(vocab_size=96, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda: T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, **_COMMON),
    "mistral": lambda: T.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **_COMMON),
    "qwen2": lambda: T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, **_COMMON),
    "gemma3": lambda: T.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                         sliding_window=8, layer_types=["sliding_attention", "full_attention",
                                                                        "sliding_attention"], **_COMMON),
    "opt": lambda: T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                               word_embed_proj_dim=32, **_COMMON),
    "gpt2": lambda: T.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                 bos_token_id=0, eos_token_id=0),
    "mamba": lambda: T.MambaConfig(vocab_size=96, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, time_step_rank=8),
}
ARCHS = list(CONFIGS)


def tiny_model(arch: str, seed: int = 0):
    """A tiny random causal LM of the given architecture, in eval mode, float32."""
    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval()


def calib_ids(n: int = 6, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def prune_tiny(arch: str = "llama", **options) -> dict:
    """Prune a tiny model of `arch` with PruneConfig(**options) on 4 random sequences; returns the report."""
    from prunellm import PruneConfig, prune

    return prune(tiny_model(arch), None, PruneConfig(calibration_batch_size=2, **options),
                 calibration_ids=calib_ids(4, 16), progress=False)


def assert_layers_improved(report: dict, stage: str) -> None:
    """Each layer's `<stage>_error_after` is at most its `_before`, and the sum drops; sparsity stays 0.5."""
    rows = report["layers"]
    assert all(r[f"{stage}_error_after"] <= r[f"{stage}_error_before"] for r in rows)
    assert sum(r[f"{stage}_error_after"] for r in rows) < sum(r[f"{stage}_error_before"] for r in rows)
    assert abs(report["sparsity"] - 0.5) < 1e-9


@pytest.fixture
def shared_data() -> str:
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.fail(f"shared data folder {path} is missing (expected ../shared/data beside the checkout)")
    return path


def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in memory (no downloads), wrapped for transformers."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    text = ["the quick brown fox jumps over the lazy dog", "pruning removes weights from a language model"]
    bpe.train_from_iterator(text * 20, vocab_size=300, min_frequency=1, show_progress=False)
    tok = T.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(0)
    return tok


@pytest.fixture
def tiny_folder(tmp_path):
    """A saved tiny Llama model folder with a tokenizer, loadable by `prunellm` like any HF folder."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512)
    folder = tmp_path / "tiny-llama"
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
