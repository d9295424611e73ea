"""Reading the real data sets' files: existence checks, one-line errors, decoding.

Every real-data loader describes its on-disk layout in one string and reports a
missing or malformed file as a single-line :class:`ValueError` that names the
file (full path) and that layout, e.g.::

    av-mnist: missing /x/image/train_data.npy; expected <root>/image/...

The helpers here are the only place such checks are made, so all loaders say
it the same way. Decoding helpers (WAV, JPEG frames, STFT) live here too
because several loaders share them.
"""

from __future__ import annotations

import os
import re
import warnings
from math import gcd
from pathlib import Path

import numpy as np


def layout_error(dataset: str, message: str, layout: str) -> ValueError:
    """A one-line ``ValueError``: ``"<dataset>: <message>; expected <layout>"``."""
    text = f"{dataset}: {message}; expected {layout}"
    return ValueError(text.replace("\r", " ").replace("\n", " "))


def is_plain_name(name: str) -> bool:
    """Whether a clip / video id from a list file is a single file name, safe to join to a folder.

    A leading "/" made ``folder / name`` an absolute path outside the root, ".." or a
    "/" inside left the folder; NUL cannot be in a path at all.
    """
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\x00")


def require_root(root, dataset: str, layout: str) -> Path:
    """``root`` as a :class:`Path`; an error when it is ``None`` or does not exist."""
    if root is None or str(root) == "":
        raise layout_error(dataset, "no root given (--set data.root=<folder>, or root=... in Python)", layout)
    if not isinstance(root, (str, os.PathLike)):  # --set data.root=123 made Path() raise TypeError
        raise layout_error(
            dataset, f"option root must be a folder path, got {type(root).__name__} {str(root)[:60]!r}", layout
        )
    try:
        path = Path(root).expanduser().resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # embedded NUL, unknown ~user, symlink loop
        raise layout_error(dataset, f"bad root {str(root)[:200]!r} ({exc})", layout) from exc
    if not path.exists():
        raise layout_error(dataset, f"missing {path}", layout)
    return path


def require_dir(path, dataset: str, layout: str) -> Path:
    """``path`` if it is a directory, else a layout error naming it."""
    path = Path(path)
    if not path.is_dir():
        raise layout_error(dataset, f"missing directory {path}", layout)
    return path


def require_file(path, dataset: str, layout: str) -> Path:
    """``path`` if it is a file, else a layout error naming it."""
    path = Path(path)
    if not path.is_file():
        # say so when something else (a folder) is in the file's place: "missing" misleads
        what = "missing" if not path.exists() else "not a regular file:"
        raise layout_error(dataset, f"{what} {path}", layout)
    return path


