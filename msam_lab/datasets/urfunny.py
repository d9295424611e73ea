"""ur-funny: humour detection from text, audio and video features (MultiBench).

On disk: MultiBench's ``humor.pkl`` at ``<root>/humor.pkl`` (``root`` may also
be the file itself), a pickled dict::

    {"train" | "valid" | "test": {"vision": (N, 50, 371), "audio": (N, 50, 81),
                                  "text": (N, 50, 300), "labels": (N, 1) in {0, 1},
                                  "id": (N, ...)}}

Sequences are left zero-padded to 50 steps. Cleaning, per split, in this order:
NaN and +-inf in any modality are set to 0 (MultiBench fixes the audio's -inf
this way), then samples whose text is all zero are dropped (MultiBench's
``drop_entry``); the drop counts are in ``info["dropped"]``.

Modalities, in this order: ``text``, ``audio``, ``vision``, each (50, F)
float32 with F read from the file; suggested encoder ``mlp`` (flatten) for all.
Labels: 0 = not humorous, 1 = humorous.

Splits, by ``use_valid_as``:

* ``"val"`` (default) -- train = train, val = valid (``Splits.val``), test = test.
* ``"drop"`` -- train = train, test = test; valid is not used.
* ``"train"`` -- train = train + valid, test = test.
* ``"test"`` -- train = train, test = valid; the test split is not used (keep
  it untouched while tuning).

``max_samples`` keeps that many evenly spaced samples of each resulting split
(None: all). The file is unpickled by :mod:`msam_lab.datasets.safe_pickle`: numpy arrays, dtypes,
scalars and builtin containers only, so a file made to run code is refused, not run.
:func:`load_stream` writes the cleaned splits once to a memory-mapped cache
under ``cache_dir`` (a pickle cannot be mapped) and reads them per batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from msam_lab.datasets import memmap_cache, safe_pickle
from msam_lab.datasets.base import MultimodalData, Splits
from msam_lab.datasets.files import layout_error, require_file, require_root, subsample
from msam_lab.datasets.memmap_cache import file_stamp
from msam_lab.datasets.streaming import cached_split

NAME = "ur-funny"

OPTIONS = {"root": None, "use_valid_as": "val", "max_samples": None}

LAYOUT = (
    "<root>/humor.pkl, a pickled dict with train/valid/test, each a dict with "
    "vision (N,50,371), audio (N,50,81), text (N,50,300), labels (N,1) in {0,1} "
    "(MultiBench layout)"
)

MODALITIES = ("text", "audio", "vision")
CLASS_NAMES = ["not humorous", "humorous"]
VALID_USES = ("val", "drop", "train", "test")


def _read_pickle(path: Path) -> dict:
    path = require_file(path, NAME, LAYOUT)
    try:
        data = safe_pickle.load(path)  # a Python 2 file is read as latin-1
    except Exception as exc:  # noqa: BLE001
        raise layout_error(NAME, f"cannot unpickle {path} ({type(exc).__name__}: {exc})", LAYOUT) from exc
    if not isinstance(data, dict):
        raise layout_error(NAME, f"{path} holds a {type(data).__name__}, not a dict", LAYOUT)
    return data


def _clean_split(path: Path, data: dict, split: str) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """``(inputs, labels, n_dropped)`` of one split, cleaned."""
    part = data.get(split)
    if not isinstance(part, dict):
        hint = " (or set use_valid_as=drop)" if split == "valid" else ""
        raise layout_error(NAME, f"{path} has no dict under key {split!r}{hint}", LAYOUT)
    arrays = {}
    for key in MODALITIES + ("labels",):
        if key not in part:
            raise layout_error(NAME, f"{path} [{split!r}] has no key {key!r}", LAYOUT)
        try:
            raw = np.asarray(part[key])
            # numbers only: complex lost its imaginary part with a warning on stderr
            if raw.dtype.kind not in "biufO":
                raise TypeError(f"{raw.dtype} values")
            with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 -> inf, zeroed below
                arrays[key] = raw.astype(np.float64 if key == "labels" else np.float32)
        except (TypeError, ValueError) as exc:
            raise layout_error(NAME, f"{path} [{split!r}][{key!r}] is not numeric ({exc})", LAYOUT) from exc
    if arrays["labels"].ndim == 0:  # len() of a scalar raised TypeError (a traceback)
        raise layout_error(NAME, f"{path} [{split!r}]['labels'] is a single number, not (N, 1)", LAYOUT)
    n = len(arrays["labels"])
    for key in MODALITIES:
        x = arrays[key]
        if x.ndim != 3 or 0 in x.shape[1:]:  # (N, 50, 0) loaded and broke the model later
            raise layout_error(
                NAME, f"{path} [{split!r}][{key!r}] has shape {x.shape}, not (N, steps, features)", LAYOUT
            )
        if len(x) != n:
            raise layout_error(NAME, f"{path} [{split!r}]: {key!r} has {len(x)} samples but 'labels' has {n}", LAYOUT)
    labels = arrays.pop("labels")
    if labels.size != n or (n and labels.ndim > 1 and labels.shape[0] != n):
        raise layout_error(NAME, f"{path} [{split!r}]['labels'] has shape {labels.shape}, not (N, 1)", LAYOUT)
    labels = labels.reshape(-1)
    if not np.all(np.isin(labels, (0.0, 1.0))):
        raise layout_error(NAME, f"{path} [{split!r}]['labels'] holds values other than 0 and 1", LAYOUT)
    inputs = {k: np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for k, x in arrays.items()}
    keep = np.any(inputs["text"].reshape(n, -1) != 0, axis=1)
    inputs = {k: x[keep] for k, x in inputs.items()}
    return inputs, labels[keep].astype(np.int64), int(n - keep.sum())


def _to_data(path, inputs, labels, max_samples, what) -> MultimodalData:
    if len(labels) == 0:
        raise layout_error(NAME, f"{path}: no {what} samples left after dropping all-zero text", LAYOUT)
    index = subsample(len(labels), max_samples)
    return MultimodalData(
        {m: torch.from_numpy(np.ascontiguousarray(inputs[m][index])) for m in MODALITIES},
        torch.from_numpy(labels[index]),
        num_classes=2,
    )


def _check_use(use_valid_as) -> str:
    if use_valid_as not in VALID_USES:
        raise ValueError(f"{NAME}: option use_valid_as must be one of {', '.join(VALID_USES)}, got {use_valid_as!r}")
    return use_valid_as


def _pickle_path(root) -> Path:
    root = require_root(root, NAME, LAYOUT)
    return root if root.is_file() else root / "humor.pkl"


def _read_parts(path: Path, use_valid_as: str, max_samples) -> tuple[dict[str, MultimodalData], dict]:
    """The resulting splits (``train``, ``test``[, ``val``]) as in-memory data, and the drop counts: both paths."""
    data = _read_pickle(path)
    splits = {"train", "test"} | ({"valid"} if use_valid_as != "drop" else set())
    cleaned = {s: _clean_split(path, data, s) for s in sorted(splits)}

    shapes = {m: cleaned["train"][0][m].shape[1:] for m in MODALITIES}
    for split, (inputs, _, _) in cleaned.items():
        for m in MODALITIES:
            if inputs[m].shape[1:] != shapes[m]:
                raise layout_error(
                    NAME,
                    f"{path} [{split!r}][{m!r}] has per-sample shape {inputs[m].shape[1:]} but train has {shapes[m]}",
                    LAYOUT,
                )

    parts = {"train": cleaned["train"][:2], "test": cleaned["test"][:2]}
    if use_valid_as == "val":
        parts["val"] = cleaned["valid"][:2]
    elif use_valid_as == "train":
        valid_inputs, valid_labels, _ = cleaned["valid"]
        train_inputs, train_labels = parts["train"]
        parts["train"] = (
            {m: np.concatenate([train_inputs[m], valid_inputs[m]]) for m in MODALITIES},
            np.concatenate([train_labels, valid_labels]),
        )
    elif use_valid_as == "test":
        parts["test"] = cleaned["valid"][:2]
    data = {s: _to_data(path, inputs, labels, max_samples, s) for s, (inputs, labels) in parts.items()}
    return data, {s: c[2] for s, c in cleaned.items()}


def _info(root, use_valid_as, max_samples, shapes, dropped) -> dict:
    return {
        "name": NAME,
        "description": (
            "UR-Funny (MultiBench): TED-talk punchline humour detection from "
            "GloVe text, COVAREP audio and OpenFace video features, 50 steps"
        ),
        "encoders": {m: "mlp" for m in MODALITIES},
        "shapes": {m: tuple(s) for m, s in shapes.items()},
        "options": {"root": str(root), "use_valid_as": use_valid_as, "max_samples": max_samples},
        "class_names": list(CLASS_NAMES),
        "dropped": dropped,
    }


def load(cache_dir, root, use_valid_as="val", max_samples=None) -> Splits:
    """UR-Funny from MultiBench's ``humor.pkl`` (``cache_dir`` is unused)."""
    use_valid_as = _check_use(use_valid_as)
    path = _pickle_path(root)
    parts, dropped = _read_parts(path, use_valid_as, max_samples)
    info = _info(require_root(root, NAME, LAYOUT), use_valid_as, max_samples, parts["train"].sample_shapes, dropped)
    return Splits(parts["train"], parts["test"], info, parts.get("val"))


