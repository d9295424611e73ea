"""av-mnist: MNIST digits paired with spoken digits (MultiBench distribution).

On-disk layout (MultiBench)::

    <root>/image/train_data.npy   (N, 784) float  PCA-reduced MNIST, pixel scale
    <root>/image/test_data.npy
    <root>/audio/train_data.npy   (N, 112, 112)   spectrograms, usually uint8
    <root>/audio/test_data.npy
    <root>/train_labels.npy       (N,)            digits 0..9
    <root>/test_labels.npy

N is read from the arrays (60,000 / 10,000 in the published set); the three
arrays of a split must agree in length.

Modalities, in this order:

* ``image`` -- (28, 28) float32; the stored values divided by 255 when
  ``normalize`` (MultiBench's default ``normalize_image``). Suggested encoder
  ``cnn``.
* ``audio`` -- (audio_size, audio_size) float32; the stored values divided by
  255 when ``normalize`` (MultiBench's ``normalize_audio``; uint8 becomes
  [0, 1]). With ``audio_size < 112`` the 112x112 map is average-pooled
  (``adaptive_avg_pool2d``; an exact k x k mean when 112 is a multiple of
  ``audio_size``, e.g. 56 or 28) for speed on a CPU. Suggested encoder ``cnn``.

``max_samples`` keeps that many evenly spaced samples of each split (None: all);
the arrays are memory-mapped, so a subset reads only its rows. :func:`load_stream`
reads them per batch from the same maps (no cache: the files already are
row-indexable), converted by the same row transforms as :func:`load`.

:func:`build_avmnist` writes a small *real* AV-MNIST in this layout from MNIST
IDX files and Free Spoken Digit Dataset recordings (see its docstring); from the
command line::

    python -m msam_lab.datasets.avmnist build --out DIR --n-train 2000 --n-test 500
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from msam_lab.datasets.base import MultimodalData, Splits
from msam_lab.datasets.files import (
    check_positive_int,
    layout_error,
    load_npy,
    read_wav,
    require_dir,
    require_root,
    resample,
    stft_magnitude,
    subsample,
)
from msam_lab.datasets.streaming import NpyArray, StreamingData

NAME = "av-mnist"

OPTIONS = {"root": None, "audio_size": 112, "normalize": True, "max_samples": None}

LAYOUT = (
    "<root>/image/{train,test}_data.npy (N,784) float, "
    "<root>/audio/{train,test}_data.npy (N,112,112), "
    "<root>/{train,test}_labels.npy (N,) digits 0-9 (MultiBench layout)"
)

CLASS_NAMES = [str(d) for d in range(10)]
AUDIO_SIDE = 112
_CHUNK = 4096  # samples converted at a time (bounds the float32 intermediate)


# --------------------------------------------------------------------------- loader


def _split_paths(root: Path, split: str) -> dict[str, Path]:
    return {
        "image": root / "image" / f"{split}_data.npy",
        "audio": root / "audio" / f"{split}_data.npy",
        "labels": root / f"{split}_labels.npy",
    }


def _check_split(root: Path, split: str, max_samples):
    """``(paths, arrays, index, labels)`` of one split: memory-mapped arrays checked, rows chosen."""
    paths = _split_paths(root, split)
    arrays = {key: load_npy(path, NAME, LAYOUT) for key, path in paths.items()}
    lengths = {key: (len(a) if a.ndim else 0) for key, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        found = ", ".join(f"{paths[k]} has {n}" for k, n in lengths.items())
        raise layout_error(NAME, f"{split} split lengths disagree: {found}", LAYOUT)
    n = lengths["labels"]
    if n == 0:
        raise layout_error(NAME, f"no samples in {paths['labels']}", LAYOUT)

    image, audio, labels = arrays["image"], arrays["audio"], arrays["labels"]
    if int(np.prod(image.shape[1:])) != 28 * 28:
        raise layout_error(NAME, f"{paths['image']} has shape {image.shape}, not 784 values per sample", LAYOUT)
    if int(np.prod(audio.shape[1:])) != AUDIO_SIDE * AUDIO_SIDE:
        raise layout_error(NAME, f"{paths['audio']} has shape {audio.shape}, not 112x112 values per sample", LAYOUT)
    if int(np.prod(labels.shape[1:])) != 1:
        raise layout_error(NAME, f"{paths['labels']} has shape {labels.shape}, not (N,)", LAYOUT)
    for key, array in arrays.items():
        # bool/int/uint/float only: strings, datetimes or structured records made the float32
        # conversion below raise a ValueError/TypeError naming no file; complex dropped its
        # imaginary part with a warning
        if array.dtype.kind not in "biuf":
            raise layout_error(NAME, f"{paths[key]} holds {array.dtype} values, not numbers", LAYOUT)

    index = subsample(n, max_samples)
    y = np.asarray(labels[index]).reshape(-1)
    if (
        not np.issubdtype(y.dtype, np.number)
        or not np.all(np.isfinite(y))
        or np.any(y != np.round(y))
        or y.min() < 0
        or y.max() > 9
    ):
        raise layout_error(NAME, f"{paths['labels']} holds labels outside the digits 0-9", LAYOUT)
    return paths, arrays, index, torch.from_numpy(y.astype(np.int64))


def image_rows(rows: np.ndarray, scale: float, path: str) -> np.ndarray:
    """Stored image rows (B, 784) -> float32 (B, 28, 28) / ``scale``: the one transform of both paths."""
    with np.errstate(over="ignore"):  # float64 beyond float32 range -> inf, reported next
        x = np.asarray(rows, dtype=np.float32).reshape(-1, 28, 28) / np.float32(scale)
    if not np.all(np.isfinite(x)):
        # NaN/inf features would train a NaN model with no hint at the file
        raise layout_error(NAME, f"{path} holds NaN or infinite values (or values beyond float32)", LAYOUT)
    return x


def audio_rows(rows: np.ndarray, scale: float, audio_size: int, path: str) -> np.ndarray:
    """Stored spectrogram rows (B, 112, 112) -> float32 (B, audio_size, audio_size): scaled, average-pooled."""
    with np.errstate(over="ignore"):
        chunk = np.asarray(rows, dtype=np.float32).reshape(-1, AUDIO_SIDE, AUDIO_SIDE)
    if not np.all(np.isfinite(chunk)):  # as for the images
        raise layout_error(NAME, f"{path} holds NaN or infinite values (or values beyond float32)", LAYOUT)
    chunk = chunk / np.float32(scale)
    if audio_size != AUDIO_SIDE:
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(chunk)[:, None], audio_size)
        chunk = pooled[:, 0].numpy()
    return chunk


def _transforms(paths, audio_size: int, normalize: bool) -> dict:
    scale = 255.0 if normalize else 1.0
    return {
        "image": partial(image_rows, scale=scale, path=str(paths["image"])),
        "audio": partial(audio_rows, scale=scale, audio_size=audio_size, path=str(paths["audio"])),
    }


def _read_split(root: Path, split: str, audio_size: int, normalize: bool, max_samples):
    paths, arrays, index, labels = _check_split(root, split, max_samples)
    transforms = _transforms(paths, audio_size, normalize)
    shapes = {"image": (28, 28), "audio": (audio_size, audio_size)}
    inputs = {m: torch.empty((len(index), *shapes[m]), dtype=torch.float32) for m in shapes}
    for start in range(0, len(index), _CHUNK):  # chunks bound the float32 intermediate
        rows = index[start : start + _CHUNK]
        for m in shapes:
            inputs[m][start : start + len(rows)] = torch.from_numpy(transforms[m](arrays[m][rows]))
    return MultimodalData(inputs, labels, num_classes=10)


def _stream_split(root: Path, split: str, audio_size: int, normalize: bool, max_samples):
    paths, arrays, index, labels = _check_split(root, split, max_samples)
    sources = {m: NpyArray(paths[m], arrays[m].shape, arrays[m].dtype) for m in ("image", "audio")}
    return StreamingData(
        sources,
        labels,
        10,
        transforms=_transforms(paths, audio_size, normalize),
        rows=index,
        sample_shapes={"image": (28, 28), "audio": (audio_size, audio_size)},
    )


def _check_options(audio_size):
    audio_size = check_positive_int(audio_size, "audio_size", NAME)
    if audio_size > AUDIO_SIDE:
        raise ValueError(f"{NAME}: option audio_size must be at most {AUDIO_SIDE}, got {audio_size}")
    return audio_size


def _info(root, audio_size, normalize, max_samples) -> dict:
    return {
        "name": NAME,
        "description": (
            "AV-MNIST (MultiBench): PCA-reduced MNIST digit images paired with "
            "112x112 spectrograms of Free Spoken Digit Dataset recordings of the "
            "same digit"
        ),
        "encoders": {"image": "cnn", "audio": "cnn"},
        "shapes": {"image": (28, 28), "audio": (audio_size, audio_size)},
        "options": {
            "root": str(root),
            "audio_size": audio_size,
            "normalize": bool(normalize),
            "max_samples": max_samples,
        },
        "class_names": list(CLASS_NAMES),
    }


def load_stream(cache_dir, root, audio_size=112, normalize=True, max_samples=None) -> Splits:
    """AV-MNIST read per batch straight from its memory-mapped ``.npy`` files (no cache needed).

    Each batch's rows are converted and pooled by the same :func:`image_rows` /
    :func:`audio_rows` as :func:`load` uses; a NaN in a row is reported when its
    batch is read, not at load time.
    """
    audio_size = _check_options(audio_size)
    root = require_root(root, NAME, LAYOUT)
    train = _stream_split(root, "train", audio_size, bool(normalize), max_samples)
    test = _stream_split(root, "test", audio_size, bool(normalize), max_samples)
    return Splits(train, test, _info(root, audio_size, normalize, max_samples))


def estimate_bytes(root, audio_size=112, normalize=True, max_samples=None) -> int:
    """Decoded float32 size of both splits, from the ``.npy`` headers alone."""
    audio_size = _check_options(audio_size)
    root = require_root(root, NAME, LAYOUT)
    total = 0
    for split in ("train", "test"):
        labels = load_npy(_split_paths(root, split)["labels"], NAME, LAYOUT)
        n = len(subsample(len(labels), max_samples)) if labels.ndim else 0
        total += n * (4 * (28 * 28 + audio_size * audio_size) + 8)
    return total


def load(cache_dir, root, audio_size=112, normalize=True, max_samples=None) -> Splits:
    """AV-MNIST from ``root`` in the MultiBench layout (``cache_dir`` is unused)."""
    audio_size = _check_options(audio_size)
    root = require_root(root, NAME, LAYOUT)
    train = _read_split(root, "train", audio_size, bool(normalize), max_samples)
    test = _read_split(root, "test", audio_size, bool(normalize), max_samples)
    return Splits(train, test, _info(root, audio_size, normalize, max_samples))


# --------------------------------------------------------------------------- builder

MNIST_LAYOUT = "<mnist_dir>/*images-idx3-ubyte[.gz] and *labels-idx1-ubyte[.gz] (IDX format)"
FSDD_LAYOUT = "<fsdd_dir>/{digit}_{speaker}_{index}.wav (Free Spoken Digit Dataset, 8 kHz)"

FSDD_RATE = 8000
FSDD_TEST_INDICES = range(0, 5)  # upstream split: recordings 0-4 test, 5-49 train
STFT_N_FFT = 256  # 129 bins of 31.25 Hz; the lowest 112 (0-3,468.75 Hz) kept
STFT_HOP = 48  # 6 ms; 112 frames span 0.67 s (~94 % of FSDD clips fit)
FLOOR_DB = 80.0  # dynamic range kept below each spectrogram's peak
PCA_VARIANCE = 0.25


def _find_one(folder: Path, pattern: str) -> Path:
    matches = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(matches) != 1:
        what = "no file" if not matches else f"{len(matches)} files ({', '.join(map(str, matches))})"
        raise layout_error("av-mnist builder", f"{what} matching {folder / pattern}", MNIST_LAYOUT)
    return matches[0]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise layout_error("av-mnist builder", f"cannot read {path} ({exc})", MNIST_LAYOUT) from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise layout_error("av-mnist builder", f"{path} is not an IDX file with magic {magic}", MNIST_LAYOUT)
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims)):
        raise layout_error(
            "av-mnist builder",
            f"{path} holds {len(raw) - header} bytes of data, not {int(np.prod(dims))} for dims {dims}",
            MNIST_LAYOUT,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N,28,28) uint8, labels (N,) uint8)`` from the IDX files in ``mnist_dir``."""
    mnist_dir = require_dir(mnist_dir, "av-mnist builder", MNIST_LAYOUT)
    images = _read_idx(_find_one(mnist_dir, "*images-idx3-ubyte*"), 2051)
    labels = _read_idx(_find_one(mnist_dir, "*labels-idx1-ubyte*"), 2049)
    if len(images) != len(labels):
        raise layout_error(
            "av-mnist builder", f"{mnist_dir} has {len(images)} images but {len(labels)} labels", MNIST_LAYOUT
        )
    return images, labels