def load_npy(path, dataset: str, layout: str, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array (memory-mapped when possible); unreadable -> layout error."""
    path = require_file(path, dataset, layout)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
        raise layout_error(dataset, f"cannot read {path} as .npy ({type(exc).__name__}: {exc})", layout) from exc


def read_lines(path, dataset: str, layout: str) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file as ``(line_number, text)``.

    A byte-order mark, CRLF / CR line endings and surrounding whitespace are
    removed; line numbers are 1-based and count blank lines.
    """
    path = require_file(path, dataset, layout)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise layout_error(dataset, f"cannot decode {path} as UTF-8 ({exc})", layout) from exc
    except OSError as exc:  # unreadable (permissions): the same one-line error as a bad file
        raise layout_error(dataset, f"cannot read {path} ({exc.strerror or exc})", layout) from exc
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_wav(path, dataset: str, layout: str) -> tuple[int, np.ndarray]:
    """``(rate, samples)``: a WAV file as mono float64 in [-1, 1]."""
    from scipy.io import wavfile  # noqa: PLC0415 - scipy loads only when this reader or view runs

    path = require_file(path, dataset, layout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown chunks etc.
            rate, data = wavfile.read(path)
    except Exception as exc:  # noqa: BLE001
        raise layout_error(dataset, f"cannot read {path} as WAV ({type(exc).__name__}: {exc})", layout) from exc
    data = np.asarray(data)
    # rate 0 made resample() divide by zero; a corrupt header's huge rate (say 10^8 Hz) made
    # resample_poly design a filter of ~10^9 taps and exhaust memory. 384 kHz: hi-res audio.
    if not 0 < rate <= 384_000:
        raise layout_error(dataset, f"{path} has sample rate {rate} Hz, not in 1..384000", layout)
    if data.dtype.kind not in "biuf":
        raise layout_error(dataset, f"{path} holds {data.dtype} samples, not PCM or float", layout)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        # a float WAV with NaN/inf would silently turn every feature of the clip into NaN
        raise layout_error(dataset, f"{path} holds NaN or infinite samples", layout)
    if data.dtype == np.uint8:
        x = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        x = data.astype(np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1 or x.size == 0:
        raise layout_error(dataset, f"empty or malformed audio in {path}", layout)
    return int(rate), x


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling of ``x`` from ``rate`` to ``target`` Hz."""
    if rate == target:
        return x
    from scipy.signal import resample_poly  # noqa: PLC0415 - scipy loads only when this reader or view runs

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g)


def stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``|STFT|`` of ``x`` as (n_fft // 2 + 1, frames).

    Periodic Hann window of length ``n_fft``; the signal is zero-padded by
    ``n_fft // 2`` on both sides (centred frames, like ``librosa.stft`` with
    ``center=True, pad_mode="constant"``), so there are ``1 + len(x) // hop``
    frames. No normalisation.
    """
    x = np.pad(np.asarray(x, dtype=np.float64), n_fft // 2)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def segment_centres(total: int, count: int) -> np.ndarray:
    """Indices of the centres of ``count`` equal segments of ``range(total)``.

    ``count == 1`` gives the middle item; with ``count > total`` items repeat.
    """
    return np.minimum(((np.arange(count) + 0.5) * total / count).astype(np.int64), total - 1)


def subsample(n: int, max_samples) -> np.ndarray:
    """All of ``range(n)``, or ``max_samples`` evenly spaced indices of it."""
    if max_samples is None:
        return np.arange(n)
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if max_samples >= n:
        return np.arange(n)
    return segment_centres(n, int(max_samples))


def load_frames(folder, n_frames: int, image_size: int, dataset: str, layout: str) -> np.ndarray:
    """``n_frames`` evenly spaced JPEG frames of ``folder`` as float32 (n_frames*3, S, S).

    Frames are the folder's ``*.jpg`` files in natural (numeric) order; the
    frame at the centre of each of ``n_frames`` equal segments is taken (one
    frame: the middle one). Each is converted to RGB, resized (bilinear) to
    ``image_size`` x ``image_size`` without keeping the aspect ratio, scaled to
    [0, 1] and stored channels-first; frames are stacked along the channel
    axis (frame 0's R, G, B, then frame 1's ...).
    """
    from PIL import Image  # noqa: PLC0415 - Pillow loads only for image datasets

    folder = require_dir(folder, dataset, layout)
    try:
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")), key=_natural_key)
    except OSError as exc:  # unreadable folder (permissions): one line, like a missing one
        raise layout_error(dataset, f"cannot list {folder} ({exc.strerror or exc})", layout) from exc
    if not files:
        raise layout_error(dataset, f"no .jpg frames in {folder}", layout)
    out = np.empty((n_frames * 3, image_size, image_size), dtype=np.float32)
    for k, i in enumerate(segment_centres(len(files), n_frames)):
        try:
            with Image.open(files[i]) as im:
                im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                pixels = np.asarray(im, dtype=np.float32) / 255.0
        except Exception as exc:  # noqa: BLE001
            raise layout_error(dataset, f"cannot read image {files[i]} ({type(exc).__name__}: {exc})", layout) from exc
        out[3 * k : 3 * k + 3] = pixels.transpose(2, 0, 1)
    return out


def frames_array(n: int, n_frames: int, image_size: int, dataset: str) -> np.ndarray:
    """An empty float32 (n, 3 * n_frames, image_size, image_size) array for a split's frames.

    Too large (say ``image_size=10**7``) is a one-line ``ValueError`` naming the
    options, where numpy raised ``MemoryError`` (a traceback).
    """
    shape = (n, 3 * n_frames, image_size, image_size)
    try:
        return np.empty(shape, dtype=np.float32)
    except (MemoryError, ValueError):
        gib = float(np.prod(np.array(shape, dtype=np.float64))) * 4 / 2**30
        raise ValueError(
            f"{dataset}: {n} clips x {n_frames} frames at {image_size}x{image_size} need "
            f"{gib:.3g} GiB, more than this machine can hold; lower the options "
            "n_frames / image_size (or max_samples)"
        ) from None


def check_positive_int(value, option: str, dataset: str) -> int:
    """``value`` as an int >= 1, else a ``ValueError`` naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{dataset}: option {option} must be a positive integer, got {value!r}")
    return int(value)
