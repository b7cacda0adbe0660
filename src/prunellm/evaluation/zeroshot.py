"""Zero-shot accuracy through lm-evaluation-harness, on a model in memory, offline on local task files.

The local copies in `<data dir>/zeroshot/*.jsonl` (formats in ../shared/data/README.md) are registered
as lm-eval task configs with the standard metrics: acc and acc_norm for multiple choice, partial
scoring for WinoGrande (score the shared continuation after each option), accuracy and perplexity
for LAMBADA. A task with no local file falls back to lm-eval's own (hub) task of the same name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..data import data_dirs
from ..errors import UsageError

# The seven tasks the pruning papers average (Wanda, SparseGPT, OWL tables).
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
_MC = {"piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq", "openbookqa", "copa"}
_NORMED = {"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"}  # tasks lm-eval reports acc_norm for
KNOWN_TASKS = tuple(sorted(_MC | {"winogrande", "rte", "lambada"}))
_FILES = {name: f"zeroshot/{name}.jsonl" for name in KNOWN_TASKS}
_FILES["lambada"] = "zeroshot/lambada_openai.jsonl"
_HUB_NAMES = {"lambada": "lambada_openai"}
_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
_ACC_NORM = _ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def _local_config(name: str, path: Path) -> dict:
    """An lm-eval task config (as a dict) reading one local JSON-lines file."""
    base = {
        "task": f"prunellm_{name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "metadata": {"version": 1.0},
    }
    if name in _MC:
        return {**base, "output_type": "multiple_choice", "doc_to_text": "{{query}}", "doc_to_target": "gold",
                "doc_to_choice": "choices", "target_delimiter": " ",
                "metric_list": _ACC_NORM if name in _NORMED else _ACC}
    if name == "winogrande":  # partial scoring: gold index as "text", options as contexts, shared continuation
        return {**base, "output_type": "multiple_choice", "doc_to_text": "gold", "doc_to_target": "continuation",
                "doc_to_choice": "context_options", "target_delimiter": " ", "metric_list": _ACC}
    if name == "rte":  # lm-eval's GLUE RTE prompt
        return {**base, "output_type": "multiple_choice",
                "doc_to_text": "{{premise}}\nQuestion: {{hypothesis}} True or False?\nAnswer:",
                "doc_to_target": "label", "doc_to_choice": ["True", "False"], "metric_list": _ACC}
    if name == "lambada":
        return {**base, "output_type": "loglikelihood", "doc_to_text": "{{context}}",
                "doc_to_target": "{{' ' + continuation}}",
                "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                *_ACC]}
    raise UsageError(f"no local task config for {name!r}")


def task_configs(names: list[str], data_dir: str | os.PathLike | None = None) -> dict[str, dict | str]:
    """Map each requested task to a local lm-eval config, or to lm-eval's own task name if no file is here."""
    unknown = [n for n in names if n not in KNOWN_TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(KNOWN_TASKS)}")
    chosen: dict[str, dict | str] = {}
    for name in names:
        for base in data_dirs(data_dir):
            if (base / _FILES[name]).is_file():
                chosen[name] = _local_config(name, base / _FILES[name])
                break
        else:
            chosen[name] = _HUB_NAMES.get(name, name)
    return chosen


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UsageError("zero-shot tasks need lm-evaluation-harness: pip install 'prunellm[eval]'") from None
    return lm_eval, HFLM


def evaluate_zeroshot(
    model,
    tokenizer,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | os.PathLike | None = None,
) -> dict:
    """Zero-shot metrics per task and the mean accuracy over the papers' seven tasks that were run.

    Returns `{"tasks": {name: {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], ["perplexity"],
    "samples", "source"}}, "mean_acc": ..., "mean_acc_tasks": [...], "limit": ...}`.
    """
    configs = task_configs(tasks, data_dir)
    lm_eval, HFLM = _lm_eval()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(configs.values()), limit=limit, log_samples=False,
                                  bootstrap_iters=1000, verbosity="WARNING")
    results, counts = out["results"], out.get("n-samples", {})
    per_task = {}
    for name, cfg in configs.items():
        key = cfg["task"] if isinstance(cfg, dict) else cfg
        raw = results[key]
        row = {metric.split(",")[0]: value for metric, value in raw.items()
               if "," in metric and isinstance(value, (int, float))}
        row["samples"] = counts.get(key, {}).get("effective")
        row["source"] = "local" if isinstance(cfg, dict) else "lm-eval hub"
        per_task[name] = row
    averaged = [n for n in PAPER_TASKS if n in per_task]
    mean = sum(per_task[n]["acc"] for n in averaged) / len(averaged) if averaged else None
    return {"tasks": per_task, "mean_acc": mean, "mean_acc_tasks": averaged, "limit": limit}


def zeroshot_rows(result: dict) -> list[list]:
    """Table rows (task, acc, acc_norm, stderr, samples) for `outputs.format_table`."""
    rows = [[name, r.get("acc", "-"), r.get("acc_norm", "-"), r.get("acc_stderr", "-"), r.get("samples", "-")]
            for name, r in result["tasks"].items()]
    if result["mean_acc"] is not None:
        rows.append([f"mean ({len(result['mean_acc_tasks'])} tasks)", result["mean_acc"], "-", "-", "-"])
    return rows
