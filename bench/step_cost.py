"""Step cost of M-SAM against joint training and SAM (a benchmark, not a test).

Median wall time per training step, measured side by side in one process with
the methods interleaved (so machine noise hits all alike), as ratios:

- ``joint`` / ``sam``: the plain updates, WITHOUT the per-step Shapley record
  that the trainer logs for every method (its cost is measured separately);
- ``msam``: the full M-SAM step (its Shapley observation is part of the method);
- ``shapley share``: the part of the M-SAM step spent in ``observe``
  (coalition passes + Shapley values).

Targets (issue 2): msam/sam <= 1.15, Shapley <= 10 % of the M-SAM step.

    python bench/step_cost.py [--repeats 7] [--steps 20] [--device auto]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from msam_lab.config import resolve
from msam_lab.datasets import load_dataset
from msam_lab.methods import build_method
from msam_lab.methods.base import Observation
from msam_lab.models import build_model
from msam_lab.trainer import resolve_device


def no_record(method):
    """Skip the Shapley record: the plain joint/SAM update as other codebases run it."""
    n = len(method.model.modalities)
    obs = Observation(np.zeros(n), np.full(n, 1.0 / n), 0)
    method.observe = lambda *a, **k: obs
    return method


def timed_observe(method, bucket):
    inner = method.observe

    def observe(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        sync(method)
        bucket.append(time.perf_counter() - t)
        return out
    method.observe = observe
    return method


def sync(method):
    if next(method.model.parameters()).is_cuda:
        torch.cuda.synchronize()


def bench_dataset(dataset, data, device, repeats, steps):
    cfg_base = resolve({"dataset": dataset, "data": data})
    splits = load_dataset(dataset, **cfg_base.data).to(device)
    shapes = {m: tuple(x.shape[1:]) for m, x in splits.train.inputs.items()}
    batches = list(splits.train.batches(cfg_base.batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(0), drop_last=True))
    observe_times = []
    methods = {}
    for name, method in (("joint", "joint"), ("joint+record", "joint"), ("sam", "sam"), ("msam", "msam")):
        torch.manual_seed(0)
        model = build_model(shapes, splits.num_classes, cfg_base.fusion, splits.info["encoders"],
                            cfg_base.feature_dim, cfg_base.hidden_dim).to(device)
        m = build_method(model, resolve(cfg_base, [f"method={method}"]))
        if name in ("joint", "sam"):
            no_record(m)
        if name == "msam":
            timed_observe(m, observe_times)
        methods[name] = m
    per_step = {name: [] for name in methods}
    msam_total = []
    for r in range(repeats + 1):                       # repeat 0 warms up
        for name, m in methods.items():
            if name == "msam":
                observe_times.clear()
            sync(m)
            t = time.perf_counter()
            for i in range(steps):
                m.step(*batches[i % len(batches)])
            sync(m)
            dt = (time.perf_counter() - t) / steps
            if r:
                per_step[name].append(dt)
                if name == "msam":
                    msam_total.append((sum(observe_times) / steps) / dt)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return {
        "dataset": dataset, "M": len(shapes),
        **{f"{k}_ms": 1000 * v for k, v in med.items()},
        "sam/joint": med["sam"] / med["joint"], "msam/joint": med["msam"] / med["joint"],
        "msam/sam": med["msam"] / med["sam"], "record/joint": med["joint+record"] / med["joint"] - 1,
        "shapley_share_of_msam": statistics.median(msam_total),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}; median of {args.repeats} x {args.steps} steps")
    rows = [bench_dataset("av-digits", {}, device, args.repeats, args.steps),
            bench_dataset("synthetic", {"n_modalities": 4}, device, args.repeats, args.steps)]
    cols = ["dataset", "M", "joint_ms", "sam_ms", "msam_ms", "sam/joint", "msam/joint", "msam/sam",
            "shapley_share_of_msam", "record/joint"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
