"""The step guard's all-finite check (msam_lab.training.guards.all_finite, run after every update) against the
elementwise ``isfinite(t).all()`` per tensor it replaced, on the parameters and gradients of the paper's two
ResNet-18 encoders (28x28 image, 14x14 audio), side by side, medians of --repeats calls (docs/benchmarks.md).

    .venv/bin/python bench/finite_check.py [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from msam_lab.models.paper_encoders import ResNet18Encoder
from msam_lab.training.guards import all_finite


def elementwise(tensors) -> torch.Tensor:
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torch.nn.ModuleList([ResNet18Encoder((1, 28, 28)), ResNet18Encoder((1, 14, 14))])
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    tensors = [q.detach() for q in model.parameters()] + [q.grad for q in model.parameters()]
    ms = {}
    for name, check in (("isfinite(t).all()", elementwise), ("all_finite (aminmax)", all_finite)):
        check(tensors)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            assert bool(check(tensors))
            times.append(time.perf_counter() - start)
        ms[name] = 1e3 * statistics.median(times)
    n = sum(t.numel() for t in tensors)
    print(
        f"{len(tensors)} tensors, {n / 1e6:.1f} M elements, {args.threads} thread(s), torch {torch.__version__}, "
        f"{platform.machine()}"
    )
    for name, value in ms.items():
        print(f"{name:22s} {value:8.1f} ms")
    print(f"ratio {ms['isfinite(t).all()'] / ms['all_finite (aminmax)']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
