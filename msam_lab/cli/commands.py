"""The ``msam-lab`` command line.

Every error ends in one line on stderr naming the problem and the fix, never a traceback:

- exit 2: bad input (options, configs, a run folder that cannot be used), before anything is written;
- exit 1: a fault of the environment (``faults.ENVIRONMENT``: no space left, a read-only file system,
  permission denied, an I/O error), or training that stopped on its own terms (a non-finite value).
  The line names the path and the cause, e.g. ``no space left on device writing runs/x/steps.csv``;
  a run that was training is marked failed first, with that error, and its lock released. Other
  OSErrors (a path that is not there) count as input: exit 2;
- exit 130: interrupted (Ctrl-C, SIGTERM); the run is kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

# Only torch-free modules here (the standard library, errors, config's defaults, the lock's error):
# `msam-lab --help` and `msam-lab status` import neither torch nor pandas for these
# (tests/cli/test_cli_startup.py). Each command imports what it runs inside its function.
from msam_lab import faults
from msam_lab.cli import names
from msam_lab.cli.export import add_parser as add_export_parser
from msam_lab.cli.landscape import add_parsers as add_landscape_parsers
from msam_lab.cli.landscape import require_path
from msam_lab.cli.plot import add_parser as add_plot_parser
from msam_lab.cli.sweep import add_parser as add_sweep_parser
from msam_lab.config import Config, did_you_mean
from msam_lab.errors import ConfigError, TrainingError, UsageError
from msam_lab.runs.lock import RunLockedError

DEMO_METHODS = ("joint", "sam", "msam")
DEMO_OVERRIDES = ("epochs=15",)
DEMO_WIDTH = 100  # columns the demo's report fits in (a terminal, the README)


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (``--epochs abc``) as one line too, not a usage block; still exit 2.
    A mistyped choice gets the closest one (``invalid choice: 'pcb' ...; did you mean 'pca'?``)."""

    def error(self, message):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        hint = did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2))) if choice else ""
        self.exit(2, f"{self.prog}: error: {message}{'; ' + hint if hint else ''} (see {self.prog} --help)\n")


def chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)parser of the command ``args`` were parsed for (``msam-lab data check`` -> its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]):
    """``parser.parse_args(argv)``, where an unknown flag names the command's closest one (``--rh0`` -> ``--rho``)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = chosen_parser(parser, args)
        flags = [f for a in command._actions for f in a.option_strings]
        flag = next((e.split("=")[0] for e in extras if e.startswith("-")), None)
        hint = did_you_mean(flag, flags) if flag else ""
        command.error(f"unrecognized arguments: {' '.join(extras)}{'; ' + hint if hint else ''}")
    return args


def finite_float(text: str) -> float:
    """A float flag's value as Python's float() reads it (1e-5, .5, 1_000), refused beyond the float
    range (1e400 is inf) or as nan: one line from argparse, where "lr=inf" reached the config as a word."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (e.g. 0.05 or 1e-5), got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _train_args(p: argparse.ArgumentParser) -> None:
    d = Config()
    p.add_argument("--config", help="YAML file of config fields (see configs/)")
    p.add_argument("--dataset", help=f"{', '.join(names.dataset_names())} (default {d.dataset}; msam-lab data info)")
    p.add_argument("--method", help=f"{', '.join(names.method_names())} (default {d.method}; docs/methods.md)")
    p.add_argument("--rho", type=finite_float, help=f"SAM/M-SAM radius (default {d.rho})")
    p.add_argument("--epochs", type=int, help=f"epochs (default {d.epochs})")
    p.add_argument("--lr", type=finite_float, help=f"learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, help=f"training seed (default {d.seed})")
    p.add_argument("--fusion", help=f"late_sum | late_concat | early (default {d.fusion})")
    p.add_argument("--device", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field, e.g. --set batch_size=32 --set data.audio_snr_db=-8",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _overrides(args) -> list[str]:
    named = [
        f"{k}={getattr(args, k)}"
        for k in ("dataset", "method", "rho", "epochs", "lr", "seed", "fusion", "device")
        if getattr(args, k) is not None
    ]
    return named + list(args.overrides)


def _distributed():
    """msam_lab.distributed, imported when first needed."""
    from msam_lab import distributed  # noqa: PLC0415 - imports torch: for runs and ranks, not for --help or status

    return distributed


def _launched_by_torchrun() -> bool:
    # torchrun sets WORLD_SIZE for every rank; without it, skip importing torch to ask distributed
    return "WORLD_SIZE" in os.environ and _distributed().launched_by_torchrun()


def _distributed_errors() -> tuple:
    """``(DistributedError,)`` once msam_lab.distributed is loaded (only then can one be raised), else ``()``."""
    module = sys.modules.get("msam_lab.distributed")
    return () if module is None else (module.DistributedError,)


def cmd_train(args) -> int:
    from msam_lab.runs.compare import compare_runs, format_compact  # noqa: PLC0415 - pandas: for runs, not for --help
    from msam_lab.training.loop import train  # noqa: PLC0415 - torch loads when a run starts, not for --help

    distributed = _distributed()

    if args.resume:
        given = [f"--{k}" for k in ("config", "out") if getattr(args, k)] + (["an option"] if _overrides(args) else [])
        if given:
            raise UsageError(
                f"--resume continues a run with its own config; drop {given[0]} "
                f"(start a new run with --out to change settings)"
            )
        require_path(args.resume, "--resume")
        run = train(resume=args.resume, quiet=args.quiet)
    else:
        run = train(args.config, out=args.out, quiet=args.quiet, overrides=_overrides(args))
    if distributed.is_main():
        print(f"run written to {run.path}")
        print(format_compact(compare_runs([run]), width=DEMO_WIDTH))
    distributed.shutdown()
    return 0


def relaunch_under_torchrun(nproc: int, argv: list[str], args) -> int:
    """``msam-lab train --nproc N ...`` -> ``torchrun --standalone --nproc-per-node N -m msam_lab train ...``."""
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    if args.resume is None:
        from msam_lab.training import ranks as data_parallel  # noqa: PLC0415 - torch: when a run starts, not for --help
        from msam_lab.training.setup import resolve  # noqa: PLC0415 - the registries (torch) load when a run starts

        # bad input is one line and exit 2 here, before N ranks each print it and torchrun exits 1
        data_parallel.check_shard_size(resolve(args.config, _overrides(args)), world=nproc)
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "msam_lab",
        *rest,
    ]
    # torchrun ends every rank when one fails and exits non-zero; its own report follows the rank's error
    return subprocess.call(cmd)


def cmd_compare(args) -> int:
    from msam_lab.runs.compare import compare_runs, finished_runs, format_table  # noqa: PLC0415 - pandas: not for --help
    from msam_lab.runs.status import StatusError  # noqa: PLC0415 - pandas: to compare, not for --help

    try:
        runs, unfinished = finished_runs(args.paths)
    except StatusError as err:
        raise UsageError(str(err)) from None
    print(format_table(compare_runs(runs)))
    if unfinished:
        n = len(unfinished)
        print(
            f"({n} unfinished run{'s' if n != 1 else ''} left out: {', '.join(map(str, unfinished[:3]))}"
            f"{', ...' if n > 3 else ''}; msam-lab status shows them)",
            file=sys.stderr,
        )
    return 0


def demo_report(paths, out, takeover: bool = False) -> str:
    """What ``msam-lab demo`` prints once its runs are done: the compact table (at most 100 columns), its
    one-line legend, where the runs are, and three commands to try next (``out`` as the user gave it;
    ``takeover``: suggest av-digits' takeover scenario, where audio takes over during training)."""
    from msam_lab.runs.compare import compare_runs, format_compact  # noqa: PLC0415 - pandas: not for --help

    out = Path(out)
    runs = [Path(p) for p in paths]
    inside = all(p.parent == out for p in runs)
    where = f"{out}/{{{','.join(p.name for p in runs)}}}" if inside else ", ".join(map(str, runs))
    last = runs[-1]
    steps = [
        (f"msam-lab compare {out}", "the full table"),
        (f"msam-lab plot {out} --what dominance --out dominance.html", "who dominates, epoch by epoch"),
        (f"msam-lab plot {last} --what dominance --out {last.name}.png", "and step by step"),
    ]
    if takeover:
        steps[2] = ("msam-lab train --set data.scenario=takeover --out runs/takeover", "audio takes over")
    pad = max(len(command) for command, _ in steps)
    lines = [format_compact(compare_runs(runs), width=DEMO_WIDTH), "", f"runs: {where}", "next:"]
    for command, why in steps:
        line = f"  {command.ljust(pad)}  # {why}"
        lines.append(line if len(line) <= DEMO_WIDTH else f"  {command}")  # a long --out: the command alone
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from msam_lab.runs.layout import is_run  # noqa: PLC0415 - pandas: for runs, not for --help
    from msam_lab.training.loop import train  # noqa: PLC0415 - torch loads when a run starts, not for --help
    from msam_lab.training.setup import resolve  # noqa: PLC0415 - the registries (torch) load when a run starts

    out = Path(args.out)
    overrides = list(DEMO_OVERRIDES) + _overrides(args)
    # validate every method's config before the first run starts
    configs = {m: resolve(args.config, overrides + [f"method={m}"]) for m in DEMO_METHODS}
    paths = []
    for method, cfg in configs.items():
        path = out / method
        if is_run(path):
            print(f"{path}: finished run found, reusing it (delete {out} for a fresh demo)")
        else:
            print(f"training {method} on {cfg.dataset} for {cfg.epochs} epochs -> {path}")
            train(cfg, out=path, quiet=args.quiet)
        paths.append(path)
    print()
    last = configs[DEMO_METHODS[-1]]
    print(
        demo_report(paths, args.out, takeover=last.dataset == "av-digits" and last.data.get("scenario") == "imbalanced")
    )
    return 0


def cmd_status(args) -> int:
    from msam_lab.runs.status import StatusError, format_status, status_table  # noqa: PLC0415 - pandas: not for --help

    try:
        table = status_table(args.paths)
    except StatusError as err:
        raise UsageError(str(err)) from None
    print(format_status(table))
    return 0


CHECKABLE = ("av-mnist", "crema-d", "ave", "ur-funny")


def cmd_data_check(args) -> int:
    from msam_lab.datasets import dataset_names, is_plugin  # noqa: PLC0415 - loads plug-ins: not for --help
    from msam_lab.datasets.layouts import check  # noqa: PLC0415 - the loaders import torch: not for --help

    if args.name not in CHECKABLE or is_plugin(args.name):
        if is_plugin(args.name):
            raise UsageError(
                f"{args.name} is a plug-in dataset: its loader checks its own files when it "
                f"loads; layouts are checked for {', '.join(CHECKABLE)} (msam-lab data info {args.name})"
            )
        if args.name in dataset_names():
            raise UsageError(
                f"{args.name} is generated, not read from files: nothing to check (msam-lab data info {args.name})"
            )
        raise UsageError(f"unknown dataset {args.name!r}; checkable: {', '.join(CHECKABLE)}")
    options = {}
    if args.fps is not None:
        if args.name != "crema-d":
            raise UsageError(f"--fps is a crema-d option (its Image-NN-FPS folder); drop it for {args.name}")
        if args.fps < 1:
            raise UsageError(f"--fps must be a positive integer, got {args.fps}")
        options["fps"] = args.fps
    try:
        report = check(args.name, args.root, **options)
    except ValueError as err:  # no such root
        raise UsageError(f"{err} (pass the dataset's folder as --root DIR)") from None
    if report.ok:
        print(f"{report.dataset} at {report.root}: OK")
        for line in report.summary:
            print(f"  {line}")
        return 0
    for problem in report.problems:
        print(problem)
    n = len(report.problems)
    print(
        f"msam-lab: error: {report.dataset} at {report.root}: {n} problem{'s' if n != 1 else ''} "
        f"(listed above); expected layout: {report.layout}",
        file=sys.stderr,
    )
    return 2


def cmd_data_info(args) -> int:
    from msam_lab.datasets import dataset_names  # noqa: PLC0415 - loads plug-ins: not for --help
    from msam_lab.datasets.catalog import format_catalog  # noqa: PLC0415 - the catalogue: not for --help

    known = dataset_names()  # built-ins and plug-ins
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise UsageError(f"unknown dataset {unknown[0]!r}; choose one of: {', '.join(known)}")
    print(format_catalog(args.names or None))
    return 0


def cmd_data_build_avmnist(args) -> int:
    from msam_lab.datasets.avmnist import build_avmnist  # noqa: PLC0415 - torch loads when building, not for --help

    for flag, value in (("--n-train", args.n_train), ("--n-test", args.n_test)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    for flag, folder in (("--mnist", args.mnist), ("--fsdd", args.fsdd)):
        if not Path(folder).expanduser().is_dir():
            raise UsageError(
                f"{flag} {folder}: no such folder (pass the folder of the "
                f"{'MNIST IDX files' if flag == '--mnist' else 'FSDD .wav recordings'})"
            )
    try:
        out = build_avmnist(
            Path(args.mnist).expanduser(),
            Path(args.fsdd).expanduser(),
            args.out,
            args.n_train,
            args.n_test,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except FileExistsError:
        raise UsageError(
            f"{args.out} already exists and is not empty; pass --overwrite to replace it or choose another --out"
        ) from None
    except ValueError as err:  # bad or missing MNIST / FSDD files, too many samples asked
        hint = " (lower --n-train / --n-test)" if "n_train + n_test" in str(err) else ""
        raise UsageError(f"{err}{hint}") from None
    except OSError as err:  # output folder not writable, disk full: nothing was left behind
        if err.errno in faults.ENVIRONMENT:  # the environment's fault: exit 1, as everywhere
            err.add_note(f"nothing was left in {args.out}")
            raise
        raise UsageError(f"cannot write {args.out} ({err.strerror or err}); choose a writable --out") from None
    info = json.loads((out / "build_info.json").read_text())
    print(
        f"wrote {out}: {info['n_train']} train / {info['n_test']} test samples, "
        f"{info['pca_components']} PCA components ({info['pca_explained_variance']:.1%} of the variance)"
    )
    print(f"check it: msam-lab data check av-mnist --root {out}")
    return 0


def _add_data_parsers(sub) -> None:
    data = sub.add_parser("data", help="dataset tools: check a layout, what a dataset is, build AV-MNIST")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="{check,info,build-avmnist}")

    p = dsub.add_parser("check", help="check a real dataset's files, listing every bad one (exit 2)")
    p.add_argument("name", metavar="NAME", help=f"one of {', '.join(CHECKABLE)}")
    p.add_argument("--root", required=True, help="the dataset's folder (what --set data.root= gets)")
    p.add_argument("--fps", type=int, help="crema-d: check Image-NN-FPS for this fps (default 1)")
    p.set_defaults(func=cmd_data_check)

    p = dsub.add_parser("info", help="modalities, shapes, classes, splits and where to get each dataset")
    p.add_argument("names", nargs="*", metavar="NAME", help="datasets (default: all)")
    p.set_defaults(func=cmd_data_info)

    p = dsub.add_parser(
        "build-avmnist", help="write a small real AV-MNIST from MNIST IDX files and FSDD recordings (MultiBench layout)"
    )
    p.add_argument(
        "--mnist",
        required=True,
        metavar="DIR",
        help="folder of the MNIST *images-idx3-ubyte[.gz] and *labels-idx1-ubyte[.gz] files",
    )
    p.add_argument(
        "--fsdd",
        required=True,
        metavar="DIR",
        help="folder of {digit}_{speaker}_{index}.wav recordings (Free Spoken Digit Dataset)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create (the loader's data.root)")
    p.add_argument("--n-train", type=int, default=2000, help="train samples (default 2000)")
    p.add_argument("--n-test", type=int, default=500, help="test samples (default 500)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_data_build_avmnist)


def _run_paths_arg(p: argparse.ArgumentParser) -> None:
    """The runs ``compare`` and ``status`` take: run directories or folders searched for runs."""
    p.add_argument(
        "paths",
        nargs="*",
        default=["runs"],
        metavar="RUN_OR_FOLDER",
        help="run directories or folders searched for runs (default runs/)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="msam-lab",
        description="Study modality imbalance with M-SAM and its baselines (docs: README.md, ARCHITECTURE.md).",
        epilog=f"methods: {', '.join(names.method_names())}. datasets: {', '.join(names.dataset_names())}. "
        "Installed plug-ins included; `msam-lab data info` describes each dataset.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model and write its run directory")
    _train_args(p)
    p.add_argument("--out", help="run directory to create (default runs/<dataset>-<method>-s<seed>-<time>)")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted or failed run from its last resume checkpoint (with the run's own config)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine, started through torchrun (one per GPU; "
        "on the CPU gloo with one thread each); several nodes: torchrun itself (docs/scale.md)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="one table over finished runs")
    _run_paths_arg(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="joint, SAM and M-SAM on av-digits, same seed and budget, compared")
    _train_args(p)
    p.add_argument("--out", default="runs/demo", help="folder for the three runs (default runs/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="one line per run: state, progress, accuracy, dominance, heartbeat")
    _run_paths_arg(p)
    p.set_defaults(func=cmd_status)

    _add_data_parsers(sub)
    add_sweep_parser(sub)
    add_landscape_parsers(sub)
    add_plot_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(parser, argv)
    under_torchrun = _launched_by_torchrun()
    # under torchrun the other commands share their work over the ranks (landscape, sharpness);
    # those that train join the group themselves, on the run's device (data_parallel.device_for_rank)
    joins = under_torchrun and args.command not in ("train", "demo", "sweep")
    try:
        if getattr(args, "nproc", 1) != 1 and not under_torchrun:
            return relaunch_under_torchrun(args.nproc, argv, args)
        if joins:
            _distributed().init_from_env("auto", 300.0)
        return args.func(args)
    except (UsageError, ConfigError, RunLockedError, faults.SymlinkInRun) as err:
        print(f"msam-lab: error: {err}", file=sys.stderr)
        return 2
    except (TrainingError, *_distributed_errors()) as err:
        print(f"msam-lab: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the path, the cause, what was done about it
        print(f"msam-lab: error: {'; '.join([faults.describe(err), *getattr(err, '__notes__', ())])}", file=sys.stderr)
        return 1 if err.errno in faults.ENVIRONMENT else 2
    except KeyboardInterrupt:
        print(
            "msam-lab: interrupted; the run is kept (`msam-lab train --resume RUN` continues a run, "
            "a rerun of a sweep or landscape command resumes it)",
            file=sys.stderr,
        )
        return 130
    finally:
        if joins:
            _distributed().shutdown()


if __name__ == "__main__":
    sys.exit(main())
