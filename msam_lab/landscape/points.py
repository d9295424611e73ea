"""One point of a loss surface: θ₀ + a·d₁ (+ b·d₂) evaluated for every metric in one pass.

The parameters are written from a stored copy of θ₀ (never accumulated), with the model in eval mode
under ``torch.no_grad()``, inside ``preserved(model)`` so the model is left exactly as it was found.
Each encoder runs once on the real inputs and once on a single all-zero sample; then only the fusion
runs, for all needed coalitions stacked in one batch (``coalitions.coalition_logits``). Also here: the
grid, the seeded evaluation subset, the metric names and the fingerprints a saved surface is resumed by.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msam_lab.datasets.base import in_memory
from msam_lab.landscape.directions import Direction, check_compatible
from msam_lab.landscape.state import preserved
from msam_lab.models.coalitions import coalition_logits

# ---------------------------------------------------------------- grids, subsets, metrics


def grid(n: int = 21, span: float = 1.0) -> np.ndarray:
    """``n`` evenly spaced coordinates in [−span, span]; ``n`` must be odd so 0 is on the grid."""
    if int(n) != n or n < 1 or n % 2 == 0:
        raise ValueError(f"grid size must be an odd integer >= 1 (so 0 is on the grid), got {n}")
    if not span > 0:
        raise ValueError(f"span must be > 0, got {span}")
    coords = np.linspace(-span, span, int(n))
    coords[int(n) // 2] = 0.0
    return coords


def eval_subset(data, n_samples: int | None = 512, seed: int = 0):
    """A fixed subset of ``data``: ``n_samples`` indices drawn with ``seed``, sorted.

    ``data``: a ``MultimodalData`` or a ``StreamingData``; the subset is always an
    in-memory ``MultimodalData`` (``data.subset``), the same samples on either.
    Returns ``(subset, index)``; the whole set (in order) when ``n_samples`` is None or >= len(data).
    """
    n = len(data)
    if n_samples is None or n_samples >= n:
        index = np.arange(n)
    else:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        g = torch.Generator().manual_seed(int(seed))
        index = np.sort(torch.randperm(n, generator=g)[:n_samples].numpy())
    return data.subset(torch.as_tensor(index)), index


def coalition_plan(modalities: Sequence[str], per_modality: bool = True):
    """``(masks, metrics)``: the distinct coalition masks to run and, per metric base name, its mask's row."""
    full = (1 << len(modalities)) - 1
    wanted = [("", full)]
    if per_modality:
        wanted += [(f"_only_{m}", 1 << i) for i, m in enumerate(modalities)]
        wanted += [(f"_without_{m}", full & ~(1 << i)) for i, m in enumerate(modalities)]
    masks: list[int] = []
    rows = []
    for suffix, mask in wanted:
        if mask not in masks:
            masks.append(mask)
        rows.append((suffix, masks.index(mask)))
    return masks, rows


