"""Time per epoch with and without the per-step Shapley observation (a benchmark, not a test).

Every method records the Shapley observation of each batch (the 2^M coalition accuracies at the
pre-step weights): M-SAM needs it to decide, the others only log it. This measures what that costs
a training epoch, as the seed paper's overhead check does, for joint training (where the
observation is pure overhead) and M-SAM (where "without" is M-SAM with a fixed dominant modality,
i.e. the update without its decision):

- synthetic data with M = 2, 3, 4, 8 modalities (MLP encoders, late fusion; exact Shapley up to
  M = 10, so M = 8 runs 256 coalitions per batch through the fusion);
- the paper's ResNet-18 AV-MNIST late-fusion model (configs/paper/avmnist-late.yaml) on an
  AV-MNIST built with ``msam-lab data build-avmnist`` (``--root``; skipped when absent), the
  epoch cut to ``--resnet-steps`` steps and reported per step.

"With" and "without" epochs alternate, ``--repeats`` times each, on the same batches from the same
initial weights; the table gives medians and the ratio with / without.

    python bench/shapley_overhead.py [--repeats 3] [--root /tmp/avmnist-mini] [--resnet-steps 6] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_step_cost import machine_line, paper_config, pure  # noqa: E402

from msam_lab.datasets.validation import with_validation  # noqa: E402
from msam_lab.training.loop import _build, _load_splits, _model_spec, seed_everything  # noqa: E402
from msam_lab.training.setup import resolve  # noqa: E402


def synthetic_config(n_modalities: int, method: str, n_samples: int):
    return resolve(
        {
            "dataset": "synthetic",
            "method": method,
            "device": "cpu",
            "batch_size": 64,
            "data": {"n_modalities": n_modalities, "n_samples": n_samples},
            "val_fraction": 0.0,
        }
    )


def epoch_seconds(cfg, splits, observe: bool, max_steps: int | None = None) -> tuple[float, int]:
    """One epoch (or its first ``max_steps`` steps) of ``cfg.method``'s train_step; (seconds, steps)."""
    seed_everything(cfg.seed)
    _, method = _build(_model_spec(splits, cfg), cfg, "cpu")
    if not observe:
        pure(method)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = list(splits.train.batches(cfg.batch_size, shuffle=True, generator=gen))[:max_steps]
    method.train_step(*batches[0])  # warm-up step (allocations), not timed
    start = time.perf_counter()
    for inputs, labels in batches:
        method.train_step(inputs, labels)
    return time.perf_counter() - start, len(batches)


def measure(label: str, cfg_for, splits, repeats: int, max_steps: int | None = None) -> list[dict]:
    rows = []
    for method in ("joint", "msam"):
        cfg = cfg_for(method)
        times = {True: [], False: []}
        for r in range(repeats):
            for observe in (True, False) if r % 2 == 0 else (False, True):  # alternate the order
                seconds, steps = epoch_seconds(cfg, splits, observe, max_steps)
                times[observe].append(seconds)
        with_obs, without = statistics.median(times[True]), statistics.median(times[False])
        rows.append(
            {
                "setting": label,
                "method": method,
                "steps": steps,
                "with_s": with_obs,
                "without_s": without,
                "ratio": with_obs / without,
            }
        )
        print(
            f"{label:<28} {method:<6} steps {steps:>4}  with {with_obs:7.3f} s  without {without:7.3f} s  "
            f"ratio {with_obs / without:5.2f}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=2000, help="synthetic samples (3/4 train)")
    p.add_argument("--modalities", default="2,3,4,8")
    p.add_argument("--root", default="/tmp/avmnist-mini", help="an AV-MNIST built by msam-lab data build-avmnist")
    p.add_argument("--resnet-steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.samples, args.modalities, args.resnet_steps = 1, 200, "2,3", 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line("cpu"))
    rows = []
    for n in [int(m) for m in args.modalities.split(",")]:

        def cfg_for(method, n=n):
            return synthetic_config(n, method, args.samples)

        splits = _load_splits(cfg_for("joint"), "cpu")
        rows += measure(f"synthetic M={n}", cfg_for, splits, args.repeats)
    if Path(args.root, "build_info.json").is_file() and not args.quick:

        def paper_for(method):
            return paper_config(args.root, method, val_fraction=0.0)

        cfg = paper_for("joint")
        splits = with_validation(_load_splits(cfg, "cpu"), 0.0, cfg.seed)
        rows += measure(
            f"ResNet-18 AV-MNIST ({args.resnet_steps} steps)", paper_for, splits, args.repeats, args.resnet_steps
        )
    else:
        why = "--quick" if args.quick else f"no AV-MNIST at {args.root} (msam-lab data build-avmnist)"
        print(f"# ResNet-18 AV-MNIST skipped: {why}")
    print("\n| setting | method | steps | with observation (s) | without (s) | with / without |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['method']} | {r['steps']} | {r['with_s']:.3f} | {r['without_s']:.3f} | "
            f"{r['ratio']:.2f} |"
        )
    return 0 if all(np.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
