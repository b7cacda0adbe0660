"""Block-wise reconstruction: after a block's masks are fixed, Adam on its kept weights so that the pruned
block's output matches the dense block's output on the calibration set ("Rethinking Pruning LLMs", EMNLP
2024; EBFT, 2024).

The dense outputs come from the statistics pass (`stream.BlockData`), so no extra dense pass is needed.
Gradients of pruned weights are zeroed and the mask re-applied after every step, so sparsity and N:M
patterns hold exactly. A held-out slice of the calibration samples picks the best epoch (early stopping);
the weights that come out are never worse on the calibration samples than the ones that went in.
`halves` fits the block's first part (attention) to its dense output, then the rest (MLP) to the block's.
Under torchrun every rank trains on its share of the samples and gradients are summed over ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ..config import PruneConfig
from . import distributed
from .blocks import PRUNABLE
from .capture import Call

MODES = ("none", "block", "halves")
PARAMS = ("kept", "kept+norms")


@dataclass
class Part:
    """Prunable layers trained together, and where their output is read (None: the block's output)."""

    name: str
    layers: list[nn.Module]
    output: nn.Module | None = None


@dataclass
class BlockData:
    """What reconstruction trains on for one block: per calibration chunk its inputs, call arguments,
    the dense block's outputs and (halves) the dense first part's outputs."""

    inputs: object  # activation store of the block's inputs
    calls: list[Call]
    targets: object  # activation store of the dense block's outputs
    part_targets: object | None = None


@dataclass
class Options:
    """The `reconstruct*` fields of a `PruneConfig` (see there for their meaning and defaults)."""

    mode: str
    params: str
    epochs: int
    lr: float
    batch_size: int
    holdout: float
    seed: int

    @classmethod
    def from_config(cls, config: PruneConfig) -> "Options":
        return cls(config.reconstruct, config.reconstruct_params, config.reconstruct_epochs, config.reconstruct_lr,
                   config.reconstruct_batch_size, config.reconstruct_holdout, config.seed)


def block_parts(block: nn.Module, layers: dict[str, nn.Module], mode: str) -> list[Part]:
    """`block`: one part, read at the block's output. `halves`: the first child of the block holding prunable
    layers (attention), read at its output, then everything after it, read at the block's output. Bare
    linears next to each other (OPT's fc1, fc2) form one group; a block with one group (Mamba) is one part."""
    chosen = {id(m) for m in layers.values()}
    groups: list[tuple[list[str], nn.Module | None, list[nn.Module]]] = []
    for name, child in block.named_children():
        inside = [m for m in child.modules() if id(m) in chosen]
        if not inside:
            continue
        if isinstance(child, PRUNABLE) and groups and groups[-1][1] is None:
            groups[-1][0].append(name)
            groups[-1][2].append(child)
        else:
            groups.append(([name], None if isinstance(child, PRUNABLE) else child, inside))
    if not groups:
        return []
    if mode == "halves" and len(groups) > 1 and groups[0][1] is not None:
        first, rest = groups[0], groups[1:]
        return [Part(first[0][0], first[2], first[1]),
                Part("+".join(n for g in rest for n in g[0]), [m for g in rest for m in g[2]])]
    return [Part("block", [m for g in groups for m in g[2]])]


def first_output(output) -> torch.Tensor:
    """The hidden states of a module's output (attention modules return a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class _Stop(Exception):
    pass


def _rows(obj, start: int, stop: int, n: int):
    """Rows start:stop of every batched tensor in a call argument (batched: ≥ 2 dims, first dim n)."""
    if isinstance(obj, torch.Tensor):
        return obj[start:stop] if obj.dim() >= 2 and obj.shape[0] == n and n > 1 else obj
    if isinstance(obj, tuple):
        return tuple(_rows(o, start, stop, n) for o in obj)
    if isinstance(obj, list):
        return [_rows(o, start, stop, n) for o in obj]
    if isinstance(obj, dict):
        return {k: _rows(v, start, stop, n) for k, v in obj.items()}
    return obj


def _float32(obj):
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_float32(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    return obj


@dataclass
class _Batch:
    chunk: int
    start: int
    stop: int


@dataclass
class _Run:
    """One part's training: its forward, parameters, masks and numbers for the report."""

    block: nn.Module
    part: Part
    substitute: tuple[nn.Module, object] | None  # (first part's module, its dense outputs): dense inputs
    kept: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)  # (weight, keep mask)
    extra: list[nn.Parameter] = field(default_factory=list)  # norms and biases (kept+norms)

    def params(self) -> list[nn.Parameter]:
        return [w for w, _ in self.kept] + self.extra


