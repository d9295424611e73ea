"""GPU benchmark of the paper's AV-MNIST late-fusion ResNet-18 model (a benchmark, not a test).

What it measures, each on the model the trainer builds from configs/paper/avmnist-late.yaml
(two ResNet-18 encoders, image (28, 28) and audio (112, 112), one channel each; late_concat,
head_hidden [100], 10 classes) at batch 64, on synthetic tensors of those shapes:

- ``step``: median ms of ``Method.train_step`` (the trainer's whole update, Shapley record
  included) for joint, SAM and M-SAM in fp32 and bf16 (config ``precision``), plus the joint
  step with ``channels_last=True``; warm-up steps excluded; CUDA-event timed per step;
- ``TFLOP/s``: FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``, forward and
  backward) over its median time, as % of a measured matmul ceiling of the same precision
  (fp32 rows against TF32 when cuDNN may use TF32 for fp32 convolutions, torch's default);
- ``ceiling``: a large square ``torch.matmul`` in fp32, TF32 and bf16, timed;
- ``landscape``: points/s of a 2-D loss surface (``msam_lab.landscape.compute_surface``, every
  per-modality metric) on a fixed subset of samples, fp32 and bf16 autocast;
- ``peak MiB``: ``torch.cuda.max_memory_allocated`` per variant (model, optimizer state and
  activations; reset before each). On the CPU it is ``n/a``: the process's peak RSS
  (``resource.getrusage``) follows the table as ``cpu_peak_rss_mib``, as it is not per variant.

    python bench/gpu.py [--device cuda] [--quick] [--out DIR] [--budget SECONDS]

``--quick``: tiny batch (4) and inputs (8x8, 16x16), one repeat, and msam_lab's small ``cnn``
encoders in place of ResNet-18 (whose 22 M weights alone take seconds per step on a small CPU):
the test suite's CPU smoke test of every row and column, not a measurement.
Results: a markdown table on stdout, and ``gpu.json`` + ``gpu.md`` under ``--out`` (default
$OUT if set, else bench/out/), rewritten after every section so a run cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # msam_lab importable without an install

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from msam_lab.config import ConfigError  # noqa: E402
from msam_lab.datasets.base import MultimodalData, Splits  # noqa: E402
from msam_lab.landscape import PointEvaluator, compute_surface, eval_subset, grid, preserved, random_directions
from msam_lab.landscape.points import prepare_for_evaluation  # noqa: E402
from msam_lab.training.loop import _build, _model_spec, resolve_device, seed_everything  # noqa: E402
from msam_lab.training.setup import resolve  # noqa: E402

CONFIG = ROOT / "configs" / "paper" / "avmnist-late.yaml"
SHAPES = {"image": (28, 28), "audio": (112, 112)}  # av-mnist's per-sample shapes
QUICK_SHAPES = {"image": (8, 8), "audio": (16, 16)}
NUM_CLASSES = 10
METHODS = ("joint", "sam", "msam")
PRECISIONS = ("fp32", "bf16")


# ---------------------------------------------------------------- timing


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
    return times


def reset_memory(device) -> None:
    if device.type == "cuda":  # (gc on the CPU would only cost time)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def conv_tf32() -> bool:
    """Whether cuDNN may run fp32 convolutions in TF32 (torch's default: yes)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    precision = getattr(conv, "fp32_precision", None) if conv is not None else None
    if precision not in (None, "none"):
        return precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


# ---------------------------------------------------------------- the model, as the trainer builds it


def synthetic(shapes: dict, n: int, device, seed: int = 0) -> MultimodalData:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.rand((n, *s), generator=g) for m, s in shapes.items()}
    return MultimodalData(inputs, torch.randint(0, NUM_CLASSES, (n,), generator=g), NUM_CLASSES).to(device)


