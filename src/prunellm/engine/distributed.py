"""Calibration spread over processes with torch.distributed: shard samples, sum statistics, share solved layers.

Every rank holds the model and runs its own contiguous slice of the calibration batches through each
block; the statistics the solvers and allocations read are summed over ranks (all-reduce), so every
rank sees the single-process totals up to float summation order. The layers of a block are solved
round-robin over ranks and broadcast from the rank that solved them, so all ranks go on with the
same pruned weights. Gloo on CPU, NCCL on GPUs. With one process every function here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import UsageError
from ..solvers import LayerStats


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); False otherwise.

    NCCL when the compute `device` is CUDA (each rank on its own `cuda:LOCAL_RANK`), gloo otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda and dist.is_nccl_available() else "gloo")
    return True


def _device() -> torch.device:
    """Where the process group's collectives run: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_active():
        dist.barrier()


def shard(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """This rank's contiguous run of whole calibration batches (same batches as one process would form)."""
    world = world_size()
    if world == 1:
        return ids
    batches = -(-ids.shape[0] // batch_size)
    if batches < world:
        raise UsageError(f"{world} processes but only {batches} calibration batches of {batch_size}; "
                         "use fewer processes or a smaller --calib-batch-size")
    r = rank()
    first, last = r * batches // world, (r + 1) * batches // world
    return ids[first * batch_size : last * batch_size]


def all_reduce_stats(stats: dict[str, LayerStats], feature_tokens: int) -> None:
    """Sum every layer's statistics over ranks in place; feature rows are gathered in rank order."""
    if not is_active():
        return
    device = _device()
    for name in sorted(stats):
        st = stats[name]
        for tensor in (st.sq_norms, st.xtx):
            if tensor is not None:
                dist.all_reduce(tensor)
        counts = torch.tensor([st.tokens, st.samples], dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        st.tokens, st.samples = int(counts[0]), int(counts[1])
        if st.features is not None:
            parts: list = [None] * world_size()
            dist.all_gather_object(parts, st.features.cpu())  # pickled on the CPU: ranks use different GPUs
            st.features = torch.cat(parts)[:feature_tokens].to(st.features.device)


def assign(sizes: list[int]) -> list[int]:
    """The rank that solves each layer of a block: largest first, to the least loaded rank."""
    load = [0] * world_size()
    owners = [0] * len(sizes)
    for k in sorted(range(len(sizes)), key=lambda k: (-sizes[k], k)):
        r = min(range(len(load)), key=lambda r: (load[r], r))
        owners[k] = r
        load[r] += sizes[k]
    return owners


def share_weight(weight: torch.Tensor, src: int) -> None:
    """Overwrite `weight` on every rank with `src`'s copy."""
    if is_active():
        dist.broadcast(weight.data, src=src)


def share_object(obj, src: int = 0):
    """`src`'s Python object (picklable), returned on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
