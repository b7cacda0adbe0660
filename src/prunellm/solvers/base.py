"""What every solver shares: the statistics it reads, the result it returns, and the registry it joins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from ..masks import Target


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer's input, accumulated in float64 / float32."""

    sq_norms: torch.Tensor | None = None  # Σ_tokens x_j², float64, (in,)
    xtx: torch.Tensor | None = None  # Σ_tokens x xᵀ, float32, (in, in)
    features: torch.Tensor | None = None  # a fixed strided subsample of input rows, (≤F, in) (allocations)
    tokens: int = 0
    samples: int = 0
    # factorizations of this H, shared by the layers that read the same input (q/k/v, gate/up): key → value
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """`compute()` once per key for these statistics: what depends only on H is not redone per layer."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def hessian(self) -> torch.Tensor:
        """SparseGPT's H = (2 / samples) Σ x xᵀ."""
        if self.xtx is None:
            raise ValueError("no Hessian was gathered for this layer")
        return self.xtx * (2.0 / max(self.samples, 1))

    def permuted(self, order: torch.Tensor) -> "LayerStats":
        """The same statistics with the inputs reordered (new input k = old input order[k])."""
        order = order.to(next((t.device for t in (self.xtx, self.sq_norms, self.features) if t is not None),
                              order.device))
        return LayerStats(
            sq_norms=None if self.sq_norms is None else self.sq_norms[order],
            xtx=None if self.xtx is None else self.xtx[order][:, order],
            features=None if self.features is None else self.features[:, order],
            tokens=self.tokens, samples=self.samples,
        )

    def input_energy(self) -> torch.Tensor | None:
        """Σ_tokens x_j² per input from whichever statistic was gathered (None when neither was)."""
        if self.sq_norms is not None:
            return self.sq_norms.float()
        return None if self.xtx is None else self.xtx.diagonal().float()

    def row_scalars(self) -> torch.Tensor:
        """Wanda's scaler_row: Σ_tokens x_j² averaged over calibration samples."""
        if self.sq_norms is None:
            raise ValueError("no input norms were gathered for this layer")
        return (self.sq_norms / max(self.samples, 1)).float()


@dataclass
class PruneResult:
    weight: torch.Tensor  # pruned (and possibly updated) weight, float32, (out, in)
    mask: torch.Tensor  # True where pruned
    info: dict = field(default_factory=dict)  # solver-specific numbers for the report (e.g. loss)
    scales: torch.Tensor | None = None  # quantized solves: the scale of each row and group (weight = code · scale)


class SolverFn(Protocol):
    def __call__(self, weight: torch.Tensor, stats: LayerStats, target: Target, **options) -> PruneResult: ...


@dataclass(frozen=True)
class Solver:
    name: str
    fn: SolverFn
    needs: frozenset[str]  # subset of {"norms", "hessian"}


SOLVERS: dict[str, Solver] = {}


def register(name: str, needs: set[str] | frozenset[str] = frozenset()) -> Callable[[SolverFn], SolverFn]:
    """Decorator: add a solver function to the registry under `name`."""

    def wrap(fn: SolverFn) -> SolverFn:
        SOLVERS[name] = Solver(name, fn, frozenset(needs))
        return fn

    return wrap

