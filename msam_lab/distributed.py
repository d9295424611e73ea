"""Data-parallel training over processes: the process group and the few collectives it needs.

torchrun (``torch.distributed.run``) starts one process per device and sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address; ``init_from_env`` joins that group (NCCL on CUDA, gloo
on the CPU). Every process holds the whole model, takes a disjoint shard of every global batch
(``shard_of``) and ends each update with the same averaged gradient (``average_gradients``), so
the weights stay identical on every rank. What a method decides from the batch (the Shapley
values of coalition accuracy, AGM's scores, an epoch's metrics) is a mean or a sum over samples,
and is reduced over ranks first (``mean_over_ranks``, ``sum_over_ranks``), so every rank decides
as one process on the global batch would.

Why not ``torch.nn.parallel.DistributedDataParallel`` around the model: its reducer hooks one
forward through the wrapper and the backwards that follow it, while a built-in method runs
several partial forwards (encoders, fusion, 2^M coalitions) and backwards per update, some
through ``torch.autograd.grad`` (M-SAM's unimodal variant), which DDP does not support. Every
method ends its update in ``Method.update``; the gradient all-reduce sits there, once per
optimizer step, as one flat buffer: DDP's reducer without its overlap of communication with the
backward. The SAM family's first pass is therefore never synchronised (each rank's ε follows its
own shard's gradient, as under DDP's ``no_sync``) unless ``sam_epsilon=global``. A user's own
loop with a DDP-wrapped model uses DDP itself (``msam_lab.MSAM`` runs its first pass under
``no_sync``; docs/scale.md).

Without a process group (one process) every function here is the identity or a no-op, so the
single-process path runs the same code.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """Ranks disagree, or the process group cannot be joined; the message says which and why."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the run directory and prints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto", timeout_s: float = 300.0) -> torch.device:
    """Join torchrun's process group (if not joined yet); return this rank's device.

    ``device`` auto or cuda: NCCL and the GPU ``LOCAL_RANK``; cpu: gloo. ``timeout_s`` bounds
    how long a collective waits for a rank that stopped answering before it raises, so a dead
    rank ends the others instead of hanging them.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise DistributedError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
        index = local_rank if device in ("auto", "cuda") else int(device.partition(":")[2] or 0) + local_rank
        if index >= torch.cuda.device_count():
            raise DistributedError(
                f"rank {rank_from_env()} wants GPU {index} but this node has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        torch.cuda.set_device(index)
        target = torch.device("cuda", index)
    else:
        target = torch.device("cpu")
    if not active():
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s), device_id=target if cuda else None
        )
    return target


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def shard_of(n: int) -> slice:
    """This rank's contiguous part of ``n`` samples: ``torch.tensor_split``'s sizes (differ by at most 1)."""
    world, r = world_size(), rank()
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def sum_over_ranks(values) -> np.ndarray:
    """Element-wise sum over ranks of a float array (float64 on the wire: counts stay exact)."""
    local = np.asarray(values, dtype=np.float64)
    if not active():
        return local
    t = torch.as_tensor(local.copy(), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().numpy().reshape(local.shape)


def mean_over_ranks(values, n: int) -> np.ndarray:
    """The global-batch mean from each rank's mean ``values`` over its ``n`` samples."""
    local = np.asarray(values, dtype=np.float64)
    if not active():
        return local
    total = sum_over_ranks(np.append(local.ravel() * n, n))
    return (total[:-1] / max(total[-1], 1.0)).reshape(local.shape)


def average_gradients(params, n: int) -> None:
    """Every ``p.grad`` <- the sample-weighted mean of the ranks' gradients, in one all-reduce.

    ``n``: this rank's samples in the update (shards may differ by one). A parameter whose
    gradient is None on every rank stays None; one that has a gradient on some ranks only gets
    the mean with zeros for the others (a flag per parameter travels in the same buffer).
    """
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = _comm_device(params[0].device)
    sizes = [p.numel() for p in params]
    body = sum(sizes)
    flat = torch.zeros(body + len(params) + 1, dtype=torch.float32, device=device)
    offset = 0
    for p, size in zip(params, sizes):
        if p.grad is not None:
            flat[offset : offset + size].copy_(p.grad.detach().reshape(-1)).mul_(n)
        offset += size
    tail = [float(p.grad is not None) for p in params] + [float(n)]
    flat[body:].copy_(torch.tensor(tail, dtype=torch.float32))
    dist.all_reduce(flat)
    tail = flat[body:].cpu().tolist()  # one device->host copy for all flags
    total = tail[-1]
    offset = 0
    for p, size, present in zip(params, sizes, tail[:-1]):
        if present > 0:
            mean = flat[offset : offset + size].view_as(p).div_(total).to(p.dtype)
            if p.grad is None:
                p.grad = mean.clone()
            else:
                p.grad.copy_(mean)
        offset += size


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every rank (the same start whatever each rank's RNG did)."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.device.type == "cpu" or dist.get_backend() != "gloo":
                dist.broadcast(t.data, src=0)
            else:
                moved = t.data.cpu()
                dist.broadcast(moved, src=0)
                t.data.copy_(moved)


def broadcast_object(value):
    """Rank 0's ``value`` (picklable) on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank (``[value]`` with one process)."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def check_same(value, what: str) -> None:
    """Raise DistributedError unless every rank holds the same ``value`` (``dist_debug``)."""
    if not active():
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        described = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise DistributedError(f"ranks disagree on {what} ({described}); report this with the config")


def parameter_checksum(module: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights for ``check_same`` (sum of |θ|, exact in float64)."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in module.parameters()))


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device(param_device: torch.device | None = None) -> torch.device:
    """Where collectives run: the rank's GPU for NCCL, the CPU for gloo."""
    if active() and dist.get_backend() == "nccl":
        return (
            param_device
            if param_device is not None and param_device.type == "cuda"
            else torch.device("cuda", torch.cuda.current_device())
        )
    return torch.device("cpu")
