"""How often ``coalition_features: batch`` and ``eval`` pick the same dominant modality (a benchmark, not a test).

M-SAM is trained on the ``eval`` observation (today's trajectory, unchanged); at every step the ``batch``
observation is computed alongside from the same clean-pass features at the same weights, and compared:
agreement of the dominant modality and |Δ share| (the largest over the modalities; for M = 2 both
modalities' shares move by the same amount). Two settings:

- ``avmnist``: the paper's late-fusion config (configs/paper/avmnist-late.yaml, two ResNet-18s with
  BatchNorm) on AV-MNIST-mini (``msam-lab data build-avmnist ... --out /tmp/avmnist-mini``);
- ``av-digits``: the default dataset with ``cnn_bn`` encoders (msam_lab's small CNN with a BatchNorm
  after each convolution, registered here as a plug-in).

    python bench/coalition_features.py [--settings avmnist,av-digits] [--root /tmp/avmnist-mini]
        [--epochs 3] [--seeds 0,1,2] [--max-steps 0] [--set key=value ...] [--threads 0]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # msam_lab importable without an install

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from msam_lab.datasets.validation import with_validation  # noqa: E402
from msam_lab.models.multimodal import has_batchnorm, register_encoder  # noqa: E402
from msam_lab.optim import schedules  # noqa: E402
from msam_lab.training.loop import _build, _load_splits, _model_spec, resolve_device, seed_everything  # noqa: E402
from msam_lab.training.setup import resolve  # noqa: E402

PAPER = ROOT / "configs" / "paper" / "avmnist-late.yaml"


class CNNBNEncoder(nn.Module):
    """``CNNEncoder`` with a BatchNorm after each convolution (takes (N,H,W) or (N,C,H,W))."""

    def __init__(self, in_shape, out_dim: int, hidden: int = 128, width: int = 16, pool=(8, 4)):
        super().__init__()
        channels = in_shape[0] if len(in_shape) == 3 else 1
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(2 * width * pool[0] * pool[1], out_dim),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.net(x.unsqueeze(1) if x.dim() == 3 else x)


def setting_config(setting: str, root: str, seed: int, epochs: int, extra):
    over = [f"seed={seed}", f"epochs={epochs}", "device=cpu", "method=msam", "coalition_features=eval"]
    if setting == "avmnist":
        return resolve(str(PAPER), [f"data.root={root}", "data_path=memory", *over, *extra])
    register_encoder("cnn_bn", CNNBNEncoder, replace=True)
    return resolve(None, ["encoders.image=cnn_bn", "encoders.audio=cnn_bn", *over, *extra])


def compare_run(cfg, max_steps: int) -> dict:
    """Train M-SAM on the eval observation; at each step compare the batch observation with it."""
    device = resolve_device("cpu")
    splits = with_validation(_load_splits(cfg, device), cfg.val_fraction, cfg.seed)
    seed_everything(cfg.seed)
    model, method = _build(_model_spec(splits, cfg), cfg, device)
    assert has_batchnorm(model), "the comparison needs a BatchNorm model"
    inner = method.observe
    out = {"agree": [], "dshare": [], "dominant": [], "ms_eval": [], "ms_batch": []}

    def observe(inputs, labels, features=None):
        previous = method._previous_dominant
        method.config.coalition_features = "batch"
        t = time.perf_counter()
        batch = inner(inputs, labels, features)
        out["ms_batch"].append(1000 * (time.perf_counter() - t))
        method._previous_dominant = previous  # the eval observation sees the state the step sees
        method.config.coalition_features = "eval"
        t = time.perf_counter()
        obs = inner(inputs, labels, features)
        out["ms_eval"].append(1000 * (time.perf_counter() - t))
        out["agree"].append(batch.dominant == obs.dominant)
        out["dshare"].append(float((torch.as_tensor(batch.share) - torch.as_tensor(obs.share)).abs().max()))
        out["dominant"].append(obs.dominant)
        return obs

    method.observe = observe
    generator = torch.Generator().manual_seed(cfg.seed)
    drop_last = len(splits.train) % cfg.batch_size == 1  # one-sample batches break train-mode BatchNorm
    for epoch in range(cfg.epochs):
        method.start_epoch(epoch)
        method.set_lr_factor(schedules.lr_factor(epoch, cfg))
        for step, (inputs, labels) in enumerate(
            splits.train.batches(cfg.batch_size, shuffle=True, generator=generator, drop_last=drop_last)
        ):
            if max_steps and step >= max_steps:
                break
            method.train_step(inputs, labels)
    out["modalities"] = model.modalities
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="avmnist,av-digits")
    ap.add_argument("--root", default="/tmp/avmnist-mini", help="AV-MNIST in the MultiBench layout")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-steps", type=int, default=0, help="steps per epoch (0: the whole epoch)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run, key=value")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in ("avmnist", "av-digits")]
    if bad:
        ap.error(f"unknown setting {bad[0]!r}; choose avmnist, av-digits")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(
        f"# {datetime.now():%Y-%m-%d %H:%M} {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}"
    )
    print(f"# epochs {args.epochs}, seeds {seeds}, max steps/epoch {args.max_steps or 'all'}, --set {args.set}")
    print(
        "| setting | seed | steps | dominant (eval) | dominant agrees | mean \\|Δ share\\| | max \\|Δ share\\| "
        "| observe ms eval | observe ms batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for setting in settings:
        pooled = {"agree": [], "dshare": [], "ms_eval": [], "ms_batch": []}
        for seed in seeds:
            t = time.perf_counter()
            r = compare_run(setting_config(setting, args.root, seed, args.epochs, args.set), args.max_steps)
            counts = ", ".join(f"{m} {r['dominant'].count(i)}" for i, m in enumerate(r["modalities"]))
            for k in pooled:
                pooled[k] += r[k]
            print(
                f"| {setting} | {seed} | {len(r['agree'])} | {counts} | {100 * np.mean(r['agree']):.1f} % | "
                f"{np.mean(r['dshare']):.3f} | {np.max(r['dshare']):.3f} | {statistics.median(r['ms_eval']):.1f} | "
                f"{statistics.median(r['ms_batch']):.1f} |",
                flush=True,
            )
            print(f"#   ({time.perf_counter() - t:.0f} s)", flush=True)
        print(
            f"| **{setting}, all seeds** | | {len(pooled['agree'])} | | **{100 * np.mean(pooled['agree']):.1f} %** | "
            f"**{np.mean(pooled['dshare']):.3f}** | {np.max(pooled['dshare']):.3f} | "
            f"{statistics.median(pooled['ms_eval']):.1f} | {statistics.median(pooled['ms_batch']):.1f} |",
            flush=True,
        )
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
