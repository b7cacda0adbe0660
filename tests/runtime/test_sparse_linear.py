"""The sparse CPU inference path: the compiled kernel against dense matmul, and sparsified models."""

import json

import pytest
import torch

import prunellm
from conftest import calib_ids, tiny_model
from prunellm.runtime import kernels
from prunellm.runtime.sparse_linear import KERNEL_MAX_TOKENS, SparseLinear, sparsify


def _sparse_weight(rows, cols, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return w


def test_kernel_builds_here():
    """This machine has a compiler: the kernel must build (elsewhere the fallback is used)."""
    assert kernels.load() is not None, kernels.load_error()


@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 13), (33, 64), (64, 200), (130, 577)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 3, 8, 11])
def test_kernel_matches_dense_matmul(rows, cols, sparsity, batch):
    w = _sparse_weight(rows, cols, sparsity, seed=rows + cols)
    w[0] = 0  # an all-zero row
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(1))
    layer = SparseLinear(w, torch.randn(rows))
    module = kernels.load()
    y = module.bitmask_matmul(layer.values, layer.bitmask, layer.row_offsets, x)
    exact = x.double() @ w.double().T
    scale = x.double().abs() @ w.double().abs().T  # float32 rounding is relative to Σ|x||w|
    assert bool(((y.double() - exact).abs() <= 1e-6 * scale + 1e-12).all())
    assert bool(((layer(x).double() - exact - layer.bias.double()).abs() <= 1e-6 * scale + 1e-6).all())


def test_large_batches_and_other_dtypes_take_the_dense_fallback():
    w = _sparse_weight(16, 24, 0.6)
    layer = SparseLinear(w)
    x = torch.randn(2, KERNEL_MAX_TOKENS + 5, 24)  # 3-D input, more tokens than the kernel path takes
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-5, atol=1e-5)
    half = SparseLinear(w.to(torch.bfloat16))
    assert torch.equal(half.dense_weight(), w.to(torch.bfloat16))
    assert half(x[0, :1].to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mamba"])
def test_sparsified_model_generates_the_same_tokens(arch):
    model = tiny_model(arch)
    prunellm.prune(model, None, prunellm.PruneConfig(solver="wanda", sparsity=0.7), calibration_ids=calib_ids(),
                   progress=False)
    ids = calib_ids(1, 6)
    with torch.no_grad():
        dense_logits = model(ids).logits
        dense_tokens = model.generate(ids, max_new_tokens=8, do_sample=False)
    replaced = sparsify(model)
    assert replaced and all(isinstance(model.get_submodule(n), SparseLinear) for n in replaced)
    assert not any("lm_head" in n for n in replaced)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense_logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), dense_tokens)


def test_cli_prune_compressed_then_run_and_bench(tiny_folder, shared_data, tmp_path, capsys):
    from prunellm.cli import main

    out = tmp_path / "sparse"
    assert main(["prune", str(tiny_folder), "--solver", "wanda", "--sparsity", "0.7", "--nsamples", "4",
                 "--seqlen", "32", "--data-dir", shared_data, "--save-format", "compressed", "--output", str(out)]) == 0
    assert (out / "model.sparse.safetensors").exists() and not (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["run", str(out), "--prompt", "The tower is", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr()
    assert text.out.strip() and "sparse layers" in text.err
    assert main(["bench", str(out), "--prompt-tokens", "16", "--new-tokens", "4", "--repeats", "1",
                 "--json", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["same_tokens"] and result["sparse_layers"] == 14 and result["kernel"]
    assert result["dense"]["decode_tokens_per_s"] > 0 and result["sparse"]["prefill_tokens_per_s"] > 0
    assert result["memory_bytes"]["sparse"] < result["memory_bytes"]["dense"]


@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 13), (64, 200), (33, 577)])
def test_kernel_decompress_is_exact(rows, cols):
    w = _sparse_weight(rows, cols, 0.6, seed=cols)
    w[-1] = 0
    layer = SparseLinear(w)
    assert torch.equal(kernels.load().bitmask_decompress(layer.values, layer.bitmask, layer.row_offsets, cols), w)
