"""``msam-lab export RUN... --tensorboard DIR``: runs already on disk, old ones included, as TensorBoard event files.

Each run goes to ``DIR/<its folder name>`` (the shortest distinct tail of its path when two share a name),
written as its trainer would have with ``loggers: [tensorboard]`` (msam_lab.loggers.replay): every
scalar of its step, epoch and sharpness tables, its config as hyperparameters, its figures.
"""

from __future__ import annotations

from pathlib import Path

from msam_lab.errors import UsageError

EVENTS = "events.out.tfevents.*"


def run_names(paths: list[Path]) -> list[str]:
    """The shortest tails of the runs' paths that tell them apart (``msam``, or ``a/msam`` and ``b/msam``)."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise UsageError("a run is named twice; give each run once")


def cmd_export(args) -> int:
    from msam_lab.loggers import open_logger, replay  # noqa: PLC0415 - torch (SummaryWriter): when exporting, not for --help
    from msam_lab.runs.layout import is_run_dir  # noqa: PLC0415 - pandas: when exporting, not for --help

    runs = [Path(r) for r in args.runs]
    bad = [r for r in runs if not is_run_dir(r)]
    if bad:
        raise UsageError(f"{bad[0]} is not a run directory (no status.json or summary.json); pass run folders")
    root = Path(args.tensorboard)
    targets = [root / name for name in run_names(runs)]
    taken = [t for t in targets if any(t.glob(EVENTS))]
    if taken and not args.overwrite:
        raise UsageError(f"{taken[0]} already holds event files; pass --overwrite to replace them or another DIR")
    for run, target in zip(runs, targets):
        for old in target.glob(EVENTS):
            old.unlink()
        counts = replay(run, open_logger("tensorboard", run, target=target))
        size = sum(f.stat().st_size for f in target.glob(EVENTS))
        print(
            f"{run} -> {target}: {counts['steps']} steps, {counts['epochs']} epochs, "
            f"{counts['sharpness']} sharpness rows ({size / 1024:.1f} KiB)"
        )
    print(f"view: tensorboard --logdir {root}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write runs already on disk for TensorBoard (old runs too)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--tensorboard", required=True, metavar="DIR", help="folder of event files, one subfolder per run")
    p.add_argument("--overwrite", action="store_true", help="replace event files an earlier export left there")
    p.set_defaults(func=cmd_export)
