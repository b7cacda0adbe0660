"""Quantized kept weights: storage round trips, the int8 / int4 kernels against the dequantized matmul,
and a pruned + quantized tiny model saved, compressed, loaded and run."""

import json

import pytest
import torch

import prunellm
from conftest import calib_ids, tiny_tokenizer
from prunellm.quant import QuantScheme, quantize_rtn
from prunellm.runtime import kernels
from prunellm.runtime.compressed import (WEIGHTS, decode, encode, load_state_and_quant, model_quant, pack_int4,
                                         read_scales, unpack_bits, unpack_int4)
from prunellm.runtime.sparse_linear import DIRECT_MAX_TOKENS, SparseLinear, sparsify

from test_sparse_linear import DTYPES, _close, _layout_weight


def quantized(rows, cols, layout, q, sparsity=0.6, seed=0):
    """A random weight with `layout` zeros, rounded to q's grid: (weight, scales)."""
    w = _layout_weight(rows, cols, sparsity, layout, torch.float32, seed)
    return quantize_rtn(w, q, w != 0)


def test_int4_packing_round_trips():
    codes = torch.randint(-7, 8, (101,), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 51
    assert torch.equal(unpack_int4(packed, 101), codes)


@pytest.mark.parametrize("q", [QuantScheme(8, 0), QuantScheme(4, 32), QuantScheme(4, 0)], ids=str)
@pytest.mark.parametrize("layout, nm", [("unstructured", None), ("2:4", (2, 4)), ("unstructured", "dense")])
def test_storage_round_trips_bit_for_bit(q, layout, nm):
    sparsity = 0.0 if nm == "dense" else 0.6
    w, scales = quantized(24, 96, layout, q, sparsity)
    encoding, parts = encode(w, None if nm == "dense" else nm, (q, scales))
    assert encoding.endswith(f"+int{q.bits}g{q.group_size}")
    assert "compressed" not in parts and parts["qvalues"].dtype == (torch.int8 if q.bits == 8 else torch.uint8)
    dense = encoding.split("+")[0] == "dense"  # N:M stores M−N per group, zeros included
    kept = w.numel() if dense else int(unpack_bits(parts["bitmask"], 96).sum())
    assert parts["qvalues"].numel() == (kept if q.bits == 8 else (kept + 1) // 2)
    assert torch.equal(decode("w", encoding, parts), w)


def test_storage_refuses_off_grid_weights_and_bad_parts():
    q = QuantScheme(8, 0)
    w, scales = quantized(8, 64, "unstructured", q)
    with pytest.raises(prunellm.UsageError, match="not on its int8 grid"):
        encode(w + 1e-3 * (w != 0), None, (q, scales))
    encoding, parts = encode(w, None, (q, scales))
    with pytest.raises(prunellm.UsageError, match="scales"):
        decode("w", encoding, {**parts, "scales": parts["scales"][:, :0]})
    with pytest.raises(prunellm.UsageError, match="codes for"):
        decode("w", encoding, {**parts, "qvalues": parts["qvalues"][:-1]})


QCASES = [(7, 40, QuantScheme(8, 0)), (33, 64, QuantScheme(8, 32)), (16, 100, QuantScheme(8, 0)),
          (9, 96, QuantScheme(4, 32)), (130, 577, QuantScheme(4, 0)), (20, 256, QuantScheme(4, 128))]


@pytest.mark.parametrize("isa", list(kernels.VARIANTS))
@pytest.mark.parametrize("rows, cols, q", QCASES, ids=str)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_quantized_kernels_equal_the_dequantized_matmul(isa, rows, cols, q, sparsity, monkeypatch):
    monkeypatch.setattr(kernels, "_DEFAULT", isa)
    w, scales = quantized(rows, cols, "unstructured", q, sparsity, seed=rows + cols)
    layer = SparseLinear(w, quant=(q, scales))
    assert layer.values.dtype == (torch.int8 if q.bits == 8 else torch.uint8)
    assert torch.equal(layer.dense_weight(), w)
    for dtype in DTYPES:
        for batch in (1, 3, 8, 64):
            x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(batch)).to(dtype)
            y = layer(x)
            # longer inputs multiply a decompressed weight in the GEMM's dtype (float16: float32)
            gemm = torch.float32 if dtype == torch.float16 else dtype
            exact = w if batch <= DIRECT_MAX_TOKENS[dtype] else w.to(gemm).float()
            assert y.dtype == dtype and _close(y, x, exact), (isa, dtype, batch)


def test_quantized_fallback_without_the_kernel(monkeypatch):
    q = QuantScheme(4, 32)
    w, scales = quantized(12, 64, "unstructured", q)
    layer = SparseLinear(w, quant=(q, scales))
    x = torch.randn(3, 64)
    with_kernel = layer(x)
    monkeypatch.setitem(kernels._state, kernels.variant(), {"module": None, "error": "disabled for the test"})
    assert torch.equal(layer.dense_weight(), w)
    assert torch.allclose(layer(x), with_kernel, atol=1e-5)


@pytest.fixture(scope="module")
def quantized_llama():
    """A tiny Llama with its head tied to the embedding (as SmolLM2's), pruned and quantized, head too."""
    import transformers as T

    from conftest import CONFIGS

    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.tie_word_embeddings = True
    model = T.AutoModelForCausalLM.from_config(config).eval()
    config = prunellm.PruneConfig(solver="sparsegpt", sparsity=0.5, quantize="int4", group_size=32,
                                  block_size=32, quantize_head=True)
    report = prunellm.prune(model, None, config, calibration_ids=calib_ids(), progress=False)
    return model, report


def test_prune_quantizes_every_layer_and_the_head(quantized_llama):
    model, report = quantized_llama
    assert report["quantization"] == {"scheme": "int4", "group_size": 32, "head": "lm_head"}
    quant = model_quant(model)
    layers = [n for n, _ in model.named_modules() if n.endswith("_proj")]
    assert set(quant) == {f"{n}.weight" for n in layers} | {"model.embed_tokens.weight"}  # the tied head's name
    for name, (scheme, scales) in quant.items():
        weight = model.get_parameter(name)
        encode(weight.detach(), None, (scheme, scales), name)  # raises unless on the grid


def test_quantized_model_saves_loads_and_runs(quantized_llama, tmp_path):
    model, report = quantized_llama
    ids = calib_ids(2, 12, seed=5)
    with torch.no_grad():
        expected = model(ids).logits
    dense = prunellm.save_pruned(model, tiny_tokenizer(), report, tmp_path / "dense")
    saved = set(read_scales(dense))  # the tied head's scales under the embedding's name, the one saved
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved
    assert saved == {name.replace("lm_head", "model.embed_tokens") for name in model_quant(model)}
    for source in (dense, prunellm.save_pruned(model, tiny_tokenizer(), report, tmp_path / "c", save_format="compressed")):
        loaded, _ = prunellm.load(str(source))
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, expected)
        assert set(model_quant(loaded)) >= {"model.layers.0.mlp.up_proj.weight"}
        sparsify(loaded, min_sparsity=0.0)
        layer = loaded.model.layers[0].mlp.up_proj
        assert isinstance(layer, SparseLinear) and layer.bits == 4
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, expected, atol=1e-4)
    config = json.loads((tmp_path / "c" / "sparse_config.json").read_text())
    assert config["tensors"]["model.layers.0.mlp.up_proj.weight"] == "sparse-bitmask+int4g32"
    assert config["tensors"]["model.embed_tokens.weight"] == "dense+int8g0"
    state, quant = load_state_and_quant(tmp_path / "c")
    assert quant["model.embed_tokens.weight"][0] == QuantScheme(8, 0)


def test_compressed_quantized_folder_round_trips_through_transformers(quantized_llama, tmp_path):
    import transformers

    model, report = quantized_llama
    folder = prunellm.save_pruned(model, tiny_tokenizer(), report, tmp_path / "c", save_format="compressed")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
    layer = loaded.model.layers[1].self_attn.q_proj
    assert isinstance(layer, SparseLinear) and layer.bits == 4
    ids = calib_ids(2, 12, seed=6)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-4)
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / WEIGHTS).read_bytes() == (folder / WEIGHTS).read_bytes()


def test_dense_export_of_a_compressed_folder(quantized_llama, tmp_path):
    from prunellm.cli import main

    model, report = quantized_llama
    folder = prunellm.save_pruned(model, tiny_tokenizer(), report, tmp_path / "c", save_format="compressed")
    assert main(["compress", str(folder), str(tmp_path / "plain"), "--dense"]) == 0
    import transformers

    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain")  # no prunellm format needed
    ids = calib_ids(2, 12, seed=7)
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)
