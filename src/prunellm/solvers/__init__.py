"""Per-layer solvers: pure functions from (weight, statistics, target) to a pruned weight and mask.

A solver is one file that calls `base.register`, plus its name in the import line below; `SOLVERS[name]`
finds it. It declares the statistics it needs, so the engine gathers only those ("norms": Σ x_j² per
input, "hessian": Σ x xᵀ; "features": a fixed token subsample of the inputs, used by allocations).

Imports only `masks`, `errors` and `devices` (the widest float a device has): tensors in, masks and
weights out, computed on the device of the inputs; no model, no engine.
"""

from . import gradual_admm, magnitude, mrp, ria, sparsegpt, wanda  # noqa: F401  (each registers itself)
from .base import SOLVERS, LayerStats, PruneResult, Solver, SolverFn, register

__all__ = ["SOLVERS", "LayerStats", "PruneResult", "Solver", "SolverFn", "register"]
