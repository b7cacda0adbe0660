"""Mask selection shared by every solver: lowest scores per row, per matrix, or per N:M group.

Masks are boolean with True = pruned. Ties are broken by position (stable sort), so the same
scores always give the same mask, which matters on dequantized checkpoints full of equal weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Target:
    """What to prune in one matrix: an unstructured ratio, or N pruned of every M inputs per row."""

    sparsity: float = 0.0
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def ratio(self) -> float:
        """The fraction of weights this target removes."""
        return self.n / self.m if self.is_nm else self.sparsity

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g}"


def parse_pattern(text: str) -> tuple[int, int]:
    """Parse "N:M" (prune N of every M consecutive inputs); "0:0" means unstructured."""
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"bad N:M pattern {text!r}; expected e.g. 2:4") from None
    if (n, m) != (0, 0) and not 0 < n < m:
        raise UsageError(f"bad N:M pattern {text!r}: need 0 < N < M")
    return n, m


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k lowest entries along the last dimension (ties: lower index first)."""
    if scores.dim() == 1 and 0 < k < scores.numel():
        return _lowest_k_flat(scores, k)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(scores, dim=-1, stable=True).indices[..., :k]
        mask.scatter_(-1, idx, True)
    return mask


def _lowest_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The same mask for one long vector by selection instead of a full sort (~5× faster)."""
    threshold = scores.kthvalue(k).values
    mask = scores < threshold
    missing = k - int(mask.sum())
    if missing:
        mask[(scores == threshold).nonzero().squeeze(1)[:missing]] = True
    return mask


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune `int(cols * sparsity)` lowest scores in every row (Wanda's per-output grouping)."""
    return lowest_k(scores, int(scores.shape[1] * sparsity))


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune `int(numel * sparsity)` lowest scores of the whole matrix (one threshold per matrix)."""
    return lowest_k(scores.flatten(), int(scores.numel() * sparsity)).view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the n lowest of every m consecutive columns in each row (columns must divide by m)."""
    rows, cols = scores.shape
    if cols % m:
        raise UsageError(f"input width {cols} is not divisible by M={m}")
    return lowest_k(scores.reshape(rows, cols // m, m), n).view(rows, cols)


def select(scores: torch.Tensor, target: Target, per_row: bool = True) -> torch.Tensor:
    """The mask for a target: N:M groups, else per row or per matrix for unstructured."""
    if target.is_nm:
        return nm_mask(scores, target.n, target.m)
    return row_mask(scores, target.sparsity) if per_row else matrix_mask(scores, target.sparsity)
