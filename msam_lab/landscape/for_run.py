"""Landscapes and sharpness of a saved run: validation, directions, files under ``<run>/``.

Everything here checks its input first and raises ``ConfigError`` (one line
naming the fix) before anything is written.

Files::

    <run>/landscapes/<name>/{meta.json, surface.npz, directions.npz}   one surface each
    <run>/sharpness.csv                                                 one row per (epoch, scope, settings)

``sharpness.csv`` is also written during training (``sharpness_every``, msam_lab/sharpness_timeline.py);
``timeline_for_run`` recomputes those rows after the fact.

Under torchrun (``torchrun --nproc-per-node N -m msam_lab landscape|sharpness RUN ...``) the
ranks share the work, a surface's grid points (``compute_surface``) or the (epoch, scope)
measurements of ``sharpness_for_run``; rank 0 alone writes, the same files and numbers as one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from msam_lab import distributed, faults
from msam_lab.analysis import sharpness_timeline as timeline
from msam_lab.datasets import load_for_training
from msam_lab.datasets.validation import with_validation
from msam_lab.errors import ConfigError
from msam_lab.landscape import directions as dirs
from msam_lab.landscape.evaluation import ForwardEvaluation
from msam_lab.landscape.options import (
    DIRECTION_KINDS,
    SPLITS,
    LandscapeOptions,
    OptionError,
    SharpnessOptions,
    SurfaceOptions,
    TimelineOptions,
    check_name,
)
from msam_lab.landscape.sharpness import sharpness
from msam_lab.landscape.surface import compute_surface, eval_subset
from msam_lab.landscape.surface import grid as make_grid
from msam_lab.runs.checkpoint_io import RunFileError
from msam_lab.runs.reader import CONFIG, MODEL, Run, is_run, load_run, read_table
from msam_lab.runs.surfaces import LANDSCAPES, Surface, list_landscapes, load_landscape
from msam_lab.runs.writer import replace_rows

__all__ = [
    "DIRECTION_KINDS",
    "SHARPNESS_CSV",
    "SPLITS",
    "landscape_for_run",
    "list_landscapes",
    "load_landscape",
    "open_run",
    "sharpness_for_run",
    "timeline_for_run",
]

SHARPNESS_CSV = timeline.SHARPNESS_CSV
PCA_MARGIN = 1.2  # the PCA grid reaches 20 % beyond the trajectory along each component


def open_run(path, what: str = "run") -> Run:
    """``load_run`` with one-line errors naming the argument ``what`` (a ``Run`` is read again from its folder)."""
    path = Path(path.path if isinstance(path, Run) else path)
    if not is_run(path):
        raise OptionError(
            what,
            f"{what} {path} is not a finished run directory (no summary.json); "
            "pass a folder written by `msam-lab train`",
        )
    try:
        return load_run(path)
    except (OSError, ValueError) as err:
        raise OptionError(what, f"{what} {path} cannot be read ({err}); pass an intact run directory") from None


def _check_epoch(run: Run, epoch, argument: str = "epoch") -> int:
    ckpts = run.checkpoints
    if not ckpts:
        raise ConfigError(f"run {run.path} has no checkpoints; retrain it (checkpoints are written by default)")
    if epoch is None:
        return max(ckpts)
    if epoch not in ckpts:
        raise OptionError(
            argument,
            f"{argument} {epoch}: run {run.path} has no checkpoint for epoch {epoch} "
            f"(no checkpoints/epoch_{epoch:04d}.pt); pass {argument}= one of "
            f"{', '.join(map(str, sorted(ckpts)))}",
        )
    return int(epoch)


def _evaluation(run: Run, model_factory, forward, batches, per_modality: bool = True):
    """A logged run's ForwardEvaluation (None for msam_lab's own runs, which need none of the three)."""
    given = [
        k for k, v in (("model_factory", model_factory), ("forward", forward), ("batches", batches)) if v is not None
    ]
    if not run.logged:
        if given:
            raise ConfigError(
                f"{given[0]}= is for runs logged from your own model (msam_lab.RunLogger); "
                f"run {run.path} was trained by msam_lab, which rebuilds its model and data"
            )
        return None
    missing = [k for k in ("model_factory", "forward", "batches") if k not in given]
    if missing:
        raise ConfigError(
            f"run {run.path} was logged from your own model: pass model_factory= (a function "
            f"returning a fresh model), forward= (forward(model, inputs, present) -> logits) and "
            f"batches= (a list of (inputs, labels)); missing: {', '.join(missing)} (docs/api.md)"
        )
    try:
        return ForwardEvaluation(forward, batches, run.modalities, per_modality)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _scope_path(run: Run, scope: str) -> str:
    """A logged run's scope names (its modalities) mapped to the submodule paths RunLogger recorded."""
    return run.model_spec.get("scopes", {}).get(scope, scope) if run.logged else scope


