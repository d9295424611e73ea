"""Step cost of M-SAM on the paper's model: ResNet-18 AV-MNIST late fusion, 112x112 audio, batch 64
(a benchmark, not a test).

The model, method and data are built exactly as the trainer builds them (``trainer._load_splits``,
``_model_spec``, ``_build``) from ``configs/paper/avmnist-late.yaml``. Three parts:

1. Step time, every variant on the same batches, interleaved step by step (the order rotates), the
   median over all timed steps:
   - ``joint``, ``sam``, ``msam``: the methods' ``train_step`` as the trainer calls it (every method
     records the Shapley observation each step, so ``sam`` already pays the coalition cost);
   - ``pure sam``: SAM whose ``observe`` returns a fixed Observation (the update as other codebases
     run it), the denominator of the targets;
   - ``msam sb=N``: M-SAM with ``shapley_batch=N`` (coalitions on the first N samples of the
     shuffled batch).
2. The Shapley part alone: ``method.observe(...)`` on a batch, timed on its own (median), split into
   the no-grad eval-mode encoder forward that BatchNorm encoders need (``coalitions.eval_features``)
   and the rest (coalition fusion, accuracies, Shapley values); as % of the M-SAM step.
3. What ``shapley_batch`` does to the dominance timeline: M-SAM trained ``--epochs`` epochs
   (full-batch observation, the trajectory unchanged); before each step, at the same weights, the
   observation from the first N samples is computed alongside and compared with the full batch's:
   agreement of the dominant modality and mean |Δ share|.

Targets (issue 9): M-SAM / pure SAM <= 1.05 and Shapley <= 3 % of the M-SAM step; and the
``shapley_batch`` that brings M-SAM / pure SAM under 1.10.

    python bench/paper_step_cost.py [--root /tmp/avmnist-mini] [--steps 4] [--repeats 1] [--epochs 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from msam_lab import shapley
from msam_lab.datasets.validation import with_validation
from msam_lab.methods.base import Observation
from msam_lab.models import coalitions
from msam_lab.models.multimodal import has_batchnorm, is_mode_invariant
from msam_lab.optim import schedules
from msam_lab.training.loop import _build, _load_splits, _model_spec, resolve_device, seed_everything
from msam_lab.training.setup import resolve

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "paper" / "avmnist-late.yaml"
SUBSAMPLES = (32, 16, 8)
clock = time.perf_counter  # --clock cpu: time.process_time (this process's CPU time: robust to other jobs)


def paper_config(root, method="msam", **extra):
    overrides = [f"data.root={root}", f"method={method}", "device=cpu", "data_path=memory"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return resolve(str(CONFIG), overrides)


def build(cfg, splits, device):
    seed_everything(cfg.seed)  # the same initial weights for every variant
    model, method = _build(_model_spec(splits, cfg), cfg, device)
    return method


def pure(method):
    """No per-step Shapley observation: ``observe`` returns a fixed Observation."""
    n = len(method.model.modalities)
    obs = Observation(np.zeros(n), np.full(n, 1.0 / n), 0)
    method.observe = lambda *a, **k: obs
    return method


def machine_line(device) -> str:
    return (
        f"# {datetime.now().strftime('%Y-%m-%d %H:%M')}  {platform.node()} {platform.machine()} "
        f"{platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def table(cols, rows):
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row) + " |")


# ----------------------------------------------------------------------------- 1 + 2: timing


def step_times(root, device, steps, warmup, subsamples):
    base = paper_config(root)
    splits = with_validation(_load_splits(base, device), base.val_fraction, base.seed)
    batches = []
    for inputs, labels in splits.train.batches(
        base.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
    ):
        batches.append((inputs, labels))
        if len(batches) == warmup + steps:
            break
    variants = {
        "joint": build(paper_config(root, "joint"), splits, device),
        "sam": build(paper_config(root, "sam"), splits, device),
        "pure sam": pure(build(paper_config(root, "sam"), splits, device)),
        "msam": build(base, splits, device),
    }
    for n in subsamples:
        variants[f"msam sb={n}"] = build(paper_config(root, shapley_batch=n), splits, device)
    model = variants["msam"].model
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters, BatchNorm {has_batchnorm(model)}, "
        f"mode-invariant {is_mode_invariant(model)}; {len(splits.train)} train samples, "
        f"batch {base.batch_size}; {warmup} warm-up + {steps} timed steps per variant, interleaved"
    )
    names = list(variants)
    times = {name: [] for name in names}
    for i, (inputs, labels) in enumerate(batches):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            t = clock()
            variants[name].train_step(inputs, labels)
            dt = clock() - t
            if i >= warmup:
                times[name].append(dt)
        print(
            f"  step {i + 1}/{len(batches)}: "
            + ", ".join(f"{n} {times[n][-1]:.2f}s" if times[n] else n for n in names),
            flush=True,
        )
    med = {name: statistics.median(v) for name, v in times.items()}
    # the same step-by-step ratios, median over steps (pairs share the machine state of that step)
    paired = {name: statistics.median(a / b for a, b in zip(times[name], times["pure sam"])) for name in names}
    low = {name: min(v) for name, v in times.items()}
    return splits, batches, variants, med, paired, low


def observe_parts(method, batches, repeats):
    """Median times of observe (on its own), its eval-mode encoder forward and the rest, over batches."""
    model = method.model
    full, enc = [], []
    for _ in range(repeats):
        for inputs, labels in batches:
            n = method.config.shapley_batch
            model.train()
            with torch.no_grad():
                features = model.encode(inputs)  # as the step passes them (unused when not invariant)
            t = clock()
            method.observe(inputs, labels, features)
            full.append(clock() - t)
            sub = {m: x[:n] for m, x in inputs.items()} if 0 < n < len(labels) else inputs
            t = clock()
            coalitions.eval_features(model, sub)
            enc.append(clock() - t)
    f, e = statistics.median(full), statistics.median(enc)
    return f, e, max(f - e, 0.0)


def timing(root, device, steps, warmup, repeats, subsamples):
    splits, batches, variants, med, paired, low = step_times(root, device, steps, warmup, subsamples)
    timed = batches[warmup:]
    p = med["pure sam"]
    rows = []
    for name in variants:
        obs = enc = rest = None
        if name.startswith("msam"):
            obs, enc, rest = observe_parts(variants[name], timed, repeats)
        rows.append(
            [
                name,
                f"{med[name]:.3f}",
                f"{med[name] / p:.3f}",
                f"{paired[name]:.3f}",
                f"{low[name]:.3f}",
                f"{low[name] / low['pure sam']:.3f}",
                "" if obs is None else f"{1000 * obs:.0f}",
                "" if obs is None else f"{1000 * enc:.0f}",
                "" if obs is None else f"{1000 * rest:.0f}",
                "" if obs is None else f"{100 * obs / med[name]:.1f} %",
                "" if obs is None else f"{1 + obs / p:.3f}",
            ]
        )
    print()
    table(
        [
            "variant",
            "step s (median)",
            "/ pure SAM (medians)",
            "/ pure SAM (paired)",
            "step s (min)",
            "/ pure SAM (mins)",
            "observe ms",
            "eval-mode encoders ms",
            "fusion + Shapley ms",
            "observe % of step",
            "1 + observe / pure SAM",
        ],
        rows,
    )
    print(
        f"joint {med['joint']:.3f} s, SAM / joint {med['sam'] / med['joint']:.3f}, "
        f"pure SAM / joint {p / med['joint']:.3f}, SAM / pure SAM {med['sam'] / p:.3f}"
    )
    return splits


# ----------------------------------------------------------------------------- 3: dominance timeline


def sub_observation(method, inputs, labels, n, previous):
    """Method.observe's computation on the first ``n`` samples, at the current weights, state untouched."""
    c, model = method.config, method.model
    sub, y = {m: x[:n] for m, x in inputs.items()}, labels[:n]

    def stats(masks):
        return coalitions.batch_coalition_stats(model, sub, y, None, masks)

    phi = coalitions.modality_shapley(
        stats, len(model.modalities), c.shapley_value, c.shapley_exact_max, c.shapley_permutations, c.seed
    )
    share = shapley.shares(phi, c.share_rule)
    return share, shapley.dominant(share, c.tie_rule, previous)


