"""Device→host synchronisations per training step, per method (a benchmark and a guard; works on CPU).

On a GPU every read of a device value on the host (``float(t)``, ``t.item()``, ``bool(t)``,
``t.tolist()``, ``t.numpy()``, ``t.cpu()``) waits for the whole queue of kernels: a step that makes
one stalls the device once. This counts them on any device, CPU included, where they cost nothing but
are the same calls:

- scalar reads: ``aten._local_scalar_dense``, seen by a ``TorchDispatchMode`` (``item``, ``float``,
  ``int``, ``bool`` of a tensor, a tensor used as a Python index);
- ``Tensor.tolist``, ``Tensor.numpy`` (``np.asarray(t)`` included) and ``Tensor.cpu``, counted by
  wrapping those methods for the duration (a scalar read inside one of them is not counted twice).

Per method it reports two figures, each the median over ``--steps`` steps after a warm-up step:

- ``method``: ``method.train_step(inputs, labels)`` alone: the update and its step record;
- ``trainer``: what ``msam_lab.train`` does per step: the ``nan_policy`` guard around the step and
  ``RunWriter.log_step``, with the rows flushed only at the end (``flush``: the syncs of one flush,
  the guard's finite flags and the rows, amortised over ``flush_every`` seconds of steps).

    python bench/syncs.py [--methods joint,sam,msam,msam-params,msam-unimodal] [--steps 5] [--dataset synthetic]

Targets (issue 23): joint and SAM 0 per step, M-SAM default 0, ``params`` ≤ 1 (flushes apart).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from msam_lab.datasets import load_dataset
from msam_lab.methods import build_method
from msam_lab.models.multimodal import build_model
from msam_lab.runs.writer import RunWriter
from msam_lab.training.guards import StepGuard
from msam_lab.training.setup import resolve

METHODS = {
    "joint": ["method=joint"],
    "sam": ["method=sam"],
    "msam": ["method=msam"],
    "msam-params": ["method=msam", "msam_variant=params"],
    "msam-unimodal": ["method=msam", "msam_variant=unimodal"],
    "msam-previous": ["method=msam", "tie_rule=previous"],
    "msam-softmax": ["method=msam", "share_rule=softmax", "share_temperature=0.1"],
}
TARGETS = {"joint": 0, "sam": 0, "msam": 0, "msam-params": 1}
WRAPPED = ("tolist", "numpy", "cpu")


class SyncCounter(TorchDispatchMode):
    """Counts the device→host reads made while it is active (``counts``: a Counter by kind)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self._inside = 0  # > 0 inside a wrapped method: its own scalar reads are not counted again
        self._saved = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self._inside:
            self.counts["scalar"] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self):
        for name in WRAPPED:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapped(t, *a, _name=name, _original=original, **k):
                self.counts[_name] += 1
                self._inside += 1
                try:
                    return _original(t, *a, **k)
                finally:
                    self._inside -= 1

            setattr(torch.Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved = {}
        return super().__exit__(*exc)


@contextlib.contextmanager
def counting():
    counter = SyncCounter()
    with counter:
        yield counter


def setting(dataset: str, overrides, device="cpu", data=None):
    """A model, its method and the training batches of ``dataset`` (as the trainer builds them)."""
    cfg = resolve({"dataset": dataset, "device": str(device), "data": data or {}}, overrides)
    splits = load_dataset(dataset, **cfg.data).to(device)
    shapes = {m: tuple(x.shape[1:]) for m, x in splits.train.inputs.items()}
    torch.manual_seed(cfg.seed)
    model = build_model(
        shapes, splits.num_classes, cfg.fusion, splits.info["encoders"], cfg.feature_dim, cfg.hidden_dim
    ).to(device)
    method = build_method(model, cfg)
    gen = torch.Generator().manual_seed(0)
    batches = list(splits.train.batches(cfg.batch_size, shuffle=True, generator=gen, drop_last=True))
    return cfg, model, method, batches


def count_method(dataset: str, overrides, steps: int = 5, device="cpu", data=None) -> dict:
    """Median syncs per step of ``train_step`` alone and of the trainer's step (guard + log_step), and
    the syncs of one flush of those rows."""
    cfg, model, method, batches = setting(dataset, overrides, device, data)
    # as the trainer's: nan_policy=stop reads its flags at the flushes (here: once, at the end)
    guard = StepGuard(cfg.nan_policy, model, method, check_every=1e9)
    alone, trainer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        writer = RunWriter(f"{tmp}/run", cfg.to_dict(), {}, flush_every=1e9)
        try:
            for i in range(steps + 1):
                inputs, labels = batches[i % len(batches)]
                with counting() as c:
                    method.train_step(inputs, labels, host=False)
                with counting() as t:
                    writer.log_step({"step": i, "epoch": 1, **guard.step(inputs, labels)})
                if i:  # step 0 warms up
                    alone.append(c.total())
                    trainer.append(t.total())
            with counting() as f:
                guard.check()
                writer.flush(status=False)
        finally:
            writer.finish({})
    return {
        "method": statistics.median(alone),
        "trainer": statistics.median(trainer),
        "flush": f.total(),
        "kinds": dict(t.counts),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    print(f"# {args.dataset}, device {args.device}, torch {torch.__version__}; median of {args.steps} steps")
    print(
        "| method | syncs per train_step | syncs per trainer step | syncs per flush | target | kinds (trainer step) |"
    )
    print("|---|---|---|---|---|---|")
    missed = 0
    for name in names:
        r = count_method(args.dataset, METHODS[name], args.steps, args.device)
        target = TARGETS.get(name)
        met = target is None or r["trainer"] <= target
        missed += not met
        print(
            f"| {name} | {r['method']:g} | {r['trainer']:g} | {r['flush']} | "
            f"{'-' if target is None else f'≤ {target}'}{'' if met else ' MISSED'} | {r['kinds'] or '-'} |"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
