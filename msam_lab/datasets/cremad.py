"""crema-d: CREMA-D emotion recognition, audio + face frames (OGM-GE layout).

On-disk layout (as used by OGM-GE and most modality-imbalance papers)::

    <root>/train.csv                         rows "clip_id,EMO", no header
    <root>/test.csv                          (CRLF and a UTF-8 BOM are accepted)
    <root>/Image-01-FPS/<clip_id>/00001.jpg  frames extracted at 1 fps
    <root>/AudioWAV/<clip_id>.wav

Labels: NEU HAP SAD FEA DIS ANG -> 0..5 (neutral, happy, sad, fear, disgust,
anger); any other code is an error naming the file and line.

Modalities, in this order:

* ``audio`` -- (257, 188) float32: the WAV as mono, resampled to 22,050 Hz
  (``scipy.signal.resample_poly``), tiled (repeated) and cropped to exactly
  3 s (66,150 samples), clipped to [-1, 1], then ``|STFT|`` with n_fft 512,
  hop 353, periodic Hann window, centred frames with zero padding, and
  ``log(|S| + 1e-7)``. This follows OGM-GE's librosa recipe (librosa >= 0.10
  pads centred frames with zeros). Suggested encoder ``cnn``.
* ``visual`` -- (3 * n_frames, image_size, image_size) float32 in [0, 1]: the
  ``n_frames`` frames at the centres of equal segments of the clip's sorted
  frames (one frame: the middle one), RGB, resized (bilinear, aspect ratio not
  kept), stacked along the channel axis. Suggested encoder ``cnn``. No
  augmentation or mean/std normalisation is applied.

Options: ``n_frames`` in 1..64, ``image_size`` in 1..1024 (``OPTION_RANGES``);
``fps`` (1..1000) picks the ``Image-{fps:02d}-FPS`` folder; ``max_samples``
keeps that many evenly spaced rows of each CSV (None: all), before any file is
read; ``skip_missing`` drops rows whose WAV or frame folder is absent (what
OGM-GE's loader does silently) instead of raising, and counts them in
``info["skipped"]``.

:func:`load_stream` decodes each split once into a memory-mapped cache under
``cache_dir`` (``memmap_cache``) and reads it per batch; :func:`estimate_bytes`
gives the decoded size from the CSVs alone.
"""

from __future__ import annotations

import numpy as np
import torch

from msam_lab.datasets import memmap_cache
from msam_lab.datasets.base import MultimodalData, Splits
from msam_lab.datasets.files import (
    check_positive_int,
    frames_array,
    is_plain_name,
    layout_error,
    load_frames,
    read_lines,
    read_wav,
    require_root,
    resample,
    stft_magnitude,
    subsample,
)
from msam_lab.datasets.memmap_cache import file_stamp
from msam_lab.datasets.streaming import cached_split

NAME = "crema-d"

OPTIONS = {"root": None, "n_frames": 1, "image_size": 64, "fps": 1, "max_samples": None, "skip_missing": False}
# checked by datasets.resolve_options before anything is read: one clip's frames stay under 1 GiB
# (3 x 64 x 1024 x 1024 float32) and every size product far inside numpy's int64 arithmetic
OPTION_RANGES = {"n_frames": (1, 64), "image_size": (1, 1024), "fps": (1, 1000), "max_samples": (1, None)}

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CLASS_NAMES = ["neutral", "happy", "sad", "fear", "disgust", "anger"]

