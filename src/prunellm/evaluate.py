"""Evaluation entry points on a model in memory: perplexity over several datasets."""

from __future__ import annotations

import os

from .perplexity import perplexity


def evaluate_perplexity(
    model,
    tokenizer,
    datasets: list[str],
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    data_dir: str | os.PathLike | None = None,
) -> dict:
    """Perplexity on each dataset; returns `{"perplexity": {...}, "seqlen": ..., "windows": {...}}`."""
    ppl, counts = {}, {}
    for name in datasets:
        ppl[name], counts[name] = perplexity(model, tokenizer, name, seqlen, max_windows, batch_size, data_dir)
    return {"perplexity": ppl, "seqlen": seqlen, "windows": counts}
