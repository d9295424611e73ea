"""The fixed cost of the Shapley observation on small models, against the number of modalities M.

On a small model a training step is a millisecond or two, so the work the observation does per step
whatever the model (coalitions through the fusion, the Shapley values, the shares, the dominant
modality, the step's record) decides its cost. Per M, on synthetic data (M MLP encoders, late fusion,
batch 64), methods interleaved in blocks of ``--steps`` steps from the same weights on the same
batches, medians over ``--repeats`` blocks:

- ``record/joint``: what the step's Shapley record adds to a joint step (``joint`` without it is
  the plain update, as ``bench/step_cost.py``'s);
- ``msam/sam``: the whole M-SAM step against SAM without the record;
- ``observe ms``: the time inside ``Method.observe`` in M-SAM's step (to a device sync);
- ``calls/joint``: the model calls every observation makes (each encoder on its zero sample, each
  head on the batch's and the zero features), timed alone, against a joint step: record/joint's floor.

Exact Shapley up to ``shapley_exact_max`` (10), permutation sampling beyond.

    python bench/observation_cost.py [--modalities 2,3,4,...,10] [--repeats 7] [--steps 20] [--threads N]

Targets (issue 23): msam/sam ≤ 1.10 at M = 4, record/joint ≤ 0.10 at M = 2 and M = 4.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import no_record, sync  # noqa: E402

from msam_lab.datasets import load_dataset  # noqa: E402
from msam_lab.methods import build_method  # noqa: E402
from msam_lab.models.multimodal import build_model  # noqa: E402
from msam_lab.training.setup import resolve  # noqa: E402


def bench_m(n_modalities: int, repeats: int, steps: int, device="cpu") -> dict:
    base = resolve({"dataset": "synthetic", "device": str(device), "data": {"n_modalities": n_modalities}})
    splits = load_dataset("synthetic", **base.data).to(device)
    shapes = {m: tuple(x.shape[1:]) for m, x in splits.train.inputs.items()}
    gen = torch.Generator().manual_seed(0)
    batches = list(splits.train.batches(base.batch_size, shuffle=True, generator=gen, drop_last=True))
    methods, observe_times = {}, []
    for name, method in (("joint", "joint"), ("joint+record", "joint"), ("sam", "sam"), ("msam", "msam")):
        torch.manual_seed(0)
        model = build_model(
            shapes, splits.num_classes, base.fusion, splits.info["encoders"], base.feature_dim, base.hidden_dim
        ).to(device)
        m = build_method(model, resolve(base, [f"method={method}"]))
        if name in ("joint", "sam"):
            no_record(m)
        if name == "msam":
            inner = m.observe

            def observe(*a, _inner=inner, _m=m, **k):
                t = time.perf_counter()
                out = _inner(*a, **k)
                sync(_m)
                observe_times.append(time.perf_counter() - t)
                return out

            m.observe = observe
        methods[name] = m
    # the trainer's step: its row left on the device (host=False; the code before issue 23 has no such option)
    steps_of = {
        name: partial(m.train_step, host=False)
        if "host" in inspect.signature(m.train_step).parameters
        else m.train_step
        for name, m in methods.items()
    }
    per_step = {name: [] for name in methods}
    observe_ms = []
    for r in range(repeats + 1):  # block 0 warms up
        for name, m in methods.items():
            observe_times.clear()
            sync(m)
            t = time.perf_counter()
            for i in range(steps):
                steps_of[name](*batches[i % len(batches)])
            sync(m)
            if r:
                per_step[name].append((time.perf_counter() - t) / steps)
                if name == "msam":
                    observe_ms.append(1000 * statistics.median(observe_times))
    # the model calls no observation can skip: each encoder on its zero sample, each head on the batch's
    # features and on the zero feature (late sum fusion); timed alone, as a floor for record/joint
    model = methods["joint"].model
    with torch.no_grad():
        features = model.encode(batches[0][0])

        def model_calls():
            zeros = model.zero_features()
            return [(h(f), h(z)) for h, f, z in zip(model.fusion.heads, features, zeros)]

        floor = []
        for _ in range(repeats + 1):
            sync(methods["joint"])
            t = time.perf_counter()
            for _ in range(steps):
                model_calls()
            sync(methods["joint"])
            floor.append((time.perf_counter() - t) / steps)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return {
        "M": n_modalities,
        "coalitions": 1 << n_modalities if n_modalities <= base.shapley_exact_max else "sampled",
        **{f"{k}_ms": 1000 * v for k, v in med.items()},
        "record/joint": med["joint+record"] / med["joint"] - 1,
        "msam/sam": med["msam"] / med["sam"],
        "observe_ms": statistics.median(observe_ms),
        "observe/msam": statistics.median(observe_ms) / (1000 * med["msam"]),
        "calls/joint": statistics.median(floor[1:]) / med["joint"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modalities", default="2,3,4,5,6,7,8,9,10")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {platform.node()} {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {args.device}; median of {args.repeats} x {args.steps} steps, methods interleaved"
    )
    cols = ["M", "coalitions", "joint_ms", "joint+record_ms", "record/joint", "sam_ms", "msam_ms", "msam/sam",
            "observe_ms", "observe/msam", "calls/joint"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n in [int(m) for m in args.modalities.split(",")]:
        row = bench_m(n, args.repeats, args.steps, args.device)
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
        sys.stdout.flush()
    print("# targets: msam/sam <= 1.10 at M = 4; record/joint <= 0.10 at M = 2 and 4 (issue 23)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
