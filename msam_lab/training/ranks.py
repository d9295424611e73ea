"""What ``train`` does differently on N data-parallel ranks (torchrun; msam_lab/distributed.py).

- the **global batch** is ``batch_size`` (or ``per_device_batch`` × ranks) and every rank takes
  its contiguous shard of each one, so the steps, their batches and a resume position are those
  of one process with the global batch;
- every rank builds the model from the same seed and then takes rank 0's weights, so all start
  equal; BatchNorm keeps per-rank statistics unless ``sync_bn``;
- **rank 0 writes** the run directory; the other ranks write nothing (``train`` checks its
  ``master_process`` flag at each write), print nothing and read the finished run back once rank 0 is done.

With one process all of this reduces to the single-process trainer.
"""

from __future__ import annotations

import torch

from msam_lab import distributed
from msam_lab.config import Config, ConfigError


def device_for_rank(cfg: Config, resolve) -> torch.device:
    """This process's device: torchrun's group is joined first when it launched us (``resolve``: one process)."""
    if distributed.launched_by_torchrun():
        try:
            return distributed.init_from_env(cfg.device, cfg.dist_timeout_s)
        except distributed.DistributedError as err:
            raise ConfigError(str(err)) from None
    return resolve(cfg.device)


def global_batch(cfg: Config, world: int | None = None) -> int:
    world = distributed.world_size() if world is None else world
    return cfg.per_device_batch * world if cfg.per_device_batch else cfg.batch_size


def check_shard_size(cfg: Config, world: int | None = None, batchnorm: bool = False) -> None:
    """Raise ConfigError unless every rank's shard of a global batch has a sample (two with BatchNorm).

    ``world``: the rank count (default: this process group's), so that ``msam-lab train --nproc N``
    can refuse a bad batch before it starts any rank."""
    world = distributed.world_size() if world is None else world
    size, least = global_batch(cfg, world), 2 if batchnorm else 1
    if size // world < least:
        short = "no sample" if least == 1 else "fewer than 2 samples (BatchNorm needs 2)"
        raise ConfigError(
            f"the global batch ({size}) leaves some of the {world} ranks {short}; "
            f"raise batch_size to at least {least * world} or set per_device_batch"
        )


def check_batch(cfg: Config, n_train: int, batchnorm: bool) -> bool:
    """Raise ConfigError if a rank's shard could be too small to train on; return ``drop_last``.

    A shard needs one sample (two with BatchNorm in train mode: one value per channel has no
    variance). The last, partial global batch is dropped when some rank's shard of it would be
    smaller than that; with one process that is a last batch of one sample with BatchNorm.
    """
    check_shard_size(cfg, batchnorm=batchnorm)
    world, size, least = distributed.world_size(), global_batch(cfg), 2 if batchnorm else 1
    remainder = n_train % size
    return remainder > 0 and remainder // world < least


def check_resumed_batch(saved: int, now: int, cfg: Config) -> None:
    """A resume position counts global batches: the global batch must be the one the run was saved with."""
    if saved and saved != now:
        ranks = saved // cfg.per_device_batch if cfg.per_device_batch and saved % cfg.per_device_batch == 0 else None
        fix = (
            f"resume it on {ranks} rank{'s' if ranks != 1 else ''}"
            if ranks
            else "resume it with the same number of ranks"
        )
        raise ConfigError(
            f"this run was saved with a global batch of {saved} and would resume with {now} "
            f"(per_device_batch={cfg.per_device_batch} × {distributed.world_size()} ranks); {fix}"
        )


def prepare_model(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """Rank 0's weights everywhere; SyncBatchNorm with ``sync_bn`` (before the optimizer is built)."""
    if distributed.world_size() == 1:
        return model
    if cfg.sync_bn:
        if device.type != "cuda":
            raise ConfigError(
                "sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                "leave sync_bn=false on the CPU: BatchNorm then keeps per-rank statistics"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    distributed.broadcast_module(model)
    return model


def check_out(out, check):
    """``check(out)`` on every rank before anyone writes, then a barrier: bad input fails on all ranks alike.

    The path is rank 0's (a default one holds the time, which may differ by a second between ranks)."""
    out = check(distributed.broadcast_object(str(out)))
    distributed.barrier()
    return out


def summary_fields(cfg: Config) -> dict:
    return {"world_size": distributed.world_size(), "global_batch": global_batch(cfg)}


def finished(out) -> None:
    """All ranks wait for rank 0's last write before they read the run back."""
    distributed.barrier()