def _check_scope(model, scope: str, argument: str = "scope") -> list[str]:
    try:
        return list(dirs.scope_parameters(model, scope))
    except ValueError as err:
        raise OptionError(argument, f"{argument}: {err}") from None


def _load_split(run: Run, split: str, holdout: bool = False):
    """The run's ``split`` (checked by the options); ``holdout``: train without the run's validation
    hold-out (what it trained on)."""
    cfg = run.config
    try:
        # the run's own data path: a dataset too large for memory streams, and only the
        # seeded evaluation subset (eval_subset) is read into memory
        splits = load_for_training(
            cfg.dataset,
            cfg.data,
            "cpu",
            data_path=getattr(cfg, "data_path", "auto"),
            stream_above_mb=getattr(cfg, "stream_above_mb", 1024.0),
            num_workers=getattr(cfg, "num_workers", 2),
        )
        if holdout:
            splits = with_validation(splits, cfg.val_fraction, cfg.seed)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the data of run {run.path} as its {CONFIG} says: {err}") from None
    data = getattr(splits, split)
    # config.json (the data) and model.json (the model) must still describe one run
    shapes = {m: list(s) for m, s in data.sample_shapes.items()}
    if shapes != run.model_spec.get("input_shapes") or data.num_classes != run.model_spec.get("num_classes"):
        raise RunFileError(
            f"{run.path / CONFIG} and {run.path / MODEL} disagree: the data gives inputs {shapes} "
            f"and {data.num_classes} classes, the model was built for "
            f"{run.model_spec.get('input_shapes')} and {run.model_spec.get('num_classes')} (damaged)"
        )
    return data


def _surface_options(o: LandscapeOptions) -> SurfaceOptions:
    """The evaluation part of a surface's options, as ``compute_surface`` takes it."""
    return SurfaceOptions(
        per_modality=o.per_modality,
        n_samples=o.n_samples,
        subset_seed=o.subset_seed,
        batch_size=o.batch_size,
        flush_every=o.flush_every,
        workers=o.workers,
        threads=o.threads,
        autocast_dtype=torch.bfloat16 if o.bf16 else None,
        overwrite=o.overwrite,
    )