def fsdd_recordings(fsdd_dir) -> dict[str, dict[int, list[Path]]]:
    """``{"train"|"test": {digit: [wav paths]}}`` by the upstream index split."""
    fsdd_dir = require_dir(fsdd_dir, "av-mnist builder", FSDD_LAYOUT)
    out: dict[str, dict[int, list[Path]]] = {"train": {}, "test": {}}
    for path in sorted(fsdd_dir.glob("*.wav")):
        parts = path.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            continue
        split = "test" if int(parts[2]) in FSDD_TEST_INDICES else "train"
        out[split].setdefault(int(parts[0]), []).append(path)
    for split, by_digit in out.items():
        missing = [d for d in range(10) if not by_digit.get(d)]
        if missing:
            raise layout_error(
                "av-mnist builder", f"no {split} recordings of digit(s) {missing} in {fsdd_dir}", FSDD_LAYOUT
            )
    return out


def fsdd_spectrogram(path) -> np.ndarray:
    """A recording as the 112x112 uint8 log-magnitude spectrogram AV-MNIST stores.

    The 8 kHz signal (resampled if needed) goes through :func:`stft_magnitude`
    with n_fft 256 (periodic Hann), hop 48, centred frames; the lowest 112 of the
    129 frequency bins are kept (0-3,468.75 Hz, row 0 = 0 Hz) and the first 112
    frames (0.67 s; shorter clips are padded at the end with the floor value).
    Magnitude in dB, floored 80 dB below the clip's peak, then min-max scaled to
    0..255 per spectrogram and rounded. Shape (frequency, time).
    """
    rate, x = read_wav(path, "av-mnist builder", FSDD_LAYOUT)
    mag = stft_magnitude(resample(x, rate, FSDD_RATE), STFT_N_FFT, STFT_HOP)[:AUDIO_SIDE]
    peak = float(mag.max())
    if peak <= 0.0:
        return np.zeros((AUDIO_SIDE, AUDIO_SIDE), dtype=np.uint8)
    floor_db = 20.0 * np.log10(peak) - FLOOR_DB
    db = np.maximum(20.0 * np.log10(np.maximum(mag, 1e-300)), floor_db)[:, :AUDIO_SIDE]
    if db.shape[1] < AUDIO_SIDE:
        db = np.pad(db, ((0, 0), (0, AUDIO_SIDE - db.shape[1])), constant_values=floor_db)
    lo, hi = db.min(), db.max()
    scaled = (db - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(db)
    return np.round(scaled).astype(np.uint8)


def pca_projection(train_images: np.ndarray, variance: float = PCA_VARIANCE):
    """``(mean, components (k,784), cumulative ratios)`` of the train images.

    ``k`` is the smallest number of principal components whose explained
    variance ratio sums to at least ``variance``.
    """
    x = np.asarray(train_images, dtype=np.float64).reshape(len(train_images), -1)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(cumulative, variance, side="left")) + 1
    return mean, vt[:k], cumulative