def _forward(run: _Run, data: BlockData, batch: _Batch, chunks: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The part's output and its dense target for rows start:stop of one chunk."""
    hidden, target, sub = chunks[batch.chunk]
    n = hidden.shape[0]
    rows = slice(batch.start, batch.stop)
    full = data.calls[batch.chunk]
    call = Call(_rows(full.args, batch.start, batch.stop, n), _rows(full.kwargs, batch.start, batch.stop, n))
    handles, seen = [], {}
    if run.part.output is not None:
        def read(module, args, output):
            seen["out"] = first_output(output)
            raise _Stop

        handles.append(run.part.output.register_forward_hook(read))
    if run.substitute is not None:
        def replace(module, args, output):
            dense = sub[rows].to(first_output(output).dtype)
            return (dense,) + tuple(output[1:]) if isinstance(output, tuple) else dense

        handles.append(run.substitute[0].register_forward_hook(replace))
    x = hidden[rows]
    if x.dtype != torch.float32:
        x, call = x.float(), Call(_float32(call.args), _float32(call.kwargs))
    try:
        out = first_output(run.block(x, *call.args, **call.kwargs))
    except _Stop:
        out = seen["out"]
    finally:
        for h in handles:
            h.remove()
    return out, target[rows].float()


def _sum_ranks(*values: float) -> list[float]:
    if not distributed.is_active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=distributed._device())
    dist.all_reduce(t)
    return t.tolist()


def _loss(run: _Run, data: BlockData, batches: list[_Batch], chunks) -> float:
    """Relative squared error ‖out − target‖² / ‖target‖² over `batches` (summed over ranks)."""
    err = ref = 0.0
    with torch.no_grad():
        for b in batches:
            out, target = _forward(run, data, b, chunks)
            err += float((out - target).square().sum())
            ref += float(target.square().sum())
    err, ref = _sum_ranks(err, ref)
    return err / ref if ref else 0.0


def _batches(data: BlockData, options: Options) -> tuple[list[_Batch], list[_Batch]]:
    """Training minibatches (within one chunk, at most batch_size rows) and the held-out rows (the last
    `holdout` fraction of this rank's samples)."""
    sizes = [int(t.shape[0]) for t in data.inputs]
    total = sum(sizes)
    held = min(total - 1, round(total * options.holdout)) if options.holdout > 0 else 0
    train, heldout, seen = [], [], 0
    for j, n in enumerate(sizes):
        cut = max(0, min(n, total - held - seen))
        for a in range(0, cut, options.batch_size):
            train.append(_Batch(j, a, min(cut, a + options.batch_size)))
        if cut < n:
            heldout.append(_Batch(j, cut, n))
        seen += n
    return train, heldout


def _make_run(block: nn.Module, part: Part, options: Options, claimed: set[int],
              substitute: tuple[nn.Module, object] | None) -> _Run:
    run = _Run(block, part, substitute)
    for module in part.layers:
        weight = module.weight
        run.kept.append((weight, weight.detach() != 0))
    if options.params == "kept+norms":
        layer_ids = {id(m) for m in part.layers}
        for module in block.modules():
            norm = "norm" in type(module).__name__.lower()
            for name, p in module.named_parameters(recurse=False):
                if id(p) in claimed or not p.is_floating_point():
                    continue
                if norm or (id(module) in layer_ids and name == "bias"):
                    run.extra.append(p)
    return run


def _max_ranks(value: int) -> int:
    if not distributed.is_active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=distributed._device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: list[nn.Parameter], state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, saved in zip(params, state):
            p.copy_(saved)


def _step(run: _Run, data: BlockData, batch: _Batch | None, chunks, params: list[nn.Parameter],
          touched: set[int]) -> None:
    """One gradient of the mean squared error over this step's rows of every rank; pruned entries get none."""
    if batch is not None:
        with torch.enable_grad():
            out, target = _forward(run, data, batch, chunks)
            (count,) = _sum_ranks(float(target.numel()))
            ((out - target).square().sum() / count).backward()
    else:
        _sum_ranks(0.0)  # this rank has no rows left this epoch; it still joins the collectives
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            touched.add(id(p))
        if distributed.is_active():
            dist.all_reduce(p.grad)
    for w, keep in run.kept:
        w.grad.mul_(keep)


