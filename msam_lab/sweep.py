"""Multi-seed sweeps: train a grid of runs (method × seed, × rho for SAM-type methods), skip the
finished ones, and summarise each cell as mean ± std over seeds.

    from msam_lab.sweep import run_sweep
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
another, ``"local"`` and ``"slurm"`` one submitit job per cell (msam_lab.launch, docs/scale.md).
"""
from __future__ import annotations

import json
import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic
from . import config as config_mod
from .config import Config, ConfigError, stored_values
from .datasets import load_dataset
from .methods import method_class, method_names
from .methods.sam import SAMMethod
from .runs import CONFIG, check_output_dir, is_run, is_run_dir, load_run, read_json, run_state, summary_number
from .selection import BEST, LAST, labelled, selection_summary
from .trainer import train

DEFAULT_METHODS = ("joint", "sam", "msam", "ogm_ge", "agm", "cggm", "reconboost")
DEFAULT_SEEDS = (0, 1, 2)
RUNS_FILE = "sweep.csv"
SUMMARY_FILE = "sweep_summary.csv"


def uses_rho(method: str) -> bool:
    """True for methods whose update depends on ρ (SAM and everything built on it)."""
    return issubclass(method_class(method), SAMMethod)


def run_dir(out, method: str, seed: int, rho: float | None = None) -> Path:
    path = Path(out) / method
    if rho is not None:
        path = path / f"rho{rho:g}"
    return path / f"seed{seed}"


class SweepError(RuntimeError):
    """Cells of a launched sweep that did not finish: ``failed`` (one line each) and ``table``, the
    summary of those that did (already written to sweep_summary.csv; empty if none did)."""

    def __init__(self, failed: list[str], table: pd.DataFrame):
        super().__init__(f"{len(failed)} cell(s) did not finish: " + "; ".join(failed))
        self.failed, self.table = failed, table


@dataclass
class Cell:
    method: str
    seed: int
    rho: float | None
    config: Config
    path: Path


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
    known = method_names()       # built-ins and plug-ins
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r} in the sweep; choose from: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods lists a method twice: {', '.join(methods)}")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds lists a seed twice: {list(seeds)}")
    if rhos is not None:
        if (not isinstance(rhos, list) or not rhos or not all(
                isinstance(r, numbers.Real) and not isinstance(r, bool) and math.isfinite(r) and r >= 0
                for r in rhos)):
            raise ConfigError(f"rhos must be None or a non-empty list of numbers >= 0, got {rhos!r}")
        if len(set(rhos)) != len(rhos):
            raise ConfigError(f"rhos lists a value twice: {list(rhos)}")


