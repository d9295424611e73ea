"""``msam-lab sweep``: its arguments, and the command that runs ``experiments.sweep.run_sweep``."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

from msam_lab.cli import names
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


def sweep_command(args) -> str:
    """The command that makes this sweep and its table, spelled out whole (every grid flag, so the
    printed line reproduces the runs wherever it is pasted; ``--table-only`` left out: rerunning the
    line reuses every finished run anyway)."""
    words = ["msam-lab", "sweep", "--methods", args.methods, "--seeds", args.seeds]
    words += ["--rho", args.rhos] if args.rhos is not None else []
    words += ["--dataset", args.dataset] if args.dataset else []
    words += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    words += ["--config", args.config] if args.config else []
    for item in args.overrides:
        words += ["--set", item]
    words += ["--out", args.out]
    words += ["--table", args.table] if args.table else []
    return shlex.join(words)


def _write_table(args) -> None:
    from msam_lab.experiments import tables  # noqa: PLC0415 - pandas and the run reader: only when a table is written

    try:
        tables.write_table(args.table, args.out, tables.sweep_markdown(args.out, sweep_command(args)))
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"table of {args.out}: {args.table}")


def cmd_sweep(args) -> int:
    from msam_lab.experiments.sweep import RUNS_FILE, SUMMARY_FILE, SweepError, finished_sweep, format_sweep, run_sweep  # noqa: PLC0415 - torch and pandas: when a sweep runs, not for --help

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
    if args.table is not None and not args.table.lower().endswith(".md"):
        raise UsageError(
            f"--table writes a Markdown file; name one ending in .md, e.g. docs/results.md (got {args.table!r})"
        )
    if args.table_only and args.table is None:
        raise UsageError("--table-only writes the table of finished runs; add --table PATH.md")
    if args.table_only:
        table = finished_sweep(
            methods, seeds, rhos, dataset=args.dataset, out=args.out, overrides=overrides, config=args.config
        )
        print(format_sweep(table))
        _write_table(args)
        return 0
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
    if args.table is not None:
        _write_table(args)
    return 0


def add_parser(subparsers) -> None:
    """Add the ``sweep`` subcommand to ``msam-lab``'s subparsers."""
    p = subparsers.add_parser(
        "sweep", help="train methods x seeds (x rho), skip finished runs, table of mean ± std over seeds"
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, of {', '.join(names.method_names())} (default {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated training seeds (default 0,1,2)"
    )
    p.add_argument(
        "--rho",
        dest="rhos",
        help="comma-separated radii for the methods that use rho (sam, msam), e.g. 0.05,0.1; default: the config's rho",
    )
    p.add_argument("--dataset", help=f"{', '.join(names.dataset_names())} (default: the config's)")
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
        "--table",
        metavar="PATH.md",
        help="also write the sweep's Markdown table, with this command and the date, into PATH.md: in place of "
        "this --out folder's block where the file has one (the text around it kept), appended otherwise",
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="with --table: write the table of this grid's finished runs and train nothing "
        "(an error if a run is missing or unfinished)",
    )
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
