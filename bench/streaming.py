"""Streaming loader against the device-resident path on av-mnist, CPU (a benchmark, not a test).

Both paths come from ``datasets.load_for_training`` as the trainer calls it (``data_path=memory``:
the split as CPU tensors, batched by indexing; ``data_path=stream``: memory-mapped ``.npy`` files
read per batch through a DataLoader, ``num_workers`` 0 or 2). Two data sets:

- the small real AV-MNIST (``--root``, default /tmp/avmnist-mini);
- a synthetic AV-MNIST of ``--synthetic-n`` train samples (default 20,000) written in the MultiBench
  layout to a temp dir (image (N,784) float32, audio (N,112,112) uint8, random values): 1 GB of
  float32 once decoded, where streaming starts to matter.

Measured, variants interleaved within each repeat, medians of ``--repeats``:

1. samples/s of iterating one epoch of shuffled training batches of 64 (``--max-batches`` caps an
   epoch of the big set), every batch touched; the files are in the page cache after the first pass,
   so this is the warm-cache cost of reading + converting (uint8 -> float32 / 255) + collating;
2. samples/s of joint training over the same batches with the dataset's default encoders (cnn,
   112x112 audio), through ``Method.train_step``: what the loader costs a real step;
3. the one-off load time of each path (memory: reading and converting the whole split).

    python bench/streaming.py [--repeats 3] [--synthetic-n 20000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from msam_lab.training.loop import _build, _load_splits, _model_spec, resolve_device, seed_everything
from msam_lab.training.setup import resolve

PATHS = (("memory", "memory", 0), ("stream w0", "stream", 0), ("stream w2", "stream", 2))


def write_synthetic(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A random AV-MNIST in the MultiBench layout (written in chunks: bounded memory)."""
    rng = np.random.default_rng(seed)
    (folder / "image").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        image = np.lib.format.open_memmap(folder / "image" / f"{split}_data.npy", "w+", np.float32, (n, 784))
        audio = np.lib.format.open_memmap(folder / "audio" / f"{split}_data.npy", "w+", np.uint8, (n, 112, 112))
        for s in range(0, n, 4096):
            e = min(n, s + 4096)
            image[s:e] = rng.normal(0, 60, (e - s, 784)).astype(np.float32)
            audio[s:e] = rng.integers(0, 256, (e - s, 112, 112), dtype=np.uint8)
        image.flush()
        audio.flush()
        del image, audio
        np.save(folder / f"{split}_labels.npy", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def config(root, data_path, workers):
    return resolve(
        {
            "dataset": "av-mnist",
            "data": {"root": str(root)},
            "method": "joint",
            "device": "cpu",
            "data_path": data_path,
            "num_workers": workers,
            "batch_size": 64,
            "val_fraction": 0.0,
        }
    )


def batch_plan(n, max_batches):
    return n if not max_batches else min(n, max_batches * 64)


def iterate(data, max_batches, seed):
    """Samples/s of one shuffled pass (capped at ``max_batches``), every batch touched."""
    seen, t = 0, time.perf_counter()
    for i, (inputs, labels) in enumerate(data.batches(64, shuffle=True, generator=torch.Generator().manual_seed(seed))):
        for x in inputs.values():
            float(x.view(-1)[-1])  # touch: a lazy path would have to deliver now
        seen += len(labels)
        if max_batches and i + 1 >= max_batches:
            break
    return seen / (time.perf_counter() - t)


def train(data, method, max_batches, seed):
    seen, t = 0, time.perf_counter()
    for i, (inputs, labels) in enumerate(data.batches(64, shuffle=True, generator=torch.Generator().manual_seed(seed))):
        method.train_step(inputs, labels)
        seen += len(labels)
        if max_batches and i + 1 >= max_batches:
            break
    return seen / (time.perf_counter() - t)


def bench(label, root, repeats, iter_batches, train_batches, do_train):
    device = resolve_device("cpu")
    loaded, load_s = {}, {}
    for name, path, workers in PATHS:
        t = time.perf_counter()
        splits = _load_splits(config(root, path, workers), device)
        load_s[name] = time.perf_counter() - t
        loaded[name] = splits
    n = len(loaded["memory"].train)
    methods = {}
    if do_train:
        for name, path, workers in PATHS:
            cfg = config(root, path, workers)
            seed_everything(0)
            methods[name] = _build(_model_spec(loaded[name], cfg), cfg, device)[1]
    it = {name: [] for name, _, _ in PATHS}
    tr = {name: [] for name, _, _ in PATHS}
    it1 = []
    for r in range(repeats + 1):  # pass 0 warms the page cache, the workers' imports
        order = PATHS[r % 3 :] + PATHS[: r % 3]
        for name, _, _ in order:
            v = iterate(loaded[name].train, iter_batches, r)
            if r:
                it[name].append(v)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the memory path's gather is a torch op: its threads under load
        try:
            v = iterate(loaded["memory"].train, iter_batches, r)
        finally:
            torch.set_num_threads(threads)
        if r:
            it1.append(v)
        if do_train:
            for name, _, _ in order:
                v = train(loaded[name].train, methods[name], train_batches if r else 2, r)
                if r:
                    tr[name].append(v)
        print(f"  {label} repeat {r}: " + ", ".join(f"{k} {it[k][-1]:.0f}/s" for k in it if it[k] and r), flush=True)
    rows = []
    mem_it = statistics.median(it["memory"])
    mem_tr = statistics.median(tr["memory"]) if do_train else None
    for name, _, _ in PATHS:
        i = statistics.median(it[name])
        row = [label, name, str(n), f"{load_s[name]:.2f}", f"{i:.0f}", f"{i / mem_it:.3f}"]
        if do_train:
            t = statistics.median(tr[name])
            row += [f"{t:.0f}", f"{t / mem_tr:.3f}"]
        else:
            row += ["", ""]
        rows.append(row)
        if name == "memory":
            i1 = statistics.median(it1)
            rows.append([label, "memory, 1 torch thread", str(n), "", f"{i1:.0f}", f"{i1 / mem_it:.3f}", "", ""])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/avmnist-mini")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic-n", type=int, default=20000, help="train samples of the synthetic set (0: skip)")
    ap.add_argument("--max-batches", type=int, default=100, help="batches per pass over the synthetic set (0: all)")
    ap.add_argument("--train-batches", type=int, default=10, help="joint-training batches per pass (0: an epoch)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 5,000 synthetic samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.synthetic_n = 1, min(args.synthetic_n, 5000)
    print(
        f"# {datetime.now().strftime('%Y-%m-%d %H:%M')}  {platform.node()} {platform.machine()} "
        f"{platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    rows = bench("av-mnist mini (real)", args.root, args.repeats, 0, args.train_batches, not args.no_train)
    if args.synthetic_n:
        tmp = Path(tempfile.mkdtemp(prefix="avmnist-synth-"))
        try:
            t = time.perf_counter()
            write_synthetic(tmp, args.synthetic_n, 1000)
            print(
                f"  wrote a synthetic AV-MNIST of {args.synthetic_n} train samples to {tmp} "
                f"in {time.perf_counter() - t:.1f} s"
            )
            rows += bench(
                f"av-mnist synthetic {args.synthetic_n // 1000}k",
                tmp,
                args.repeats,
                args.max_batches,
                args.train_batches,
                not args.no_train,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    cols = [
        "data",
        "path",
        "train N",
        "load s",
        "iterate samples/s",
        "iterate / memory",
        "joint train samples/s",
        "train / memory",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"iterate: shuffled batches of 64 (synthetic: {args.max_batches or 'all'} batches per pass); "
        f"train: joint, default cnn encoders, {args.train_batches or 'all'} batches per pass; "
        f"median of {args.repeats}; load average at the end {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
