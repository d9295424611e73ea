"""``msam-lab landscape`` and ``msam-lab sharpness``.

Wired into the main CLI by ``add_parsers(subparsers)``: a user error is one line on stderr and exit 2,
nothing written. The flags build the library's option objects (msam_lab/landscape/options.py), which
check them; their messages name arguments (``dim must be 1 or 2``), said here as flags (``--dim ...``).
Nothing heavy at module level: torch and pandas load when a command runs, not for ``--help``.

Under torchrun (``torchrun --nproc-per-node N -m msam_lab landscape|sharpness ...``) the ranks
share the work and only rank 0 prints.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from msam_lab.errors import ConfigError, UsageError


def require_path(path, what: str) -> None:
    """A UsageError when ``path`` (given as ``what``: ``RUN``, ``--to``) does not exist."""
    if path is not None and not Path(path).exists():
        raise UsageError(f"{what} {path} does not exist; pass a run directory written by `msam-lab train`")


def _int_or_all(text: str):
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an epoch number or 'all', got {text!r}") from None


def add_parsers(subparsers) -> None:
    """Add the ``landscape`` and ``sharpness`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "landscape",
        help="1-D/2-D loss surface of a run (all metrics, per modality)",
        description="Compute (or resume) a loss surface of a run around one checkpoint "
        "and save it under RUN/landscapes/NAME/.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--dim", type=int, choices=(1, 2), default=2, help="1 or 2 directions (default 2)")
    p.add_argument("--grid", type=int, default=21, help="points per axis, odd (default 21)")
    p.add_argument(
        "--span",
        type=float,
        default=1.0,
        help="coordinates in [-span, span] (pca: times the trajectory's extent) (default 1)",
    )
    p.add_argument(
        "--directions",
        default="random",
        choices=("random", "pca", "between"),
        help="random (filter-normalised), pca (of the checkpoints), between (RUN -> --to)",
    )
    p.add_argument("--to", metavar="RUN2", help="end point run for --directions between")
    p.add_argument("--to-epoch", type=int, help="epoch of --to (default its last)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="evaluation split (default test)")
    p.add_argument("--epoch", type=int, help="checkpoint at the centre (default the last)")
    p.add_argument("--seed", type=int, default=0, help="direction seed (default 0)")
    p.add_argument("--n-samples", type=int, default=512, help="evaluation subset size (default 512)")
    p.add_argument("--subset-seed", type=int, default=0, help="evaluation subset seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one thread each (default 1)")
    p.add_argument("--threads", type=int, help="torch threads when --workers 1 (default torch's setting)")
    p.add_argument("--name", help="surface name (default from the settings); rerun to resume")
    p.add_argument("--scope", default="model", help="parameters to move: model, fusion or a modality (default model)")
    p.add_argument("--include-1d", action="store_true", help="also move 1-D parameters (biases, norm affine)")
    p.add_argument("--orthogonal", action="store_true", help="Gram-Schmidt the second direction against the first")
    p.add_argument("--fused-only", action="store_true", help="skip the per-modality metrics")
    p.add_argument("--bf16", action="store_true", help="forward passes under bfloat16 autocast (for GPUs)")
    p.add_argument("--reuse", metavar="SURFACE_DIR", help="use the directions and grid of a saved surface")
    p.add_argument("--overwrite", action="store_true", help="replace a saved surface of the same name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_landscape)

    p = subparsers.add_parser(
        "sharpness",
        help="Hessian top eigenvalues, trace and ε-sharpness of a run",
        description="Sharpness of a run's checkpoint(s), for the whole model and each "
        "modality's encoder; rows are added to RUN/sharpness.csv. "
        "--timeline: the rows sharpness_every writes during training "
        "(each encoder and the fusion, on the train split, the run's "
        "sharpness_samples and sharpness_probes), for every checkpoint.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument(
        "--timeline",
        action="store_true",
        help="every checkpoint, with sharpness_every's scopes and settings (flags below override)",
    )
    p.add_argument("--epoch", type=_int_or_all, help="epoch, or 'all' (default the last; --timeline: all)")
    p.add_argument("--rho", type=float, help="ε-sharpness radius (default 0.05)")
    p.add_argument("--topk", type=int, help="Hessian eigenvalues (default 1)")
    p.add_argument("--probes", type=int, help="Hutchinson probes (default 32; --timeline: sharpness_probes)")
    p.add_argument(
        "--split",
        choices=("train", "test"),
        help="evaluation split; train: without the validation hold-out (default test; --timeline: train)",
    )
    p.add_argument("--n-samples", type=int, help="evaluation subset size (default 512; --timeline: sharpness_samples)")
    p.add_argument("--seed", type=int, help="probe seed (default 0)")
    p.add_argument(
        "--scope",
        action="append",
        help="model, fusion or a modality; repeat (default model + each modality; not with --timeline)",
    )
    p.add_argument("--max-iter", type=int, help="power iterations per eigenvalue (default 100)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_sharpness)


# a library argument whose flag is not ``--`` + its name (with - for _)
_DEST = {"epochs": "epoch", "scopes": "scope"}
# ``name=value`` in a library message: a quoted value or one bare word
_MENTION = re.compile(r"(?<![^\s(])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;:()]*)")


def _flag(argument: str, dests) -> str | None:
    """The flag of ``argument`` in a command whose argparse dests are ``dests`` (None: it has none)."""
    dest = _DEST.get(argument, argument)
    if dest not in dests:
        return None
    return dest.upper() if dest == "run" else "--" + dest.replace("_", "-")


def flag_message(err: Exception, dests) -> str:
    """A library message as the command line says it: arguments named as the flags that set them.

    ``dim must be 1 or 2`` -> ``--dim must be 1 or 2``; ``directions='between'`` -> ``--directions
    between``; ``overwrite=True`` -> ``--overwrite``. Arguments the command has no flag for stay as
    they are (``checkpoint_every=1`` is a config key).
    """

    def mention(m: re.Match) -> str:
        flag = _flag(m.group(1), dests)
        if flag is None:
            return m.group(0)
        value = m.group(2).strip("'\"")
        return flag if value in ("", "True") else f"{flag} {value}"

    text = _MENTION.sub(mention, str(err))
    argument = getattr(err, "argument", None)  # an OptionError's message starts with its argument
    flag = _flag(argument, dests) if argument else None
    if flag and re.match(rf"{re.escape(argument)}\b(?!=)", text):
        text = flag + text[len(argument) :]
    return text


@contextmanager
def _in_flags(args):
    """A library ConfigError raised inside, said in this command's flags (one line, exit 2)."""
    try:
        yield
    except ConfigError as err:
        raise UsageError(flag_message(err, vars(args))) from None


def cmd_landscape(args) -> int:
    require_path(args.run, "RUN")
    require_path(args.to, "--to")
    from msam_lab import distributed, landscape  # noqa: PLC0415 - torch loads when the command runs, not for --help
    from msam_lab.training.progress import Counter  # noqa: PLC0415 - tqdm: when the command runs, not for --help

    # a bar on a terminal; in a log, one line per twentieth of the points (no carriage-return frames)
    progress = Counter("landscape", "points", quiet=args.quiet or not distributed.is_main())
    started = time.perf_counter()
    try:
        with _in_flags(args):
            options = landscape.LandscapeOptions(
                dim=args.dim,
                grid=args.grid,
                span=args.span,
                directions=args.directions,
                to=args.to,
                to_epoch=args.to_epoch,
                split=args.split,
                epoch=args.epoch,
                seed=args.seed,
                n_samples=args.n_samples,
                subset_seed=args.subset_seed,
                workers=args.workers,
                threads=args.threads,
                name=args.name,
                scope=args.scope,
                include_1d=args.include_1d,
                orthogonal=args.orthogonal,
                per_modality=not args.fused_only,
                reuse=args.reuse,
                overwrite=args.overwrite,
                bf16=args.bf16,
            )
            surface = landscape.landscape_for_run(args.run, options, progress=progress)
    finally:
        progress.close()
    wall = time.perf_counter() - started
    if not distributed.is_main():
        return 0
    shape = "x".join(map(str, surface.shape))
    print(f"landscape written to {surface.path} ({shape} points, {wall:.1f} s)")
    try:
        c = surface.center()
    except ValueError:  # a reused grid without 0 on it
        return 0
    extras = "  ".join(f"{k}={v:.4f}" for k, v in c.items() if k not in ("loss", "acc"))
    print(f"centre: loss={c['loss']:.4f} acc={c['acc']:.4f}  {extras}".rstrip())
    return 0


def cmd_sharpness(args) -> int:
    require_path(args.run, "RUN")
    from msam_lab import distributed, landscape  # noqa: PLC0415 - torch loads when the command runs, not for --help

    progress = (
        None if args.quiet or not distributed.is_main() else (lambda msg: print(f"sharpness: {msg}", file=sys.stderr))
    )
    # flags left out take the options' defaults (--timeline: the run's settings)
    given = {
        k: v
        for k, v in dict(
            rho=args.rho,
            topk=args.topk,
            probes=args.probes,
            split=args.split,
            n_samples=args.n_samples,
            seed=args.seed,
            max_iter=args.max_iter,
        ).items()
        if v is not None
    }
    if args.timeline:
        if args.scope:
            raise UsageError(
                "--timeline measures each encoder and the fusion; drop --scope "
                "(or leave out --timeline to choose scopes)"
            )
        with _in_flags(args):
            options = landscape.TimelineOptions(epochs="all" if args.epoch is None else args.epoch, **given)
            table = landscape.timeline_for_run(args.run, options, progress=progress)
    else:
        with _in_flags(args):
            options = landscape.SharpnessOptions(epochs=args.epoch, scopes=args.scope, **given)
            table = landscape.sharpness_for_run(args.run, options, progress=progress)
    if not distributed.is_main():
        return 0
    cols = [
        c for c in ["epoch", "scope", "loss", "lambda_1", "trace", "trace_se", "eps_sharpness"] if c in table.columns
    ]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"rows added to {args.run.rstrip('/')}/{landscape.for_run.SHARPNESS_CSV}")
    return 0
