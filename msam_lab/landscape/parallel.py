"""Sharding grid points across worker processes (CPU, one thread each) or CUDA devices.

A job (a CPU copy of the model, the evaluation subset, the directions) is
written once to a temporary file; each worker loads it the first time it gets
a chunk of that job, builds its own evaluator, and sends back metric rows,
which the parent stores and flushes as they arrive (so an interrupted
sharded run resumes like a serial one).

``WorkerPool`` keeps the processes alive between surfaces (a notebook widget
recomputing surfaces pays the ~1-2 s process start-up once);
``compute_surface(workers=K)`` without a pool starts and stops one per call.
Processes are started with ``spawn``: safe with threads and CUDA, the same on
every OS. A script that uses workers must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import os
import tempfile
import time
import uuid
from typing import Callable, Sequence

import numpy as np
import torch
import torch.multiprocessing as tmp

from msam_lab.datasets.base import MultimodalData
from msam_lab.landscape.points import PointEvaluator, prepare_for_evaluation

_WORKER: dict = {}


def _init_worker(device_queue, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["device"] = device_queue.get() if device_queue is not None else "cpu"


def _ping(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _evaluate_chunk(job_path: str, job_id: str, skeleton: torch.nn.Module, points: np.ndarray) -> np.ndarray:
    """``skeleton``: the model on the meta device (its structure, no weights: a few kB through the pipe);
    the job file holds only tensors and plain values, read weights-only."""
    if _WORKER.get("job_id") != job_id:
        _WORKER.pop("evaluator", None)
        job = torch.load(job_path, map_location="cpu", weights_only=True)
        device = _WORKER["device"]
        model = skeleton.to_empty(device=device)
        with torch.no_grad():
            for name, tensor in [
                *model.named_parameters(remove_duplicate=False),
                *model.named_buffers(remove_duplicate=False),
            ]:
                tensor.copy_(job["tensors"][name])
        prepare_for_evaluation(model, job["channels_last"])  # a private copy: nothing to restore
        data = MultimodalData(job["inputs"], job["labels"], job["num_classes"]).to(device)
        dtype = None if job["autocast_dtype"] is None else getattr(torch, job["autocast_dtype"])
        _WORKER["evaluator"] = PointEvaluator(
            model, data, job["directions"], job["per_modality"], job["batch_size"], dtype
        )
        _WORKER["job_id"] = job_id
    ev = _WORKER["evaluator"]
    return np.stack([ev(p) for p in points])


def resolve_devices(devices) -> list[str] | None:
    if devices is None or devices == [] or devices == "cpu":
        return None
    if devices == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError("devices='cuda' asked for but no CUDA device is visible")
        return [f"cuda:{i}" for i in range(n)]
    return [str(d) for d in devices]


class WorkerPool:
    """``workers`` CPU processes with ``threads`` torch threads each, or one process per CUDA device.

    Use as a context manager, pass as ``compute_surface(..., pool=pool)``.
    """

    def __init__(self, workers: int = 2, devices=None, threads: int = 1):
        self.devices = resolve_devices(devices)
        self.n_workers = len(self.devices) if self.devices else int(workers)
        if self.n_workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ctx = tmp.get_context("spawn")
        queue = None
        if self.devices:
            queue = ctx.Queue()
            for d in self.devices:
                queue.put(d)
        self._dir = tempfile.TemporaryDirectory(prefix="msam-landscape-")
        self.executor = cf.ProcessPoolExecutor(
            max_workers=self.n_workers, mp_context=ctx, initializer=_init_worker, initargs=(queue, int(threads))
        )

    def warm(self) -> "WorkerPool":
        """Start every process now (otherwise they start with the first surface)."""
        pids = [f.result() for f in [self.executor.submit(_ping, 0.3) for _ in range(self.n_workers)]]
        del pids
        return self

    def run(
        self,
        model,
        data,
        directions: Sequence[dict],
        all_points: np.ndarray,
        pending: np.ndarray,
        store: Callable[[np.ndarray, np.ndarray], None],
        *,
        per_modality: bool = True,
        batch_size: int | None = 32,
        channels_last="auto",
        autocast_dtype=None,
        chunk: int = 16,
    ) -> None:
        """Evaluate ``all_points[pending]``; ``store(indices, rows)`` is called as chunks finish."""
        clone = copy.deepcopy(model).cpu()  # never touches ``model`` itself
        for p in clone.parameters():
            p.grad = None
        # every parameter and buffer (non-persistent ones too) by name; the structure travels as a skeleton
        tensors = {
            n: t.detach().clone()
            for n, t in [*clone.named_parameters(remove_duplicate=False), *clone.named_buffers(remove_duplicate=False)]
        }
        skeleton = clone.to("meta")
        data = data.to("cpu")
        job_id = uuid.uuid4().hex
        path = os.path.join(self._dir.name, f"{job_id}.pt")
        torch.save(
            {
                "tensors": tensors,
                "inputs": dict(data.inputs),
                "labels": data.labels,
                "num_classes": int(data.num_classes),
                "directions": [{n: t.detach().cpu() for n, t in d.items()} for d in directions],
                "per_modality": per_modality,
                "batch_size": batch_size,
                "channels_last": channels_last,
                "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).split(".")[-1],
            },
            path,
        )
        chunks = [pending[i : i + chunk] for i in range(0, len(pending), chunk)]
        futures = {self.executor.submit(_evaluate_chunk, path, job_id, skeleton, all_points[c]): c for c in chunks}
        try:
            for fut in cf.as_completed(futures):
                store(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        finally:
            try:
                os.remove(path)
            except OSError:
                pass

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._dir.cleanup()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def evaluate_parallel(
    model,
    data,
    directions,
    all_points,
    pending,
    store,
    *,
    workers: int = 2,
    devices=None,
    pool: WorkerPool | None = None,
    **kw,
) -> None:
    """``pool.run`` on the given pool, or on a pool started (and closed) for this call."""
    if pool is not None:
        pool.run(model, data, directions, all_points, pending, store, **kw)
        return
    with WorkerPool(workers, devices) as fresh:
        fresh.run(model, data, directions, all_points, pending, store, **kw)