SAMPLE_RATE = 22050
SECONDS = 3
N_FFT = 512
HOP = 353
AUDIO_SHAPE = (N_FFT // 2 + 1, 1 + SAMPLE_RATE * SECONDS // HOP)  # (257, 188)


def _layout(fps: int = 1) -> str:
    return (
        "<root>/{train,test}.csv rows clip_id,EMO with EMO in NEU HAP SAD FEA DIS ANG, "
        f"<root>/Image-{fps:02d}-FPS/<clip_id>/NNNNN.jpg, <root>/AudioWAV/<clip_id>.wav "
        "(OGM-GE layout)"
    )


LAYOUT = _layout()


def parse_row(line: str) -> tuple[str, int]:
    """``(clip_id, label)`` of one CSV row; ValueError saying what is wrong (the loader and
    ``msam-lab data check`` share this rule)."""
    fields = [f.strip().strip('"') for f in line.split(",")]
    if len(fields) < 2 or not fields[0]:
        raise ValueError(f"expected clip_id,EMO, got {line!r}")
    if fields[1] not in EMOTIONS:
        raise ValueError(f"unknown emotion {fields[1]!r}")
    if not is_plain_name(fields[0]):  # "/x" made <root>/AudioWAV/<clip>.wav an absolute path
        raise ValueError(f"clip id {fields[0]!r} is not a plain file name")
    return fields[0], EMOTIONS.index(fields[1])


def read_split_csv(path, layout: str = LAYOUT) -> list[tuple[str, int]]:
    """``[(clip_id, label)]`` from a ``clip_id,EMO`` CSV (BOM / CRLF tolerated)."""
    rows = []
    for lineno, line in read_lines(path, NAME, layout):
        try:
            rows.append(parse_row(line))
        except ValueError as err:
            raise layout_error(NAME, f"{path} line {lineno}: {err}", layout) from None
    return rows


def audio_features(path, layout: str = LAYOUT) -> np.ndarray:
    """The (257, 188) float32 log-magnitude spectrogram of one CREMA-D WAV."""
    rate, x = read_wav(path, NAME, layout)
    x = resample(x, rate, SAMPLE_RATE)
    length = SAMPLE_RATE * SECONDS
    x = np.clip(np.tile(x, -(-length // len(x)))[:length], -1.0, 1.0)
    return np.log(stft_magnitude(x, N_FFT, HOP) + 1e-7).astype(np.float32)


def _rows(root, split, fps, max_samples, skip_missing) -> tuple[list[tuple[str, int]], int]:
    """``(rows, skipped)``: the clips of one split that will be read."""
    layout = _layout(fps)
    rows = read_split_csv(root / f"{split}.csv", layout)
    if not rows:
        raise layout_error(NAME, f"no rows in {root / f'{split}.csv'}", layout)
    frames_root = root / f"Image-{fps:02d}-FPS"
    if skip_missing:
        kept = [(c, y) for c, y in rows if (root / "AudioWAV" / f"{c}.wav").is_file() and (frames_root / c).is_dir()]
        skipped, rows = len(rows) - len(kept), kept
        if not rows:
            raise layout_error(NAME, f"no clip of {root / f'{split}.csv'} has both its WAV and frame folder", layout)
    else:
        skipped = 0
    return [rows[i] for i in subsample(len(rows), max_samples)], skipped


def _sources(root, fps, clip) -> tuple:
    return root / "AudioWAV" / f"{clip}.wav", root / f"Image-{fps:02d}-FPS" / clip


def _fill(root, rows, fps, n_frames, image_size, audio, visual, labels) -> None:
    """Decode every clip of ``rows`` into ``audio`` / ``visual`` / ``labels`` (arrays or memmaps): both paths."""
    layout = _layout(fps)
    for i, (clip, y) in enumerate(rows):
        wav, frames = _sources(root, fps, clip)
        audio[i] = audio_features(wav, layout)
        visual[i] = load_frames(frames, n_frames, image_size, NAME, layout)
        labels[i] = y


def _read_split(root, split, n_frames, image_size, fps, max_samples, skip_missing):
    rows, skipped = _rows(root, split, fps, max_samples, skip_missing)
    audio = np.empty((len(rows),) + AUDIO_SHAPE, dtype=np.float32)
    visual = frames_array(len(rows), n_frames, image_size, NAME)  # too large: one-line error
    labels = np.empty(len(rows), dtype=np.int64)
    _fill(root, rows, fps, n_frames, image_size, audio, visual, labels)
    data = MultimodalData(
        {"audio": torch.from_numpy(audio), "visual": torch.from_numpy(visual)},
        torch.from_numpy(labels),
        num_classes=len(EMOTIONS),
    )
    return data, skipped


def _stream_split(cache_dir, root, split, n_frames, image_size, fps, max_samples, skip_missing):
    rows, skipped = _rows(root, split, fps, max_samples, skip_missing)
    shapes = {"audio": AUDIO_SHAPE, "visual": (3 * n_frames, image_size, image_size)}
    signature = {
        "dataset": NAME,
        "root": str(root),
        "split": split,
        "rows": memmap_cache.signature_key(rows),
        "options": {
            "n_frames": n_frames,
            "image_size": image_size,
            "fps": fps,
            "max_samples": max_samples,
            "skip_missing": skip_missing,
        },
        "sources": file_stamp(p for clip, _ in rows for p in _sources(root, fps, clip)),
    }

    def fill(arrays, labels):
        _fill(root, rows, fps, n_frames, image_size, arrays["audio"], arrays["visual"], labels)

    folder, manifest = memmap_cache.build(cache_dir, NAME, split, signature, len(rows), shapes, fill)
    return cached_split(folder, manifest, len(EMOTIONS)), skipped


def _info(root, n_frames, image_size, fps, max_samples, skip_missing, skipped) -> dict:
    return {
        "name": NAME,
        "description": (
            "CREMA-D: 91 actors speaking 12 sentences in 6 emotions; audio "
            "log-spectrogram (22.05 kHz, 3 s, STFT 512/353) and RGB face frames"
        ),
        "encoders": {"audio": "cnn", "visual": "cnn"},
        "shapes": {"audio": AUDIO_SHAPE, "visual": (3 * n_frames, image_size, image_size)},
        "options": {
            "root": str(root),
            "n_frames": n_frames,
            "image_size": image_size,
            "fps": fps,
            "max_samples": max_samples,
            "skip_missing": bool(skip_missing),
        },
        "class_names": list(CLASS_NAMES),
        "skipped": skipped,
    }


def _check(root, n_frames, image_size, fps):
    n_frames = check_positive_int(n_frames, "n_frames", NAME)
    image_size = check_positive_int(image_size, "image_size", NAME)
    fps = check_positive_int(fps, "fps", NAME)
    return require_root(root, NAME, _layout(fps)), n_frames, image_size, fps


def load(cache_dir, root, n_frames=1, image_size=64, fps=1, max_samples=None, skip_missing=False) -> Splits:
    """CREMA-D from ``root`` in the OGM-GE layout, decoded into memory (``cache_dir`` is unused)."""
    root, n_frames, image_size, fps = _check(root, n_frames, image_size, fps)
    args = (n_frames, image_size, fps, max_samples, bool(skip_missing))
    train, s_train = _read_split(root, "train", *args)
    test, s_test = _read_split(root, "test", *args)
    return Splits(train, test, _info(root, *args, {"train": s_train, "test": s_test}))


def load_stream(cache_dir, root, n_frames=1, image_size=64, fps=1, max_samples=None, skip_missing=False) -> Splits:
    """CREMA-D decoded once into memory-mapped ``.npy`` files under ``cache_dir``, then read per batch.

    The same decoding as :func:`load` (``_fill``); see ``memmap_cache`` for the
    cache's layout and when it is rebuilt.
    """
    root, n_frames, image_size, fps = _check(root, n_frames, image_size, fps)
    args = (n_frames, image_size, fps, max_samples, bool(skip_missing))
    train, s_train = _stream_split(cache_dir, root, "train", *args)
    test, s_test = _stream_split(cache_dir, root, "test", *args)
    return Splits(train, test, _info(root, *args, {"train": s_train, "test": s_test}))


def estimate_bytes(root, n_frames=1, image_size=64, fps=1, max_samples=None, skip_missing=False) -> int:
    """Decoded float32 size of both splits, from the CSV row counts (no media file is read)."""
    root, n_frames, image_size, fps = _check(root, n_frames, image_size, fps)
    per_sample = 4 * (int(np.prod(AUDIO_SHAPE)) + 3 * n_frames * image_size * image_size) + 8
    n = 0
    for split in ("train", "test"):
        rows = read_split_csv(root / f"{split}.csv", _layout(fps))
        n += len(subsample(len(rows), max_samples)) if rows else 0
    return n * per_sample