def _train(run: _Run, data: BlockData, options: Options, chunks, block_index: int) -> dict:
    """Adam with a linear decay to 0; the held-out loss after each epoch picks the weights kept."""
    train, heldout = _batches(data, options)
    steps = _max_ranks(len(train))
    params = run.params()
    for p in params:
        p.requires_grad_(True)
    everything = train + heldout
    before = _loss(run, data, everything, chunks)
    (held_rows,) = _sum_ranks(float(sum(b.stop - b.start for b in heldout)))
    select = heldout if held_rows else train
    initial = _snapshot(params)
    best, best_epoch, best_state = _loss(run, data, select, chunks), 0, initial
    history = [best]
    optimizer = torch.optim.Adam(params, lr=options.lr)
    total_steps = max(1, steps * options.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total_steps))
    generator = torch.Generator().manual_seed(options.seed * 1009 + block_index)
    touched: set[int] = set()
    epochs_run = 0
    for epoch in range(1, options.epochs + 1):
        order = torch.randperm(len(train), generator=generator, device="cpu").tolist()
        for s in range(steps):
            optimizer.zero_grad(set_to_none=True)
            _step(run, data, train[order[s]] if s < len(order) else None, chunks, params, touched)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for w, keep in run.kept:
                    w.mul_(keep)
        epochs_run = epoch
        history.append(_loss(run, data, select, chunks))
        if history[-1] < best:
            best, best_epoch, best_state = history[-1], epoch, _snapshot(params)
        elif epoch - best_epoch >= 2:
            break  # two epochs without a better held-out loss: the papers report overfitting past this
    _restore(params, best_state)
    after = _loss(run, data, everything, chunks) if best_epoch else before
    if after > before:  # better on the held-out rows but worse on all of them: keep what came in
        _restore(params, initial)
        after, best_epoch = before, 0
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return {"part": run.part.name, "loss_before": before, "loss_after": after, "heldout_loss": history,
            "epochs": epochs_run, "best_epoch": best_epoch, "steps_per_epoch": steps,
            "touched": touched}


def reconstruct_block(block: nn.Module, layers: dict[str, nn.Module], data: BlockData, options: Options,
                      block_index: int = 0, dense_inputs: bool = True) -> dict:
    """Fit the pruned `block`'s kept weights (and with kept+norms its norms and biases) to the dense outputs
    in `data`, part by part; returns the report row (losses before/after, epochs, seconds)."""
    t0 = time.perf_counter()
    parts = block_parts(block, layers, options.mode)
    dtype = next(p.dtype for p in block.parameters() if p.is_floating_point())
    if dtype != torch.float32:
        block.float()  # the papers train in float32; the block goes back to its dtype afterwards
    flags = {id(p): p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    rows, claimed = [], set()
    chunks = _Chunks(data)
    try:
        for k, part in enumerate(parts):
            substitute = None
            if k and dense_inputs and parts[0].output is not None and data.part_targets is not None:
                substitute = (parts[0].output, data.part_targets)
            chunks.part = part if part.output is not None else None
            run = _make_run(block, part, options, claimed, substitute)
            row = _train(run, data, options, chunks, block_index)
            claimed |= row.pop("touched") | {id(w) for w, _ in run.kept}
            rows.append(row)
    finally:
        for p in block.parameters():
            p.requires_grad_(flags.get(id(p), False))
        if dtype != torch.float32:
            block.to(dtype)
    return {"parts": rows, "reconstruct_s": round(time.perf_counter() - t0, 3)}


class _Chunks:
    """Chunk j → (inputs, target, first part's dense output), read from the stores (kept while a part trains
    when they are in memory; a disk store is read again each time)."""

    def __init__(self, data: BlockData):
        self.data = data
        self.part: Part | None = None  # the part being trained, when it is read at its own output
        self._cache: dict[int, tuple] = {}
        self._memory = all(hasattr(s, "_items") for s in (data.inputs, data.targets, data.part_targets) if s)

    def __getitem__(self, j: int) -> tuple:
        if j in self._cache:
            got = self._cache[j]
        else:
            sub = self.data.part_targets.get(j) if self.data.part_targets is not None else None
            got = (self.data.inputs.get(j), self.data.targets.get(j), sub)
            if self._memory:
                self._cache[j] = got
        hidden, target, sub = got
        return hidden, (sub if self.part is not None else target), sub
