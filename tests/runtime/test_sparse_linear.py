"""The sparse CPU inference path: every kernel variant and dtype against dense matmul, and sparsified models."""

import json

import pytest
import torch

import prunellm
from conftest import calib_ids, tiny_model
from prunellm.runtime import kernels
from prunellm.runtime.sparse_linear import DIRECT_MAX_TOKENS, SparseLinear, dense_decode, sparsify


def test_kernel_builds_here():
    """This machine has a compiler: every variant must build (elsewhere the fallback is used)."""
    for isa in kernels.VARIANTS:
        assert kernels.load(isa=isa) is not None, kernels.load_error(isa)
    assert kernels.load().isa().startswith("avx512") == ("avx512f" in open("/proc/cpuinfo").read())


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# what one output rounding to the dtype allows, relative to |y|, on top of float32 accumulation
OUT_EPS = {torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-10}


def _layout_weight(rows, cols, sparsity, layout, dtype, seed):
    """Random sparse weights: unstructured at `sparsity`, or N:M (2:4, 4:8) with N of every M pruned."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    if layout == "unstructured":
        w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    else:
        n, m = (int(v) for v in layout.split(":"))
        scores = torch.rand(rows, cols // m, m, generator=g)
        pruned = scores.argsort(-1)[..., :n]
        w = w.view(rows, cols // m, m).scatter(-1, pruned, 0.0).view(rows, cols)
    return w.to(dtype)


def _close(y, x, w, bias=None):
    """y equals x Wᵀ (+ bias) up to float32 accumulation and the output's rounding (twice with a bias)."""
    product = x.double() @ w.double().T
    exact = product if bias is None else product + bias.double()
    rounding = OUT_EPS[y.dtype] * (exact.abs() + (0 if bias is None else product.abs()))
    scale = x.double().abs() @ w.double().abs().T  # float32 accumulation error is relative to Σ|x||w|
    return bool(((y.double() - exact).abs() <= rounding + 1e-5 * scale + 1e-30).all())


CASES = [(r, c, s, "unstructured") for r, c in [(1, 1), (7, 13), (33, 64), (16, 100), (130, 577)]
         for s in (0.0, 0.5, 0.95, 1.0)] + [(24, 64, None, "2:4"), (9, 96, None, "4:8"), (5, 200, None, "2:4")]


@pytest.mark.parametrize("isa", list(kernels.VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, cols, sparsity, layout", CASES)
def test_kernels_equal_the_decompressed_matmul(isa, dtype, rows, cols, sparsity, layout):
    module = kernels.load(isa=isa)
    w = _layout_weight(rows, cols, sparsity, layout, dtype, seed=rows * 1000 + cols)
    w[0] = 0  # an all-zero row
    layer = SparseLinear(w)
    assert torch.equal(module.bitmask_decompress(layer.values, layer.bitmask, layer.row_offsets, cols), w)
    width = (cols + 31) // 32 * 32
    for out_dtype in {dtype, torch.float32}:
        buf = torch.full((rows, width), 7.0, dtype=out_dtype)
        module.bitmask_decompress_into(layer.values, layer.bitmask, layer.row_offsets, buf)
        assert torch.equal(buf[:, :cols], w.to(out_dtype))  # columns past cols: padding, unspecified
    for batch in (1, 3, 8, 11, 17, 64):
        x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(batch)).to(dtype)
        y = module.bitmask_matmul(layer.values, layer.bitmask, layer.row_offsets, x)
        assert y.dtype == dtype and y.shape == (batch, rows) and _close(y, x, w), (batch, isa)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [1, 5, DIRECT_MAX_TOKENS[torch.float32] + 1, 40, 130])
def test_sparse_linear_on_both_paths(dtype, tokens):
    w = _layout_weight(48, 72, 0.7, "unstructured", dtype, seed=3)
    bias = torch.randn(48).to(dtype)
    layer = SparseLinear(w, bias)
    x = torch.randn(2, tokens, 72).to(dtype)  # 3-D input: batch × tokens × features
    y = layer(x)
    assert y.shape == (2, tokens, 48) and y.dtype == dtype
    assert _close(y.reshape(-1, 48), x.reshape(-1, 72), w, bias)
    other = SparseLinear(_layout_weight(48, 72, 0.5, "unstructured", dtype, seed=4))
    other(x)  # the same shared buffer, other contents: the first layer's result must not change
    assert torch.equal(layer(x), y)


def test_without_the_kernel_the_fallback_gives_the_same_results(monkeypatch):
    w = _layout_weight(16, 40, 0.6, "unstructured", torch.float32, seed=5)
    layer = SparseLinear(w)
    x = torch.randn(3, 40)
    with_kernel = layer(x)
    monkeypatch.setitem(kernels._state, kernels.variant(), {"module": None, "error": "disabled for the test"})
    assert kernels.load() is None
    torch.testing.assert_close(layer(x), with_kernel, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.dense_weight(), w)
    half = SparseLinear(w.to(torch.bfloat16))
    assert torch.equal(half.dense_weight(), w.to(torch.bfloat16)) and half(x[:1].bfloat16()).dtype == torch.bfloat16


def test_dense_head_decode_kernel_shares_the_weight():
    head = torch.nn.Linear(64, 300, bias=False)
    tied = head.weight
    expected = head(torch.ones(1, 64))
    assert dense_decode(head) and head.weight is tied  # nothing copied, still tied
    x = torch.randn(2, 64)
    assert _close(head(x), x, head.weight.detach())
    long = torch.randn(40, 64)  # prefill length: torch's own GEMM
    torch.testing.assert_close(head(long), long @ head.weight.T)
    assert torch.equal(head(torch.ones(1, 64)), head(torch.ones(1, 64))) and expected.shape == (1, 300)
    assert not dense_decode(torch.nn.Linear(60, 8))  # a width the kernel would read past: left to torch


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


