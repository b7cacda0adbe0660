"""Input-channel permutation for N:M sparsity: which columns share a group of M, chosen to keep the most score.

An N:M pattern keeps the M − N largest of every M consecutive inputs in each row. When the important inputs
of a layer sit next to each other they compete for the same few places; reordering the columns first
(RIA, Zhang et al., ICLR 2024, "channel permutation") spreads them over different groups. The objective is
the total score the pattern keeps,

    kept(π) = Σ_rows Σ_groups  sum of the (M − N) largest scores of the group's columns,

maximized over partitions of the columns into groups of M (the order inside a group does not matter). The
start deals the columns, strongest total score first, over the groups in a snake order; then each round
takes one column out of every group and puts them back by a linear sum assignment (SciPy's Hungarian
solver), which is exact for that step, so kept(π) never decreases and never ends below the identity order.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment


def kept_score(scores: torch.Tensor, n: int, m: int, perm: torch.Tensor | None = None) -> float:
    """Score an N:M mask keeps on `scores` (rows, cols) after reordering the columns by `perm`."""
    s = scores if perm is None else scores[:, perm]
    return float(s.reshape(s.shape[0], -1, m).topk(m - n, dim=-1).values.double().sum())


def _snake(order: torch.Tensor, groups: int, m: int) -> torch.Tensor:
    """Deal `order` over `groups` groups in rows of a snake (0..G−1, G−1..0, ...): (groups, m) column ids."""
    out = torch.empty(groups, m, dtype=torch.long, device="cpu")
    for r in range(m):
        chunk = order[r * groups:(r + 1) * groups]
        out[:, r] = chunk if r % 2 == 0 else chunk.flip(0)
    return out


def _gain_matrix(scores: torch.Tensor, groups: torch.Tensor, slot: int, keep: int, chunk: int) -> torch.Tensor:
    """gain[c, g]: what group g (without its column at `slot`) keeps extra when it receives column c.

    With the rest of group g sorted, adding x to it keeps x in place of the keep-th largest when larger:
    Σ_rows max(0, x − kth), so the part that does not depend on c drops out of the assignment.
    """
    rest = torch.cat([groups[:, :slot], groups[:, slot + 1:]], dim=1)  # (G, m−1)
    kth = scores[:, rest].topk(keep, dim=-1).values[..., -1]  # (rows, G)
    x = scores[:, groups[:, slot]]  # (rows, G): the column taken out of each group
    gain = torch.empty(x.shape[1], kth.shape[1], device="cpu")
    for start in range(0, x.shape[1], chunk):
        part = x[:, start:start + chunk, None] - kth[:, None, :]
        gain[start:start + chunk] = part.clamp_min_(0).sum(0)
    return gain


def nm_permutation(scores: torch.Tensor, n: int, m: int, rounds: int = 4) -> torch.Tensor:
    """A column order (new column k = old column perm[k]) under which N:M keeps at least as much score as
    the identity: snake start, then single-column exchanges by linear assignment until a full cycle of
    the M slots gains nothing (or `rounds` assignments)."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} columns do not divide into groups of {m}")
    scores = scores.detach().float().abs().cpu()
    groups_n = cols // m
    start = _snake(scores.sum(0).argsort(descending=True, stable=True), groups_n, m)
    if kept_score(scores, n, m, start.flatten()) < kept_score(scores, n, m):
        start = torch.arange(cols, device="cpu").view(groups_n, m)
    groups = start
    if groups_n < 2:
        return groups.flatten()
    chunk = max(1, 2**24 // max(1, rows * groups_n))
    idle = 0
    for r in range(rounds):
        slot = r % m
        gain = _gain_matrix(scores, groups, slot, m - n, chunk)
        taken, into = (torch.as_tensor(a, device="cpu") for a in linear_sum_assignment(gain.numpy(), maximize=True))
        new = torch.empty(groups_n, dtype=torch.long, device="cpu")
        new[into] = groups[taken, slot]
        stay = float(gain.diagonal().sum())
        if float(gain[taken, into].sum()) > stay * (1 + 1e-9) + 1e-12:
            groups[:, slot] = new
            idle = 0
        else:
            idle += 1
            if idle >= m:
                break
    return groups.flatten()
