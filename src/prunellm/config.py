"""The pruning recipe: one typed, serializable config, readable from and writable to YAML.

Field names follow llm-compressor where the meaning is the same (`sparsity`, `mask_structure`,
`targets`, `ignore` with `re:` patterns, `num_calibration_samples`, `max_seq_length`,
`block_size`, `dampening_frac`). `mask_structure` "N:M" means N pruned of every M inputs per row,
as in the research code (identical to llm-compressor for 2:4 and 4:8); "0:0" is unstructured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .masks import Target, parse_pattern

# llm-compressor modifier classes accepted in a nested recipe, and the solver each means.
MODIFIERS = {"MagnitudePruningModifier": "magnitude", "WandaPruningModifier": "wanda", "SparseGPTModifier": "sparsegpt"}
# llm-compressor's weight-only schemes (weights int8 / int4, activations kept) and their `quantize` value
QUANT_MODIFIERS = ("GPTQModifier", "QuantizationModifier")
SCHEMES = {"W8A16": "int8", "W4A16": "int4"}


@dataclass
class PruneConfig:
    """Everything that determines a pruning run (and nothing about where results are written)."""

    solver: str = "wanda"
    sparsity: float = 0.5
    mask_structure: str = "0:0"
    targets: list[str] = field(default_factory=lambda: ["Linear"])
    ignore: list[str] = field(default_factory=lambda: ["re:.*lm_head"])
    dataset: str = "wikitext2"
    num_calibration_samples: int = 128
    max_seq_length: int = 2048
    seed: int = 0
    propagate: str | None = None  # next block's inputs: "pruned" (reference; default) or "dense" outputs
    # (default "dense" with reconstruct: the papers' better choice, and the statistics pass gives the targets)
    calibration_batch_size: int = 8  # samples run through a block at once
    block_size: int = 128  # SparseGPT lazy-update block
    dampening_frac: float = 0.01  # SparseGPT / MRP Hessian dampening
    mask_selection: str = "score"  # MRP: "score" (w²/[H⁻¹]_jj, Solution S) or "loss" (Solution M, N:M)
    allocation: str = "uniform"  # layer-wise allocation: uniform, owl, alpha
    owl_m: float = 5.0  # OWL outlier threshold (× mean score)
    owl_lmbda: float | None = None  # OWL spread (llm-compressor's spelling); default 0.08, or 2 (an N shift) for N:M
    alpha_epsilon: float | None = None  # AlphaPruning spread ε (ratios in [1−ε, 1+ε] × target); default 0.3, narrowed to stay below 99%
    als_features: str = "input"  # ALS features: input, output or gate (SiLU of the output) of each linear
    als_norm: str = "feature+weight"  # ALS normalization: none, feature, feature+weight
    als_decreasing: str = "mu"  # ALS importance: exp(−ρ/μ) ("mu") or exp(−ρ) ("original")
    als_bounds: list[float] | None = None  # ALS per-layer sparsity bounds (default: target ± min(0.2, S/2, (1−S)/6))
    als_granularity: float = 0.005  # ALS sparsity grid step
    als_direction: str = "sparser"  # ALS: more redundant ⇒ "sparser" (default) or "denser"
    profile_samples: int | None = None  # calibration samples used by the profiling pass (default all)
    data_dir: str | None = None
    quantize: str = "none"  # kept weights: none, int8 or int4 (symmetric, a scale per row and group)
    group_size: int | None = None  # input columns per scale: 0 = per output channel; default int8 0, int4 128
    quantize_head: bool = False  # also the output head, round-to-nearest int8 per output channel
    update: str = "solver"  # kept weights of the mask: the solver's own, or admm (masked least-squares optimum)
    repair: str = "none"  # mask repair after the solver: none or dsnot (swaps that lower the layer error)
    repair_cycles: int = 50  # dsnot: at most this many swaps per row
    permute: bool = False  # N:M: reorder the inputs of layers whose producer absorbs it (down/o proj) first
    reconstruct: str = "none"  # block-wise reconstruction after each block's masks: none, block, halves
    reconstruct_params: str = "kept"  # trained: kept weights, or kept+norms (also norm weights and biases)
    reconstruct_epochs: int = 4  # passes over the calibration samples per block (or part)
    reconstruct_lr: float = 2e-4  # Adam learning rate, decaying linearly to 0 (the papers)
    reconstruct_batch_size: int = 8  # calibration samples per step (the papers: 8)
    reconstruct_holdout: float = 0.125  # fraction of the samples held out to pick the best epoch
    device: str = "auto"  # compute device: auto (the model's accelerator, else the first one, else cpu), cpu, cuda[:N], mps, xpu

    def allocation_options(self) -> dict[str, float]:
        """The options every allocation's measure/allocate functions receive (each takes what it uses)."""
        return {
            "owl_m": self.owl_m, "owl_lambda": self.owl_lmbda, "alpha_epsilon": self.alpha_epsilon,
            "als_features": self.als_features, "als_norm": self.als_norm, "als_decreasing": self.als_decreasing,
            "als_bounds": tuple(self.als_bounds) if self.als_bounds else None,
            "als_granularity": self.als_granularity, "als_direction": self.als_direction,
        }

    def quant_scheme(self):
        """The `quant.QuantScheme` of `quantize` / `group_size` (None without quantization)."""
        from .quant import scheme

        return scheme(self.quantize, self.group_size)

    @property
    def inputs(self) -> str:
        """Where each block's inputs come from: `propagate`, or its default (dense with reconstruction)."""
        return self.propagate or ("dense" if self.reconstruct != "none" else "pruned")

    @property
    def nm(self) -> tuple[int, int]:
        return parse_pattern(self.mask_structure)

    def target(self) -> Target:
        """The uniform per-layer target this config asks for."""
        n, m = self.nm
        return Target(n=n, m=m) if m else Target(sparsity=self.sparsity)

    @property
    def overall_sparsity(self) -> float:
        n, m = self.nm
        return n / m if m else self.sparsity

    def validate(self) -> "PruneConfig":
        """Raise `UsageError` on anything that cannot be run; returns self for chaining."""
        from .allocation import ALLOCATIONS
        from .solvers import SOLVERS

        if self.solver not in SOLVERS:
            raise UsageError(f"unknown solver {self.solver!r}; choose one of {', '.join(sorted(SOLVERS))}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"unknown allocation {self.allocation!r}; choose one of {', '.join(sorted(ALLOCATIONS))}")
        n, m = self.nm
        if self.allocation in ("alpha", "als") and m:
            raise UsageError(f"allocation {self.allocation!r} is for unstructured sparsity; use --sparsity")
        choices = {"als_features": ("input", "output", "gate"), "als_norm": ("none", "feature", "feature+weight"),
                   "als_decreasing": ("mu", "original"), "als_direction": ("sparser", "denser")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.als_bounds is not None:
            lo, hi = self.als_bounds
            target = n / m if m else self.sparsity
            if not 0 <= lo <= target <= hi < 1:
                raise UsageError(f"als_bounds [{lo}, {hi}] must satisfy 0 <= lo <= target ({target}) <= hi < 1")
        if not m and not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if m and self.block_size % m:
            raise UsageError(f"block_size {self.block_size} must be a multiple of M={m}")
        if self.propagate not in (None, "pruned", "dense"):
            raise UsageError(f"propagate must be 'pruned' or 'dense', got {self.propagate!r}")
        for name in ("num_calibration_samples", "calibration_batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_seq_length < 2:
            raise UsageError(f"max_seq_length must be at least 2, got {self.max_seq_length}")
        if self.mask_selection not in ("score", "loss"):
            raise UsageError(f"mask_selection must be 'score' or 'loss', got {self.mask_selection!r}")
        if self.mask_selection == "loss" and not m:
            raise UsageError("mask_selection 'loss' (Solution M) needs an N:M mask_structure")
        if str(self.device).split(":")[0] not in ("auto", "cpu", "cuda", "mps", "xpu"):
            raise UsageError(f"unknown device {self.device!r}; choose one of auto, cpu, cuda, cuda:N, mps, xpu")
        quant = self.quant_scheme()
        if quant is not None and quant.group_size and self.block_size % quant.group_size:
            raise UsageError(f"block_size {self.block_size} must be a multiple of group_size {quant.group_size}")
        if self.quantize_head and self.quantize == "none":
            raise UsageError("quantize_head needs --quantize int8 or int4")
        self._validate_reconstruct()
        if not 0.0 < self.dampening_frac:
            raise UsageError(f"dampening_frac must be positive, got {self.dampening_frac}")
        return self

    def _validate_reconstruct(self) -> None:
        if self.reconstruct not in ("none", "block", "halves"):
            raise UsageError(f"reconstruct must be none, block or halves, got {self.reconstruct!r}")
        if self.reconstruct_params not in ("kept", "kept+norms"):
            raise UsageError(f"reconstruct_params must be kept or kept+norms, got {self.reconstruct_params!r}")
        if self.reconstruct_epochs < 1 or self.reconstruct_batch_size < 1:
            raise UsageError("reconstruct_epochs and reconstruct_batch_size must be at least 1")
        if not self.reconstruct_lr > 0:
            raise UsageError(f"reconstruct_lr must be positive, got {self.reconstruct_lr}")
        if not 0.0 <= self.reconstruct_holdout < 1.0:
            raise UsageError(f"reconstruct_holdout must be in [0, 1), got {self.reconstruct_holdout}")
        if self.update not in ("solver", "admm"):
            raise UsageError(f"update must be solver or admm, got {self.update!r}")
        if self.update != "solver" and self.quantize != "none":
            raise UsageError("update admm re-solves float kept weights; it does not combine with --quantize")
        if self.repair not in ("none", "dsnot"):
            raise UsageError(f"repair must be none or dsnot, got {self.repair!r}")
        if self.repair_cycles < 1:
            raise UsageError(f"repair_cycles must be at least 1, got {self.repair_cycles}")
        if self.repair != "none" and self.quantize != "none":
            raise UsageError("repair brings back dense values, off the quantization grid; use one or the other")
        if self.permute and not self.nm[1]:
            raise UsageError("permute reorders inputs for an N:M pattern; give --pattern N:M with it")
        if self.reconstruct != "none" and self.quantize != "none":
            raise UsageError("reconstruct moves kept weights off the quantization grid; use one or the other")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneConfig":
        """Build from a flat dict, or from an llm-compressor style nested recipe (stage → group → Modifier)."""
        data = _flatten_recipe(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown recipe field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PruneConfig":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"recipe {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"recipe {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError(f"recipe {path} must be a mapping")
        return cls.from_dict(data)


def _flatten_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """Find the `*Modifier: {args}` entries at any depth and turn them into flat config fields: a pruning
    modifier's arguments as they are, a GPTQModifier / QuantizationModifier's `scheme` (W8A16, W4A16)
    and `group_size` as `quantize` and `group_size`."""

    def find(node: Any, names) -> tuple[str, dict] | None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in names and isinstance(value, dict):
                    return key, value
                hit = find(value, names)
                if hit:
                    return hit
        return None

    prune, quant = find(data, MODIFIERS), find(data, QUANT_MODIFIERS)
    if prune is None and quant is None:
        return dict(data)
    flat: dict[str, Any] = {}
    if prune is not None:
        flat = {"solver": MODIFIERS[prune[0]], **prune[1]}
    if quant is not None:
        args = dict(quant[1])
        name = args.pop("scheme", None)
        if name not in SCHEMES:
            raise UsageError(f"{quant[0]} scheme must be one of {', '.join(SCHEMES)} (weights only), got {name!r}")
        flat["quantize"] = SCHEMES[name]
        if "group_size" in args:
            flat["group_size"] = args.pop("group_size")
        args.pop("targets", None)
        args.pop("ignore", None)
        if args:
            raise UsageError(f"unsupported {quant[0]} field(s): {', '.join(sorted(args))}")
    return flat
