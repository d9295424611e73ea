"""1-D and 2-D loss surfaces: evaluation, the ``Surface`` result, saving and resuming.

Every grid point is evaluated as θ₀ + a·d₁ (+ b·d₂), written into the
parameters from a stored copy of θ₀ (never accumulated), with the model in
eval mode under ``torch.no_grad()``, inside ``preserved(model)`` so the model
is left exactly as it was found.

One pass per point yields every metric. Each encoder runs once on the real
inputs and once on a single all-zero sample; then only the fusion runs, for
all needed coalitions stacked in one batch (``coalitions.coalition_logits``):

- ``loss``, ``acc``: the fused model (all modalities present);
- ``loss_only_<m>``, ``acc_only_<m>``: modality m alone (others zeroed, mask 1<<m);
- ``loss_without_<m>``, ``acc_without_<m>``: modality m removed (full mask minus m).

The evaluation set is a fixed, seeded subset of one split (``eval_subset``).
Grid points can be sharded over worker processes (CPU, one thread each) or
CUDA devices (``parallel.py``), or over torchrun's ranks (``_evaluate_sharded``;
rank 0 writes); results are flushed to disk every few points, and a rerun on a
partly computed surface evaluates only the missing points.

Files, in the surface's folder (``<run>/landscapes/<name>/`` from the CLI)::

    meta.json        settings and provenance (seed, grid, split, subset, run, epoch, scope, ...)
    surface.npz      coord_0[, coord_1], done (bool grid), value:<metric> grids (NaN = not yet computed),
                     subset_index
    directions.npz   <k>:<parameter name> -> direction k's tensor
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from msam_lab import distributed
from msam_lab.landscape.directions import Direction, check_compatible
from msam_lab.landscape.options import OptionError, SurfaceOptions
from msam_lab.landscape.parallel import evaluate_parallel, resolve_devices
from msam_lab.landscape.points import (
    PointEvaluator,
    coalition_plan,
    directions_fingerprint,
    eval_subset,
    evaluate_points,
    fingerprint,
    grid,
    metric_names,
    model_fingerprint,
    prepare_for_evaluation,
)
from msam_lab.landscape.state import preserved
from msam_lab.runs.surfaces import FORMAT_VERSION, META, RESUME_KEYS, Surface, generalization_gap

# the names this module held before points.py and runs/surfaces.py took them over: still importable here
__all__ = [
    "FORMAT_VERSION",
    "PointEvaluator",
    "Surface",
    "SurfaceOptions",
    "coalition_plan",
    "compute_surface",
    "directions_fingerprint",
    "eval_subset",
    "evaluate_points",
    "fingerprint",
    "generalization_gap",
    "grid",
    "metric_names",
    "model_fingerprint",
    "prepare_for_evaluation",
]


# ---------------------------------------------------------------- the result


def compute_surface(
    model,
    data,
    directions: Sequence[Direction],
    coords: Sequence[np.ndarray],
    options: SurfaceOptions | None = None,
    *,
    path=None,
    pool=None,
    meta: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    evaluation=None,
    **overrides,
) -> Surface:
    """Evaluate ``model`` on the grid ``coords`` (one array per direction) around its current θ₀.

    ``options``: a ``SurfaceOptions`` (how to evaluate: subset, batches, workers, ...); keywords
    (``n_samples=None``, ``workers=4``, ...) set or override its fields.
    ``data``: a ``MultimodalData`` split; a seeded subset of ``n_samples`` is
    used. ``evaluation``: a ``ForwardEvaluation`` instead of ``data``, for a model
    msam_lab did not build (its batches are used whole; no worker processes). ``path``: a folder to save
    into, flushed every ``flush_every`` points; if it already holds a compatible partial surface, only its
    missing points are computed (an incompatible one raises ConfigError,
    unless ``overwrite``). ``workers`` > 1: that many worker processes, one
    thread each, or one per entry of ``devices`` (e.g. ``["cuda:0",
    "cuda:1"]``); ``pool``: a started ``parallel.WorkerPool`` to use instead
    (no process start-up per call). ``threads``: torch threads for the in-process evaluation
    (default: leave torch's setting; put back afterwards). ``autocast_dtype``
    (e.g. ``torch.bfloat16``): run the forward passes under autocast (a GPU
    lever; losses are still accumulated in float64). ``meta``: extra
    provenance stored with the surface.
    Under torchrun (``distributed.world_size() > 1``; workers=1) the ranks share the pending
    points, rank 0 alone writes ``path``, and every rank returns the whole surface.
    The model is left bitwise as it was.
    """
    o = SurfaceOptions.build(options, **overrides)
    per_modality, n_samples, batch_size, workers, devices = (
        o.per_modality,
        o.n_samples,
        o.batch_size,
        o.workers,
        o.devices,
    )
    directions = [dict(d) for d in directions]
    coords = [np.asarray(c, dtype=float).reshape(-1) for c in coords]
    if not 1 <= len(coords) <= 2 or len(coords) != len(directions):
        raise ValueError(
            f"give 1 or 2 directions and one coordinate array per direction; "
            f"got {len(directions)} directions and {len(coords)} coordinate arrays"
        )
    world = distributed.world_size()
    if world > 1 and (workers != 1 or devices or pool is not None):
        raise ValueError(
            f"under torchrun the {world} ranks share the grid: use workers=1 and no devices or "
            "pool (start one rank per core or GPU instead)"
        )
    for d in directions:
        check_compatible(d, model)
    if evaluation is not None:
        if workers != 1 or devices or pool is not None:
            raise ValueError(
                "a ForwardEvaluation runs in this process (your forward need not be importable "
                "by workers): use workers=1"
            )
        device = next(model.parameters()).device
        subset, index, n_samples = None, np.arange(evaluation.to(device).n), None
        names, modalities, per_modality = evaluation.names, evaluation.modalities, evaluation.per_modality
    else:
        subset, index = eval_subset(data, n_samples, o.subset_seed)
        names, modalities = metric_names(tuple(model.modalities), per_modality), tuple(model.modalities)
    shape = tuple(len(c) for c in coords)
    info = {
        "format_version": FORMAT_VERSION,
        "dim": len(coords),
        "shape": list(shape),
        "metrics": names,
        "modalities": list(modalities),
        "per_modality": per_modality,
        "n_samples": int(len(index)),
        "n_samples_requested": n_samples,
        "subset_seed": int(o.subset_seed),
        "model_sha1": model_fingerprint(model),
        "directions_sha1": directions_fingerprint(directions),
        "direction_norms": [float(sum(t.double().pow(2).sum() for t in d.values()) ** 0.5) for d in directions],
        "parameters": sorted({n for d in directions for n in d}),
        "batch_size": batch_size,
        "torch": torch.__version__,
        "autocast_dtype": None if o.autocast_dtype is None else str(o.autocast_dtype),
        "batches_sha1": None if evaluation is None else evaluation.sha1,  # a ForwardEvaluation's data
    }
    info.update(meta or {})
    info.setdefault("split", None)

    surface = None
    if path is not None:
        path = Path(path)
        if (path / META).exists() and not o.overwrite:
            old = Surface.load(path)
            diffs = [k for k in RESUME_KEYS if old.meta.get(k) != info.get(k)]
            if len(old.coords) != len(coords) or any(not np.array_equal(a, b) for a, b in zip(old.coords, coords)):
                diffs.insert(0, "grid")
            if diffs:
                raise OptionError(
                    "path",
                    f"path {path} already holds a surface computed with other settings "
                    f"({', '.join(diffs)} differ); choose another path= or pass overwrite=True",
                )
            surface = old
            surface.meta.update({k: v for k, v in info.items() if k not in surface.meta})
    if world > 1 and path is not None:
        # every rank has read the disk (above) before rank 0 writes to it, and all must have read the
        # same points as done: they share the pending points out by position
        done = None if surface is None else hashlib.sha1(np.packbits(surface.done).tobytes()).hexdigest()
        distributed.check_same(done, f"the points already computed in {path} (put it on a disk every rank reads)")
        distributed.barrier()
    if surface is None:
        info["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info["seconds"] = 0.0
        surface = Surface(
            coords, {k: np.full(shape, np.nan) for k in names}, np.zeros(shape, dtype=bool), directions, info, index
        )
        if path is not None:
            if distributed.is_main():
                surface.save(path)
            else:
                surface.path = path  # rank 0 writes the files; this rank only keeps the values

    all_points = surface.points()
    pending = np.flatnonzero(~surface.done.reshape(-1))
    total = surface.done.size
    if not len(pending):
        return surface

    started = time.perf_counter()
    since_flush = 0

    def store(idx: Sequence[int], vals: np.ndarray) -> None:
        nonlocal since_flush
        for i, v in zip(idx, vals):
            at = np.unravel_index(int(i), shape)
            for j, k in enumerate(names):
                surface.values[k][at] = v[j]
            surface.done[at] = True
        since_flush += len(idx)
        if surface.path is not None and since_flush >= o.flush_every:
            flush()
        if progress is not None:
            progress(surface.n_done, total)

    def flush() -> None:
        nonlocal since_flush, started
        now = time.perf_counter()
        surface.meta["seconds"] = float(surface.meta.get("seconds", 0.0)) + now - started
        started = now
        since_flush = 0
        if surface.path is not None and distributed.is_main():
            surface.save_values()

    try:
        if workers == 1 and not devices and pool is None:
            old_threads = torch.get_num_threads()
            if o.threads:
                torch.set_num_threads(int(o.threads))
            try:
                with preserved(model):
                    prepare_for_evaluation(model, o.channels_last)
                    ev = PointEvaluator(
                        model, subset, directions, per_modality, batch_size, o.autocast_dtype, evaluation
                    )
                    if world == 1:
                        for i in pending:
                            store([i], ev(all_points[i])[None])
                    else:
                        _evaluate_sharded(ev, all_points, pending, store, o.flush_every)
            finally:
                torch.set_num_threads(old_threads)
        else:
            n_workers = pool.n_workers if pool is not None else len(resolve_devices(devices) or [0] * workers)
            chunk = max(1, min(o.flush_every, math.ceil(len(pending) / (4 * n_workers))))
            evaluate_parallel(
                model,
                subset,
                directions,
                all_points,
                pending,
                store,
                workers=workers,
                devices=devices,
                pool=pool,
                per_modality=per_modality,
                batch_size=batch_size,
                channels_last=o.channels_last,
                autocast_dtype=o.autocast_dtype,
                chunk=chunk,
            )
    finally:
        flush()
    distributed.barrier()  # rank 0's files are whole before any rank returns (and may read them)
    return surface


def _evaluate_sharded(ev: PointEvaluator, points: np.ndarray, pending: np.ndarray, store, per_rank: int) -> None:
    """The ``pending`` points shared over torchrun's ranks, in blocks of ``per_rank`` points per rank.

    Rank r evaluates every world-th point of a block; then the ranks exchange their values and
    every rank stores the whole block point by point, in the order one process would, so each
    holds the surface and rank 0's flushes leave on disk what one process's would (a resume,
    by any number of ranks, redoes at most the block in flight).
    """
    world, r = distributed.world_size(), distributed.rank()
    step = per_rank * world
    for start in range(0, len(pending), step):
        block = pending[start : start + step]
        mine = [(int(i), ev(points[i])) for i in block[r::world]]
        got = sorted((pair for part in distributed.gather_objects(mine) for pair in part), key=lambda p: p[0])
        for i, v in got:
            store([i], v[None])
