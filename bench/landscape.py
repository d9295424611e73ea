"""Benchmark: loss-surface evaluation speed (a script, not a test).

Same model, same evaluation subset, same grid size for every case; each case
is timed ``--repeats`` times, interleaved, and the median is reported.

    python bench/landscape.py --run runs/some-av-digits-run [--grid 7] [--repeats 3]

Without ``--run`` an untrained av-digits model of the default architecture is
used (the speed does not depend on the weights).

Cases (single torch thread unless said otherwise):
  ll          loss-landscapes' random_plane, one Loss metric (fused loss only)
  fused       ours, fused loss and accuracy only
  fused-plain ours, fused only, like loss-landscapes: one batch, default memory layout
  all         ours, every metric (fused + each modality alone + each removed)
  w1 / w2     ours, every metric, 1 or 2 single-thread worker processes (start-up included)
  w1w / w2w   the same on an already started pool (steady state)
  t2          ours, every metric, one process with 2 threads
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def load_model_and_data(run_path, split: str):
    if run_path:
        from msam_lab.runs.reader import load_run

        run = load_run(run_path)
        return run.load_model(), getattr(run.load_data(), split), f"run {run_path}"
    from msam_lab.datasets import load_dataset
    from msam_lab.models.multimodal import build_model

    splits = load_dataset("av-digits")
    shapes = {m: tuple(x.shape[1:]) for m, x in splits.train.inputs.items()}
    torch.manual_seed(0)
    model = build_model(shapes, splits.num_classes, "late_sum", splits.info.get("encoders", {}))
    return model.eval(), getattr(splits, split), "untrained av-digits model"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run directory (default: an untrained av-digits model)")
    ap.add_argument("--grid", type=int, default=7, help="points per axis (odd; default 7 -> 49 points)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-samples", type=int, default=512)
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--skip", default="", help="comma-separated cases to skip, e.g. ll,fused-plain")
    args = ap.parse_args(argv)

    from msam_lab.landscape import WorkerPool, compute_surface, eval_subset, grid, random_directions

    model, data, what = load_model_and_data(args.run, args.split)
    subset, _ = eval_subset(data, args.n_samples, seed=0)
    n_points = args.grid**2
    dirs = random_directions(model, 2, seed=0)
    coords = [grid(args.grid, 1.0), grid(args.grid, 1.0)]
    skip = set(filter(None, args.skip.split(",")))

    def ours(per_modality=True, threads=1, **kw):
        def run():
            compute_surface(
                model, subset, dirs, coords, per_modality=per_modality, n_samples=None, threads=threads, **kw
            )

        return run

    def ll():
        from loss_landscapes.main import random_plane
        from loss_landscapes.metrics.sl_metrics import Loss
        from loss_landscapes.model_interface.model_wrapper import GeneralModelWrapper

        m = copy.deepcopy(model).eval()  # it moves the weights it is given
        wrapper = GeneralModelWrapper(m, [m], lambda mod, x: mod(x))
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            random_plane(
                wrapper,
                Loss(F.cross_entropy, subset.inputs, subset.labels),
                distance=1,
                steps=args.grid,
                normalization="filter",
            )
        finally:
            torch.set_num_threads(old)

    pools = {}

    def pooled(n):
        def run():
            compute_surface(model, subset, dirs, coords, n_samples=None, pool=pools[n])

        return run

    cases = {
        "ll": ("loss-landscapes random_plane (fused loss)", ll),
        "fused": ("ours, fused only", ours(per_modality=False)),
        "fused-plain": (
            "ours, fused only, one batch, NCHW",
            ours(per_modality=False, batch_size=None, channels_last=False),
        ),
        "all": ("ours, all metrics", ours()),
        "w1": ("ours, all metrics, 1 worker (with start-up)", lambda: _fresh_pool(model, subset, dirs, coords, 1)),
        "w2": ("ours, all metrics, 2 workers (with start-up)", lambda: _fresh_pool(model, subset, dirs, coords, 2)),
        "w1w": ("ours, all metrics, 1 worker (warm pool)", pooled(1)),
        "w2w": ("ours, all metrics, 2 workers (warm pool)", pooled(2)),
        "t2": ("ours, all metrics, 1 process x 2 threads", ours(threads=2)),
    }
    if "ll" not in skip:
        try:
            import loss_landscapes  # noqa: F401
        except ImportError:
            print("loss-landscapes is not installed: skipping the ll case")
            skip.add("ll")
    cases = {k: v for k, v in cases.items() if k not in skip}

    load0 = os.getloadavg()
    print(
        f"{what}; {sum(p.numel() for p in model.parameters())} parameters; {len(subset)} samples "
        f"({args.split}); grid {args.grid}x{args.grid} = {n_points} points; {args.repeats} repeats"
    )
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load0[0]:.2f}"
    )
    if "w1w" in cases:
        pools[1] = WorkerPool(1).warm()
    if "w2w" in cases:
        pools[2] = WorkerPool(2).warm()
    times = {k: [] for k in cases}
    cpu = {k: [] for k in ("all", "w1w", "w2w") if k in cases}
    try:
        for rep in range(args.repeats):
            for key, (_, fn) in cases.items():
                c0 = _cpu_seconds(pools, key)
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
                if key in cpu:
                    cpu[key].append(_cpu_seconds(pools, key) - c0)
            print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        for p in pools.values():
            p.close()
    med = {k: statistics.median(v) for k, v in times.items()}

    print()
    print(f"{'case':<48} {'median s':>9} {'ms/point':>9}")
    for key, (label, _) in cases.items():
        print(f"{label:<48} {med[key]:>9.2f} {1000 * med[key] / n_points:>9.1f}")
    print()
    print(f"{'ratio':<48} {'value':>9}  target")

    def ratio(label, a, b, target=""):
        if a in med and b in med:
            print(f"{label:<48} {med[a] / med[b]:>9.2f}  {target}")

    ratio("loss-landscapes / ours fused", "ll", "fused", ">= 1 (ours no slower)")
    ratio("loss-landscapes / ours fused (one batch, NCHW)", "ll", "fused-plain", "(like for like)")
    ratio("ours all metrics / ours fused", "all", "fused", "<= 1.3")
    ratio("1 worker / 2 workers (with start-up)", "w1", "w2", ">= 1.8")
    ratio("1 worker / 2 workers (warm pool)", "w1w", "w2w", ">= 1.8")
    ratio("1 process x 2 threads / 2 workers (warm pool)", "t2", "w2w", "(report)")
    ratio("1 process x 2 threads / 2 workers (with start-up)", "t2", "w2", "(report)")
    if cpu:
        # CPU time is what a case costs whatever else runs on the machine; if a point costs the same CPU
        # time in 1 and in 2 workers, the workers do not slow each other down (memory bandwidth, caches)
        # and 2 idle cores give ~2x.
        print()
        print(f"{'CPU seconds per point (all processes of the case)':<48} {'ms':>9}")
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        for key, label in (
            ("all", "in-process, 1 thread"),
            ("w1w", "1 worker (warm pool)"),
            ("w2w", "2 workers (warm pool), summed"),
        ):
            if key in cmed:
                print(f"{label:<48} {1000 * cmed[key] / n_points:>9.1f}")
        if "w1w" in cmed and "w2w" in cmed and cmed["w2w"] > 0:
            print(
                f"{'2-worker speed-up on 2 idle cores, from CPU time':<48} {2 * cmed['w1w'] / cmed['w2w']:>9.2f}"
                "  (upper bound of the warm-pool ratio)"
            )
    load1 = os.getloadavg()
    print(
        f"\nload average at the end {load1[0]:.2f} (other processes compete for the cores when it is "
        f"above the number of busy workers)"
    )
    return 0


def _cpu_seconds(pools, key) -> float:
    """CPU time (user + system) used so far by the processes of a case: this process, or a warm pool's."""
    if key == "w1w" or key == "w2w":
        pool = pools[1 if key == "w1w" else 2]
        total = 0.0
        for pid in list(pool.executor._processes):  # Linux /proc; 0 elsewhere
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                return 0.0
        return total
    return time.process_time()


def _fresh_pool(model, subset, dirs, coords, n):
    """A pool of ``n`` single-thread processes started for this one surface (start-up timed too)."""
    from msam_lab.landscape import WorkerPool, compute_surface

    with WorkerPool(n) as pool:
        compute_surface(model, subset, dirs, coords, n_samples=None, pool=pool)


if __name__ == "__main__":
    sys.exit(main())