def landscape_for_run(
    run,
    options: LandscapeOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    model_factory=None,
    forward=None,
    batches=None,
    **overrides,
) -> Surface:
    """Compute (or resume) a surface of ``run`` and save it under ``<run>/landscapes/<name>/``.

    ``options``: a ``LandscapeOptions``; keywords (``dim=1``, ``grid=31``, ``directions="pca"``, ...)
    set or override its fields. ``directions``: ``random`` (filter-normalised Gaussian, seeded per
    parameter name), ``pca`` (of the run's checkpoints; the grid then spans ``span`` times
    the trajectory's extent along each component), ``between`` (θ of ``to`` at
    ``to_epoch`` minus θ of ``run`` at ``epoch``; a second, random direction
    for ``dim=2``). ``reuse``: a saved surface folder whose directions and grid
    are used instead (to compare runs of the same architecture on the same
    directions). ``progress(done, total)`` is called as points finish. A run logged from your own
    model (msam_lab.RunLogger) needs ``model_factory``, ``forward`` and ``batches`` (docs/api.md).
    """
    # ---- validate everything first: nothing is written before this block ends
    o = LandscapeOptions.build(options, **overrides)
    dim, epoch, scope, seed = o.dim, o.epoch, o.scope, o.seed
    if o.workers != 1 and distributed.world_size() > 1:
        raise OptionError(
            "workers",
            f"workers={o.workers} under torchrun: the {distributed.world_size()} ranks "
            "already share the grid; use workers=1 (or start more ranks)",
        )
    run = open_run(run)
    evaluation = _evaluation(run, model_factory, forward, batches, o.per_modality)
    if evaluation is not None and o.workers != 1:
        raise OptionError(
            "workers", "workers=1 is needed for a run logged from your own model: it is evaluated in this process"
        )
    epoch = _check_epoch(run, epoch)
    model = run.load_model(epoch, factory=model_factory)
    path_of_scope = _scope_path(run, scope)
    scope_names = _check_scope(model, path_of_scope)
    other = to_epoch = None
    if o.directions == "between" and o.reuse is None:
        other = open_run(o.to, "to")
        if other.model_spec != run.model_spec:
            diff = sorted(
                k
                for k in set(run.model_spec) | set(other.model_spec)
                if run.model_spec.get(k) != other.model_spec.get(k)
            )
            raise OptionError(
                "to",
                f"to {other.path} has a different architecture ({', '.join(diff)} differ); "
                "directions='between' needs two runs of the same model",
            )
        to_epoch = _check_epoch(other, o.to_epoch, "to_epoch")
        if other.logged and not run.logged:
            raise OptionError(
                "to", f"to {other.path} was logged from your own model; interpolate between runs of one model"
            )
    reused = None
    if o.reuse is not None:
        try:
            reused = Surface.load(o.reuse)
        except FileNotFoundError as err:
            raise OptionError("reuse", f"reuse: {err}") from None
        try:
            for d in reused.directions:
                dirs.check_compatible(d, model)
        except ValueError as err:
            raise OptionError(
                "reuse", f"reuse {o.reuse}: {err}; reuse directions only between runs of one architecture"
            ) from None
    if o.directions == "pca" and reused is None:
        n_ckpt = sum(e <= epoch for e in run.checkpoints)
        if n_ckpt < dim + 1:
            raise OptionError(
                "directions",
                f"directions='pca' with dim={dim} needs at least {dim + 1} checkpoints "
                f"up to epoch {epoch}, run {run.path} has {n_ckpt}; train with "
                "checkpoint_every=1",
            )
    _check_can_save(run, model, [len(c) for c in reused.coords] if reused is not None else [o.grid] * dim)
    data = _load_split(run, o.split) if evaluation is None else None

    # ---- directions and grid
    meta = {
        "run": str(run.path.resolve()),
        "run_name": run.name,
        "epoch": epoch,
        "split": o.split,
        "scope": scope,
        "include_1d": o.include_1d,
        "seed": seed,
        "method": run.config.method,
        "dataset": run.config.dataset,
    }
    if reused is not None:
        d_list, coords = reused.directions, reused.coords
        kind = f"reuse:{reused.meta.get('directions', '?')}"
        meta.update(
            directions=kind,
            reused_from=str(Path(o.reuse).resolve()),
            grid=reused.meta.get("grid"),
            span=reused.meta.get("span"),
        )
    elif o.directions == "random":
        d_list = dirs.random_directions(model, dim, seed, path_of_scope, o.include_1d, o.orthogonal)
        coords = [make_grid(o.grid, o.span) for _ in range(dim)]
        meta.update(directions="random", normalization="filter", orthogonal=o.orthogonal, grid=o.grid, span=o.span)
    elif o.directions == "between":
        end = other.load_model(to_epoch, factory=model_factory)
        d_list = [dirs.between(model, end, scope_names)]
        if dim == 2:
            second = dirs.random_direction(model, seed, 1, path_of_scope, o.include_1d)
            d_list.append(dirs.orthogonalize(second, d_list[0]) if o.orthogonal else second)
        coords = [make_grid(o.grid, o.span) for _ in range(dim)]
        meta.update(
            directions="between",
            to=str(other.path.resolve()),
            to_epoch=to_epoch,
            orthogonal=o.orthogonal,
            grid=o.grid,
            span=o.span,
        )
    else:  # pca
        states = {e: run.load_checkpoint(e)["model"] for e in run.checkpoints if e <= epoch}
        try:
            pca = dirs.pca_directions(states, scope_names, dim, final=epoch, include_1d=o.include_1d)
        except ValueError as err:
            raise OptionError("directions", f"directions='pca': {err}") from None
        d_list = pca.directions
        extent = [float(np.abs(pca.projection[:, k]).max()) or 1.0 for k in range(dim)]
        # span 1 covers the trajectory with a margin: at exactly its extent, the farthest epoch's point
        # sat on the grid's edge, half over blank space in the contour
        coords = [make_grid(o.grid, o.span) * r * PCA_MARGIN for r in extent]
        meta.update(
            directions="pca",
            grid=o.grid,
            span=o.span,
            extent=extent,
            margin=PCA_MARGIN,
            explained_variance_ratio=pca.explained_variance_ratio.tolist(),
            trajectory_epochs=pca.epochs,
            trajectory=pca.projection.tolist(),
        )
    name = o.name
    if name is None:
        name = f"{meta['directions'].replace(':', '-')}-{dim if reused is None else reused.dim}d-{o.split}-e{epoch}"
        if o.directions == "random" or (o.directions == "between" and dim == 2):
            name += f"-s{seed}"
        if o.directions == "between" and reused is None:
            name += f"-to-{other.name}-e{to_epoch}"
        if scope != "model":
            name += f"-{scope}"
    name = check_name(name)
    meta["name"] = name
    path = run.path / LANDSCAPES / name
    faults.refuse_symlinks(run.path, path)
    try:
        return compute_surface(
            model,
            data,
            d_list,
            coords,
            _surface_options(o),
            path=path,
            meta=meta,
            progress=progress,
            evaluation=evaluation,
        )
    except OptionError as err:
        if err.argument != "path":
            raise
        # a saved surface with other settings: its folder is the name's
        raise OptionError("name", f"name {name!r}: " + str(err).replace("path=", "name=")) from None