def timeline(root, device, epochs, subsamples):
    cfg = paper_config(root, epochs=max(epochs, 1))
    splits = with_validation(_load_splits(cfg, device), cfg.val_fraction, cfg.seed)
    method = build(cfg, splits, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    drop_last = len(splits.train) % cfg.batch_size == 1 and has_batchnorm(method.model)
    full_obs = []
    inner = method.observe

    def observe(inputs, labels, features=None):
        obs = inner(inputs, labels, features)
        full_obs.append(obs)
        return obs

    method.observe = observe
    previous = {n: None for n in subsamples}
    agree = {n: [] for n in subsamples}
    dshare = {n: [] for n in subsamples}
    full_dom = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        method.start_epoch(epoch)
        method.set_lr_factor(schedules.lr_factor(epoch, cfg))
        for inputs, labels in splits.train.batches(
            cfg.batch_size, shuffle=True, generator=generator, drop_last=drop_last
        ):
            # the subsample observations first, at the weights the step observes at (eval mode, no grad:
            # neither the weights, the BN statistics nor any RNG change)
            subs = {n: sub_observation(method, inputs, labels, n, previous[n]) for n in subsamples if n < len(labels)}
            method.train_step(inputs, labels)
            full = full_obs[-1]
            full_dom.append(full.dominant)
            for n, (share, d) in subs.items():
                previous[n] = d
                agree[n].append(d == full.dominant)
                dshare[n].append(float(np.abs(share - full.share).max()))
    wall = time.perf_counter() - t0
    mods = method.model.modalities
    counts = {m: full_dom.count(i) for i, m in enumerate(mods)}
    print(
        f"\nM-SAM, {epochs} epoch(s) on {len(splits.train)} train samples, {len(full_dom)} steps "
        f"({wall:.0f} s); full-batch dominant: " + ", ".join(f"{m} {c}" for m, c in counts.items())
    )
    rows = [
        [
            str(n),
            f"{100 * np.mean(agree[n]):.1f} %",
            f"{np.mean(dshare[n]):.3f}",
            f"{np.median(dshare[n]):.3f}",
            str(len(agree[n])),
        ]
        for n in subsamples
    ]
    table(["shapley_batch", "dominant agrees with full batch", "mean |Δ share|", "median |Δ share|", "steps"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/avmnist-mini", help="AV-MNIST in the MultiBench layout")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the timed batches for observe alone")
    ap.add_argument("--epochs", type=int, default=1, help="M-SAM epochs for the dominance timeline (0: skip)")
    ap.add_argument("--subsamples", default=",".join(map(str, SUBSAMPLES)))
    ap.add_argument("--quick", action="store_true", help="3 timed steps, no timeline")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time the process's CPU time (with --threads 1 on a shared machine)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.epochs = 3, 1, 0
    global clock
    if args.clock == "cpu":
        clock = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    subsamples = tuple(int(s) for s in args.subsamples.split(",") if s)
    device = resolve_device("cpu")
    print(machine_line(device))
    print(f"clock {args.clock}")
    print(f"config {CONFIG.relative_to(CONFIG.parents[2])}, data.root={args.root}")
    if not args.skip_timing:
        timing(args.root, device, args.steps, args.warmup, args.repeats, subsamples)
    if args.epochs:
        timeline(args.root, device, args.epochs, subsamples)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
