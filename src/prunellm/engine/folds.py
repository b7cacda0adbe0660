"""Where a layer's input-channel permutation can be folded into the layer that produces the input, exactly.

Reordering a consumer's input columns by π computes the same function when the producer's output rows
are reordered by π too. That holds for the MLP's down projection (its input is act(gate x) · (up x) or
act(fc1 x), elementwise per channel) and for the attention output (its input is each head's softmax
times the value rows of that head's key-value group, so a permutation inside a head, shared by the query
heads of one group, moves with the value rows). Layers reading the residual stream (q/k/v, gate/up, fc1)
would need one permutation of the whole model's hidden state and are left in their order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..masks import Target
from ..permute import kept_score, nm_permutation
from ..solvers.base import LayerStats
from .blocks import get_weight, set_weight

# consumer (suffix of its name in the block) → producers beside it in the same parent module
_MLP = {"down_proj": ("gate_proj", "up_proj"), "fc2": ("fc1",), "mlp.c_proj": ("mlp.c_fc",)}
_ATTENTION = {"o_proj": ("v_proj", 0), "out_proj": ("v_proj", 0), "attn.c_proj": ("attn.c_attn", 2)}


@dataclass
class Fold:
    """Consumer columns and producer rows that move together.

    Unit u is a set of equally long column ranges of the consumer (`columns[u]`, one per query head of a
    key-value group, or the whole input of an MLP) that share one permutation σ_u, and the producer rows
    `rows[u]` (relative to `offset` in each producer's output) that σ_u reorders in the same way.
    """

    producers: list[nn.Module]
    offset: int  # first output row of the producers that feeds the consumer (2·hidden for GPT-2's fused qkv)
    columns: list[list[torch.Tensor]]
    rows: list[torch.Tensor]

    def choose(self, scores: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """π and ρ that keep the most of `scores` (the consumer's, (out, in)) under N:M: one σ per unit,
        chosen on the unit's column ranges stacked as rows (they share it)."""
        sigmas = []
        for cols in self.columns:
            length = len(cols[0])
            stacked = torch.cat([scores[:, c] for c in cols], dim=0)
            sigmas.append(nm_permutation(stacked, n, m) if length % m == 0 else torch.arange(length, device="cpu"))
        return self.permutations(sigmas, scores.shape[1])

    def permutations(self, sigmas: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The consumer's column order π and the producers' row order ρ from one σ per unit."""
        pi, rho = torch.arange(width, device="cpu"), torch.arange(sum(len(r) for r in self.rows), device="cpu")
        for cols, rows, sigma in zip(self.columns, self.rows, sigmas):
            for c in cols:
                pi[c] = c[sigma]
            rho[rows] = rows[sigma]
        return pi, rho

    def apply_to_producers(self, rho: torch.Tensor) -> None:
        """Reorder the producers' output rows (weight, bias, quantization scales) by ρ."""
        index = self.offset + rho.cpu()
        span = slice(self.offset, self.offset + len(rho))
        for module in self.producers:
            weight = get_weight(module)
            weight[span] = weight[index.to(weight.device)]
            set_weight(module, weight)
            if getattr(module, "bias", None) is not None:
                module.bias.data[span] = module.bias.data[index.to(module.bias.device)].clone()
            scales = getattr(module, "prunellm_scales", None)
            if scales is not None:
                scales[span] = scales[index].clone()


def _heads(config) -> tuple[int, int] | None:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    return (int(heads), int(kv)) if heads else None


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]


def find_fold(block: nn.Module, name: str, config) -> Fold | None:
    """The fold for consumer `name` (relative to `block`), or None when its input cannot be permuted exactly."""
    consumer = block.get_submodule(name)
    width = get_weight(consumer).shape[1]
    for suffix, producers in _MLP.items():
        if name == suffix or name.endswith(f".{suffix}"):
            parent = name[: -len(suffix)].rstrip(".")
            try:
                found = [block.get_submodule(f"{parent}.{p}" if parent else p) for p in producers]
            except AttributeError:
                return None
            if any(_out_features(p) != width for p in found):
                return None
            return Fold(found, 0, [[torch.arange(width, device="cpu")]], [torch.arange(width, device="cpu")])
    for suffix, (producer, slot) in _ATTENTION.items():
        if name == suffix or name.endswith(f".{suffix}"):
            parent = name[: -len(suffix)].rstrip(".")
            shape = _heads(config)
            try:
                found = block.get_submodule(f"{parent}.{producer}" if parent else producer)
            except AttributeError:
                return None
            if shape is None or width % shape[0] or shape[0] % shape[1]:
                return None
            heads, kv = shape
            head_dim = width // heads
            offset = slot * width
            if _out_features(found) != offset + kv * head_dim:
                return None
            group = heads // kv  # query heads per key-value head (grouped-query attention)
            span = lambda h: torch.arange(h * head_dim, (h + 1) * head_dim, device="cpu")  # noqa: E731
            columns = [[span(h) for h in range(g * group, (g + 1) * group)] for g in range(kv)]
            rows = [span(g) for g in range(kv)]
            return Fold([found], offset, columns, rows)
    return None


def permute_inputs(block: nn.Module, name: str, config, weight: torch.Tensor, stats: LayerStats,
                    target: Target) -> tuple[torch.Tensor, LayerStats, dict | None]:
    """Reorder a layer's inputs for its N:M groups when its producer can absorb the order (module docstring).

    Returns the reordered weight and statistics, and {"rows": producers' row order, "report": numbers};
    the same weight, statistics and None when the layer has no exact fold."""
    fold = find_fold(block, name, config)
    if fold is None:
        return weight, stats, None
    energy = stats.input_energy()
    scores = weight.abs() if energy is None else weight.abs() * energy.to(weight.device).sqrt()
    pi, rho = fold.choose(scores, target.n, target.m)
    before, after = kept_score(scores, target.n, target.m), kept_score(scores, target.n, target.m, pi.to(scores.device))
    report = {"kept_score_gain": round(after / before - 1, 6) if before else 0.0}
    pi = pi.to(weight.device)
    return weight[:, pi].contiguous(), stats.permuted(pi), {"rows": rho, "report": report}
