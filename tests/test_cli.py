"""CLI: eval and prune end to end on a tiny saved model, and one-line exit-2 errors on bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunellm.cli import main
from prunellm.outputs import REPORT


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message on stderr"
    return err[-1]


def test_eval_writes_table_and_json(tiny_folder, shared_data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", str(tiny_folder), "--ppl", "wikitext2,ptb", "--seqlen", "32", "--max-windows", "2",
               "--data-dir", shared_data, "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["model"] == str(tiny_folder) and result["seqlen"] == 32
    assert set(result["perplexity"]) == {"wikitext2", "ptb"} and result["windows"] == {"wikitext2": 2, "ptb": 2}
    assert all(1 < v < 1e4 for v in result["perplexity"].values())
    assert "wikitext2" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["./no/such/folder", "/tmp"])
def test_bad_model_folder(model, capsys):
    assert main(["eval", model, "--seqlen", "16"]) == 2
    line = _error_line(capsys)
    assert line.startswith("prunellm: error:") and ("does not exist" in line or "no config.json" in line)


def test_unknown_model_name_offline(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "no-such-model-name", "--seqlen", "16"]) == 2
    assert "cannot load model 'no-such-model-name'" in _error_line(capsys)


@pytest.mark.parametrize("seqlen", ["0", "-3", "abc"])
def test_bad_seqlen_is_a_usage_error(seqlen, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--seqlen", seqlen])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_seqlen_longer_than_model(tiny_folder, shared_data, capsys):
    assert main(["eval", str(tiny_folder), "--seqlen", "1024", "--data-dir", shared_data]) == 2
    assert "max_position_embeddings" in _error_line(capsys)


def _prune(folder, out, *extra):
    return main(["prune", str(folder), "--nsamples", "2", "--seqlen", "16", "--output", str(out), *extra])


def test_prune_writes_loadable_folder_with_report(tiny_folder, shared_data, tmp_path):
    out = tmp_path / "pruned"
    rc = _prune(tiny_folder, out, "--solver", "sparsegpt", "--sparsity", "0.6", "--data-dir", shared_data,
                "--eval-ppl", "wikitext2", "--eval-seqlen", "32", "--eval-max-windows", "2", "--eval-dense",
                "--eval-tasks", "rte", "--eval-limit", "4")
    assert rc == 0
    report = json.loads((out / REPORT).read_text())
    assert report["config"]["solver"] == "sparsegpt" and report["config"]["sparsity"] == 0.6
    assert abs(report["sparsity"] - 0.6) < 0.01
    assert {"name", "target", "sparsity"} <= set(report["layers"][0])
    assert set(report["timings"]) == {"calib_forward_s", "prune_s"} and report["peak_rss_mb"] > 0
    assert set(report["perplexity"]) == {"wikitext2"} and set(report["perplexity_dense"]) == {"wikitext2"}
    assert report["zeroshot"]["tasks"]["rte"]["samples"] == 4
    model = AutoModelForCausalLM.from_pretrained(out)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q == 0).float().mean().item() == pytest.approx(0.6, abs=0.02)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".pruned")]


def test_prune_from_llm_compressor_recipe(tiny_folder, shared_data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "sparsity_stage:\n  sparsity_modifiers:\n    SparseGPTModifier:\n"
        "      sparsity: 0.5\n      mask_structure: '2:4'\n      targets: ['Linear']\n"
        "      ignore: ['re:.*lm_head', 're:.*down_proj']\n"
    )
    out = tmp_path / "pruned"
    assert _prune(tiny_folder, out, "--config", str(recipe), "--data-dir", shared_data) == 0
    report = json.loads((out / REPORT).read_text())
    assert report["config"]["solver"] == "sparsegpt" and report["config"]["mask_structure"] == "2:4"
    names = [row["name"] for row in report["layers"]]
    assert names and not any("down_proj" in n for n in names)
    w = AutoModelForCausalLM.from_pretrained(out).model.layers[1].mlp.up_proj.weight
    assert ((w.view(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
        (["--pattern", "4:4"], "need 0 < N < M"),
        (["--pattern", "1:64"], "not divisible by M=64"),
        (["--solver", "obc"], "unknown solver"),
        (["--calib", "text:/no/such/file.txt"], "not found"),
        (["--sparsity", "0.5", "--pattern", "2:4"], "either --sparsity or --pattern"),
        (["--quantize", "int4", "--group-size", "48"], "multiple of 32"),
        (["--quantize", "int4", "--group-size", "256"], "must be a multiple of group_size"),
        (["--quantize-head"], "quantize_head needs --quantize"),
        (["--permute"], "give --pattern N:M"),
    ],
)
def test_prune_bad_input(tiny_folder, shared_data, tmp_path, capsys, extra, message):
    out = tmp_path / "pruned"
    assert _prune(tiny_folder, out, "--data-dir", shared_data, *extra) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_prune_and_quantize_then_compress_and_bench(tiny_folder, shared_data, tmp_path, capsys):
    out = tmp_path / "q"
    assert _prune(tiny_folder, out, "--solver", "wanda", "--sparsity", "0.5", "--quantize", "int4",
                  "--group-size", "32", "--block-size", "32", "--data-dir", shared_data) == 0
    report = json.loads((out / REPORT).read_text())
    assert report["quantization"] == {"scheme": "int4", "group_size": 32, "head": None}
    assert (out / "quant_scales.safetensors").is_file()
    from prunellm.cli import main

    assert main(["compress", str(out), str(tmp_path / "c")]) == 0
    assert "sparse-bitmask+int4g32" in capsys.readouterr().out
    assert main(["bench", str(tmp_path / "c"), "--repeats", "1", "--new-tokens", "2", "--prompt-tokens", "8"]) == 0


def test_recipe_with_a_gptq_modifier(tmp_path):
    from prunellm.config import PruneConfig

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "stage:\n  modifiers:\n    SparseGPTModifier:\n      sparsity: 0.5\n"
        "    GPTQModifier:\n      scheme: W4A16\n      group_size: 64\n      targets: ['Linear']\n"
    )
    config = PruneConfig.from_yaml(str(recipe))
    assert (config.solver, config.sparsity, config.quantize, config.group_size) == ("sparsegpt", 0.5, "int4", 64)
    recipe.write_text("GPTQModifier:\n  scheme: W8A8\n")
    with pytest.raises(Exception, match="W8A16"):
        PruneConfig.from_yaml(str(recipe))


def test_prune_refuses_existing_output(tiny_folder, tmp_path, capsys):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _prune(tiny_folder, out, "--solver", "magnitude") == 2
    assert "--overwrite" in _error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    assert _prune(tiny_folder, out, "--solver", "magnitude", "--overwrite") == 0
    assert (out / REPORT).exists() and not (out / "keep.txt").exists()


def test_prune_with_allocation_then_plot(tiny_folder, shared_data, tmp_path, capsys):
    out = tmp_path / "owl"
    assert _prune(tiny_folder, out, "--allocation", "owl", "--owl-m", "2", "--sparsity", "0.6",
                  "--data-dir", shared_data) == 0
    report = json.loads((out / REPORT).read_text())
    assert report["allocation"]["name"] == "owl" and len(report["allocation"]["per_block"]) == 2
    assert main(["plot", str(out)]) == 0
    for name in ("allocation_heatmap.png", "allocation_statistic.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path)]) == 2
    assert "prune_report.json not found" in _error_line(capsys)
