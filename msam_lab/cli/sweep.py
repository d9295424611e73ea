"""``msam-lab sweep``: its arguments, and the command that runs ``experiments.sweep.run_sweep``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from msam_lab.errors import UsageError

DEFAULT_METHODS = ("joint", "sam", "msam", "ogm_ge", "agm", "cggm", "reconboost")
DEFAULT_SEEDS = (0, 1, 2)


def _split(text: str, what: str, convert, example: str) -> list:
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
    seeds = _split(text, "--seeds", int, "0,1,2")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds must be integers >= 0, got {text!r}")
    return seeds


def parse_rhos(text: str) -> list[float]:
    rhos = _split(text, "--rho", float, "0.05,0.1")
    if any(not math.isfinite(r) or r < 0 for r in rhos):
        raise UsageError(f"--rho values must be numbers >= 0, got {text!r}")
    return rhos


def cmd_sweep(args) -> int:
    from msam_lab.experiments.sweep import RUNS_FILE, SUMMARY_FILE, SweepError, format_sweep, run_sweep  # noqa: PLC0415 - torch and pandas: when a sweep runs, not for --help

    methods = _split(args.methods, "--methods", str, "joint,msam")
    seeds = parse_seeds(args.seeds)
    rhos = parse_rhos(args.rhos) if args.rhos is not None else None
    overrides = ([f"epochs={args.epochs}"] if args.epochs is not None else []) + list(args.overrides)
    if args.slurm and args.launcher != "slurm":
        raise UsageError(
            f"--slurm options are for --launcher slurm (got --launcher {args.launcher}); "
            f"add --launcher slurm or drop them"
        )
    if args.max_parallel is not None and args.launcher == "inline":
        raise UsageError("--max-parallel is for --launcher local or slurm (inline runs one cell at a time)")
    try:
        table = run_sweep(
            methods,
            seeds,
            rhos,
            dataset=args.dataset,
            out=args.out,
            overrides=overrides,
            quiet=args.quiet,
            config=args.config,
            launcher=args.launcher,
            slurm=args.slurm,
            max_parallel=args.max_parallel,
        )
    except SweepError as err:  # a launched sweep's failed cells: tables of the rest, one line each
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
    p = subparsers.add_parser(
        "sweep", help="train methods x seeds (x rho), skip finished runs, table of mean ± std over seeds"
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated training seeds (default 0,1,2)"
    )
    p.add_argument(
        "--rho",
        dest="rhos",
        help="comma-separated radii for the methods that use rho (sam, msam), e.g. 0.05,0.1; default: the config's rho",
    )
    p.add_argument("--dataset", help="dataset name (default: the config's)")
    p.add_argument("--epochs", type=int, help="epochs per run")
    p.add_argument("--config", help="YAML file of config fields applied to every run")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field for every run, e.g. --set batch_size=32",
    )
    p.add_argument("--out", default="runs/sweep", help="folder of the sweep (default runs/sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--launcher",
        choices=("inline", "local", "slurm"),
        default="inline",
        help="where the cells run: inline (here, one after another; default), local (one "
        "submitit process per cell), slurm (one SLURM job per cell); docs/scale.md",
    )
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit/SLURM option for every job, e.g. --slurm partition=gpu "
        "--slurm timeout_min=240 --slurm gpus_per_node=1 (repeatable)",
    )
    p.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="jobs at once (local: default the CPU count; slurm: the job array's parallelism)",
    )
    p.set_defaults(func=cmd_sweep)
