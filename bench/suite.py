"""Every ratio target of docs/benchmarks.md, measured side by side, in one table (a benchmark, not a test).

    python bench/suite.py [--quick] [--device cpu|cuda] [--only step,paper,...] [--json OUT.json]

One row per target: figure, target, measured, and met / missed (or ``report``: a figure with no
target; ``pending``: it cannot be measured here, the row says why). Each figure reuses the bench
script that documents it (step_cost, gpu, syncs, landscape, streaming, ddp_scaling), so the suite
and those scripts measure the same thing; the suite only runs them smaller (``--quick``) and
gathers the verdicts. Figures:

- ``step``: M-SAM / SAM, the Shapley share of the M-SAM step, the record's cost on a joint step and
  msam_lab.MSAM with its coalitions hook against the built-in step (av-digits M = 2, synthetic M = 4);
- ``paper``: the paper's ResNet-18 AV-MNIST model (synthetic tensors of its shapes, batch 64),
  M-SAM with ``coalition_features=batch`` against pure SAM, and its observation's share of the step;
- ``syncs``: device→host syncs per trainer step (bench/syncs.py; pending while it is absent); on
  CUDA also the syncs torch.cuda.set_sync_debug_mode reports for one train_step;
- ``landscape``: loss-landscapes' random_plane against ours, every per-modality metric against the
  fused one, and (not in --quick) 2 warm workers against 1;
- ``streaming``: a joint epoch's samples/s streaming from memory-mapped files against device-resident;
- ``ddp``: 2 gloo ranks against one process on the CPU; on 2+ GPUs the scaling efficiency;
- ``lab``: the teaching lab's default retrain (av-digits, M-SAM, 3 epochs) and its evaluation share;
- ``gpu`` (CUDA only): TFLOP/s against the measured matmul ceiling, bf16 against fp32, peak memory,
  landscape points/s (bench/gpu.py's rows).

``--quick`` (the tested smoke run, under 3 minutes on 2 cores): fewer steps and repeats, smaller
inputs for the paper model (audio 32x32), the quick ddp model. Its numbers are a health check,
not the figures of docs/benchmarks.md. bench/gpu.sh runs ``suite.py --device cuda`` after gpu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]  # msam_lab and the sibling bench scripts, without an install

import gpu  # noqa: E402
import numpy as np  # noqa: E402
import step_cost  # noqa: E402
import torch  # noqa: E402

from msam_lab.methods.base import Observation  # noqa: E402
from msam_lab.training.loop import resolve_device  # noqa: E402

STATUSES = ("met", "missed", "report", "pending", "skipped", "error")
FIGURES = ("step", "paper", "syncs", "landscape", "streaming", "ddp", "lab", "gpu")


@dataclass
class Row:
    figure: str
    target: str  # "≤ 1.05", "≥ 1.6", or "-" (report only)
    measured: str
    status: str  # one of STATUSES
    note: str = ""


def verdict(figure: str, value: float, op: str, bound: float, fmt: str = ".3f", unit: str = "", note="") -> Row:
    met = value <= bound if op == "≤" else value >= bound
    return Row(figure, f"{op} {bound:g}{unit}", f"{value:{fmt}}{unit}", "met" if met else "missed", note)


def report(figure: str, measured: str, note: str = "") -> Row:
    return Row(figure, "-", measured, "report", note)


def pending(figure: str, target: str, why: str) -> Row:
    return Row(figure, target, "-", "pending", why)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, steps: int, warmup: int, device) -> dict:
    """Median seconds per call of each ``fns[name](i)``, the names rotated step by step (noise hits all)."""
    names, times = list(fns), {name: [] for name in fns}
    for i in range(warmup + steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            sync(device)
            t = time.perf_counter()
            fns[name](i)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def pure(method):
    """No per-step observation: the update as other codebases run it (the targets' denominator)."""
    n = len(method.model.modalities)
    obs = Observation(np.zeros(n), np.full(n, 1.0 / n), 0)
    method.observe = lambda *a, **k: obs
    return method


def timed_observe(method, bucket: list, device):
    inner = method.observe

    def observe(*args, **kwargs):
        sync(device)
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        sync(device)
        bucket.append(time.perf_counter() - t)
        return out

    method.observe = observe
    return method


# ---------------------------------------------------------------------------- figures


def fig_step(args, device) -> list[Row]:
    """bench/step_cost.py's measurement (issues 2, 10, 23), fewer repeats in --quick."""
    rows = []
    repeats, steps = (1, 3) if args.quick else (7, 20)
    for dataset, data, msam_sam in (("av-digits", {}, 1.15), ("synthetic", {"n_modalities": 4}, 1.10)):
        r = step_cost.bench_dataset(dataset, data, device, repeats, steps)
        where = f"{dataset} M={r['M']}"
        rows += [
            verdict(f"step: M-SAM / SAM, {where}", r["msam/sam"], "≤", msam_sam),
            verdict(
                f"step: Shapley share of the M-SAM step, {where}",
                100 * r["shapley_share_of_msam"],
                "≤",
                10,
                ".1f",
                " %",
            ),
            verdict(f"step: record / joint step, {where}", 100 * r["record/joint"], "≤", 10, ".1f", " %"),
            verdict(
                f"step: msam_lab.MSAM + coalitions hook / built-in, {where}",
                r["wrapper+hook/msam"],
                "≤",
                1.05,
                note=f"dominance {r['dominance']}",
            ),
        ]
    return rows


def fig_paper(args, device) -> list[Row]:
    """ResNet-18 AV-MNIST late fusion (bench/gpu.py's builder: the trainer's model from the paper config,
    synthetic tensors of AV-MNIST's shapes): M-SAM with ``coalition_features=batch`` against pure SAM."""
    shapes = {"image": (28, 28), "audio": (32, 32)} if args.quick else gpu.SHAPES
    batch, steps, warmup = 64, (2 if args.quick else 6), 1
    observed = {"msam batch": [], "msam eval": []}
    methods = {}
    for name, method, extra in (
        ("pure sam", "sam", ()),
        ("msam batch", "msam", ("coalition_features=batch",)),
        ("msam eval", "msam", ("coalition_features=eval",)),
    ):
        _, _, m, data = gpu.build(method, "fp32", False, shapes, batch, device, extra=extra)
        methods[name] = pure(m) if name == "pure sam" else timed_observe(m, observed[name], device)
    inputs, labels = data.inputs, data.labels
    med = interleaved(
        {k: (lambda i, m=m: m.train_step(inputs, labels)) for k, m in methods.items()}, steps, warmup, device
    )
    note = f"audio {shapes['audio'][0]}x{shapes['audio'][1]}, {steps} steps" + (" (--quick)" if args.quick else "")
    obs = {k: statistics.median(v[warmup:] or v) for k, v in observed.items()}
    return [
        verdict(
            "paper ResNet-18: M-SAM (coalition_features=batch) / pure SAM",
            med["msam batch"] / med["pure sam"],
            "≤",
            1.05,
            note=note,
        ),
        verdict(
            "paper ResNet-18: observation share of the M-SAM step (batch)",
            100 * obs["msam batch"] / med["msam batch"],
            "≤",
            3,
            ".1f",
            " %",
            note=note,
        ),
        report(
            "paper ResNet-18: M-SAM (coalition_features=eval) / pure SAM",
            f"{med['msam eval'] / med['pure sam']:.3f} (observation {100 * obs['msam eval'] / med['msam eval']:.1f} %)",
            note,
        ),
    ]


def fig_syncs(args, device) -> list[Row]:
    """bench/syncs.py (issue 23 item 2) when present: syncs per trainer step, flushes apart."""
    try:
        import syncs  # noqa: PLC0415 - written in parallel (issue 23 item 2): optional until it lands
    except ImportError as err:
        return [
            pending(f"syncs per step: {m}", "≤ 0" if m != "msam-params" else "≤ 1", f"bench/syncs.py: {err}")
            for m in ("joint", "sam", "msam", "msam-params")
        ]
    rows = []
    steps = 3 if args.quick else 5
    for name, target in syncs.TARGETS.items():
        r = syncs.count_method("synthetic", syncs.METHODS[name], steps, str(device))
        rows.append(
            verdict(
                f"syncs per step: {name} (synthetic)", r["trainer"], "≤", target, "g", note=f"+ {r['flush']} per flush"
            )
        )
    if device.type == "cuda":
        for name in syncs.TARGETS:
            cfg, model, method, batches = syncs.setting("synthetic", syncs.METHODS[name], str(device))
            method.train_step(*batches[0])  # warm-up
            torch.cuda.synchronize(device)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    method.train_step(*batches[1 % len(batches)])
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            n = sum("synchroniz" in str(w.message) for w in caught)
            rows.append(
                verdict(f"CUDA syncs (set_sync_debug_mode) per train_step: {name}", n, "≤", syncs.TARGETS[name], "d")
            )
    return rows


def fig_landscape(args, device) -> list[Row]:
    """bench/landscape.py's cases (issue 4): an untrained av-digits model, the same subset and grid."""
    import copy  # noqa: PLC0415 - only this figure copies a model

    import landscape  # noqa: PLC0415 - imports loss-landscapes' users lazily itself

    from msam_lab.landscape import WorkerPool, compute_surface, eval_subset, grid, random_directions  # noqa: PLC0415

    model, data, _ = landscape.load_model_and_data(None, "train")
    n, points = (128, 5) if args.quick else (512, 7)
    subset, _ = eval_subset(data, n, seed=0)
    dirs = random_directions(model, 2, seed=0)
    coords = [grid(points, 1.0), grid(points, 1.0)]

    def ours(per_modality):
        return lambda i: compute_surface(
            model, subset, dirs, coords, per_modality=per_modality, n_samples=None, threads=1
        )

    def ll(i):
        import torch.nn.functional as F  # noqa: PLC0415 - this case alone
        from loss_landscapes.main import random_plane  # noqa: PLC0415 - optional dependency
        from loss_landscapes.metrics.sl_metrics import Loss  # noqa: PLC0415
        from loss_landscapes.model_interface.model_wrapper import GeneralModelWrapper  # noqa: PLC0415

        m = copy.deepcopy(model).eval()
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            random_plane(
                GeneralModelWrapper(m, [m], lambda mod, x: mod(x)),
                Loss(F.cross_entropy, subset.inputs, subset.labels),
                distance=1,
                steps=points,
                normalization="filter",
            )
        finally:
            torch.set_num_threads(old)

    cpu = torch.device("cpu")
    repeats = 1 if args.quick else 3
    med = interleaved({"ll": ll, "fused": ours(False), "all": ours(True)}, repeats, 1 if not args.quick else 0, cpu)
    note = f"{points}x{points} grid, {n} samples"
    rows = [
        verdict("landscape: loss-landscapes / ours (fused loss)", med["ll"] / med["fused"], "≥", 1, ".2f", note=note),
        verdict(
            "landscape: ours every per-modality metric / fused", med["all"] / med["fused"], "≤", 1.3, ".2f", note=note
        ),
    ]
    if args.quick:
        rows.append(Row("landscape: 1 worker / 2 workers (warm pool)", "≥ 1.8", "-", "skipped", "not in --quick"))
        return rows
    pools = {k: WorkerPool(k).warm() for k in (1, 2)}  # started before the timing, as bench/landscape.py
    try:
        med = interleaved(
            {
                k: (lambda i, p=p: compute_surface(model, subset, dirs, coords, n_samples=None, pool=p))
                for k, p in pools.items()
            },
            repeats,
            1,
            cpu,
        )
    finally:
        for p in pools.values():
            p.close()
    rows.append(verdict("landscape: 1 worker / 2 workers (warm pool)", med[1] / med[2], "≥", 1.8, ".2f", note=note))
    return rows


def fig_streaming(args, device) -> list[Row]:
    """bench/streaming.py (issue 9): joint training's samples/s, streaming (0 workers) against resident."""
    import streaming  # noqa: PLC0415 - this figure only

    from msam_lab.training.loop import _build, _load_splits, _model_spec, seed_everything  # noqa: PLC0415

    n, batches = (640, 2) if args.quick else (5000, 10)
    with tempfile.TemporaryDirectory() as tmp:
        root = streaming.write_synthetic(Path(tmp), n, 64)
        methods = {}
        for name, path in (("memory", "memory"), ("stream", "stream")):
            cfg = streaming.config(root, path, 0)
            splits = _load_splits(cfg, torch.device("cpu"))
            seed_everything(0)
            methods[name] = (splits.train, _build(_model_spec(splits, cfg), cfg, torch.device("cpu"))[1])
        rates = {k: [] for k in methods}
        for r in range(1 if args.quick else 3):
            for name, (data, method) in methods.items():
                rates[name].append(streaming.train(data, method, batches, r))
    ratio = statistics.median(rates["stream"]) / statistics.median(rates["memory"])
    return [
        verdict(
            "streaming (0 workers) / device-resident, joint samples/s",
            ratio,
            "≥",
            0.9,
            ".3f",
            note=f"{n} synthetic AV-MNIST samples, {batches} batches",
        )
    ]


def fig_ddp(args, device) -> list[Row]:
    """bench/ddp_scaling.py (issue 12): 2 ranks against one process (CPU: gloo, 2 threads in total)."""
    import ddp_scaling  # noqa: PLC0415 - this figure only

    if device.type == "cuda":
        n = torch.cuda.device_count()
        if n < 2:
            return [pending("ddp: scaling efficiency per added GPU", "≥ 0.9", "one GPU (bench/gpu.sh runs it on 2+)")]
        counts, target, what = (1, n), 0.9, f"ddp: scaling efficiency, {n} GPUs (joint)"
    else:
        counts, target, what = (1, 2), 1.6, "ddp: 2 gloo ranks / 1 process, joint samples/s"
    ns = SimpleNamespace(
        quick=args.quick,
        threads=2,
        device=device.type,
        steps=2 if args.quick else 4,
        timeout=600,
        sync_bn=False,
        per_device_batch=64 if device.type == "cuda" else 0,
    )
    rates = {k: [] for k in counts}
    for _ in range(1 if args.quick else 3):
        for k in counts:
            rates[k].append(ddp_scaling.measure(k, "joint", ns)["samples_per_s"])
    ratio = statistics.median(rates[counts[1]]) / statistics.median(rates[1])
    if device.type == "cuda":
        ratio /= counts[1]
    note = "quick model (cnn, 16x16)" if args.quick else "ResNet-18 AV-MNIST shapes"
    return [verdict(what, ratio, "≥", target, ".2f", note=note)]


def fig_lab(args, device) -> list[Row]:
    """bench/eval_cost.py's lab timing (issue 8): the default retrain, and its epoch evaluation's share."""
    from msam_lab.training import loop as trainer  # noqa: PLC0415 - patched for the timing only
    from msam_lab.widgets.teaching_lab import TeachingLab  # noqa: PLC0415 - ipywidgets

    spent = {"eval": 0.0}
    real = trainer.epoch_metrics

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent["eval"] += time.perf_counter() - t

    trainer.epoch_metrics = timed
    walls, shares = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(1 if args.quick else 3):
                spent["eval"] = 0.0
                lab = TeachingLab(base_config={"train_eval_samples": 512}, root=f"{tmp}/{r}")
                t = time.perf_counter()
                lab.retrain()
                walls.append(time.perf_counter() - t)
                shares.append(spent["eval"] / walls[-1])
    finally:
        trainer.epoch_metrics = real
    return [
        verdict(
            "teaching lab: default retrain (av-digits, M-SAM, 3 epochs)", statistics.median(walls), "≤", 10, ".1f", " s"
        ),
        verdict("teaching lab: evaluation share of the retrain", 100 * statistics.median(shares), "≤", 15, ".1f", " %"),
    ]


def fig_gpu(args, device) -> list[Row]:
    """bench/gpu.py's rows on CUDA: TFLOP/s against the matmul ceiling, bf16 against fp32, peak memory,
    landscape points/s."""
    if args.gpu_json and Path(args.gpu_json).is_file():  # bench/gpu.sh: gpu.py has just measured them
        return gpu_rows(json.loads(Path(args.gpu_json).read_text()))
    if device.type != "cuda":
        return [pending("gpu: TFLOP/s, bf16 / fp32, peak memory, landscape points/s", "-", "no CUDA device")]
    ns = SimpleNamespace(
        batch=64,
        warmup=2 if args.quick else 10,
        repeats=5 if args.quick else 50,
        encoder=None,
        grid=5 if args.quick else 11,
        landscape_samples=512,
        landscape_batch=256,
    )
    ceiling = gpu.matmul_ceiling(4096 if args.quick else 8192, device, 5)
    rows = []
    steps = {}
    for method in ("joint", "msam"):
        for precision in gpu.PRECISIONS:
            r = gpu.step_row(method, precision, False, ns, gpu.SHAPES, device)
            steps[(method, precision)] = r
            top = ceiling[gpu.ceiling_for(precision, ceiling)]["tflops"]
            rows.append(
                report(
                    f"gpu: {method} {precision} TFLOP/s (% of matmul ceiling)",
                    f"{r['tflops']:.2f} ({100 * r['tflops'] / top:.1f} %)",
                    f"{r['step_ms']:.1f} ms/step, peak {r['peak_mib']:.0f} MiB",
                )
            )
    for method in ("joint", "msam"):
        ratio = steps[(method, "bf16")]["step_ms"] / steps[(method, "fp32")]["step_ms"]
        rows.append(verdict(f"gpu: {method} step bf16 / fp32", ratio, "≤", 1.0, ".2f"))
    model, data, dirs = gpu.landscape_setup(ns, gpu.SHAPES, device)
    for precision in gpu.PRECISIONS:
        r = gpu.landscape_row(precision, model, data, dirs, ns, device)
        rows.append(
            report(
                f"gpu: landscape points/s ({precision})",
                f"{r['points_per_s']:.1f}",
                f"{r['grid']}, {r['samples']} samples, peak {r['peak_mib']:.0f} MiB",
            )
        )
    return rows


def gpu_rows(result: dict) -> list[Row]:
    """The suite's rows from bench/gpu.py's gpu.json (its steps, ceiling and landscape sections)."""
    rows = []
    steps = {(r["method"], r["precision"]): r for r in result.get("steps", []) if not r["channels_last"]}
    for (method, precision), r in steps.items():
        pct = r.get("pct_of_ceiling")
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        rows.append(
            report(
                f"gpu: {method} {precision} TFLOP/s (% of matmul ceiling)",
                f"{r['tflops']:.2f}" + ("" if pct is None else f" ({pct:.1f} % of {r['ceiling']})"),
                f"{r['step_ms']:.1f} ms/step, peak memory {peak} MiB",
            )
        )
    for method in gpu.METHODS:
        if (method, "bf16") in steps and (method, "fp32") in steps:
            ratio = steps[(method, "bf16")]["step_ms"] / steps[(method, "fp32")]["step_ms"]
            rows.append(verdict(f"gpu: {method} step bf16 / fp32", ratio, "≤", 1.0, ".2f"))
    for r in result.get("landscape", []):
        rows.append(
            report(
                f"gpu: landscape points/s ({r['precision']})",
                f"{r['points_per_s']:.1f}",
                f"{r['grid']}, {r['samples']} samples",
            )
        )
    return rows or [pending("gpu: TFLOP/s, bf16 / fp32, peak memory, landscape points/s", "-", "gpu.json has no rows")]


RUNNERS = {
    "step": fig_step,
    "paper": fig_paper,
    "syncs": fig_syncs,
    "landscape": fig_landscape,
    "streaming": fig_streaming,
    "ddp": fig_ddp,
    "lab": fig_lab,
    "gpu": fig_gpu,
}


def table(rows: list[Row]) -> str:
    lines = ["| figure | target | measured | met or missed | note |", "|---|---|---|---|---|"]
    lines += [f"| {r.figure} | {r.target} | {r.measured} | {r.status} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the smoke run: fewer steps, smaller inputs (< 3 min)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bench/gpu.sh)")
    ap.add_argument("--only", default="", help=f"comma-separated figures (default all): {', '.join(FIGURES)}")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: 1 with --quick, else torch's)")
    ap.add_argument("--gpu-json", help="bench/gpu.py's gpu.json: the gpu rows from it instead of measuring again")
    args = ap.parse_args(argv)
    only = [f for f in args.only.split(",") if f] or list(FIGURES)
    unknown = [f for f in only if f not in RUNNERS]
    if unknown:
        ap.error(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    try:
        device = resolve_device(args.device)
    except Exception as err:  # ConfigError: e.g. cuda asked for on a machine without it
        print(f"bench/suite.py: {err}", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.quick else 0)
    if threads:  # one thread: a shared machine's load cannot collapse torch's intra-op threads mid-figure
        torch.set_num_threads(threads)
    started = time.perf_counter()
    print(
        f"# {datetime.now():%Y-%m-%d %H:%M} {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", load {os.getloadavg()[0]:.2f}"
        + (", --quick" if args.quick else ""),
        flush=True,
    )
    rows = []
    for name in only:
        t = time.perf_counter()
        try:
            got = RUNNERS[name](args, device)
        except Exception as err:  # one failing figure must not lose the others
            got = [
                Row(
                    name,
                    "-",
                    "-",
                    "error",
                    f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                )
            ]
        rows += got
        print(f"# {name}: {time.perf_counter() - t:.0f} s", flush=True)
    print(table(rows))
    print(
        f"# {len(rows)} rows: "
        + ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in STATUSES)
        + f"; {time.perf_counter() - started:.0f} s, load at the end {os.getloadavg()[0]:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 1 if any(r.status == "error" for r in rows) else 0  # a missed target is a finding, not a failure


if __name__ == "__main__":
    sys.exit(main())
