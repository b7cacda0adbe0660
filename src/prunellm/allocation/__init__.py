"""Layer-wise sparsity allocation: how sparse each layer should be for an overall target.

An allocation is one file that calls `base.register`, plus its name in the import line below. It
declares what it needs from the profiling pass (`needs`: input statistics of every layer, gathered on
the dense model one block at a time; empty for data-free methods), a `measure` run per block on that
block's weights and statistics, and an `allocate` that turns all blocks' measures into a per-layer `Target`.

Imports only `masks`, `errors`, `devices` and the solvers (their statistics and scores): tensors in,
targets out; measures run on the device of the weights, the allocation itself on the CPU.
"""

from . import alpha, als, owl, uniform  # noqa: F401  (each registers itself)
from .base import ALLOCATIONS, Allocation, AllocationResult, LayerInfo, register

__all__ = ["ALLOCATIONS", "Allocation", "AllocationResult", "LayerInfo", "register"]
