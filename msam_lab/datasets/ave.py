"""ave: the Audio-Visual Event dataset, 28 event classes (OGM-GE layout).

On-disk layout (as prepared by OGM-GE)::

    <root>/stat.txt                        class names, one per line (line order = label)
    <root>/my_train.txt                    rows "class,video_id,..." (no header)
    <root>/my_test.txt
    <root>/my_val.txt                      optional: the validation split (Splits.val)
    <root>/audio_spec/<video_id>.pkl       pickled float32 spectrogram (257, 1004)
    <root>/visual/<video_id>/frame_00001.jpg ...

Class names may contain commas ("Male speech, man speaking"), so a row is not
split blindly: its class is the longest class name from ``stat.txt`` that the
row starts with, followed by a comma; the video id is the next field. (A row or
``stat.txt`` line in CSV quotes, ``"a, b",vid``, is accepted too.) The number of
classes is the number of lines of ``stat.txt`` (28 in the real set).
``my_val.txt``, if present, is read the same way as the validation split
(``Splits.val``, skipped counts under ``info["skipped"]["val"]``).

Modalities, in this order:

* ``audio`` -- (257, 1004 // audio_time_pool) float32: the stored spectrogram;
  with ``audio_time_pool = k > 1`` consecutive groups of k time frames are
  averaged (the remainder frames dropped), e.g. k = 4 -> (257, 251). All
  spectrograms must have the same shape. Suggested encoder ``cnn``.
* ``visual`` -- (3 * n_frames, image_size, image_size) float32 in [0, 1], as
  for CREMA-D: frames at the centres of ``n_frames`` equal segments of the
  video's frames in numeric order, RGB, resized, stacked along channels.
  Suggested encoder ``cnn``.

``n_frames`` is in 1..64 and ``image_size`` in 1..1024 (``OPTION_RANGES``).
``max_samples`` keeps that many evenly spaced rows of each split (None: all);
``skip_missing`` drops rows whose ``.pkl`` or frame folder is absent (as
OGM-GE's loader does) instead of raising, counted in ``info["skipped"]``.
:func:`load_stream` decodes each split once into a memory-mapped cache under
``cache_dir`` (``memmap_cache``) and reads it per batch; :func:`estimate_bytes`
gives the decoded size from the list files and one spectrogram.
The pickles are loaded by :mod:`msam_lab.datasets.safe_pickle` (numpy arrays and builtin containers
only): a file made to run code is refused, not run.
"""

from __future__ import annotations

import csv

import numpy as np
import torch

from msam_lab.datasets import memmap_cache, safe_pickle
from msam_lab.datasets.base import MultimodalData, Splits
from msam_lab.datasets.files import (
    check_positive_int,
    frames_array,
    is_plain_name,
    layout_error,
    load_frames,
    read_lines,
    require_file,
    require_root,
    subsample,
)
from msam_lab.datasets.memmap_cache import file_stamp
from msam_lab.datasets.streaming import cached_split

NAME = "ave"

OPTIONS = {
    "root": None,
    "n_frames": 1,
    "image_size": 64,
    "audio_time_pool": 1,
    "max_samples": None,
    "skip_missing": False,
}
# checked by datasets.resolve_options before anything is read, as for crema-d
OPTION_RANGES = {
    "n_frames": (1, 64),
    "image_size": (1, 1024),
    "audio_time_pool": (1, 100_000),
    "max_samples": (1, None),
}

LAYOUT = (
    "<root>/stat.txt (one class name per line), <root>/my_{train,test[,val]}.txt rows "
    "class,video_id,..., <root>/audio_spec/<video_id>.pkl float32 (257,1004), "
    "<root>/visual/<video_id>/frame_0000k.jpg (OGM-GE layout)"
)


def _unquote(line: str) -> list[str] | None:
    """The fields of ``line`` if it starts with a CSV-quoted field, else ``None``."""
    if not line.startswith('"'):
        return None
    return next(csv.reader([line]))


