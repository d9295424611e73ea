"""Multi-seed sweeps: train a grid of runs (method × seed, × rho for SAM-type methods), skip the
finished ones, and summarise each cell as mean ± std over seeds.

    from msam_lab.experiments.sweep import run_sweep
    table = run_sweep(["joint", "msam", "ogm_ge"], seeds=[0, 1, 2], rhos=[0.05, 0.1],
                      dataset="synthetic", overrides=["epochs=5"], out="runs/sweep")

Layout under ``out``: one run directory per cell, ``<method>/seed<S>`` or, for methods that
use ρ (SAM and its subclasses) when ``rhos`` is given, ``<method>/rho<R>/seed<S>``;
``sweep.csv`` holds one row per run and ``sweep_summary.csv`` the returned table. Test numbers are
reported at the epoch of best validation accuracy (``acc_at_best``, …) and at the last epoch
(``acc_last``, …); docs/runs.md, "Model selection".

Every config is resolved and checked (including against the dataset's modalities, and
against any finished run already at its path) before the first run starts, so a typo fails
in a second, not after hours. A finished run (``runs.is_run``) whose stored config matches is
reused, never retrained; an interrupted or failed one is resumed from its last resume checkpoint:
an interrupted sweep resumes by calling it again. That decision is ``complete_cell``'s, the one
function every launcher calls: ``launcher="inline"`` (default) runs the cells here one after
another, ``"local"`` and ``"slurm"`` one submitit job per cell (msam_lab.experiments.launch, docs/scale.md).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from msam_lab.config import ConfigError
from msam_lab.datasets import load_dataset
from msam_lab.experiments.cells import Cell, check_existing, complete_cell, describe, run_dir, uses_rho
from msam_lab.methods import method_class, method_names
from msam_lab.runs import atomic, migrate
from msam_lab.runs.reader import is_run, load_run, summary_number
from msam_lab.runs.selection import BEST, LAST, labelled, selection_summary
from msam_lab.training import setup

DEFAULT_METHODS = ("joint", "sam", "msam", "ogm_ge", "agm", "cggm", "reconboost")  # msam-lab sweep shows them too
DEFAULT_SEEDS = (0, 1, 2)
RUNS_FILE = "sweep.csv"
SUMMARY_FILE = "sweep_summary.csv"


class SweepError(RuntimeError):
    """Cells of a launched sweep that did not finish: ``failed`` (one line each) and ``table``, the
    summary of those that did (already written to sweep_summary.csv; empty if none did)."""

    def __init__(self, failed: list[str], table: pd.DataFrame):
        super().__init__(f"{len(failed)} cell(s) did not finish: " + "; ".join(failed))
        self.failed, self.table = failed, table


def _as_list(value):
    """A list of the items of ``value``; strings and non-iterables are returned as they are (and rejected)."""
    if isinstance(value, (str, bytes)):
        return value
    try:
        return list(value)
    except TypeError:
        return value


def _check_lists(methods, seeds, rhos):
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise ConfigError(f"methods must be a non-empty list of method names, got {methods!r}")
    known = method_names()  # built-ins and plug-ins
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r} in the sweep; choose from: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods lists a method twice: {', '.join(methods)}")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds lists a seed twice: {list(seeds)}")
    if rhos is not None:
        if (
            not isinstance(rhos, list)
            or not rhos
            or not all(
                isinstance(r, numbers.Real) and not isinstance(r, bool) and math.isfinite(r) and r >= 0 for r in rhos
            )
        ):
            raise ConfigError(f"rhos must be None or a non-empty list of numbers >= 0, got {rhos!r}")
        if len(set(rhos)) != len(rhos):
            raise ConfigError(f"rhos lists a value twice: {list(rhos)}")


def _check_modalities(cells: list[Cell]) -> None:
    """Let each method check the dataset's modalities (unimodal's ``modality``, ≥ 2 for balancers)."""
    cache: dict[str, tuple] = {}
    for cell in cells:
        check = method_class(cell.method).validate_modalities
        cfg = cell.config
        key = json.dumps([cfg.dataset, cfg.data], sort_keys=True, default=str)
        if key not in cache:
            try:
                cache[key] = load_dataset(cfg.dataset, **cfg.data).modalities
            except (ValueError, OSError) as err:
                raise ConfigError(str(err)) from None
        check(cfg, cache[key])


def plan_sweep(
    methods, seeds, rhos=None, dataset=None, out="runs/sweep", overrides=(), config=None, allow_running=False
) -> list[Cell]:
    """Resolve and check every cell of the grid (raises ConfigError); trains nothing.
    ``allow_running``: a cell whose run is still training passes (see ``cells.check_existing``)."""
    methods, seeds = _as_list(methods), _as_list(seeds)
    rhos = None if rhos is None else _as_list(rhos)
    _check_lists(methods, seeds, rhos)
    base = ([f"dataset={dataset}"] if dataset else []) + list(overrides)
    cells = []
    for method in methods:
        for rho in [float(r) for r in rhos] if rhos is not None and uses_rho(method) else [None]:
            for seed in seeds:
                axes = [f"method={method}", f"seed={int(seed)}"] + ([f"rho={rho!r}"] if rho is not None else [])
                cfg = setup.resolve(config, base + axes)
                cells.append(Cell(method, int(seed), rho, cfg, run_dir(out, method, int(seed), rho)))
    _check_modalities(cells)
    for cell in cells:
        check_existing(cell, allow_running)
    return cells


AT_BEST, AT_LAST = "_at_best", migrate.AT_LAST  # column suffixes: test numbers at the best-val / last epoch


def _at_label(col: str) -> str:
    """``acc_m0_at_best`` -> ``acc_m0 (best val)``, ``tau_last`` -> ``tau (last)`` (for printed headers)."""
    if col.endswith(AT_BEST):
        return labelled(col[: -len(AT_BEST)], BEST)
    if col.endswith(AT_LAST):
        return labelled(col[: -len(AT_LAST)], LAST)
    return col


# tables from before model selection are read through runs.migrate (their last-epoch columns labelled)
upgrade_runs = migrate.sweep_runs
upgrade_summary = migrate.sweep_summary


def _num(value) -> float:
    return np.nan if value is None else value


def _row(cell: Cell) -> dict:
    """One run of the grid: test numbers at the best-validation epoch (``<metric>_at_best``; NaN for a run
    without validation) and at the last epoch (``<metric>_last``), ``best_epoch``, ``best_val_acc``."""
    run = load_run(cell.path)
    sel = selection_summary(run.epochs)
    row = {
        "method": cell.method,
        "rho": cell.config.rho if uses_rho(cell.method) else np.nan,
        "seed": cell.seed,
        "best_epoch": _num(sel["best_epoch"]),
        "best_val_acc": _num(sel["best_val_acc"]),
    }
    keys = (
        [("acc", "test_acc")]
        + [(f"acc_{m}", f"test_acc_{m}") for m in run.modalities]
        + [(f"acc_only_{m}", f"test_acc_only_{m}") for m in run.modalities]
        + [("tau", "tau")]
    )
    for col, key in keys:
        row[col + AT_BEST] = _num(sel.get(key + AT_BEST))
        row[col + AT_LAST] = _num(sel.get(key + AT_LAST, summary_number(run, key, np.nan)))
    row.update(
        {
            "switches": _num(summary_number(run, "dominance_switches")),
            "wall_s": _num(summary_number(run, "wall_time")),
            "run": str(cell.path),
        }
    )
    return row


def _summarised(col: str) -> bool:
    return col.startswith(("acc_", "tau_")) or col in ("best_epoch", "best_val_acc")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds per (method, rho) of best_epoch, best_val_acc and the test
    metrics at the best-validation and at the last epoch: ``acc_at_best``/``acc_last``, ``acc_<m>_…``,
    ``acc_only_<m>_…``, ``tau_…`` (columns ``<metric>_mean``, ``<metric>_std``).

    A mean over a cell where some seed has NaN (e.g. no validation: no best epoch) is NaN, not a mean
    of the others. A per-run table from before model selection (``acc``, ``tau``, …) is read as
    last-epoch numbers (``upgrade_runs``).
    """
    runs = upgrade_runs(runs)
    metrics = [c for c in runs.columns if _summarised(c)]
    rows = []
    for (method, rho), group in runs.groupby(["method", "rho"], dropna=False, sort=False):
        row = {"method": method, "rho": rho, "n_seeds": len(group)}
        for col in metrics:
            values = group[col].astype(float)
            row[f"{col}_mean"] = values.mean(skipna=False)
            row[f"{col}_std"] = values.std(ddof=1, skipna=False) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def format_sweep(table: pd.DataFrame) -> str:
    """The summary as text, each metric as ``mean ± std``, headers labelled ``(best val)`` / ``(last)``;
    a metric a cell lacks (no validation: nothing at the best epoch) shows as ``-``."""
    table = upgrade_summary(table)
    shown = table[["method", "rho", "n_seeds"]].copy()
    shown["rho"] = [("" if pd.isna(r) else f"{r:g}") for r in shown["rho"]]
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean")]
    for col in metrics:
        digits = 1 if col == "best_epoch" else 3
        shown[_at_label(col)] = [
            "-" if pd.isna(m) else f"{m:.{digits}f} ± {s:.{digits}f}" if not pd.isna(s) else f"{m:.{digits}f}"
            for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"])
        ]
    return shown.to_string(index=False)


