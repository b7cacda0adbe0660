"""Perplexity by the standard pruning protocol: non-overlapping windows, exp of the mean token NLL.

`perplexity` scores one dataset, `evaluate_perplexity` several (the CLI's `--ppl a,b`).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import eval_tokens
from ..errors import UsageError


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into `numel // seqlen` windows (remainder dropped), optionally the first N."""
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise UsageError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: n * seqlen].view(n, seqlen)


@torch.inference_mode()
def window_nll(model, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window in `batch` (B × T), in float64 for the running sum."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    logits = model(batch, use_cache=False).logits
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none"
    ).view(batch.shape[0], -1)
    return loss.double().sum(dim=1).cpu()


def perplexity_of_tokens(
    model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None, batch_size: int = 1, desc: str = "ppl"
) -> tuple[float, int]:
    """PPL over the windows of `ids` (reference: per-window mean NLL, averaged); returns (ppl, windows)."""
    if seqlen < 2:
        raise UsageError(f"seqlen must be at least 2 (got {seqlen})")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seqlen > limit:
        raise UsageError(f"seqlen {seqlen} exceeds the model's max_position_embeddings ({limit})")
    chunks = windows(ids, seqlen, max_windows)
    total = 0.0
    for start in tqdm(range(0, len(chunks), batch_size), desc=desc, unit="batch", leave=False):
        total += window_nll(model, chunks[start : start + batch_size]).sum().item()
    mean_nll = total / (len(chunks) * (seqlen - 1))
    return math.exp(mean_nll), len(chunks)


def perplexity(
    model,
    tokenizer,
    dataset: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    data_dir: str | os.PathLike | None = None,
) -> tuple[float, int]:
    """Perplexity of `model` on a dataset's test split by the standard protocol; returns (ppl, windows)."""
    ids = eval_tokens(tokenizer, dataset, seqlen, data_dir)
    return perplexity_of_tokens(model, ids, seqlen, max_windows, batch_size, desc=f"{dataset} ppl")


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
