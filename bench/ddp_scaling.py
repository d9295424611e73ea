"""Data-parallel throughput: training samples/s with N ranks against one process (a benchmark, not a test).

The paper's ResNet-18 AV-MNIST late-fusion model (configs/paper/avmnist-late.yaml: image 28x28, audio
112x112, global batch 64) on synthetic tensors of those shapes, built as the trainer builds it; each
rank takes its shard of every global batch and runs ``Method.train_step``, whose update ends in the
gradient all-reduce (msam_lab/distributed.py). Timed: ``--steps`` steps after one warm-up step, the
wall time of the slowest rank.

CPU (issue 12's target: 2 processes >= 1.6x the samples/s of 1, with 2 threads in total in both):

    python bench/ddp_scaling.py [--nproc 1,2] [--threads 2] [--methods joint,msam] [--steps 4] [--repeats 3]

runs, for each method and repeat, one process with ``--threads`` torch threads and then N processes
under torchrun with threads/N each (gloo), alternating; the table gives the median samples/s and the
ratio to one process. On CUDA (``--device cuda``; bench/gpu.sh runs it when a machine has several
GPUs) one GPU per rank (NCCL) and the scaling efficiency = (samples/s with N) / (N × samples/s with 1),
target >= 0.9 per added GPU, at ``--per-device-batch`` per GPU (weak scaling, the usual way to add GPUs).

``--quick``: msam_lab's small cnn encoders and 16x16 inputs (the test suite's smoke run, not a measurement).
``--worker``: one rank's measurement (torchrun starts this; prints one JSON line on rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "paper" / "avmnist-late.yaml"
SHAPES = {"image": (28, 28), "audio": (112, 112)}
QUICK_SHAPES = {"image": (16, 16), "audio": (16, 16)}


def worker(args) -> int:
    import torch

    from msam_lab import distributed
    from msam_lab.datasets.base import MultimodalData, Splits
    from msam_lab.training import ranks as data_parallel
    from msam_lab.training.loop import _build, _model_spec, seed_everything
    from msam_lab.training.setup import resolve

    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    overrides = [f"method={args.method}", f"device={args.device}", "data_path=memory"]
    if args.per_device_batch:
        overrides.append(f"per_device_batch={args.per_device_batch}")
    if args.sync_bn:
        overrides.append("sync_bn=true")
    if args.quick:
        overrides += [f"encoders.{m}=cnn" for m in shapes]
    cfg = resolve(str(CONFIG), overrides)
    device = data_parallel.device_for_rank(cfg, torch.device)
    batch = data_parallel.global_batch(cfg)
    n = batch * (args.steps + 1)
    g = torch.Generator().manual_seed(0)
    data = MultimodalData(
        {m: torch.randn(n, 1, *s, generator=g) for m, s in shapes.items()}, torch.randint(0, 10, (n,), generator=g), 10
    ).to(device)
    splits = Splits(data, data, {"encoders": {}})
    seed_everything(cfg.seed)
    model, method = _build(_model_spec(splits, cfg), cfg, device)
    model = data_parallel.prepare_model(model, cfg, device)
    batches = list(data.batches(batch, shard=distributed.shard_of))
    method.train_step(*batches[0])  # warm-up: allocations, NCCL/gloo buffers

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        distributed.barrier()

    sync()
    start = time.perf_counter()
    for inputs, labels in batches[1:]:
        method.train_step(inputs, labels)
    sync()  # the slowest rank's time
    seconds = time.perf_counter() - start
    if distributed.is_main():
        print(json.dumps({"seconds": seconds, "samples": batch * args.steps, "world": distributed.world_size()}))
    distributed.shutdown()
    return 0


def measure(nproc: int, method: str, args) -> dict:
    """One run of ``--worker`` in 1 process or under torchrun with ``nproc`` ranks."""
    threads = max(1, args.threads // nproc) if args.device == "cpu" else args.threads
    rest = (
        ["--worker", "--method", method, "--steps", str(args.steps), "--threads", str(threads), "--device", args.device]
        + (["--quick"] if args.quick else [])
        + (["--sync-bn"] if args.sync_bn else [])
        + (["--per-device-batch", str(args.per_device_batch)] if args.per_device_batch else [])
    )
    script = str(Path(__file__).resolve())
    cmd = (
        [sys.executable, script, *rest]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script, *rest]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{nproc} rank(s), {method}: exit {done.returncode}\n{done.stderr[-2000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
    row = json.loads(line)
    return {**row, "samples_per_s": row["samples"] / row["seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="joint", help=argparse.SUPPRESS)
    ap.add_argument("--nproc", default="1,2", help="rank counts, comma-separated (default 1,2); 1 is the baseline")
    ap.add_argument("--methods", default="joint,msam")
    ap.add_argument("--threads", type=int, default=2, help="CPU: torch threads in total, split over the ranks")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per (method, nproc), alternating; medians")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (NCCL, one GPU per rank)")
    ap.add_argument("--per-device-batch", type=int, default=0, help="0: the config's global batch 64 is split")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--sync-bn", action="store_true", help="BatchNorm over the global batch (CUDA only)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    import torch

    counts = sorted({1, *(int(x) for x in args.nproc.split(","))})
    methods = args.methods.split(",")
    load = os.getloadavg()[0]
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores, torch {torch.__version__}, device "
        f"{args.device}, {args.threads} threads in total, load average {load:.2f}, "
        f"{'quick (cnn, 16x16)' if args.quick else 'ResNet-18 AV-MNIST'}{', sync_bn' if args.sync_bn else ''}",
        flush=True,
    )
    rates = {(m, k): [] for m in methods for k in counts}
    for _ in range(args.repeats):
        for m in methods:
            for k in counts:
                rates[(m, k)].append(measure(k, m, args)["samples_per_s"])
    print("| method | ranks | samples/s (median) | runs | vs 1 process | scaling efficiency |")
    print("|---|---|---|---|---|---|")
    result = []
    for m in methods:
        base = statistics.median(rates[(m, 1)])
        for k in counts:
            med = statistics.median(rates[(m, k)])
            result.append(
                {"method": m, "ranks": k, "samples_per_s": med, "ratio": med / base, "efficiency": med / (k * base)}
            )
            print(
                f"| {m} | {k} | {med:.2f} | {', '.join(f'{r:.2f}' for r in rates[(m, k)])} | "
                f"{med / base:.2f} | {med / (k * base):.2f} |",
                flush=True,
            )
    if os.environ.get("OUT"):
        name = "ddp_scaling_syncbn.json" if args.sync_bn else "ddp_scaling.json"
        Path(os.environ["OUT"], name).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