def _normalised(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _check_existing(cell: Cell, allow_running: bool = False) -> None:
    """A run at the cell's path (finished, or interrupted/failed: to be resumed) must hold the same
    config; a run still training there is an error unless ``allow_running`` (a launcher that waits
    for it), anything else always is."""
    if not is_run_dir(cell.path):
        check_output_dir(cell.path)
        return
    state = run_state(cell.path)
    if state == "running" and not allow_running:
        raise ConfigError(f"{cell.path} is being trained by another process; wait for it or use another --out")
    # fields added to Config after that run was made count as what that run did (config.stored_values)
    stored = {**_normalised(Config().to_dict()), **stored_values(read_json(cell.path / CONFIG))}
    wanted = _normalised(cell.config.to_dict())
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            raise ConfigError(f"{cell.path} holds a {state} run with {key}={stored.get(key)!r}, but the sweep "
                              f"asks for {key}={wanted.get(key)!r}; use another --out or delete that run")


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


def plan_sweep(methods, seeds, rhos=None, dataset=None, out="runs/sweep", overrides=(),
               config=None, allow_running=False) -> list[Cell]:
    """Resolve and check every cell of the grid (raises ConfigError); trains nothing.
    ``allow_running``: a cell whose run is still training passes (see ``_check_existing``)."""
    methods, seeds = _as_list(methods), _as_list(seeds)
    rhos = None if rhos is None else _as_list(rhos)
    _check_lists(methods, seeds, rhos)
    base = ([f"dataset={dataset}"] if dataset else []) + list(overrides)
    cells = []
    for method in methods:
        for rho in ([float(r) for r in rhos] if rhos is not None and uses_rho(method) else [None]):
            for seed in seeds:
                axes = [f"method={method}", f"seed={int(seed)}"] + ([f"rho={rho!r}"] if rho is not None else [])
                cfg = config_mod.resolve(config, base + axes)
                cells.append(Cell(method, int(seed), rho, cfg, run_dir(out, method, int(seed), rho)))
    _check_modalities(cells)
    for cell in cells:
        _check_existing(cell, allow_running)
    return cells


def describe(cell: Cell) -> str:
    """``msam seed 1 rho 0.1``: the cell as progress and error lines name it."""
    return f"{cell.method} seed {cell.seed}" + (f" rho {cell.rho:g}" if cell.rho is not None else "")


def cell_action(path) -> str:
    """What bringing the run at ``path`` to finished takes: ``reuse`` (finished), ``resume``
    (interrupted or failed), ``train`` (nothing there yet), or ``running`` (another trainer holds it)."""
    if is_run(path):
        return "reuse"
    if not is_run_dir(path):
        return "train"
    return "running" if run_state(path) == "running" else "resume"


def complete_cell(cell: Cell, quiet: bool = False, label: str | None = None) -> str:
    """Bring one cell's run to finished: reuse a finished run, resume an interrupted or failed one
    from its last resume checkpoint, or train it. Every launcher (inline, and each submitit job)
    calls this, so the decision lives here only. Returns the action taken (``cell_action``)."""
    label = label or describe(cell)
    action = cell_action(cell.path)
    if action == "reuse":
        if not quiet:
            print(f"{label}: finished run found at {cell.path}, reusing it")
    elif action == "resume":           # interrupted or failed: continue it, don't start again
        if not quiet:
            print(f"{label}: {run_state(cell.path)} run found at {cell.path}, resuming it")
        train(resume=cell.path, quiet=quiet)
    elif action == "train":
        if not quiet:
            print(f"{label}: training {cell.config.epochs} epochs on {cell.config.dataset} -> {cell.path}")
        train(cell.config, out=cell.path, quiet=quiet)
    else:                              # the trainer's lock says why (pid, host)
        raise ConfigError(f"{cell.path} is being trained by another process; wait for it or use another --out")
    return action


AT_BEST, AT_LAST = "_at_best", "_last"     # column suffixes: test numbers at the best-val / last epoch


def _at_label(col: str) -> str:
    """``acc_m0_at_best`` -> ``acc_m0 (best val)``, ``tau_last`` -> ``tau (last)`` (for printed headers)."""
    if col.endswith(AT_BEST):
        return labelled(col[:-len(AT_BEST)], BEST)
    if col.endswith(AT_LAST):
        return labelled(col[:-len(AT_LAST)], LAST)
    return col


def _unlabelled(col: str) -> bool:
    """A test metric of a table written before model selection: ``acc``, ``acc_<m>``, ``acc_only_<m>``, ``tau``."""
    return (col in ("acc", "tau") or col.startswith("acc_")) and not col.endswith((AT_BEST, AT_LAST))


def upgrade_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """A per-run table (``sweep.csv``) from before model selection, its last-epoch columns labelled:
    ``acc`` -> ``acc_last``, ``acc_<m>`` -> ``acc_<m>_last``, ``tau`` -> ``tau_last``. New tables pass as they are."""
    if any(c.endswith(AT_LAST) for c in runs.columns):
        return runs
    return runs.rename(columns={c: c + AT_LAST for c in runs.columns if _unlabelled(c)})


def upgrade_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The same for a summary table (``sweep_summary.csv``): ``acc_mean`` -> ``acc_last_mean``, … ."""
    if any(c.endswith((AT_LAST + "_mean", AT_LAST + "_std")) for c in table.columns):
        return table
    renamed = {}
    for c in table.columns:
        for stat in ("_mean", "_std"):
            if c.endswith(stat) and _unlabelled(c[:-len(stat)]):
                renamed[c] = c[:-len(stat)] + AT_LAST + stat
    return table.rename(columns=renamed)


def _num(value) -> float:
    return np.nan if value is None else value


def _row(cell: Cell) -> dict:
    """One run of the grid: test numbers at the best-validation epoch (``<metric>_at_best``; NaN for a run
    without validation) and at the last epoch (``<metric>_last``), ``best_epoch``, ``best_val_acc``."""
    run = load_run(cell.path)
    sel = selection_summary(run.epochs)
    row = {"method": cell.method, "rho": cell.config.rho if uses_rho(cell.method) else np.nan,
           "seed": cell.seed, "best_epoch": _num(sel["best_epoch"]), "best_val_acc": _num(sel["best_val_acc"])}
    keys = [("acc", "test_acc")] + [(f"acc_{m}", f"test_acc_{m}") for m in run.modalities] + \
        [(f"acc_only_{m}", f"test_acc_only_{m}") for m in run.modalities] + [("tau", "tau")]
    for col, key in keys:
        row[col + AT_BEST] = _num(sel.get(key + AT_BEST))
        row[col + AT_LAST] = _num(sel.get(key + AT_LAST, summary_number(run, key, np.nan)))
    row.update({"switches": _num(summary_number(run, "dominance_switches")),
                "wall_s": _num(summary_number(run, "wall_time")), "run": str(cell.path)})
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
        shown[_at_label(col)] = ["-" if pd.isna(m) else f"{m:.{digits}f} ± {s:.{digits}f}" if not pd.isna(s)
                                 else f"{m:.{digits}f}"
                                 for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"])]
    return shown.to_string(index=False)


def run_sweep(methods, seeds, rhos=None, dataset=None, out="runs/sweep", overrides=(), quiet=False,
              config=None, launcher="inline", slurm=(), max_parallel=None) -> pd.DataFrame:
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
    ``max_parallel`` jobs at once; msam_lab.launch). A launched sweep writes the tables of the cells
    that finished, then raises ``SweepError`` naming each cell that did not.
    """
    if launcher == "inline":
        if slurm or max_parallel is not None:
            raise ConfigError("slurm options and max_parallel are for launcher='local' or 'slurm'; drop them "
                              "or pick a launcher")
        cells = plan_sweep(methods, seeds, rhos, dataset, out, overrides, config)
        for i, cell in enumerate(cells, 1):
            complete_cell(cell, quiet, label=f"[{i}/{len(cells)}] {describe(cell)}")
        failed = []
    else:
        from . import launch     # submitit is imported only when a sweep is launched

        plan = launch.plan_launch(launcher, slurm, max_parallel)        # bad options fail before the grid
        cells = plan_sweep(methods, seeds, rhos, dataset, out, overrides, config, allow_running=True)
        failed = launch.run_cells(cells, plan, out, quiet=quiet)
    table = _write_tables([cell for cell in cells if is_run(cell.path)], out)
    if failed:
        raise SweepError(failed, table)
    return table


def _write_tables(cells: list[Cell], out) -> pd.DataFrame:
    """sweep.csv and sweep_summary.csv over the finished ``cells``; the summary is returned."""
    if not cells:                   # nothing finished (every job failed): no tables to write
        return pd.DataFrame()
    runs = pd.DataFrame([_row(cell) for cell in cells])
    table = summarise(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # replaced whole: a full disk or a kill leaves the previous tables, never half of one
    atomic.write_text(out / RUNS_FILE, runs.to_csv(index=False))
    atomic.write_text(out / SUMMARY_FILE, table.to_csv(index=False))
    return table


# -- command line ------------------------------------------------------------------
def _split(text: str, what: str, convert, example: str) -> list:
    from .cli import UsageError

    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise UsageError(f"{what} expects a comma-separated list, e.g. {example}; got {text!r}")
    try:
        values = [convert(t) for t in items]
    except ValueError:
        raise UsageError(f"{what} expects a comma-separated list, e.g. {example}; got {text!r}") from None
    if len(set(values)) != len(values):
        raise UsageError(f"{what} lists a value twice: {text!r}")
    return values


def parse_seeds(text: str) -> list[int]:
    from .cli import UsageError

    seeds = _split(text, "--seeds", int, "0,1,2")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be integers >= 0, got {text!r}")
    return seeds


def parse_rhos(text: str) -> list[float]:
    from .cli import UsageError

    rhos = _split(text, "--rho", float, "0.05,0.1")
    if any(not math.isfinite(r) or r < 0 for r in rhos):
        raise UsageError(f"--rho values must be numbers >= 0, got {text!r}")
    return rhos


def cmd_sweep(args) -> int:
    from .cli import UsageError

    methods = _split(args.methods, "--methods", str, "joint,msam")
    seeds = parse_seeds(args.seeds)
    rhos = parse_rhos(args.rhos) if args.rhos is not None else None
    overrides = ([f"epochs={args.epochs}"] if args.epochs is not None else []) + list(args.overrides)
    if args.slurm and args.launcher != "slurm":
        raise UsageError(f"--slurm options are for --launcher slurm (got --launcher {args.launcher}); "
                         f"add --launcher slurm or drop them")
    if args.max_parallel is not None and args.launcher == "inline":
        raise UsageError("--max-parallel is for --launcher local or slurm (inline runs one cell at a time)")
    try:
        table = run_sweep(methods, seeds, rhos, dataset=args.dataset, out=args.out, overrides=overrides,
                          quiet=args.quiet, config=args.config, launcher=args.launcher, slurm=args.slurm,
                          max_parallel=args.max_parallel)
    except SweepError as err:               # a launched sweep's failed cells: tables of the rest, one line each
        if not err.table.empty:
            print()
            print(format_sweep(err.table))
            print(f"\nper-run table: {Path(args.out) / RUNS_FILE}; summary: {Path(args.out) / SUMMARY_FILE}")
        for line in err.failed:
            print(f"msam-lab: error: {line}", file=sys.stderr)
        return 1
    print()
    print(format_sweep(table))
    print(f"\nper-run table: {Path(args.out) / RUNS_FILE}; summary: {Path(args.out) / SUMMARY_FILE}")
    return 0


def add_parser(subparsers) -> None:
    """Add the ``sweep`` subcommand to ``msam-lab``'s subparsers."""
    p = subparsers.add_parser("sweep", help="train methods x seeds (x rho), skip finished runs, "
                                            "table of mean ± std over seeds")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                   help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--rho", dest="rhos", help="comma-separated radii for the methods that use rho "
                                              "(sam, msam), e.g. 0.05,0.1; default: the config's rho")
    p.add_argument("--dataset", help="dataset name (default: the config's)")
    p.add_argument("--epochs", type=int, help="epochs per run")
    p.add_argument("--config", help="YAML file of config fields applied to every run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field for every run, e.g. --set batch_size=32")
    p.add_argument("--out", default="runs/sweep", help="folder of the sweep (default runs/sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--launcher", choices=("inline", "local", "slurm"), default="inline",
                   help="where the cells run: inline (here, one after another; default), local (one "
                        "submitit process per cell), slurm (one SLURM job per cell); docs/scale.md")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit/SLURM option for every job, e.g. --slurm partition=gpu "
                        "--slurm timeout_min=240 --slurm gpus_per_node=1 (repeatable)")
    p.add_argument("--max-parallel", type=int, metavar="N",
                   help="jobs at once (local: default the CPU count; slurm: the job array's parallelism)")
    p.set_defaults(func=cmd_sweep)
