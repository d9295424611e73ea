"""Per-epoch evaluation: its share of a run's wall time, and what a train subset does to τ
(a benchmark, not a test).

1. The teaching lab's default retrain (av-digits, M-SAM, 3 epochs, through ``TeachingLab.retrain``
   as the notebook calls it), with the default seeded train-evaluation subset
   (``train_eval_samples=512``) and with the whole train split (``0``), interleaved; wall time and
   the share spent in epoch evaluation. Targets: retrain <= 10 s, evaluation <= 15 %.
2. τ on the subset against τ on the whole train split: M-SAM runs on av-digits (one per seed,
   a checkpoint every epoch); each checkpoint's train accuracy measured on both, τ both ways.

    python bench/eval_cost.py [--repeats 3] [--seeds 0,1,2] [--epochs 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def lab_timing(repeats: int) -> None:
    from msam_lab.training import loop as trainer
    from msam_lab.widgets.teaching_lab import TeachingLab

    spent = {"eval": 0.0}
    real = trainer.epoch_metrics

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent["eval"] += time.perf_counter() - t

    trainer.epoch_metrics = timed
    rows = {512: [], 0: []}
    try:
        for _ in range(repeats):
            for n in rows:
                spent["eval"] = 0.0
                lab = TeachingLab(base_config={"train_eval_samples": n}, root=tempfile.mkdtemp())
                t = time.perf_counter()
                lab.retrain()
                wall = time.perf_counter() - t
                rows[n].append((wall, spent["eval"] / wall))
    finally:
        trainer.epoch_metrics = real
    print("teaching lab default retrain (av-digits, msam, 3 epochs):")
    for n, v in rows.items():
        print(
            f"  train_eval_samples={n:<4d} median retrain {statistics.median(w for w, _ in v):5.2f} s  "
            f"evaluation {100 * statistics.median(s for _, s in v):4.1f} % of it   "
            f"runs {', '.join(f'{w:.2f}' for w, _ in v)}"
        )


def tau_subset(seeds, epochs: int) -> None:
    import msam_lab
    from msam_lab.analysis.metrics import evaluate, tau, train_eval_subset

    diffs, finals = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            run = msam_lab.train(
                {"method": "msam", "epochs": epochs, "seed": seed, "checkpoint_every": 1, "train_eval_samples": 0},
                out=Path(tmp) / f"s{seed}",
                quiet=True,
            )
            data = run.load_data()
            subset = train_eval_subset(data.train, 512, seed)
            for epoch in range(1, epochs + 1):
                model = run.load_model(epoch)
                full_row = run.epochs.set_index("epoch").loc[epoch]
                sub_acc = evaluate(model, subset)["acc"]
                t_full, t_sub = full_row["tau"], tau(sub_acc, full_row["test_acc"])
                diffs.append(t_sub - t_full)
                if epoch == epochs:
                    finals.append((seed, t_full, t_sub))
    d = np.abs(diffs)
    print(
        f"τ on a 512-sample train subset vs the whole train split (av-digits, msam, {epochs} epochs, "
        f"seeds {','.join(map(str, seeds))}, {len(diffs)} epoch checkpoints):"
    )
    print(f"  |Δτ| median {np.median(d):.4f}, mean {d.mean():.4f}, max {d.max():.4f}; mean Δτ {np.mean(diffs):+.4f}")
    for seed, t_full, t_sub in finals:
        print(f"  seed {seed} final epoch: τ full {t_full:.4f}, τ subset {t_sub:.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--skip-tau", action="store_true")
    args = ap.parse_args(argv)
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    lab_timing(args.repeats)
    if not args.skip_tau:
        tau_subset([int(s) for s in args.seeds.split(",")], args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
