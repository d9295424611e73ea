"""``msam-lab plot``: the notebooks' figures of runs, from the command line.

    msam-lab plot runs/demo/msam --what dominance --out dominance.png     # matplotlib
    msam-lab plot runs/demo --what curves --out curves.html               # plotly, one standalone page
    msam-lab plot runs/demo/msam --what landscape --name pca-2d --out surface.html

One run gives its own figure; several runs (or a folder of runs) the comparison the notebooks draw
(dominance: each run's Shapley shares per epoch; landscape: the surfaces side by side on one scale).
The file appears whole or not at all (written beside it, then renamed). Nothing heavy at module
level: torch, pandas, matplotlib and plotly load when the command runs, not for ``--help``.
"""

from __future__ import annotations

import os
from pathlib import Path

from msam_lab.errors import ConfigError, UsageError

KINDS = {
    "curves": "training and test loss per step and per epoch",
    "accuracy": "fused and per-modality accuracy per epoch",
    "dominance": "Shapley shares and the dominant modality per step (several runs: per epoch)",
    "tau": "overfitting gap τ per epoch",
    "sharpness": "Hessian sharpness per encoder (RUN/sharpness.csv: msam-lab sharpness RUN)",
    "landscape": "a saved loss surface (RUN/landscapes/NAME: msam-lab landscape RUN)",
}
FORMATS = {".png": "matplotlib", ".html": "plotly"}
SHARPNESS_METRICS = ("lambda_1", "trace", "eps_sharpness")