def read_classes(path) -> list[str]:
    """Class names of ``stat.txt`` in order (one per line, commas allowed)."""
    names = []
    for lineno, line in read_lines(path, NAME, LAYOUT):
        quoted = _unquote(line)
        name = quoted[0].strip() if quoted and len(quoted) == 1 else line
        if name in names:
            raise layout_error(NAME, f"{path} line {lineno}: class {name!r} listed twice", LAYOUT)
        names.append(name)
    if not names:
        raise layout_error(NAME, f"no class names in {path}", LAYOUT)
    return names


def parse_row(line: str, classes: list[str], by_length: list[str] | None = None) -> tuple[str, int]:
    """``(video_id, label)`` of one ``my_*.txt`` row; ValueError saying what is wrong (the loader
    and ``msam-lab data check`` share this rule). Class names may hold commas: the longest known
    name the row starts with wins (``by_length``: ``classes`` longest first, passed to save a sort)."""
    by_length = sorted(classes, key=len, reverse=True) if by_length is None else by_length
    quoted = _unquote(line)
    if quoted is not None:
        name, rest = quoted[0].strip(), quoted[1:]
        if name not in classes:
            name = None
    else:
        name = next((c for c in by_length if line.startswith(c + ",")), None)
        rest = line[len(name) + 1 :].split(",") if name is not None else []
    if name is None:
        raise ValueError(f"row does not start with a class of stat.txt followed by a comma: {line!r}")
    video = rest[0].strip() if rest else ""
    if not video:
        raise ValueError("no video id after the class")
    if not is_plain_name(video):  # "/x" made <root>/audio_spec/<video>.pkl an absolute path
        raise ValueError(f"video id {video!r} is not a plain file name")
    return video, classes.index(name)


def read_split_rows(path, classes: list[str]) -> list[tuple[str, int]]:
    """``[(video_id, label)]`` of a ``my_*.txt`` file, matching known class names."""
    by_length = sorted(classes, key=len, reverse=True)
    rows = []
    for lineno, line in read_lines(path, NAME, LAYOUT):
        try:
            rows.append(parse_row(line, classes, by_length))
        except ValueError as err:
            raise layout_error(NAME, f"{path} line {lineno}: {err}", LAYOUT) from None
    return rows


def read_spectrogram(path) -> np.ndarray:
    """One pickled spectrogram as a 2-D float32 array."""
    path = require_file(path, NAME, LAYOUT)
    try:
        raw = np.asarray(safe_pickle.load(path))
        # numbers only: a pickled str "1.5" converted silently, complex lost its imaginary
        # part with a warning on stderr
        if raw.dtype.kind not in "biuf":
            raise TypeError(f"holds {raw.dtype} values, not numbers")
        with np.errstate(over="ignore"):  # beyond float32 -> inf, reported below
            spec = raw.astype(np.float32)
    except Exception as exc:  # noqa: BLE001
        raise layout_error(
            NAME, f"cannot read {path} as a pickled array ({type(exc).__name__}: {exc})", LAYOUT
        ) from exc
    if spec.ndim != 2 or spec.size == 0:  # an empty (0, T) map passed and broke the model later
        raise layout_error(
            NAME, f"{path} holds an array of shape {spec.shape}, not a non-empty 2-D spectrogram", LAYOUT
        )
    if not np.all(np.isfinite(spec)):  # NaN/inf would train a NaN model with no hint at the file
        raise layout_error(NAME, f"{path} holds NaN or infinite values (or values beyond float32)", LAYOUT)
    return spec


