"""Stream calibration statistics of linear-layer inputs through forward hooks.

Layers fed the very same input tensor (q/k/v, gate/up) share one accumulator, so a Hessian is
computed once per distinct input rather than once per layer. Sums live on the device of the inputs:
Σ x xᵀ in float32, Σ x_j² in float64, or where the device has no float64 (MPS) in float32 with
compensated (Kahan) summation across batches.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..devices import has_float64
from ..solvers import LayerStats


class StatsCollector:
    """Forward hooks on a block's linears that accumulate `LayerStats` (norms and/or Σ x xᵀ)."""

    def __init__(
        self,
        layers: dict[str, nn.Module],
        needs: set[str] | frozenset[str],
        derived: dict[str, tuple[str, Callable]] | None = None,
        feature_tokens: int = 512,
        feature_stride: int = 1,
        float64: bool | None = None,
    ):
        self.needs = set(needs)
        self.float64 = float64  # None: wherever the device has it
        self._compensation: dict[str, torch.Tensor] = {}  # Kahan terms of float32 norm sums
        self.feature_tokens, self.feature_stride = feature_tokens, feature_stride
        self.stats: dict[str, LayerStats] = {}
        self.alias: dict[str, str] = {}  # layer -> layer whose accumulator it shares
        self._batch_inputs: list[tuple[torch.Tensor, str]] = []
        # source layer -> [(derived layer, input from source output)], see blocks.derived_inputs
        self._derived: dict[str, list[tuple[str, Callable]]] = {}
        for target, (source, fn) in (derived or {}).items():
            if target in layers and source in layers:
                self._derived.setdefault(source, []).append((target, fn))
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            for target, fn in self._derived.get(name, ()):
                self._add(target, fn(output))
            x = args[0]
            if name in self.alias:
                return
            for seen, owner in self._batch_inputs:
                if seen is x:  # same tensor object: identical statistics
                    self.alias[name] = owner
                    return
            self._batch_inputs.append((x, name))
            self._add(name, x)

        return hook

    def _add(self, name: str, x: torch.Tensor) -> None:
        samples = x.shape[0] if x.dim() > 2 else 1
        x = x.reshape(-1, x.shape[-1]).float()
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = LayerStats()
            width = x.shape[1]
            if "norms" in self.needs:
                wide = has_float64(x.device) if self.float64 is None else self.float64
                st.sq_norms = torch.zeros(width, dtype=torch.float64 if wide else torch.float32, device=x.device)
                if not wide:
                    self._compensation[name] = torch.zeros_like(st.sq_norms)
            if "hessian" in self.needs:
                st.xtx = torch.zeros(width, width, dtype=torch.float32, device=x.device)
        if st.sq_norms is not None:
            batch = x.square().sum(0)  # float32 within a batch
            if name in self._compensation:
                _kahan_add(st.sq_norms, self._compensation[name], batch)
            else:
                st.sq_norms += batch  # float64 across batches
        if st.xtx is not None:
            st.xtx.addmm_(x.t(), x)
        if "features" in self.needs:
            have = 0 if st.features is None else st.features.shape[0]
            rows = x[self.feature_stride // 2 :: self.feature_stride][: self.feature_tokens - have]  # skips position 0
            st.features = rows.clone() if st.features is None else torch.cat([st.features, rows])
        st.tokens += x.shape[0]
        st.samples += samples

    def end_batch(self) -> None:
        """Forget this batch's input tensors (only used to detect shared inputs)."""
        self._batch_inputs.clear()

    def get(self, name: str) -> LayerStats:
        return self.stats[self.alias.get(name, name)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._batch_inputs.clear()


def _kahan_add(total: torch.Tensor, compensation: torch.Tensor, value: torch.Tensor) -> None:
    """total += value in place, carrying the rounding error of each addition in `compensation`."""
    y = value - compensation
    t = total + y
    compensation.copy_((t - total) - y)
    total.copy_(t)