SAVE_MARGIN = 2**16  # bytes of meta.json, headers and slack on top of a surface's arrays


def _check_can_save(run: Run, model, shape) -> None:
    """Before the data is loaded and any point computed: ``<run>/landscapes`` is inside the run (no
    symlink on the way), writable, and the disk has room for a surface of ``shape`` (its directions at
    most one copy of the parameters each, its value grids; twice: a new file is written beside the old)."""
    n_points = int(np.prod(shape))
    n_metrics = 2 * (1 + 2 * len(run.modalities))
    arrays = len(shape) * sum(p.numel() * p.element_size() for p in model.parameters()) + n_points * (8 * n_metrics + 1)
    faults.check_writable(run.path, run.path / LANDSCAPES, 2 * arrays + SAVE_MARGIN, what="the landscape")


def _epochs_arg(run: Run, epochs) -> list[int]:
    if epochs is None:
        return [_check_epoch(run, None, "epochs")]
    if epochs == "all":
        return sorted(run.checkpoints)
    if isinstance(epochs, (int, np.integer)):
        return [_check_epoch(run, int(epochs), "epochs")]
    return [_check_epoch(run, int(e), "epochs") for e in epochs]


def sharpness_for_run(
    run,
    options: SharpnessOptions | None = None,
    *,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
    model_factory=None,
    forward=None,
    batches=None,
    **overrides,
) -> pd.DataFrame:
    """Sharpness of ``run`` at ``epochs`` (None: last; an int; a list; ``"all"``) for each scope.

    ``options``: a ``SharpnessOptions``; keywords (``epochs="all"``, ``probes=8``, ``scopes=["fusion"]``,
    ...) set or override its fields. ``progress(message)`` is called before each measurement.

    A run logged from your own model (msam_lab.RunLogger) needs ``model_factory``, ``forward`` and
    ``batches`` (as ``landscape_for_run``); its scopes are ``model`` and the modalities whose encoder
    paths RunLogger(scopes=...) recorded, or any submodule path.

    ``split="train"`` is the train split without the run's validation hold-out: the samples the
    run trained on (as ``sharpness_every`` measures during training).

    Rows are appended to ``<run>/sharpness.csv`` (a row with the same epoch,
    scope and settings is replaced) unless ``write=False``.

    Under torchrun the (epoch, scope) measurements are dealt out round-robin over the ranks (each
    draws from its own seeded generators, so where it runs does not change it); every rank returns
    all rows, in the order one process makes them, and rank 0 alone writes them.
    """
    o = SharpnessOptions.build(options, **overrides)
    run = open_run(run)
    read_table(run.path / SHARPNESS_CSV)  # a damaged table is named now, not after the measuring
    if write:  # and a table that could not be written: before measuring
        table = run.path / SHARPNESS_CSV
        faults.refuse_symlinks(run.path, table)
        faults.check_writable(
            run.path, run.path, 2 * (table.stat().st_size if table.is_file() else 0) + SAVE_MARGIN, what=SHARPNESS_CSV
        )
    evaluation = _evaluation(run, model_factory, forward, batches)
    epoch_list = _epochs_arg(run, o.epochs)
    model = run.build_model(model_factory)
    scopes = o.scopes
    if scopes is None:
        scopes = ["model", *(run.model_spec.get("scopes", {}) if run.logged else model.modalities)]
    scopes = list(scopes)
    for s in scopes:
        _check_scope(model, _scope_path(run, s), "scopes")
    if evaluation is None:
        data, index = eval_subset(_load_split(run, o.split, holdout=True), o.n_samples, o.subset_seed)
    else:
        data, index = None, np.arange(evaluation.n)
    tasks = [(e, s) for e in epoch_list for s in scopes]
    world, rank = distributed.world_size(), distributed.rank()
    mine = []  # (position in tasks, row): this rank's share, every world-th task
    loaded = None
    for t in range(rank, len(tasks), world):
        e, s = tasks[t]
        if loaded != e:
            model, loaded = run.load_model(e, factory=model_factory), e
        if progress:
            progress(f"epoch {e}, {s}")
        row = sharpness(
            model,
            data,
            _scope_path(run, s),
            rho=o.rho,
            topk=o.topk,
            probes=o.probes,
            seed=o.seed,
            max_iter=o.max_iter,
            tol=o.tol,
            evaluation=evaluation,
        )
        row["scope"] = s
        mine.append(
            (
                t,
                {
                    "epoch": e,
                    "split": o.split,
                    "n_samples": len(index),
                    "subset_seed": o.subset_seed,
                    "seed": o.seed,
                    "topk": o.topk,
                    "probes": o.probes,
                    **row,
                },
            )
        )
    rows = [
        row for _, row in sorted((p for part in distributed.gather_objects(mine) for p in part), key=lambda p: p[0])
    ]
    if write and distributed.is_main():
        replace_rows(run.path / SHARPNESS_CSV, rows, timeline.KEYS)
    distributed.barrier()  # the file is whole before any rank returns (and reads it)
    return pd.DataFrame(rows)