def _pool_time(spec: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return spec
    t = spec.shape[1] // k
    return spec[:, : t * k].reshape(spec.shape[0], t, k).mean(axis=2)


def _split_names(root) -> tuple[str, ...]:
    """train, test, and val when ``my_val.txt`` is there (OGM-GE's layout has it; it is optional)."""
    return ("train", "test", "val") if (root / "my_val.txt").is_file() else ("train", "test")


def _rows(root, split, classes, max_samples, skip_missing):
    """``(rows, skipped)``: the videos of one split that will be read."""
    path = root / f"my_{split}.txt"
    rows = read_split_rows(path, classes)
    if not rows:
        raise layout_error(NAME, f"no rows in {path}", LAYOUT)
    skipped = 0
    if skip_missing:
        kept = [
            (v, y) for v, y in rows if (root / "audio_spec" / f"{v}.pkl").is_file() and (root / "visual" / v).is_dir()
        ]
        skipped, rows = len(rows) - len(kept), kept
        if not rows:
            raise layout_error(NAME, f"no video of {path} has both its .pkl and frames", LAYOUT)
    return [rows[i] for i in subsample(len(rows), max_samples)], skipped


def _first_spectrogram(root, rows, pool):
    """``(path, stored shape, pooled shape)`` of the split's first spectrogram: every other must match it."""
    spec_path = root / "audio_spec" / f"{rows[0][0]}.pkl"
    spec = read_spectrogram(spec_path)
    if spec.shape[1] < pool:
        raise layout_error(
            NAME, f"{spec_path} has {spec.shape[1]} time frames, fewer than audio_time_pool={pool}", LAYOUT
        )
    return spec_path, spec.shape, (spec.shape[0], spec.shape[1] // pool)


def _fill(root, rows, first, n_frames, image_size, pool, audio, visual, labels) -> None:
    """Decode every video of ``rows`` into ``audio`` / ``visual`` / ``labels`` (arrays or memmaps): both paths."""
    for i, (video, y) in enumerate(rows):
        spec_path = root / "audio_spec" / f"{video}.pkl"
        spec = read_spectrogram(spec_path)
        if spec.shape != first[1]:
            raise layout_error(NAME, f"{spec_path} has shape {spec.shape} but {first[0]} has {first[1]}", LAYOUT)
        audio[i] = _pool_time(spec, pool)
        visual[i] = load_frames(root / "visual" / video, n_frames, image_size, NAME, LAYOUT)
        labels[i] = y


def _read_split(root, split, classes, n_frames, image_size, pool, max_samples, skip_missing):
    rows, skipped = _rows(root, split, classes, max_samples, skip_missing)
    first = _first_spectrogram(root, rows, pool)
    audio = np.empty((len(rows),) + first[2], dtype=np.float32)
    visual = frames_array(len(rows), n_frames, image_size, NAME)  # too large: one-line error
    labels = np.empty(len(rows), dtype=np.int64)
    _fill(root, rows, first, n_frames, image_size, pool, audio, visual, labels)
    data = MultimodalData(
        {"audio": torch.from_numpy(audio), "visual": torch.from_numpy(visual)},
        torch.from_numpy(labels),
        num_classes=len(classes),
    )
    return data, skipped


def _stream_split(cache_dir, root, split, classes, n_frames, image_size, pool, max_samples, skip_missing):
    rows, skipped = _rows(root, split, classes, max_samples, skip_missing)
    first = _first_spectrogram(root, rows, pool)
    shapes = {"audio": first[2], "visual": (3 * n_frames, image_size, image_size)}
    signature = {
        "dataset": NAME,
        "root": str(root),
        "split": split,
        "classes": classes,
        "rows": memmap_cache.signature_key(rows),
        "options": {
            "n_frames": n_frames,
            "image_size": image_size,
            "audio_time_pool": pool,
            "max_samples": max_samples,
            "skip_missing": skip_missing,
        },
        "sources": file_stamp(p for v, _ in rows for p in (root / "audio_spec" / f"{v}.pkl", root / "visual" / v)),
    }

    def fill(arrays, labels):
        _fill(root, rows, first, n_frames, image_size, pool, arrays["audio"], arrays["visual"], labels)

    folder, manifest = memmap_cache.build(cache_dir, NAME, split, signature, len(rows), shapes, fill)
    return cached_split(folder, manifest, len(classes)), skipped


def _check(root, n_frames, image_size, audio_time_pool):
    n_frames = check_positive_int(n_frames, "n_frames", NAME)
    image_size = check_positive_int(image_size, "image_size", NAME)
    pool = check_positive_int(audio_time_pool, "audio_time_pool", NAME)
    return require_root(root, NAME, LAYOUT), n_frames, image_size, pool


def _assemble(root, classes, parts: dict, n_frames, image_size, pool, max_samples, skip_missing) -> Splits:
    shapes = {s: tuple(d.sample_shapes["audio"]) for s, (d, _) in parts.items()}
    for split, shape in shapes.items():
        if shape != shapes["train"]:
            raise layout_error(
                NAME,
                f"train spectrograms are {shapes['train']} but {split} ones {shape} "
                f"(after pooling) in {root / 'audio_spec'}",
                LAYOUT,
            )
    info = {
        "name": NAME,
        "description": (
            f"AVE: {len(classes)} audio-visual event classes; stored audio spectrograms and RGB video frames"
        ),
        "encoders": {"audio": "cnn", "visual": "cnn"},
        "shapes": dict(parts["train"][0].sample_shapes),
        "options": {
            "root": str(root),
            "n_frames": n_frames,
            "image_size": image_size,
            "audio_time_pool": pool,
            "max_samples": max_samples,
            "skip_missing": bool(skip_missing),
        },
        "class_names": list(classes),
        "skipped": {s: skipped for s, (_, skipped) in parts.items()},
    }
    val = parts["val"][0] if "val" in parts else None
    return Splits(parts["train"][0], parts["test"][0], info, val)


def load(cache_dir, root, n_frames=1, image_size=64, audio_time_pool=1, max_samples=None, skip_missing=False) -> Splits:
    """AVE from ``root`` in the OGM-GE layout, decoded into memory (``cache_dir`` is unused)."""
    root, n_frames, image_size, pool = _check(root, n_frames, image_size, audio_time_pool)
    classes = read_classes(root / "stat.txt")
    args = (n_frames, image_size, pool, max_samples, bool(skip_missing))
    parts = {s: _read_split(root, s, classes, *args) for s in _split_names(root)}
    return _assemble(root, classes, parts, *args)


def load_stream(
    cache_dir, root, n_frames=1, image_size=64, audio_time_pool=1, max_samples=None, skip_missing=False
) -> Splits:
    """AVE decoded once into memory-mapped ``.npy`` files under ``cache_dir``, then read per batch.

    The same decoding as :func:`load` (``_fill``); see ``memmap_cache`` for the
    cache's layout and when it is rebuilt.
    """
    root, n_frames, image_size, pool = _check(root, n_frames, image_size, audio_time_pool)
    classes = read_classes(root / "stat.txt")
    args = (n_frames, image_size, pool, max_samples, bool(skip_missing))
    parts = {s: _stream_split(cache_dir, root, s, classes, *args) for s in _split_names(root)}
    return _assemble(root, classes, parts, *args)


def estimate_bytes(root, n_frames=1, image_size=64, audio_time_pool=1, max_samples=None, skip_missing=False) -> int:
    """Decoded float32 size of every split: row counts of the list files and the first spectrogram's shape."""
    root, n_frames, image_size, pool = _check(root, n_frames, image_size, audio_time_pool)
    classes = read_classes(root / "stat.txt")
    counts = [
        len(subsample(len(rows), max_samples)) if rows else 0
        for rows in (read_split_rows(root / f"my_{s}.txt", classes) for s in _split_names(root))
    ]
    rows = read_split_rows(root / "my_train.txt", classes)
    first = next(
        (root / "audio_spec" / f"{v}.pkl" for v, _ in rows if (root / "audio_spec" / f"{v}.pkl").is_file()), None
    )
    spec_shape = read_spectrogram(first).shape if first is not None else (257, 1004)  # the published shape
    per_sample = 4 * (spec_shape[0] * (spec_shape[1] // pool) + 3 * n_frames * image_size * image_size) + 8
    return sum(counts) * per_sample
