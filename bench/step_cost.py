"""Step cost of M-SAM against joint training and SAM (a benchmark, not a test).

Median wall time per training step, measured side by side in one process with
the methods interleaved (so machine noise hits all alike), as ratios:

- ``joint`` / ``sam``: the plain updates, WITHOUT the per-step Shapley record
  that the trainer logs for every method (its cost is measured separately);
- ``msam``: the full M-SAM step (its Shapley observation is part of the method);
- ``shapley share``: the part of the M-SAM step spent in ``observe``
  (coalition passes + Shapley values);
- ``wrapper``: ``msam_lab.MSAM.step`` on a user-defined model (``UserModel`` below: a plain
  ``nn.Module`` of the same architecture and initial weights, not msam_lab's MultimodalModel),
  ``forward = lambda present: model(inputs, present)``, as ``wrapper/msam`` against the built-in
  M-SAM step on the same batches; ``wrapper+hook`` is the same optimizer given the
  ``coalitions(presents)`` hook (``MSAM.step(..., coalitions=...)``), which the user model
  implements as the built-in does: the clean pass's features (this model has no BatchNorm or
  dropout, so they are the eval-mode ones), each encoder once on one zero sample, each head once on
  each, and the 2^M coalitions summed from those (one call, one host sync).
  Before timing, both M-SAMs take a few steps from the same weights and their dominant
  modalities are printed and compared (a sanity check, not a timing).

Targets (issue 2): msam/sam <= 1.15, Shapley <= 10 % of the M-SAM step;
(issue 10): wrapper/msam <= 1.05 (``(paired)``: the median of the per-repeat ratios, each repeat's
wrapper block run right after its built-in M-SAM block).

    python bench/step_cost.py [--repeats 7] [--steps 20] [--device auto] [--clock wall|cpu] [--threads N]

``--clock cpu --threads 1`` times this process's CPU time, which other jobs on a shared machine
do not enter (as bench/paper_step_cost.py).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn

import msam_lab
from msam_lab.datasets import load_dataset
from msam_lab.methods import build_method
from msam_lab.methods.base import Observation
from msam_lab.models.multimodal import build_model
from msam_lab.optim import base as optim
from msam_lab.training.loop import resolve_device
from msam_lab.training.setup import resolve

clock = time.perf_counter  # --clock cpu: time.process_time


def no_record(method):
    """Skip the Shapley record: the plain joint/SAM update as other codebases run it."""
    n = len(method.model.modalities)
    obs = Observation(np.zeros(n), np.full(n, 1.0 / n), 0)
    method.observe = lambda *a, **k: obs
    return method


def timed_observe(method, bucket):
    inner = method.observe

    def observe(*args, **kwargs):
        t = clock()
        out = inner(*args, **kwargs)
        sync(method)
        bucket.append(clock() - t)
        return out

    method.observe = observe
    return method


def sync(method):
    if next(method.model.parameters()).is_cuda:
        torch.cuda.synchronize()


class UserModel(nn.Module):
    """What a user of ``msam_lab.MSAM`` writes: a plain nn.Module, one encoder per modality, a
    linear head per modality, logits summed (the built-in ``late_sum`` model layer for layer:
    ``mlp`` = MLPEncoder, ``cnn`` = CNNEncoder, as plain nn.Sequential of the same shapes, in the
    same parameter order, so the built-in's initial weights load into it one to one).

    Coalitions: an absent modality's *feature* is the encoder's output on one all-zero sample,
    broadcast over the batch, i.e. the built-in's ``zero_features()``. That is the built-in's
    coalition semantics (``MultimodalModel.forward(inputs, present)`` zeroes the inputs, which
    gives the same features in eval mode or without BatchNorm/dropout, as here), and it is the
    cheaper of the two: the absent encoder runs on one sample, not the batch. Nothing is cached.
    """

    def __init__(self, shapes, num_classes, kinds, feature_dim, hidden_dim, cnn_width=16, pool=(8, 4)):
        super().__init__()
        self.names = tuple(shapes)
        encoders = {}
        for m, shape in shapes.items():
            if kinds.get(m, "mlp") == "mlp":
                encoders[m] = nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(int(np.prod(shape)), hidden_dim),
                    nn.ReLU(),
                    nn.Linear(hidden_dim, feature_dim),
                    nn.ReLU(),
                )
            elif kinds[m] == "cnn":
                w = cnn_width
                channel = [nn.Unflatten(1, (1, shape[0]))] if len(shape) == 2 else []  # (N,H,W) -> (N,1,H,W)
                encoders[m] = nn.Sequential(
                    *channel,
                    nn.Conv2d(1 if len(shape) == 2 else shape[0], w, 3, padding=1),
                    nn.MaxPool2d(2),
                    nn.ReLU(),
                    nn.Conv2d(w, 2 * w, 3, padding=1),
                    nn.MaxPool2d(2),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(pool),
                    nn.Flatten(),
                    nn.Linear(2 * w * pool[0] * pool[1], feature_dim),
                    nn.ReLU(),
                )
            else:
                raise ValueError(f"UserModel has no {kinds[m]!r} encoder")
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict({m: nn.Linear(feature_dim, num_classes) for m in self.names})

    def features(self, x, present):
        n = len(next(iter(x.values())))
        return {
            m: self.encoders[m](x[m])
            if m in present
            else self.encoders[m](x[m].new_zeros((1, *x[m].shape[1:]))).expand(n, -1)
            for m in self.names
        }

    def logits(self, features):
        return sum(self.heads[m](features[m]) for m in self.names)

    def forward(self, x, present):
        return self.logits(self.features(x, present))


def user_model_like(builtin, shapes, num_classes, kinds, cfg):
    """A UserModel holding a copy of ``builtin``'s weights (same parameter order and shapes)."""
    user = UserModel(shapes, num_classes, kinds, cfg.feature_dim, cfg.hidden_dim).to(next(builtin.parameters()))
    mine, theirs = list(user.parameters()), list(builtin.parameters())
    assert [p.shape for p in mine] == [p.shape for p in theirs], "UserModel does not match the built-in model"
    with torch.no_grad():
        for p, q in zip(mine, theirs):
            p.copy_(q)
    return user


class WrapperStep:
    """``msam_lab.MSAM`` on a UserModel, with the built-in M-SAM's settings; ``step(inputs, labels)``.

    ``hook``: MSAM also gets ``coalitions(presents) -> (K, B, C)``, the observation in one call
    (called in eval mode under no grad, so running the encoders in it is right for any model).
    """

    def __init__(self, model, cfg, hook=False):
        self.model, self.hook = model, hook
        base, kwargs = optim.base_optimizer(cfg)
        self.opt = msam_lab.MSAM(
            model.parameters(),
            base,
            modalities=model.names,
            model=model,
            rho=cfg.rho,
            adaptive=cfg.adaptive,
            share_rule=cfg.share_rule,
            tie_rule=cfg.tie_rule,
            shapley_value=cfg.shapley_value,
            exact_max=cfg.shapley_exact_max,
            n_permutations=cfg.shapley_permutations,
            seed=cfg.seed,
            bn_policy=cfg.bn_policy,
            **kwargs,
        )

    def step(self, inputs, labels):
        model = self.model

        if not self.hook:
            return self.opt.step(lambda present: model(inputs, present), labels)
        clean = {}

        def forward(present):
            feats = model.features(inputs, present)
            if not clean and len(present) == len(model.names):  # the clean pass, first in MSAM.step
                clean.update({m: f.detach() for m, f in feats.items()})
            return model.logits(feats)

        def coalitions(presents):
            # this model has no BatchNorm or dropout, so its train-mode features are its eval-mode ones and
            # the clean pass's can be reused (the built-in decides the same with models.is_mode_invariant)
            feats = clean or {m: model.encoders[m](inputs[m]) for m in model.names}
            real = {m: model.heads[m](feats[m]) for m in model.names}
            zero = {m: model.heads[m](model.encoders[m](inputs[m][:1] * 0)) for m in model.names}
            return torch.stack(
                [sum(real[m] if m in p else zero[m].expand_as(real[m]) for m in model.names) for p in presents]
            )

        return self.opt.step(forward, labels, coalitions=coalitions)


def same_dominance(cfg, shapes, num_classes, kinds, batches, device, n_steps=5):
    """Dominant modality of the first ``n_steps`` steps: built-in M-SAM vs msam_lab.MSAM on UserModel
    (both variants), from the same initial weights on the same batches."""
    torch.manual_seed(0)
    model = build_model(shapes, num_classes, cfg.fusion, kinds, cfg.feature_dim, cfg.hidden_dim).to(device)
    wrappers = [
        WrapperStep(user_model_like(model, shapes, num_classes, kinds, cfg), cfg, hook) for hook in (False, True)
    ]
    builtin = build_method(model, resolve(cfg, ["method=msam"]))
    seqs = [[], [], []]
    for i in range(n_steps):
        inputs, labels = batches[i % len(batches)]
        seqs[0].append(builtin.step(inputs, labels)["dominant"])
        for seq, w in zip(seqs[1:], wrappers):
            seq.append(w.step(inputs, labels).dominant)
    return seqs


def bench_dataset(dataset, data, device, repeats, steps):
    cfg_base = resolve({"dataset": dataset, "data": data})
    splits = load_dataset(dataset, **cfg_base.data).to(device)
    shapes = {m: tuple(x.shape[1:]) for m, x in splits.train.inputs.items()}
    batches = list(
        splits.train.batches(
            cfg_base.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
        )
    )
    kinds = splits.info["encoders"]
    seqs = same_dominance(cfg_base, shapes, splits.num_classes, kinds, batches, device)
    print(
        f"# {dataset}: dominant modality, first {len(seqs[0])} steps from the same weights: built-in M-SAM "
        f"{seqs[0]}, msam_lab.MSAM {seqs[1]}, with the coalitions hook {seqs[2]}: "
        f"{'same' if seqs[0] == seqs[1] == seqs[2] else 'DIFFERENT'}"
    )
    observe_times = []
    methods = {}
    for name, method in (("joint", "joint"), ("joint+record", "joint"), ("sam", "sam"), ("msam", "msam")):
        torch.manual_seed(0)
        model = build_model(
            shapes,
            splits.num_classes,
            cfg_base.fusion,
            splits.info["encoders"],
            cfg_base.feature_dim,
            cfg_base.hidden_dim,
        ).to(device)
        m = build_method(model, resolve(cfg_base, [f"method={method}"]))
        if name in ("joint", "sam"):
            no_record(m)
        if name == "msam":
            timed_observe(m, observe_times)
        methods[name] = m
        if name == "msam":  # same architecture, same initial weights
            for wname, hook in (("wrapper", False), ("wrapper+hook", True)):
                methods[wname] = WrapperStep(
                    user_model_like(model, shapes, splits.num_classes, kinds, cfg_base), cfg_base, hook
                )
    per_step = {name: [] for name in methods}
    msam_total = []
    for r in range(repeats + 1):  # repeat 0 warms up
        for name, m in methods.items():
            if name == "msam":
                observe_times.clear()
            sync(m)
            t = clock()
            for i in range(steps):
                m.step(*batches[i % len(batches)])
            sync(m)
            dt = (clock() - t) / steps
            if r:
                per_step[name].append(dt)
                if name == "msam":
                    msam_total.append((sum(observe_times) / steps) / dt)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return {
        "dataset": dataset,
        "M": len(shapes),
        **{f"{k}_ms": 1000 * v for k, v in med.items()},
        "sam/joint": med["sam"] / med["joint"],
        "msam/joint": med["msam"] / med["joint"],
        "msam/sam": med["msam"] / med["sam"],
        "record/joint": med["joint+record"] / med["joint"] - 1,
        "shapley_share_of_msam": statistics.median(msam_total),
        "wrapper/msam": med["wrapper"] / med["msam"],
        "wrapper+hook/msam": med["wrapper+hook"] / med["msam"],
        **{
            f"{k}/msam (paired)": statistics.median(a / b for a, b in zip(per_step[k], per_step["msam"]))
            for k in ("wrapper", "wrapper+hook")
        },
        "dominance": "same" if seqs[0] == seqs[1] == seqs[2] else "DIFFERENT",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time the process's CPU time (with --threads 1 on a shared machine)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    global clock
    if args.clock == "cpu":
        clock = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}, {args.clock} clock; "
        f"median of {args.repeats} x {args.steps} steps"
    )
    rows = [
        bench_dataset("av-digits", {}, device, args.repeats, args.steps),
        bench_dataset("synthetic", {"n_modalities": 4}, device, args.repeats, args.steps),
    ]
    cols = [
        "dataset",
        "M",
        "joint_ms",
        "sam_ms",
        "msam_ms",
        "sam/joint",
        "msam/joint",
        "msam/sam",
        "shapley_share_of_msam",
        "record/joint",
        "wrapper_ms",
        "wrapper/msam",
        "wrapper/msam (paired)",
        "wrapper+hook_ms",
        "wrapper+hook/msam",
        "wrapper+hook/msam (paired)",
        "dominance",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    print("# targets: msam/sam <= 1.15, shapley_share_of_msam <= 0.10 (issue 2); wrapper/msam <= 1.05 (issue 10)")


if __name__ == "__main__":
    main()