def timeline_for_run(
    run,
    options: TimelineOptions | None = None,
    *,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
    model_factory=None,
    forward=None,
    batches=None,
    **overrides,
) -> pd.DataFrame:
    """``sharpness_every``'s rows after the fact: ``sharpness_for_run`` at every checkpoint epoch.

    Same scopes (each encoder, ``fusion``) and settings as the run's config
    (``sharpness_samples``, ``sharpness_probes``; split, probe seed, ρ, topk: msam_lab.analysis.sharpness_timeline),
    so at the epochs measured during training the rows are the same; a field of ``options``
    (``TimelineOptions``, or keywords: ``epochs``, ``n_samples``, ``probes``, ``split``, ``topk``, ``rho``,
    ``seed``, ``max_iter``) given replaces its setting. A run logged from your own model: as
    ``sharpness_for_run``, for the encoder scopes RunLogger recorded (the whole model when it recorded none).
    """
    o = TimelineOptions.build(options, **overrides)
    run = open_run(run)
    cfg = run.config
    if run.logged:
        scopes = list(run.model_spec.get("scopes", {})) or ["model"]
    else:
        scopes = timeline.scopes(run.modalities)
    n_samples = (cfg.sharpness_samples or None) if o.n_samples is None else o.n_samples  # 0: the whole split
    measured = SharpnessOptions(
        epochs=o.epochs,
        scopes=scopes,
        n_samples=n_samples,
        probes=cfg.sharpness_probes if o.probes is None else o.probes,
        split=timeline.SPLIT if o.split is None else o.split,
        topk=timeline.TOPK if o.topk is None else o.topk,
        rho=timeline.RHO if o.rho is None else o.rho,
        seed=timeline.SEED if o.seed is None else o.seed,
        subset_seed=timeline.SUBSET_SEED,
        max_iter=timeline.MAX_ITER if o.max_iter is None else o.max_iter,
        tol=timeline.TOL,
    )
    return sharpness_for_run(
        run, measured, write=write, progress=progress, model_factory=model_factory, forward=forward, batches=batches
    )