def build_avmnist(
    mnist_dir, fsdd_dir, out_root, n_train: int, n_test: int, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a small real AV-MNIST in the MultiBench layout under ``out_root``.

    * Images: ``n_train + n_test`` distinct MNIST images drawn at random (``seed``)
      from the IDX files in ``mnist_dir``. A PCA is fitted on the train images
      (pixel scale 0-255); the smallest number k of leading components explaining
      at least 25 % of the variance is kept, and every image is projected on them
      and reconstructed WITHOUT adding the mean back: ``(x - mean) @ V_k.T @ V_k``,
      stored (N, 784) float32 in pixel units (the loader divides by 255).
    * Audio: for each image, a Free Spoken Digit Dataset recording of the same
      digit drawn at random (with replacement) from the upstream split (train:
      recording index 5-49, test: 0-4), as :func:`fsdd_spectrogram`, stored
      (N, 112, 112) uint8.
    * Labels: the MNIST digits, (N,) uint8.

    ``build_info.json`` beside the arrays records the MNIST indices, the FSDD
    file names, k and the variance it explains. Everything is written to a
    temporary folder next to ``out_root`` and renamed into place at the end;
    an existing non-empty ``out_root`` is an error unless ``overwrite``.
    """
    n_train = check_positive_int(n_train, "n_train", "av-mnist builder")
    n_test = check_positive_int(n_test, "n_test", "av-mnist builder")
    out_root = Path(out_root).expanduser().resolve()
    if out_root.exists() and not overwrite and (not out_root.is_dir() or any(out_root.iterdir())):
        raise FileExistsError(f"av-mnist builder: {out_root} already exists (pass overwrite=True)")

    images, digits = read_mnist(mnist_dir)
    if n_train + n_test > len(images):
        raise ValueError(
            f"av-mnist builder: n_train + n_test = {n_train + n_test} exceeds the "
            f"{len(images)} MNIST images in {mnist_dir}"
        )
    recordings = fsdd_recordings(fsdd_dir)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    index = {"train": np.sort(order[:n_train]), "test": np.sort(order[n_train : n_train + n_test])}

    mean, components, cumulative = pca_projection(images[index["train"]])
    k = len(components)
    spectrograms: dict[Path, np.ndarray] = {}
    arrays, chosen = {}, {}
    for split in ("train", "test"):
        x = images[index[split]].reshape(-1, 784).astype(np.float64)
        arrays[f"image/{split}_data.npy"] = ((x - mean) @ components.T @ components).astype(np.float32)
        labels = digits[index[split]].astype(np.uint8)
        arrays[f"{split}_labels.npy"] = labels
        files = []
        audio = np.empty((len(labels), AUDIO_SIDE, AUDIO_SIDE), dtype=np.uint8)
        for i, digit in enumerate(labels):
            pool = recordings[split][int(digit)]
            path = pool[int(rng.integers(len(pool)))]
            if path not in spectrograms:
                spectrograms[path] = fsdd_spectrogram(path)
            audio[i] = spectrograms[path]
            files.append(path.name)
        arrays[f"audio/{split}_data.npy"] = audio
        chosen[split] = files

    build_info = {
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "mnist_dir": str(Path(mnist_dir).resolve()),
        "fsdd_dir": str(Path(fsdd_dir).resolve()),
        "mnist_indices": {s: index[s].tolist() for s in index},
        "fsdd_files": chosen,
        "pca_components": k,
        "pca_variance_target": PCA_VARIANCE,
        "pca_explained_variance": float(cumulative[k - 1]),
        "spectrogram": {
            "sample_rate": FSDD_RATE,
            "n_fft": STFT_N_FFT,
            "hop": STFT_HOP,
            "window": "periodic hann",
            "centered": True,
            "frequency_bins": AUDIO_SIDE,
            "frames": AUDIO_SIDE,
            "floor_db": FLOOR_DB,
            "scaling": "per-spectrogram min-max to uint8",
        },
    }

    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", suffix=".tmp", dir=out_root.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
        (tmp / "image").mkdir()
        (tmp / "audio").mkdir()
        for rel, array in arrays.items():
            np.save(tmp / rel, array)
        (tmp / "build_info.json").write_text(json.dumps(build_info, indent=1))
        if out_root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", suffix=".old", dir=out_root.parent))
            os.replace(out_root, old / "data")
            os.replace(tmp, out_root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msam_lab.datasets.avmnist", description="AV-MNIST tools")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write a small real AV-MNIST in the MultiBench layout")
    build.add_argument("--out", required=True, help="output folder (the loader's root)")
    build.add_argument("--n-train", type=int, required=True)
    build.add_argument("--n-test", type=int, required=True)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--mnist-dir", default=os.path.join("..", "shared", "data", "mnist"))
    build.add_argument("--fsdd-dir", default=os.path.join("..", "shared", "data", "fsdd", "recordings"))
    build.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = build_avmnist(
            args.mnist_dir, args.fsdd_dir, args.out, args.n_train, args.n_test, seed=args.seed, overwrite=args.overwrite
        )
    except (ValueError, FileExistsError) as exc:
        parser.exit(2, f"error: {exc}\n")
    info = json.loads((out / "build_info.json").read_text())
    print(
        f"wrote {out}: {args.n_train} train / {args.n_test} test samples, "
        f"{info['pca_components']} PCA components "
        f"({info['pca_explained_variance']:.1%} of the variance)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
