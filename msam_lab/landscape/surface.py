"""1-D and 2-D loss surfaces: evaluation, the ``Surface`` result, saving and resuming.

Every grid point is evaluated as θ₀ + a·d₁ (+ b·d₂), written into the
parameters from a stored copy of θ₀ (never accumulated), with the model in
eval mode under ``torch.no_grad()``, inside ``preserved(model)`` so the model
is left exactly as it was found.

One pass per point yields every metric. Each encoder runs once on the real
inputs and once on a single all-zero sample; then only the fusion runs, for
all needed coalitions stacked in one batch (``coalitions.coalition_logits``):

- ``loss``, ``acc``: the fused model (all modalities present);
- ``loss_only_<m>``, ``acc_only_<m>``: modality m alone (others zeroed, mask 1<<m);
- ``loss_without_<m>``, ``acc_without_<m>``: modality m removed (full mask minus m).

The evaluation set is a fixed, seeded subset of one split (``eval_subset``).
Grid points can be sharded over worker processes (CPU, one thread each) or
CUDA devices (``parallel.py``), or over torchrun's ranks (``_evaluate_sharded``;
rank 0 writes); results are flushed to disk every few points, and a rerun on a
partly computed surface evaluates only the missing points.

Files, in the surface's folder (``<run>/landscapes/<name>/`` from the CLI)::

    meta.json        settings and provenance (seed, grid, split, subset, run, epoch, scope, ...)
    surface.npz      coord_0[, coord_1], done (bool grid), value:<metric> grids (NaN = not yet computed),
                     subset_index
    directions.npz   <k>:<parameter name> -> direction k's tensor
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import atomic, distributed
from ..checkpoint_io import RunFileError, read_regular
from ..coalitions import coalition_logits
from ..datasets.base import in_memory
from ..runs import read_json
from .directions import Direction, check_compatible
from .state import preserved

FORMAT_VERSION = 1
META, VALUES, DIRECTIONS = "meta.json", "surface.npz", "directions.npz"


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

    def __init__(self, model, data, directions: Sequence[Direction], per_modality: bool = True,
                 batch_size: int | None = 32, autocast_dtype: torch.dtype | None = None, evaluation=None):
        for d in directions:
            check_compatible(d, model)
        self.model = model
        self.n_dirs = len(directions)
        params = dict(model.named_parameters())
        names = [n for n in params if any(n in d for d in directions)]
        device = next(model.parameters()).device
        self.params = [params[n] for n in names]
        self.theta0 = [params[n].detach().clone(memory_format=torch.preserve_format) for n in names]
        self.dirs = []          # per parameter: [(k, tensor)] for the non-zero directions only
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
        self.evaluation = evaluation        # a ForwardEvaluation: any model, through the caller's forward
        if evaluation is not None:
            self.names, self.n = evaluation.names, evaluation.n
            return
        self.modalities = tuple(model.modalities)
        self.masks, rows = coalition_plan(self.modalities, per_modality)
        self.rows = [r for _, r in rows]
        self.names = metric_names(self.modalities, per_modality)
        data = in_memory(data.to(device))   # a StreamingData is read once, here (pass a subset)
        n = len(data)
        bs = n if not batch_size else int(batch_size)
        self.batches = [({m: x[s:s + bs] for m, x in data.inputs.items()}, data.labels[s:s + bs])
                        for s in range(0, n, bs)]
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
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
               else contextlib.nullcontext())
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
                loss = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k),
                                       reduction="none").view(k, n).sum(1)
                correct = (logits.argmax(-1) == labels).sum(1)
                totals[:, 0] += loss.double()
                totals[:, 1] += correct.double()
        per_mask = totals.cpu().numpy() / self.n
        return np.array([per_mask[r, j] for r in self.rows for j in (0, 1)])

    def __call__(self, point: Sequence[float]) -> np.ndarray:
        self.set_point(point)
        return self.evaluate()


def evaluate_points(model, data, directions: Sequence[Direction], points, per_modality: bool = True,
                    batch_size: int | None = 32, channels_last="auto") -> tuple[list[str], np.ndarray]:
    """Metric names and values (P, n_metrics) at explicit ``points`` (P, n_dirs); model left untouched."""
    with preserved(model):
        prepare_for_evaluation(model, channels_last)
        ev = PointEvaluator(model, data, directions, per_modality, batch_size)
        return ev.names, np.stack([ev(p) for p in points]) if len(points) else np.zeros((0, len(ev.names)))


# ---------------------------------------------------------------- the result

@dataclass
class Surface:
    """A computed (or partly computed) surface.

    ``coords``: one array per direction; ``values[metric]`` and ``done`` have
    shape ``tuple(len(c) for c in coords)`` (row i = coords[0][i]);
    ``directions``: the directions (dicts name -> tensor); ``meta``: settings
    and provenance.
    """

    coords: list[np.ndarray]
    values: dict[str, np.ndarray]
    done: np.ndarray
    directions: list[Direction]
    meta: dict = field(default_factory=dict)
    subset_index: np.ndarray | None = None
    path: Path | None = None

    @property
    def dim(self) -> int:
        return len(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    def __getitem__(self, metric: str) -> np.ndarray:
        try:
            return self.values[metric]
        except KeyError:
            raise KeyError(f"surface has no metric {metric!r}; it has: {', '.join(self.values)}") from None

    def center(self) -> dict[str, float]:
        """Every metric at the origin (θ₀), when 0 is on the grid."""
        idx = []
        for c in self.coords:
            hit = np.flatnonzero(c == 0)
            if not len(hit):
                raise ValueError("0 is not on this surface's grid")
            idx.append(int(hit[0]))
        return {k: float(v[tuple(idx)]) for k, v in self.values.items()}

    def points(self) -> np.ndarray:
        """All grid points (n_points, dim), in the flat (C) order of ``values``."""
        mesh = np.meshgrid(*self.coords, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=1)

    # -------- files
    def save(self, path=None) -> Path:
        """Write ``meta.json``, ``surface.npz`` and ``directions.npz`` into folder ``path`` (atomically per
        file, under the folder's flock), replacing what is there."""
        path = Path(path if path is not None else self.path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic.locked(_write_lock(path)):
            if not (path / DIRECTIONS).exists() or self.path != path:
                arrays = {f"{k}:{n}": t.detach().cpu().numpy() for k, d in enumerate(self.directions)
                          for n, t in d.items()}
                _atomic_npz(path / DIRECTIONS, arrays)
            self._write_values(path, merge=False)
        self.path = path
        return path

    def save_values(self, path=None) -> None:
        """Flush the value grids and meta (the directions are written once by ``save``).

        Several processes may compute one surface at once (the same landscape started twice): under
        the folder's flock, the points another one saved meanwhile for the same model, directions,
        grid and settings are merged in first, so no flush undoes another's."""
        path = Path(path if path is not None else self.path)
        with atomic.locked(_write_lock(path)):
            self._write_values(path, merge=True)

    def _write_values(self, path: Path, merge: bool) -> None:
        if merge:
            self._merge_saved(path)
        arrays = {f"coord_{k}": np.asarray(c, dtype=float) for k, c in enumerate(self.coords)}
        arrays["done"] = self.done
        arrays.update({f"value:{k}": v for k, v in self.values.items()})
        if self.subset_index is not None:
            arrays["subset_index"] = np.asarray(self.subset_index)
        _atomic_npz(path / VALUES, arrays)
        self.meta.update(n_done=self.n_done, complete=self.complete)
        atomic.write_text(path / META, json.dumps(self.meta, indent=2, default=_json_default) + "\n")

    def _merge_saved(self, path: Path) -> None:
        """Copy in the points done in the surface saved at ``path`` but not here (same settings only)."""
        try:
            saved_meta = json.loads((path / META).read_text())
            with np.load(path / VALUES, allow_pickle=False) as z:
                done = z["done"].astype(bool)
                coords = [z[f"coord_{k}"] for k in range(self.dim)]
                extra = done & ~self.done if done.shape == self.done.shape else None
                saved = {k: z[f"value:{k}"] for k in self.values} if extra is not None and extra.any() else {}
        # nothing there yet, or a file damaged or of another shape: ours replaces it
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return
        if not saved or any(saved_meta.get(k) != self.meta.get(k) for k in _RESUME_KEYS) or \
                any(not np.array_equal(a, b) for a, b in zip(coords, self.coords)):
            return
        for k, v in saved.items():
            self.values[k][extra] = v[extra]
        self.done |= extra

    @classmethod
    def load(cls, path) -> "Surface":
        """The surface saved in folder ``path``. Its files are data only (JSON and numpy arrays read
        with ``allow_pickle=False``); a damaged one is a RunFileError naming it."""
        path = Path(path)
        if not (path / META).exists():
            raise FileNotFoundError(f"{path} is not a saved surface (no {META}); "
                                    "compute one with `msam-lab landscape RUN`")
        for name in (VALUES, DIRECTIONS):
            if not (path / name).exists() and not (path / name).is_symlink():
                raise RunFileError(f"{path / name}: missing (the surface is incomplete; compute it again "
                                   f"with --overwrite)")
        meta = read_json(path / META)
        arrays = _read_npz(path / VALUES)
        n_dims = sum(k.startswith("coord_") for k in arrays)
        coords = [arrays.get(f"coord_{k}") for k in range(n_dims)]
        if not 1 <= n_dims <= 2 or any(c is None or c.ndim != 1 or not len(c) or c.dtype.kind not in "fiu"
                                       or not np.isfinite(c).all() for c in coords):
            raise RunFileError(f"{path / VALUES}: its coordinates are not 1 or 2 finite 1-D arrays (damaged)")
        shape = tuple(len(c) for c in coords)
        done = arrays.get("done")
        if done is None or done.shape != shape or done.dtype.kind not in "biu":
            raise RunFileError(f"{path / VALUES}: its 'done' grid is missing or not of shape {shape} (damaged)")
        values = {k[len("value:"):]: v for k, v in arrays.items() if k.startswith("value:")}
        bad = [k for k, v in values.items() if v.shape != shape or v.dtype.kind not in "fiu"]
        if bad or not values:
            raise RunFileError(f"{path / VALUES}: value grid {bad[0] if bad else '(none)'!r} is not a "
                               f"numeric grid of shape {shape} (damaged)")
        subset = arrays.get("subset_index")
        if subset is not None and (subset.ndim != 1 or subset.dtype.kind not in "iu"):
            raise RunFileError(f"{path / VALUES}: subset_index is not a 1-D array of indices (damaged)")
        order = meta.get("metrics", list(values))
        if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
            raise RunFileError(f"{path / META}: metrics must be a list of names (damaged)")
        values = {k: values[k] for k in order if k in values}
        directions: list[Direction] = [{} for _ in range(n_dims)]
        for key, array in _read_npz(path / DIRECTIONS).items():
            k, _, name = key.partition(":")
            if not (k.isdigit() and int(k) < n_dims and name) or array.dtype.kind not in "fiu":
                raise RunFileError(f"{path / DIRECTIONS}: entry {key!r} is not <direction>:<parameter> with a "
                                   f"numeric array, for {n_dims} direction(s) (damaged)")
            directions[int(k)][name] = torch.from_numpy(array.copy())
        if not all(directions):
            raise RunFileError(f"{path / DIRECTIONS}: holds no tensors for some of the {n_dims} direction(s) "
                               f"(damaged)")
        return cls(coords, values, done.astype(bool), directions, meta, subset, path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without unpickling (``allow_pickle=False``: an object
    array is refused); RunFileError naming the file when it is not such a file."""
    data = read_regular(path)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with archive as z:
            return {k: z[k] for k in z.keys()}
    # np.load: ValueError (pickled data, bad header), the zip reader's BadZipFile (CRC, truncation),
    # EOFError / OSError / zlib.error on a cut or garbled member
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise RunFileError(f"{path}: not a numpy .npz archive that can be read safely ({first}; damaged)") from None


def _write_lock(folder: Path) -> Path:
    """The file flocked while a process writes a surface's folder: beside it (``.<name>.lock``), so the
    folder holds the surface's three files only."""
    return folder.with_name(f".{folder.name}.lock")


def _atomic_npz(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())      # a temporary name of its own: writers never share one


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


def generalization_gap(train: Surface, test: Surface, metric: str = "loss") -> np.ndarray:
    """test − train of ``metric`` on two surfaces of the same directions and grid."""
    if train.meta.get("directions_sha1") != test.meta.get("directions_sha1") or \
            any(not np.array_equal(a, b) for a, b in zip(train.coords, test.coords)):
        raise ValueError("the two surfaces were computed on different directions or grids")
    return test[metric] - train[metric]


# ---------------------------------------------------------------- computing (with resume)

# settings that must agree for a saved surface to be resumed
_RESUME_KEYS = ("model_sha1", "directions_sha1", "metrics", "n_samples", "subset_seed", "split", "autocast_dtype",
                "batches_sha1")


def compute_surface(model, data, directions: Sequence[Direction], coords: Sequence[np.ndarray], *,
                    per_modality: bool = True, n_samples: int | None = 512, subset_seed: int = 0,
                    batch_size: int | None = 32, channels_last="auto", path=None, flush_every: int = 32,
                    workers: int = 1, devices=None, pool=None, threads: int | None = None,
                    autocast_dtype: torch.dtype | None = None, meta: dict | None = None,
                    overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                    evaluation=None) -> Surface:
    """Evaluate ``model`` on the grid ``coords`` (one array per direction) around its current θ₀.

    ``data``: a ``MultimodalData`` split; a seeded subset of ``n_samples`` is
    used. ``evaluation``: a ``ForwardEvaluation`` instead of ``data``, for a model
    msam_lab did not build (its batches are used whole; no worker processes). ``path``: a folder to save into, flushed every ``flush_every``
    points; if it already holds a compatible partial surface, only its
    missing points are computed (an incompatible one raises ConfigError,
    unless ``overwrite``). ``workers`` > 1: that many worker processes, one
    thread each, or one per entry of ``devices`` (e.g. ``["cuda:0",
    "cuda:1"]``); ``pool``: a started ``parallel.WorkerPool`` to use instead
    (no process start-up per call). ``threads``: torch threads for the in-process evaluation
    (default: leave torch's setting; put back afterwards). ``autocast_dtype``
    (e.g. ``torch.bfloat16``): run the forward passes under autocast (a GPU
    lever; losses are still accumulated in float64). ``meta``: extra
    provenance stored with the surface.
    Under torchrun (``distributed.world_size() > 1``; workers=1) the ranks share the pending
    points, rank 0 alone writes ``path``, and every rank returns the whole surface.
    The model is left bitwise as it was.
    """
    from ..config import ConfigError

    directions = [dict(d) for d in directions]
    coords = [np.asarray(c, dtype=float).reshape(-1) for c in coords]
    if not 1 <= len(coords) <= 2 or len(coords) != len(directions):
        raise ValueError(f"give 1 or 2 directions and one coordinate array per direction; "
                         f"got {len(directions)} directions and {len(coords)} coordinate arrays")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    world = distributed.world_size()
    if world > 1 and (workers != 1 or devices or pool is not None):
        raise ValueError(f"under torchrun the {world} ranks share the grid: use workers=1 and no devices or "
                         "pool (start one rank per core or GPU instead)")
    for d in directions:
        check_compatible(d, model)
    if evaluation is not None:
        if workers != 1 or devices or pool is not None:
            raise ValueError("a ForwardEvaluation runs in this process (your forward need not be importable "
                             "by workers): use workers=1")
        device = next(model.parameters()).device
        subset, index, n_samples = None, np.arange(evaluation.to(device).n), None
        names, modalities, per_modality = evaluation.names, evaluation.modalities, evaluation.per_modality
    else:
        subset, index = eval_subset(data, n_samples, subset_seed)
        names, modalities = metric_names(tuple(model.modalities), per_modality), tuple(model.modalities)
    shape = tuple(len(c) for c in coords)
    info = {
        "format_version": FORMAT_VERSION, "dim": len(coords), "shape": list(shape), "metrics": names,
        "modalities": list(modalities), "per_modality": per_modality,
        "n_samples": int(len(index)), "n_samples_requested": n_samples, "subset_seed": int(subset_seed),
        "model_sha1": model_fingerprint(model), "directions_sha1": directions_fingerprint(directions),
        "direction_norms": [float(sum(t.double().pow(2).sum() for t in d.values()) ** 0.5) for d in directions],
        "parameters": sorted({n for d in directions for n in d}),
        "batch_size": batch_size, "torch": torch.__version__,
        "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype),
        "batches_sha1": None if evaluation is None else evaluation.sha1,     # a ForwardEvaluation's data
    }
    info.update(meta or {})
    info.setdefault("split", None)

    surface = None
    if path is not None:
        path = Path(path)
        if (path / META).exists() and not overwrite:
            old = Surface.load(path)
            diffs = [k for k in _RESUME_KEYS if old.meta.get(k) != info.get(k)]
            if len(old.coords) != len(coords) or any(not np.array_equal(a, b) for a, b in zip(old.coords, coords)):
                diffs.insert(0, "grid")
            if diffs:
                raise ConfigError(f"{path} already holds a surface computed with other settings "
                                  f"({', '.join(diffs)} differ); choose another --name or pass --overwrite")
            surface = old
            surface.meta.update({k: v for k, v in info.items() if k not in surface.meta})
    if world > 1 and path is not None:
        # every rank has read the disk (above) before rank 0 writes to it, and all must have read the
        # same points as done: they share the pending points out by position
        done = None if surface is None else hashlib.sha1(np.packbits(surface.done).tobytes()).hexdigest()
        distributed.check_same(done, f"the points already computed in {path} (put it on a disk every rank reads)")
        distributed.barrier()
    if surface is None:
        info["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        info["seconds"] = 0.0
        surface = Surface(coords, {k: np.full(shape, np.nan) for k in names}, np.zeros(shape, dtype=bool),
                          directions, info, index)
        if path is not None:
            if distributed.is_main():
                surface.save(path)
            else:
                surface.path = path         # rank 0 writes the files; this rank only keeps the values

    all_points = surface.points()
    pending = np.flatnonzero(~surface.done.reshape(-1))
    total = surface.done.size
    if not len(pending):
        return surface

    started = time.perf_counter()
    since_flush = 0

    def store(idx: Sequence[int], vals: np.ndarray) -> None:
        nonlocal since_flush
        for i, v in zip(idx, vals):
            at = np.unravel_index(int(i), shape)
            for j, k in enumerate(names):
                surface.values[k][at] = v[j]
            surface.done[at] = True
        since_flush += len(idx)
        if surface.path is not None and since_flush >= flush_every:
            flush()
        if progress is not None:
            progress(surface.n_done, total)

    def flush() -> None:
        nonlocal since_flush, started
        now = time.perf_counter()
        surface.meta["seconds"] = float(surface.meta.get("seconds", 0.0)) + now - started
        started = now
        since_flush = 0
        if surface.path is not None and distributed.is_main():
            surface.save_values()

    try:
        if workers == 1 and not devices and pool is None:
            old_threads = torch.get_num_threads()
            if threads:
                torch.set_num_threads(int(threads))
            try:
                with preserved(model):
                    prepare_for_evaluation(model, channels_last)
                    ev = PointEvaluator(model, subset, directions, per_modality, batch_size, autocast_dtype,
                                        evaluation)
                    if world == 1:
                        for i in pending:
                            store([i], ev(all_points[i])[None])
                    else:
                        _evaluate_sharded(ev, all_points, pending, store, flush_every)
            finally:
                torch.set_num_threads(old_threads)
        else:
            from .parallel import evaluate_parallel, resolve_devices
            n_workers = pool.n_workers if pool is not None else len(resolve_devices(devices) or [0] * workers)
            chunk = max(1, min(flush_every, math.ceil(len(pending) / (4 * n_workers))))
            evaluate_parallel(model, subset, directions, all_points, pending, store, workers=workers,
                              devices=devices, pool=pool, per_modality=per_modality, batch_size=batch_size,
                              channels_last=channels_last, autocast_dtype=autocast_dtype, chunk=chunk)
    finally:
        flush()
    distributed.barrier()       # rank 0's files are whole before any rank returns (and may read them)
    return surface


def _evaluate_sharded(ev: PointEvaluator, points: np.ndarray, pending: np.ndarray, store, per_rank: int) -> None:
    """The ``pending`` points shared over torchrun's ranks, in blocks of ``per_rank`` points per rank.

    Rank r evaluates every world-th point of a block; then the ranks exchange their values and
    every rank stores the whole block point by point, in the order one process would, so each
    holds the surface and rank 0's flushes leave on disk what one process's would (a resume,
    by any number of ranks, redoes at most the block in flight).
    """
    world, r = distributed.world_size(), distributed.rank()
    step = per_rank * world
    for start in range(0, len(pending), step):
        block = pending[start:start + step]
        mine = [(int(i), ev(points[i])) for i in block[r::world]]
        got = sorted((pair for part in distributed.gather_objects(mine) for pair in part), key=lambda p: p[0])
        for i, v in got:
            store([i], v[None])