def run_sweep(
    methods,
    seeds,
    rhos=None,
    dataset=None,
    out="runs/sweep",
    overrides=(),
    quiet=False,
    config=None,
    launcher="inline",
    slurm=(),
    max_parallel=None,
) -> pd.DataFrame:
    """Train every (method, seed[, rho]) cell not finished yet; return mean ± std over seeds.

    ``rhos`` applies to methods that use ρ (sam, msam) only; the others get one run per seed.
    ``overrides`` are ``key=value`` strings for every run (e.g. ``"epochs=5"``), ``config`` an
    optional base config (Config, dict or YAML path). Writes ``<out>/sweep.csv`` (one row per
    run) and ``<out>/sweep_summary.csv`` (the returned table: method, rho, n_seeds and
    ``<metric>_mean``/``<metric>_std`` for best_epoch, best_val_acc and acc, acc_<m>, acc_only_<m>,
    tau each at the best-validation epoch (``_at_best``) and at the last epoch (``_last``); see
    ``summarise`` and docs/runs.md, "Model selection").

    ``launcher``: ``"inline"`` (here, one cell after another; a failing run stops the sweep),
    ``"local"`` or ``"slurm"`` (one submitit job per cell, ``slurm`` its ``KEY=VALUE`` options,
    ``max_parallel`` jobs at once; msam_lab.experiments.launch). A launched sweep writes the tables of the cells
    that finished, then raises ``SweepError`` naming each cell that did not.
    """
    if launcher == "inline":
        if slurm or max_parallel is not None:
            raise ConfigError(
                "slurm options and max_parallel are for launcher='local' or 'slurm'; drop them or pick a launcher"
            )
        cells = plan_sweep(methods, seeds, rhos, dataset, out, overrides, config)
        for i, cell in enumerate(cells, 1):
            complete_cell(cell, quiet, label=f"[{i}/{len(cells)}] {describe(cell)}")
        failed = []
    else:
        # submitit (and its pickling machinery) only when a sweep is launched
        from msam_lab.experiments import launch  # noqa: PLC0415 - submitit loads only when a sweep is launched

        plan = launch.plan_launch(launcher, slurm, max_parallel)  # bad options fail before the grid
        cells = plan_sweep(methods, seeds, rhos, dataset, out, overrides, config, allow_running=True)
        failed = launch.run_cells(cells, plan, out, quiet=quiet)
    table = _write_tables([cell for cell in cells if is_run(cell.path)], out)
    if failed:
        raise SweepError(failed, table)
    return table


