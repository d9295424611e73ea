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

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from msam_lab import distributed, faults
from msam_lab.analysis import sharpness_timeline as timeline
from msam_lab.config import ConfigError
from msam_lab.runs.writer import replace_rows
from msam_lab.runs.checkpoint_io import RunFileError
from msam_lab.runs.reader import CONFIG, MODEL, Run, is_run, load_run, read_table
from msam_lab.landscape import directions as dirs
from msam_lab.runs.surfaces import LANDSCAPES, Surface, list_landscapes, load_landscape
from msam_lab.landscape.surface import compute_surface, eval_subset, grid as make_grid

SHARPNESS_CSV = timeline.SHARPNESS_CSV
DIRECTION_KINDS = ("random", "pca", "between")
SPLITS = ("train", "test")


def open_run(path, what: str = "RUN") -> Run:
    """``load_run`` with one-line ConfigErrors (a ``Run`` is read again from its folder)."""
    path = Path(path.path if isinstance(path, Run) else path)
    if not is_run(path):
        raise ConfigError(f"{what} {path} is not a finished run directory (no summary.json); "
                          "pass a folder written by `msam-lab train`")
    try:
        return load_run(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{what} {path} cannot be read ({err}); pass an intact run directory") from None


def _check_epoch(run: Run, epoch, flag: str = "--epoch") -> int:
    ckpts = run.checkpoints
    if not ckpts:
        raise ConfigError(f"run {run.path} has no checkpoints; retrain it (checkpoints are written by default)")
    if epoch is None:
        return max(ckpts)
    if epoch not in ckpts:
        raise ConfigError(f"run {run.path} has no checkpoint for epoch {epoch} (no checkpoints/epoch_{epoch:04d}.pt); "
                          f"pass {flag} one of {', '.join(map(str, sorted(ckpts)))}")
    return int(epoch)


def _evaluation(run: Run, model_factory, forward, batches, per_modality: bool = True):
    """A logged run's ForwardEvaluation (None for msam_lab's own runs, which need none of the three)."""
    given = [k for k, v in (("model_factory", model_factory), ("forward", forward), ("batches", batches))
             if v is not None]
    if not run.logged:
        if given:
            raise ConfigError(f"{given[0]}= is for runs logged from your own model (msam_lab.RunLogger); "
                              f"run {run.path} was trained by msam_lab, which rebuilds its model and data")
        return None
    missing = [k for k in ("model_factory", "forward", "batches") if k not in given]
    if missing:
        raise ConfigError(f"run {run.path} was logged from your own model: pass model_factory= (a function "
                          f"returning a fresh model), forward= (forward(model, inputs, present) -> logits) and "
                          f"batches= (a list of (inputs, labels)); missing: {', '.join(missing)} (docs/api.md)")
    from msam_lab.landscape.evaluation import ForwardEvaluation

    try:
        return ForwardEvaluation(forward, batches, run.modalities, per_modality)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _scope_path(run: Run, scope: str) -> str:
    """A logged run's scope names (its modalities) mapped to the submodule paths RunLogger recorded."""
    return run.model_spec.get("scopes", {}).get(scope, scope) if run.logged else scope


def _check_scope(model, scope: str) -> list[str]:
    try:
        return list(dirs.scope_parameters(model, scope))
    except ValueError as err:
        raise ConfigError(f"--scope: {err}") from None


def _load_split(run: Run, split: str, holdout: bool = False):
    """The run's ``split``; ``holdout``: train without the run's validation hold-out (what it trained on)."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be train or test, got {split!r}")
    from msam_lab.datasets import load_for_training
    from msam_lab.datasets.validation import with_validation

    cfg = run.config
    try:
        # the run's own data path: a dataset too large for memory streams, and only the
        # seeded evaluation subset (eval_subset) is read into memory
        splits = load_for_training(cfg.dataset, cfg.data, "cpu", data_path=getattr(cfg, "data_path", "auto"),
                                   stream_above_mb=getattr(cfg, "stream_above_mb", 1024.0),
                                   num_workers=getattr(cfg, "num_workers", 2))
        if holdout:
            splits = with_validation(splits, cfg.val_fraction, cfg.seed)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the data of run {run.path} as its {CONFIG} says: {err}") from None
    data = getattr(splits, split)
    # config.json (the data) and model.json (the model) must still describe one run
    shapes = {m: list(s) for m, s in data.sample_shapes.items()}
    if shapes != run.model_spec.get("input_shapes") or data.num_classes != run.model_spec.get("num_classes"):
        raise RunFileError(f"{run.path / CONFIG} and {run.path / MODEL} disagree: the data gives inputs {shapes} "
                           f"and {data.num_classes} classes, the model was built for "
                           f"{run.model_spec.get('input_shapes')} and {run.model_spec.get('num_classes')} (damaged)")
    return data


def _check_name(name: str) -> str:
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+=-]+", name) or name.startswith("."):
        raise ConfigError(f"--name {name!r} must be a plain folder name (letters, digits, _ . + = -)")
    return name


def landscape_for_run(run, *, dim: int = 2, grid: int = 21, span: float = 1.0, directions: str = "random",
                      to=None, to_epoch: int | None = None, split: str = "test", epoch: int | None = None,
                      seed: int = 0, n_samples: int = 512, subset_seed: int = 0, workers: int = 1,
                      threads: int | None = None,
                      name: str | None = None, scope: str = "model", include_1d: bool = False,
                      orthogonal: bool = False, per_modality: bool = True, reuse=None,
                      batch_size: int | None = 32, flush_every: int = 32, overwrite: bool = False,
                      bf16: bool = False,
                      progress: Callable[[int, int], None] | None = None,
                      model_factory=None, forward=None, batches=None) -> Surface:
    """Compute (or resume) a surface of ``run`` and save it under ``<run>/landscapes/<name>/``.

    ``directions``: ``random`` (filter-normalised Gaussian, seeded per parameter
    name), ``pca`` (of the run's checkpoints; the grid then spans ``span`` times
    the trajectory's extent along each component), ``between`` (θ of ``to`` at
    ``to_epoch`` minus θ of ``run`` at ``epoch``; a second, random direction
    for ``dim=2``). ``reuse``: a saved surface folder whose directions and grid
    are used instead (to compare runs of the same architecture on the same
    directions).
    """
    # ---- validate everything first: nothing is written before this block ends
    if dim not in (1, 2):
        raise ConfigError(f"--dim must be 1 or 2, got {dim}")
    if int(grid) != grid or grid < 3 or grid % 2 == 0:
        raise ConfigError(f"--grid must be an odd integer >= 3 so 0 is on the grid, got {grid}; e.g. --grid 21")
    if not span > 0:
        raise ConfigError(f"--span must be > 0, got {span}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers != 1 and distributed.world_size() > 1:
        raise ConfigError(f"--workers {workers} under torchrun: the {distributed.world_size()} ranks already "
                          "share the grid; drop --workers (or start more ranks)")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"--n-samples must be >= 1, got {n_samples}")
    if flush_every < 1:
        raise ConfigError(f"flush_every must be >= 1, got {flush_every}")
    if directions not in DIRECTION_KINDS:
        raise ConfigError(f"--directions must be one of {', '.join(DIRECTION_KINDS)}, got {directions!r}")
    if directions == "between" and to is None and reuse is None:
        raise ConfigError("--directions between needs --to RUN2 (the run to interpolate towards)")
    run = open_run(run)
    evaluation = _evaluation(run, model_factory, forward, batches, per_modality)
    if evaluation is not None and workers != 1:
        raise ConfigError("a run logged from your own model is evaluated in this process: use workers=1")
    epoch = _check_epoch(run, epoch)
    model = run.load_model(epoch, factory=model_factory)
    path_of_scope = _scope_path(run, scope)
    scope_names = _check_scope(model, path_of_scope)
    other = None
    if directions == "between" and reuse is None:
        other = open_run(to, "--to")
        if other.model_spec != run.model_spec:
            diff = sorted(k for k in set(run.model_spec) | set(other.model_spec)
                          if run.model_spec.get(k) != other.model_spec.get(k))
            raise ConfigError(f"--to {other.path} has a different architecture ({', '.join(diff)} differ); "
                              "--directions between needs two runs of the same model")
        to_epoch = _check_epoch(other, to_epoch, "--to-epoch")
        if other.logged and not run.logged:
            raise ConfigError(f"--to {other.path} was logged from your own model; interpolate between runs of one model")
    reused = None
    if reuse is not None:
        try:
            reused = Surface.load(reuse)
        except FileNotFoundError as err:
            raise ConfigError(f"--reuse: {err}") from None
        try:
            for d in reused.directions:
                dirs.check_compatible(d, model)
        except ValueError as err:
            raise ConfigError(f"--reuse {reuse}: {err}; reuse directions only between runs of one architecture") \
                from None
    if directions == "pca" and reused is None:
        n_ckpt = sum(e <= epoch for e in run.checkpoints)
        if n_ckpt < dim + 1:
            raise ConfigError(f"--directions pca with --dim {dim} needs at least {dim + 1} checkpoints up to epoch "
                              f"{epoch}, run {run.path} has {n_ckpt}; train with --set checkpoint_every=1")
    _check_can_save(run, model, [len(c) for c in reused.coords] if reused is not None else [grid] * dim)
    data = _load_split(run, split) if evaluation is None else None

    # ---- directions and grid
    meta = {"run": str(run.path.resolve()), "run_name": run.name, "epoch": epoch, "split": split,
            "scope": scope, "include_1d": include_1d, "seed": seed, "method": run.config.method,
            "dataset": run.config.dataset}
    if reused is not None:
        d_list, coords = reused.directions, reused.coords
        kind = f"reuse:{reused.meta.get('directions', '?')}"
        meta.update(directions=kind, reused_from=str(Path(reuse).resolve()),
                    grid=reused.meta.get("grid"), span=reused.meta.get("span"))
    elif directions == "random":
        d_list = dirs.random_directions(model, dim, seed, path_of_scope, include_1d, orthogonal)
        coords = [make_grid(grid, span) for _ in range(dim)]
        meta.update(directions="random", normalization="filter", orthogonal=orthogonal, grid=grid, span=span)
    elif directions == "between":
        end = other.load_model(to_epoch, factory=model_factory)
        d_list = [dirs.between(model, end, scope_names)]
        if dim == 2:
            second = dirs.random_direction(model, seed, 1, path_of_scope, include_1d)
            d_list.append(dirs.orthogonalize(second, d_list[0]) if orthogonal else second)
        coords = [make_grid(grid, span) for _ in range(dim)]
        meta.update(directions="between", to=str(other.path.resolve()), to_epoch=to_epoch,
                    orthogonal=orthogonal, grid=grid, span=span)
    else:  # pca
        states = {e: run.load_checkpoint(e)["model"] for e in run.checkpoints if e <= epoch}
        try:
            pca = dirs.pca_directions(states, scope_names, dim, final=epoch, include_1d=include_1d)
        except ValueError as err:
            raise ConfigError(f"--directions pca: {err}") from None
        d_list = pca.directions
        extent = [float(np.abs(pca.projection[:, k]).max()) or 1.0 for k in range(dim)]
        coords = [make_grid(grid, span) * r for r in extent]
        meta.update(directions="pca", grid=grid, span=span, extent=extent,
                    explained_variance_ratio=pca.explained_variance_ratio.tolist(),
                    trajectory_epochs=pca.epochs, trajectory=pca.projection.tolist())
    if name is None:
        name = f"{meta['directions'].replace(':', '-')}-{dim if reused is None else reused.dim}d-{split}-e{epoch}"
        if directions == "random" or (directions == "between" and dim == 2):
            name += f"-s{seed}"
        if directions == "between" and reused is None:
            name += f"-to-{other.name}-e{to_epoch}"
        if scope != "model":
            name += f"-{scope}"
    name = _check_name(name)
    meta["name"] = name
    path = run.path / LANDSCAPES / name
    faults.refuse_symlinks(run.path, path)
    return compute_surface(model, data, d_list, coords, per_modality=per_modality, n_samples=n_samples,
                           subset_seed=subset_seed, batch_size=batch_size, path=path, flush_every=flush_every,
                           workers=workers, threads=threads, meta=meta,
                           autocast_dtype=torch.bfloat16 if bf16 else None, overwrite=overwrite, progress=progress,
                           evaluation=evaluation)


SAVE_MARGIN = 2 ** 16        # bytes of meta.json, headers and slack on top of a surface's arrays


def _check_can_save(run: Run, model, shape) -> None:
    """Before the data is loaded and any point computed: ``<run>/landscapes`` is inside the run (no
    symlink on the way), writable, and the disk has room for a surface of ``shape`` (its directions at
    most one copy of the parameters each, its value grids; twice: a new file is written beside the old)."""
    n_points = int(np.prod(shape))
    n_metrics = 2 * (1 + 2 * len(run.modalities))
    arrays = len(shape) * sum(p.numel() * p.element_size() for p in model.parameters()) + \
        n_points * (8 * n_metrics + 1)
    faults.check_writable(run.path, run.path / LANDSCAPES, 2 * arrays + SAVE_MARGIN, what="the landscape")


def _epochs_arg(run: Run, epochs) -> list[int]:
    if epochs is None:
        return [_check_epoch(run, None)]
    if epochs == "all":
        return sorted(run.checkpoints)
    if isinstance(epochs, (int, np.integer)):
        return [_check_epoch(run, int(epochs))]
    return [_check_epoch(run, int(e)) for e in epochs]


def sharpness_for_run(run, *, epochs=None, rho: float = 0.05, topk: int = 1, probes: int = 32,
                      split: str = "test", n_samples: int = 512, subset_seed: int = 0, seed: int = 0,
                      scopes: Sequence[str] | None = None, max_iter: int = 100, tol: float = 1e-3,
                      write: bool = True, progress: Callable[[str], None] | None = None,
                      model_factory=None, forward=None, batches=None) -> pd.DataFrame:
    """Sharpness of ``run`` at ``epochs`` (None: last; an int; a list; ``"all"``) for each scope.

    A run logged from your own model (msam_lab.RunLogger) needs ``model_factory``, ``forward`` and
    ``batches`` (as ``landscape_for_run``); its scopes are ``model`` and the modalities whose encoder
    paths RunLogger(scopes=...) recorded, or any submodule path.

    ``split="train"`` is the train split without the run's validation hold-out: the samples the
    run trained on (as ``sharpness_every`` measures during training).

    Rows are appended to ``<run>/sharpness.csv`` (a row with the same epoch,
    scope and settings is replaced).

    Under torchrun the (epoch, scope) measurements are dealt out round-robin over the ranks (each
    draws from its own seeded generators, so where it runs does not change it); every rank returns
    all rows, in the order one process makes them, and rank 0 alone writes them.
    """
    from msam_lab.landscape.sharpness import sharpness

    if not rho >= 0:
        raise ConfigError(f"--rho must be >= 0, got {rho}")
    if topk < 0:
        raise ConfigError(f"--topk must be >= 0, got {topk}")
    if probes < 0:
        raise ConfigError(f"--probes must be >= 0, got {probes}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"--n-samples must be >= 1, got {n_samples}")
    if max_iter < 1:
        raise ConfigError(f"--max-iter must be >= 1, got {max_iter}")
    run = open_run(run)
    read_table(run.path / SHARPNESS_CSV)      # a damaged table is named now, not after the measuring
    if write:                                 # and a table that could not be written: before measuring
        table = run.path / SHARPNESS_CSV
        faults.refuse_symlinks(run.path, table)
        faults.check_writable(run.path, run.path, 2 * (table.stat().st_size if table.is_file() else 0) +
                              SAVE_MARGIN, what=SHARPNESS_CSV)
    evaluation = _evaluation(run, model_factory, forward, batches)
    epoch_list = _epochs_arg(run, epochs)
    model = run.build_model(model_factory)
    if scopes is None:
        scopes = ["model", *(run.model_spec.get("scopes", {}) if run.logged else model.modalities)]
    scopes = list(scopes)
    for s in scopes:
        _check_scope(model, _scope_path(run, s))
    if evaluation is None:
        data, index = eval_subset(_load_split(run, split, holdout=True), n_samples, subset_seed)
    else:
        data, index = None, np.arange(evaluation.n)
    tasks = [(e, s) for e in epoch_list for s in scopes]
    world, rank = distributed.world_size(), distributed.rank()
    mine = []                     # (position in tasks, row): this rank's share, every world-th task
    loaded = None
    for t in range(rank, len(tasks), world):
        e, s = tasks[t]
        if loaded != e:
            model, loaded = run.load_model(e, factory=model_factory), e
        if progress:
            progress(f"epoch {e}, {s}")
        row = sharpness(model, data, _scope_path(run, s), rho=rho, topk=topk, probes=probes, seed=seed,
                        max_iter=max_iter, tol=tol, evaluation=evaluation)
        row["scope"] = s
        mine.append((t, {"epoch": e, "split": split, "n_samples": len(index), "subset_seed": subset_seed,
                         "seed": seed, "topk": topk, "probes": probes, **row}))
    rows = [row for _, row in sorted((p for part in distributed.gather_objects(mine) for p in part),
                                     key=lambda p: p[0])]
    if write and distributed.is_main():
        replace_rows(run.path / SHARPNESS_CSV, rows, timeline.KEYS)
    distributed.barrier()         # the file is whole before any rank returns (and reads it)
    return pd.DataFrame(rows)


def timeline_for_run(run, *, epochs="all", n_samples: int | None = None, probes: int | None = None,
                     split: str | None = None, topk: int | None = None, rho: float | None = None,
                     seed: int | None = None, max_iter: int | None = None, write: bool = True,
                     progress: Callable[[str], None] | None = None,
                     model_factory=None, forward=None, batches=None) -> pd.DataFrame:
    """``sharpness_every``'s rows after the fact: ``sharpness_for_run`` at every checkpoint epoch.

    Same scopes (each encoder, ``fusion``) and settings as the run's config
    (``sharpness_samples``, ``sharpness_probes``; split, probe seed, ρ, topk: msam_lab.analysis.sharpness_timeline),
    so at the epochs measured during training the rows are the same; an argument given replaces
    its setting. A run logged from your own model: as ``sharpness_for_run``, for the encoder scopes
    RunLogger recorded (the whole model when it recorded none).
    """
    run = open_run(run)
    cfg = run.config
    if run.logged:
        scopes = list(run.model_spec.get("scopes", {})) or ["model"]
    else:
        scopes = timeline.scopes(run.modalities)
    if n_samples is None:
        n_samples = cfg.sharpness_samples or None      # 0: the whole split
    return sharpness_for_run(
        run, epochs=epochs, scopes=scopes, n_samples=n_samples,
        probes=cfg.sharpness_probes if probes is None else probes,
        split=timeline.SPLIT if split is None else split, topk=timeline.TOPK if topk is None else topk,
        rho=timeline.RHO if rho is None else rho, seed=timeline.SEED if seed is None else seed,
        subset_seed=timeline.SUBSET_SEED, max_iter=timeline.MAX_ITER if max_iter is None else max_iter,
        tol=timeline.TOL, write=write, progress=progress,
        model_factory=model_factory, forward=forward, batches=batches)