def load_stream(cache_dir, root, use_valid_as="val", max_samples=None) -> Splits:
    """UR-Funny's cleaned splits written once to memory-mapped ``.npy`` files under ``cache_dir``, read per batch.

    A pickle cannot be memory-mapped, so the first call unpickles and cleans it
    exactly as :func:`load` does (it must fit in memory once); later calls with
    the same file (size, mtime) and options read only the cache.
    """
    use_valid_as = _check_use(use_valid_as)
    path = _pickle_path(root)
    names = ("train", "test", "val") if use_valid_as == "val" else ("train", "test")
    signature = {
        s: {
            "dataset": NAME,
            "split": s,
            "path": str(path),
            "source": file_stamp([path]),
            "options": {"use_valid_as": use_valid_as, "max_samples": max_samples},
        }
        for s in names
    }
    found = {
        s: memmap_cache.read_cache(memmap_cache.cache_folder(cache_dir, NAME, s, signature[s]), signature[s])
        for s in names
    }
    parts = dropped = None
    if any(m is None for m in found.values()):
        parts, dropped = _read_parts(path, use_valid_as, max_samples)
    out = {}
    for s in names:

        def fill(arrays, labels, s=s):
            for m in MODALITIES:
                arrays[m][:] = parts[s].inputs[m].numpy()
            labels[:] = parts[s].labels.numpy()
            return {"dropped": dropped}

        n = len(parts[s]) if parts is not None else found[s]["n"]
        shapes = (
            parts[s].sample_shapes
            if parts is not None
            else {m: tuple(found[s]["arrays"][m]["shape"][1:]) for m in MODALITIES}
        )
        folder, manifest = memmap_cache.build(cache_dir, NAME, s, signature[s], n, shapes, fill)
        out[s] = cached_split(folder, manifest, 2)
        dropped = dropped if dropped is not None else manifest["extra"]["dropped"]
    info = _info(require_root(root, NAME, LAYOUT), use_valid_as, max_samples, out["train"].sample_shapes, dropped)
    return Splits(out["train"], out["test"], info, out.get("val"))


def estimate_bytes(root, use_valid_as="val", max_samples=None) -> int:
    """The size of ``humor.pkl`` on disk: a pickle cannot be sized without unpickling it.

    MultiBench stores float32 arrays, so the file is close to the decoded size.
    """
    _check_use(use_valid_as)
    path = require_file(_pickle_path(root), NAME, LAYOUT)
    return path.stat().st_size
