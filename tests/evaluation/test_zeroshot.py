"""Zero-shot evaluation through lm-eval on local task files: tiny model, two tasks, --limit."""

import json

import pytest

from prunellm.cli import main
from prunellm.errors import UsageError
from prunellm.evaluation.zeroshot import KNOWN_TASKS, task_configs


def test_eval_two_tasks_json_shape(tiny_folder, shared_data, tmp_path, capsys):
    out = tmp_path / "zs.json"
    rc = main(["eval", str(tiny_folder), "--tasks", "piqa,winogrande", "--limit", "6", "--batch-size", "4",
               "--data-dir", shared_data, "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert "perplexity" not in result  # --tasks alone: no perplexity unless asked
    zs = result["zeroshot"]
    assert set(zs["tasks"]) == {"piqa", "winogrande"} and zs["limit"] == 6
    piqa, wino = zs["tasks"]["piqa"], zs["tasks"]["winogrande"]
    assert piqa["samples"] == 6 and piqa["source"] == "local"
    for value in (piqa["acc"], piqa["acc_norm"], wino["acc"]):
        assert 0.0 <= value <= 1.0 and value * 6 == pytest.approx(round(value * 6))  # k correct out of 6
    assert zs["mean_acc_tasks"] == ["winogrande"] and zs["mean_acc"] == wino["acc"]
    assert "piqa" in capsys.readouterr().out


def test_unknown_task_lists_known_ones(tiny_folder, capsys):
    assert main(["eval", str(tiny_folder), "--tasks", "piqa,mmlu_pro"]) == 2
    err = capsys.readouterr().err
    assert "mmlu_pro" in err and all(name in err for name in KNOWN_TASKS)


def test_every_known_task_has_a_local_config(shared_data):
    configs = task_configs(list(KNOWN_TASKS), shared_data)
    assert all(isinstance(c, dict) and c["task"] == f"prunellm_{n}" for n, c in configs.items())
    assert configs["winogrande"]["doc_to_choice"] == "context_options"  # partial scoring
    assert [m["metric"] for m in configs["lambada"]["metric_list"]] == ["perplexity", "acc"]
    with pytest.raises(UsageError, match="known tasks"):
        task_configs(["nope"])