def add_parser(subparsers) -> None:
    """Add the ``plot`` subcommand to ``msam-lab``'s subparsers."""
    p = subparsers.add_parser(
        "plot",
        help="draw the notebooks' figures of runs into a .png or a standalone .html",
        description="Draw a figure of one run, or the comparison figure of several runs (or of the runs "
        "under folders), into FILE: .png through matplotlib, .html through plotly (standalone, works offline). "
        + "; ".join(f"{k}: {v}" for k, v in KINDS.items()),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_FOLDER", help="run directories or folders searched for runs")
    p.add_argument("--what", required=True, choices=tuple(KINDS), metavar="KIND", help=" | ".join(KINDS))
    p.add_argument(
        "--out", required=True, metavar="FILE", help="FILE.png (matplotlib) or FILE.html (plotly, standalone)"
    )
    p.add_argument("--name", help="landscape: the surface RUN/landscapes/NAME (default: the run's only one)")
    p.add_argument(
        "--metric",
        help="landscape: loss (default), acc, loss_only_<modality>, ...; "
        f"sharpness: {' | '.join(SHARPNESS_METRICS)} (default lambda_1)",
    )
    p.add_argument(
        "--smooth", type=int, default=10, help="curves, dominance: rolling mean over this many steps (default 10)"
    )
    p.set_defaults(func=cmd_plot)


def check_args(args) -> str:
    """The backend ``--out`` asks for; a UsageError for flags that do not fit ``--what``."""
    backend = FORMATS.get(Path(args.out).suffix.lower())
    if backend is None:
        raise UsageError(f"--out {args.out}: name a .png (matplotlib) or .html (plotly) file")
    if args.name is not None and args.what != "landscape":
        raise UsageError(f"--name picks a landscape; drop it for --what {args.what}")
    if args.metric is not None and args.what not in ("landscape", "sharpness"):
        raise UsageError(f"--metric is for --what landscape or sharpness; drop it for --what {args.what}")
    if args.what == "sharpness" and args.metric is not None and args.metric not in SHARPNESS_METRICS:
        from msam_lab.config import did_you_mean  # noqa: PLC0415 - a hint, only on this error

        hint = did_you_mean(args.metric, SHARPNESS_METRICS)
        raise UsageError(
            f"--metric {args.metric}: sharpness metrics are {', '.join(SHARPNESS_METRICS)}{'; ' + hint if hint else ''}"
        )
    if args.smooth < 1:
        raise UsageError(f"--smooth must be a positive number of steps, got {args.smooth}")
    return backend


def run_paths(paths) -> list[Path]:
    """The run directories among ``paths`` (runs, or folders searched for runs, as ``status`` takes them)."""
    from msam_lab.runs.layout import find_runs, is_run_dir  # noqa: PLC0415 - pandas: when the command runs
    from msam_lab.runs.status import StatusError, existing_paths  # noqa: PLC0415 - pandas: when the command runs

    found = []
    try:
        for path in existing_paths(paths):
            runs = find_runs([path])
            if not runs:
                raise UsageError(f"{path} holds no run directory; give a run or a folder of runs (msam-lab status)")
            found += [path] if is_run_dir(path) else runs
    except StatusError as err:
        raise UsageError(str(err)) from None
    return list(dict.fromkeys(found))


def sharpness_tables(runs: dict, metric: str) -> dict:
    """``{label: sharpness rows}`` of each run: the latest rows per (epoch, scope), of one split."""
    from msam_lab.runs.layout import read_table  # noqa: PLC0415 - pandas: when the command runs

    tables = {}
    for label, run in runs.items():
        path = run.path / "sharpness.csv"
        table = read_table(path)
        if not len(table):
            raise UsageError(f"{run.path} has no sharpness rows; measure them first: msam-lab sharpness {run.path}")
        if "split" in table:  # `msam-lab sharpness` (test) and sharpness_every (train) may share the file
            table = table[table["split"] == table["split"].iloc[-1]]
        if metric not in table or table[metric].isna().all():
            raise UsageError(f"{path} has no {metric} values; choose another --metric ({', '.join(SHARPNESS_METRICS)})")
        tables[label] = table.drop_duplicates(["epoch", "scope"], keep="last").reset_index(drop=True)
    return tables


def surfaces_of(runs: dict, name: str | None) -> dict:
    """``{label: Surface}``: the surface ``name`` of each run (default: each run's only one)."""
    from msam_lab.runs.surfaces import list_landscapes, load_landscape  # noqa: PLC0415 - torch: when the command runs

    surfaces = {}
    for label, run in runs.items():
        saved = list_landscapes(run.path)
        if not saved:
            raise UsageError(f"{run.path} has no landscape; compute one first: msam-lab landscape {run.path}")
        if name is None and len(saved) > 1:
            raise UsageError(f"{run.path} has {len(saved)} landscapes; pick one with --name ({', '.join(saved)})")
        if name is not None and name not in saved:
            from msam_lab.config import did_you_mean  # noqa: PLC0415 - a hint, only on this error

            hint = did_you_mean(name, saved)
            raise UsageError(
                f"{run.path} has no landscape {name!r}{'; ' + hint if hint else ''} (it has: {', '.join(saved)})"
            )
        surfaces[label] = load_landscape(run.path, name if name is not None else next(iter(saved)))
    dims = {s.dim for s in surfaces.values()}
    if len(dims) > 1:
        raise UsageError("the landscapes are 1-D and 2-D; plot surfaces of one dimension together (--name)")
    return surfaces


def landscape_figure(surfaces: dict, metric: str | None, backend: str):
    from msam_lab import viz  # noqa: PLC0415 - pandas, plotly: when the command runs
    from msam_lab.config import did_you_mean  # noqa: PLC0415 - a hint, only on an error

    metric = metric or "loss"
    for label, surface in surfaces.items():
        if metric not in surface.metrics:
            hint = did_you_mean(metric, surface.metrics)
            raise UsageError(
                f"--metric {metric}: the landscape of {label} has no such metric"
                f"{'; ' + hint if hint else ''} (it has: {', '.join(surface.metrics)})"
            )
    if next(iter(surfaces.values())).dim == 1:
        what = "acc" if metric.startswith("acc") else "loss"
        return viz.curves_1d(surfaces, what=what, backend=backend)
    if len(surfaces) == 1:
        return viz.surface_figure(next(iter(surfaces.values())), metric, backend=backend)
    return viz.contour_grid(surfaces, metric, backend=backend)


def figure(args, runs: dict, backend: str):
    """The figure ``--what`` names, of ``runs`` (``{label: Run}``)."""
    from msam_lab import viz  # noqa: PLC0415 - pandas, plotly: when the command runs

    if args.what == "curves":
        return viz.training_curves(runs, smooth=args.smooth, backend=backend)
    if args.what == "accuracy":
        return viz.accuracy_curves(runs, backend=backend)
    if args.what == "tau":
        return viz.tau_curves(runs, backend=backend)
    if args.what == "dominance":
        if len(runs) == 1:
            return viz.shares_over_steps(next(iter(runs.values())), smooth=args.smooth, accuracy=True, backend=backend)
        return viz.epoch_shares(runs, backend=backend)
    if args.what == "sharpness":
        metric = args.metric or "lambda_1"
        return viz.sharpness_figure(sharpness_tables(runs, metric), metric, backend=backend)
    return landscape_figure(surfaces_of(runs, args.name), args.metric, backend)


def save(fig, out: Path, backend: str, title: str) -> None:
    """Write ``fig`` to ``out`` whole: into a temporary file beside it, then renamed over it."""
    from msam_lab.viz import style  # noqa: PLC0415 - matplotlib / plotly: when the command runs

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if backend == "plotly":
            style.write_html(fig, tmp, title=title)
        else:
            with style.mpl_style():
                fig.savefig(tmp, format="png", dpi=150)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_plot(args) -> int:
    backend = check_args(args)
    paths = run_paths(args.runs)
    from msam_lab import viz  # noqa: PLC0415 - pandas, plotly: when the command runs, not for --help

    runs = viz.as_runs([str(p) for p in paths])
    for run in runs.values():
        if not len(run.epochs) and args.what not in ("sharpness", "landscape"):
            raise UsageError(f"{run.path} has no evaluated epoch yet; plot it once its first epoch is written")
    try:
        fig = figure(args, runs, backend)
    except ConfigError:  # a damaged run file: its own one line names it
        raise
    except (KeyError, ValueError) as err:  # a table without the columns a figure needs (an old or a logged run)
        message = str(err).strip("'\"").splitlines()[0]
        raise UsageError(f"cannot draw --what {args.what} for {', '.join(map(str, paths))}: {message}") from None
    out = Path(args.out)
    save(fig, out, backend, f"msam-lab plot --what {args.what}")
    n = len(runs)
    print(f"wrote {out} ({args.what}, {n} run{'s' if n != 1 else ''}, {FORMATS[out.suffix.lower()]})")
    return 0