def metric_names(modalities: Sequence[str], per_modality: bool = True) -> list[str]:
    _, rows = coalition_plan(modalities, per_modality)
    return [f"{kind}{suffix}" for suffix, _ in rows for kind in ("loss", "acc")]


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-1 over names, dtypes, shapes and raw bytes (identifies θ₀ or a set of directions)."""
    h = hashlib.sha1()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    return fingerprint({**dict(model.named_parameters()), **dict(model.named_buffers())})


def directions_fingerprint(directions: Sequence[Direction]) -> str:
    return fingerprint({f"{k}:{n}": t for k, d in enumerate(directions) for n, t in d.items()})


# ---------------------------------------------------------------- one point


def prepare_for_evaluation(model: nn.Module, channels_last="auto") -> None:
    """Eval mode; channels-last weights for convolutional models (much faster on CPU).

    Call it inside ``preserved(model)``: both are undone on exit.
    """
    model.eval()
    has_conv = any(p.dim() == 4 for p in model.parameters())
    if channels_last is True or (channels_last == "auto" and has_conv):
        model.to(memory_format=torch.channels_last)


class PointEvaluator:
    """Evaluates every metric at points θ₀ + Σ_k c_k·d_k of a ``MultimodalModel``.

    Use it inside ``preserved(model)`` after ``prepare_for_evaluation``: it
    writes into the model's parameters. θ₀ is the parameters' value when the
    evaluator is built. ``batch_size`` splits the evaluation set into chunks
    (small chunks keep a CNN's activations in the core's cache; with the
    channels-last weights of ``prepare_for_evaluation`` measured ~5x faster on
    CPU than one 512-sample NCHW batch).
    """

    def __init__(
        self,
        model,
        data,
        directions: Sequence[Direction],
        per_modality: bool = True,
        batch_size: int | None = 32,
        autocast_dtype: torch.dtype | None = None,
        evaluation=None,
    ):
        for d in directions:
            check_compatible(d, model)
        self.model = model
        self.n_dirs = len(directions)
        params = dict(model.named_parameters())
        names = [n for n in params if any(n in d for d in directions)]
        device = next(model.parameters()).device
        self.params = [params[n] for n in names]
        self.theta0 = [params[n].detach().clone(memory_format=torch.preserve_format) for n in names]
        self.dirs = []  # per parameter: [(k, tensor)] for the non-zero directions only
        for n, p in zip(names, self.params):
            entries = []
            for k, d in enumerate(directions):
                if n in d:
                    t = d[n].to(device=device, dtype=p.dtype)
                    if bool(t.any()):
                        entries.append((k, torch.empty_like(p).copy_(t)))
            self.dirs.append(entries)
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.evaluation = evaluation  # a ForwardEvaluation: any model, through the caller's forward
        if evaluation is not None:
            self.names, self.n = evaluation.names, evaluation.n
            return
        self.modalities = tuple(model.modalities)
        self.masks, rows = coalition_plan(self.modalities, per_modality)
        self.rows = [r for _, r in rows]
        self.names = metric_names(self.modalities, per_modality)
        data = in_memory(data.to(device))  # a StreamingData is read once, here (pass a subset)
        n = len(data)
        bs = n if not batch_size else int(batch_size)
        self.batches = [
            ({m: x[s : s + bs] for m, x in data.inputs.items()}, data.labels[s : s + bs]) for s in range(0, n, bs)
        ]
        self.n = n

    @torch.no_grad()
    def set_point(self, point: Sequence[float]) -> None:
        """Write θ₀ + Σ c_k·d_k into the parameters (from the stored θ₀, never accumulated)."""
        if len(point) != self.n_dirs:
            raise ValueError(f"a point needs {self.n_dirs} coordinates, got {len(point)}")
        for p, p0, entries in zip(self.params, self.theta0, self.dirs):
            p.copy_(p0)
            for k, d in entries:
                c = float(point[k])
                if c != 0.0:
                    p.add_(d, alpha=c)

    @torch.no_grad()
    def evaluate(self) -> np.ndarray:
        """Every metric (``self.names`` order) at the current parameters."""
        model = self.model
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else contextlib.nullcontext()
        )
        if self.evaluation is not None:
            with ctx:
                return self.evaluation(model)
        fused_only = self.masks == [(1 << len(self.modalities)) - 1]
        totals = torch.zeros(len(self.masks), 2, dtype=torch.float64, device=self.device)
        with ctx:
            zeros = None if fused_only else model.zero_features()
            for inputs, labels in self.batches:
                feats = model.encode(inputs)
                if fused_only:
                    logits = model.fuse(feats).unsqueeze(0)
                else:
                    logits = coalition_logits(model, feats, zeros, self.masks)
                k, n, c = logits.shape
                if logits.dtype in (torch.float16, torch.bfloat16):
                    logits = logits.float()
                loss = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k), reduction="none").view(k, n).sum(1)
                correct = (logits.argmax(-1) == labels).sum(1)
                totals[:, 0] += loss.double()
                totals[:, 1] += correct.double()
        per_mask = totals.cpu().numpy() / self.n
        return np.array([per_mask[r, j] for r in self.rows for j in (0, 1)])

    def __call__(self, point: Sequence[float]) -> np.ndarray:
        self.set_point(point)
        return self.evaluate()


def evaluate_points(
    model,
    data,
    directions: Sequence[Direction],
    points,
    per_modality: bool = True,
    batch_size: int | None = 32,
    channels_last="auto",
) -> tuple[list[str], np.ndarray]:
    """Metric names and values (P, n_metrics) at explicit ``points`` (P, n_dirs); model left untouched."""
    with preserved(model):
        prepare_for_evaluation(model, channels_last)
        ev = PointEvaluator(model, data, directions, per_modality, batch_size)
        return ev.names, np.stack([ev(p) for p in points]) if len(points) else np.zeros((0, len(ev.names)))