def build(method: str, precision: str, channels_last: bool, shapes: dict, batch: int, device, encoder=None, extra=()):
    """Config, model and method exactly as ``trainer.train`` makes them (``_model_spec`` + ``_build``);
    ``encoder``: another encoder kind for both modalities than the config's resnet18 (quick mode);
    ``extra``: more config overrides (``key=value``; bench/suite.py)."""
    cfg = resolve(
        CONFIG,
        [
            f"method={method}",
            f"precision={precision}",
            f"batch_size={batch}",
            f"channels_last={str(channels_last).lower()}",
            f"device={device}",
            *([f"encoders.{m}={encoder}" for m in shapes] if encoder else []),
            *extra,
        ],
    )
    data = synthetic(shapes, batch, device)
    splits = Splits(data, data, {"encoders": {}})
    seed_everything(cfg.seed)
    model, m = _build(_model_spec(splits, cfg), cfg, device)
    return cfg, model, m, data


def step_row(method, precision, channels_last, args, shapes, device) -> dict:
    reset_memory(device)
    cfg, model, m, data = build(method, precision, channels_last, shapes, args.batch, device, args.encoder)
    batch = (data.inputs, data.labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter:  # the first step: counted, then the warm-up ones
        m.train_step(*batch)
    flops = counter.get_total_flops()
    times = timed(lambda: m.train_step(*batch), device, args.warmup, args.repeats)  # noqa: F821 - ruff misreads the closure
    ms = statistics.median(times)
    row = {
        "method": method,
        "precision": precision,
        "channels_last": channels_last,
        "batch": args.batch,
        "step_ms": ms,
        "step_ms_min": min(times),
        "step_ms_max": max(times),
        "repeats": len(times),
        "gflop_per_step": flops / 1e9,
        "tflops": flops / (ms / 1000) / 1e12,
        "peak_mib": peak_mib(device),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    del cfg, model, m, data, batch
    reset_memory(device)
    return row


# ---------------------------------------------------------------- ceiling


def matmul_ceiling(n: int, device, repeats: int) -> dict:
    """TFLOP/s of an n x n x n ``torch.matmul`` in fp32 (no TF32), TF32 and bf16 (median of repeats)."""
    out = {}
    old = torch.get_float32_matmul_precision()
    try:
        for name, dtype, mm_precision in (
            ("fp32", torch.float32, "highest"),
            ("tf32", torch.float32, "high"),
            ("bf16", torch.bfloat16, "highest"),
        ):
            if name == "tf32" and device.type != "cuda":
                continue  # no TF32 on the CPU
            torch.set_float32_matmul_precision(mm_precision)
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.randn((n, n), generator=g, device=device, dtype=dtype)
            b = torch.randn((n, n), generator=g, device=device, dtype=dtype)
            times = timed(lambda: torch.matmul(a, b), device, warmup=3, repeats=repeats)  # noqa: F821 - ruff misreads the closure
            out[name] = {
                "n": n,
                "ms": statistics.median(times),
                "tflops": 2 * n**3 / (statistics.median(times) / 1000) / 1e12,
            }
            del a, b
    finally:
        torch.set_float32_matmul_precision(old)
    return out


# ---------------------------------------------------------------- landscape


def landscape_setup(args, shapes, device):
    """The joint fp32 model (untrained: the speed does not depend on the weights), a fixed subset, 2 directions."""
    reset_memory(device)
    _, model, _, _ = build("joint", "fp32", False, shapes, args.batch, device, args.encoder)
    data = synthetic(shapes, args.landscape_samples, device, seed=1)
    return model, data, random_directions(model, n=2, seed=0)


def landscape_row(precision: str, model, data, dirs, args, device) -> dict:
    """Points/s of a 2-D grid: ``compute_surface`` end to end (its subset copy and model/direction
    fingerprints included), and the steady rate of its ``PointEvaluator`` loop over the same points."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    kwargs = dict(n_samples=args.landscape_samples, batch_size=args.landscape_batch, autocast_dtype=dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compute_surface(model, data, dirs, [grid(1), grid(1)], **kwargs)  # warm-up: the centre point
    sync(device)
    t = time.perf_counter()
    surface = compute_surface(model, data, dirs, [grid(args.grid), grid(args.grid)], **kwargs)
    sync(device)
    seconds = time.perf_counter() - t
    points = surface.points()
    subset, _ = eval_subset(data, args.landscape_samples, 0)
    with preserved(model):  # what compute_surface runs in-process, minus its set-up
        prepare_for_evaluation(model)
        ev = PointEvaluator(model, subset, dirs, True, args.landscape_batch, dtype)
        ev(points[0])
        sync(device)
        t = time.perf_counter()
        for p in points:
            ev(p)
        sync(device)
        steady = time.perf_counter() - t
    n = len(points)
    return {
        "precision": precision,
        "grid": f"{args.grid}x{args.grid}",
        "points": n,
        "samples": args.landscape_samples,
        "chunk": args.landscape_batch,
        "metrics": len(surface.metrics),
        "seconds": seconds,
        "points_per_s": n / seconds,
        "ms_per_point": 1000 * seconds / n,
        "steady_points_per_s": n / steady,
        "steady_ms_per_point": 1000 * steady / n,
        "peak_mib": peak_mib(device),
    }


# ---------------------------------------------------------------- report


def fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def ceiling_for(precision: str, ceiling: dict):
    if precision == "bf16":
        return "bf16"
    return "tf32" if "tf32" in ceiling and conv_tf32() else "fp32"


def markdown(result: dict) -> str:
    lines = [f"# {result['header']}", ""]
    ceiling = result.get("ceiling", {})
    if ceiling:
        lines += ["| matmul ceiling | n | ms | TFLOP/s |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['ms']:.3f} | {v['tflops']:.3g} |" for k, v in ceiling.items()]
        lines.append("")
    steps = result.get("steps", [])
    if steps:
        lines += [
            "| variant | precision | step ms (median) | min–max ms | GFLOP/step | TFLOP/s | % of ceiling "
            "| peak memory MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in steps:
            variant = r["method"] + (" channels_last" if r["channels_last"] else "")
            pct = f"{r['pct_of_ceiling']:.1f} % of {r['ceiling']}" if r.get("pct_of_ceiling") is not None else "n/a"
            lines.append(
                f"| {variant} | {r['precision']} | {r['step_ms']:.2f} | {r['step_ms_min']:.2f}–"
                f"{r['step_ms_max']:.2f} | {r['gflop_per_step']:.3g} | {r['tflops']:.3g} | {pct} | "
                f"{fmt(r['peak_mib'], '.0f')} |"
            )
        lines.append("")
    land = result.get("landscape", [])
    if land:
        lines += [
            "| landscape | grid | samples | metrics | points/s (compute_surface) | ms/point "
            "| points/s (steady) | peak memory MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['precision']} | {r['grid']} | {r['samples']} | {r['metrics']} | {r['points_per_s']:.2f} | "
            f"{r['ms_per_point']:.2f} | {r['steady_points_per_s']:.2f} | {fmt(r['peak_mib'], '.0f')} |"
            for r in land
        ]
        lines.append("")
    if result.get("skipped"):
        lines.append(f"skipped (time budget): {', '.join(result['skipped'])}")
    if result.get("errors"):
        lines += [f"error: {e}" for e in result["errors"]]
    lines.append(f"peak memory: {result['memory_note']}")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu.md").write_text(markdown(result))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny batch and inputs, 1 repeat (CPU tests)")
    ap.add_argument("--batch", type=int, help="default 64 (quick: 4)")
    ap.add_argument("--warmup", type=int, help="untimed steps per variant, default 10 (quick: 0)")
    ap.add_argument("--repeats", type=int, help="timed steps per variant (median), default 50 (quick: 1)")
    ap.add_argument("--matmul-n", type=int, help="ceiling matmul size, default 8192 (quick: 128)")
    ap.add_argument("--grid", type=int, help="landscape points per axis (odd), default 11 (quick: 3)")
    ap.add_argument("--landscape-samples", type=int, help="landscape subset, default 512 (quick: 8)")
    ap.add_argument("--landscape-batch", type=int, help="landscape chunk, default 256 on cuda, 32 on cpu")
    ap.add_argument(
        "--encoder",
        help="encoder kind for both modalities instead of the config's resnet18 "
        "(quick: cnn, msam_lab's small CNN, so the CPU test stays fast)",
    )
    ap.add_argument("--no-channels-last", action="store_true", help="skip the channels_last joint rows")
    ap.add_argument("--budget", type=float, default=0, help="soft time limit in s: later sections are skipped")
    ap.add_argument("--out", help="output folder (default: $OUT, else bench/out)")
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {
        "batch": (64, 4),
        "warmup": (10, 0),
        "repeats": (50, 1),
        "matmul_n": (8192, 128),
        "grid": (11, 3),
        "landscape_samples": (512, 8),
    }
    for k, (full, quick) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if q else full)
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        print(f"bench/gpu.py: {err}", file=sys.stderr)
        return 2
    if args.landscape_batch is None:
        args.landscape_batch = 256 if device.type == "cuda" else 32
    shapes = QUICK_SHAPES if q else SHAPES
    if q and args.encoder is None:
        args.encoder = "cnn"
    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "out")
    started = time.perf_counter()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    header = (
        f"{name}, torch {torch.__version__}"
        + (
            f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, fp32 convs in TF32: {conv_tf32()})"
            if device.type == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
        + f"; encoders {args.encoder or 'resnet18 (config)'}, batch {args.batch}, inputs {shapes}, "
        + f"median of {args.repeats} after {args.warmup} warm-up"
        + (" (quick)" if q else "")
    )
    memory_note = (
        "torch.cuda.max_memory_allocated per variant"
        if device.type == "cuda"
        else "n/a on the CPU (no per-variant allocator peak); the process's peak RSS "
        "(resource.getrusage ru_maxrss) is given as cpu_peak_rss_mib"
    )
    result = {
        "header": header,
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "quick": q,
        "config": str(CONFIG.relative_to(ROOT)),
        "shapes": shapes,
        "args": vars(args),
        "memory_note": memory_note,
        "ceiling": {},
        "steps": [],
        "landscape": [],
        "skipped": [],
        "errors": [],
        "section_seconds": {},
    }
    print(f"# {header}", flush=True)

    def over_budget() -> bool:
        return bool(args.budget) and time.perf_counter() - started > args.budget

    def section(label, fn):
        if over_budget():
            result["skipped"].append(label)
            return None
        t = time.perf_counter()
        try:
            return fn()
        except Exception as err:  # one failing variant must not lose the others
            msg = f"{label}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            result["errors"].append(msg)
            print(f"error: {msg}", file=sys.stderr, flush=True)
            return None
        finally:
            result["section_seconds"][label] = round(time.perf_counter() - t, 3)
            write(result, out)

    result["ceiling"] = (
        section("ceiling", lambda: matmul_ceiling(args.matmul_n, device, max(3, 3 * args.repeats // 10))) or {}
    )
    variants = [(m, p, False) for m in METHODS for p in PRECISIONS]
    if not args.no_channels_last:
        variants += [("joint", p, True) for p in PRECISIONS]
    for method, precision, cl in variants:
        label = f"{method}/{precision}" + ("/channels_last" if cl else "")
        row = section(label, lambda: step_row(method, precision, cl, args, shapes, device))
        if row is not None:
            ref = ceiling_for(precision, result["ceiling"])
            row["ceiling"] = ref
            row["pct_of_ceiling"] = (
                100 * row["tflops"] / result["ceiling"][ref]["tflops"] if ref in result["ceiling"] else None
            )
            result["steps"].append(row)
            print(
                f"{label}: {row['step_ms']:.2f} ms, {row['tflops']:.3g} TFLOP/s, "
                f"peak {fmt(row['peak_mib'], '.0f')} MiB",
                flush=True,
            )
    setup = section("landscape", lambda: landscape_setup(args, shapes, device))
    for precision in PRECISIONS if setup is not None else ():
        row = section(f"landscape/{precision}", lambda: landscape_row(precision, *setup, args, device))  # noqa: F821 - ruff misreads the closure
        if row is not None:
            result["landscape"].append(row)
            print(
                f"landscape/{precision}: {row['points_per_s']:.2f} points/s ({row['steady_points_per_s']:.2f} steady)",
                flush=True,
            )
    del setup
    reset_memory(device)
    if device.type != "cuda":
        import resource

        result["cpu_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = time.perf_counter() - started
    write(result, out)
    print()
    print(markdown(result), end="")
    if device.type != "cuda":
        print(f"cpu_peak_rss_mib: {result['cpu_peak_rss_mib']:.0f} (whole process)")
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} ({result['seconds']:.1f} s)")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