def finished_sweep(
    methods, seeds, rhos=None, dataset=None, out="runs/sweep", overrides=(), config=None
) -> pd.DataFrame:
    """``run_sweep``'s tables for a grid whose every run is finished; trains nothing (``msam-lab sweep
    --table-only``). A ConfigError naming the first unfinished run otherwise."""
    cells = plan_sweep(methods, seeds, rhos, dataset, out, overrides, config)
    unfinished = [cell for cell in cells if not is_run(cell.path)]
    if unfinished:
        raise ConfigError(
            f"{len(unfinished)} of the {len(cells)} runs of this sweep are not finished (first: {unfinished[0].path}); "
            "drop --table-only to train them"
        )
    return _write_tables(cells, out)


def _write_tables(cells: list[Cell], out) -> pd.DataFrame:
    """sweep.csv and sweep_summary.csv over the finished ``cells``; the summary is returned."""
    if not cells:  # nothing finished (every job failed): no tables to write
        return pd.DataFrame()
    runs = pd.DataFrame([_row(cell) for cell in cells])
    table = summarise(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # replaced whole: a full disk or a kill leaves the previous tables, never half of one
    atomic.write_text(out / RUNS_FILE, runs.to_csv(index=False))
    atomic.write_text(out / SUMMARY_FILE, table.to_csv(index=False))
    return table
