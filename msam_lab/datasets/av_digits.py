"""av-digits: the embedded default dataset (no download).

Each sample pairs a real handwritten digit image with a synthetic telephone
keypad (DTMF) tone of the same digit:

* ``image`` -- scikit-learn's bundled 8x8 digits (1,797 images, values 0..16)
  divided by 16 into [0, 1], plus Gaussian pixel noise of std ``image_noise``.
  Shape (8, 8), float32.
* ``audio`` -- a DTMF tone (one low + one high sine, see :data:`DTMF`) synthesized
  at 8 kHz inside a 0.4 s window: tone duration uniform in 0.15-0.35 s at a
  uniform random start inside the window, a random phase per sine, each frequency
  jittered by a uniform +-3 %, then white Gaussian noise at ``audio_snr_db`` dB
  SNR (signal power = the tone's mean power over the WHOLE window, silence
  included). Then a Hann-windowed STFT, n_fft 128, hop 64, no centering/padding
  (49 frames of 3,200 samples), log1p of the magnitude, cropped to the first 64
  frequency bins (0-3,937.5 Hz in 62.5 Hz steps; the Nyquist bin is dropped) and
  the first 48 frames. Shape (64, 48), float32, standardised with the TRAIN
  split's scalar mean and std (the same two numbers are applied to the test split).

Randomness: ``numpy.random.SeedSequence(seed)`` is spawned into independent
streams for the split, the image noise and the audio, so changing one knob
(say ``audio_snr_db``) leaves the other modality and the split bit-identical.
Within the audio stream all tone parameters are drawn before the noise, and the
noise is a standard normal draw scaled per sample, so changing only the SNR
changes only the noise scale.

Unimodal difficulty, measured with a logistic-regression probe on the flattened
train features (seed 0, 359 test digits): image 96.4 % (68.0 % with
``image_noise=0.5``); audio 100 % at +20, 0 and -8 dB, 68.5 % at -14 dB and
37.9 % at -16 dB; -12 dB (the default) gives ~89 %. Down to about -8 dB the
tones are linearly separable. The imbalance that matters is in training, not in
the data: at the default -12 dB an audio-only CNN still reaches ~95 %, but in a
jointly trained model the image wins the race and the audio branch stays weak.

Scenarios (option ``scenario``, :data:`SCENARIOS`) name a setting of the knobs; a knob left at None
takes its scenario's value, a number given for it wins:

* ``imbalanced`` (the default): image_noise 0, audio -12 dB -- exactly the data above. The image wins
  the race from the first steps and keeps it; the audio stays starved.
* ``takeover``: the image leads early and the audio, more informative, takes over during training.
  See :data:`SCENARIOS` for the values and how they were chosen.

The generated arrays are cached as one ``.npz`` under ``cache_dir/av-digits``;
its file name encodes the knobs' values (not the scenario's name: a scenario and
the same knobs spelled out share a file) and :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from msam_lab.datasets.base import MultimodalData, Splits

NAME = "av-digits"

# scenario -> the values its knobs take when an option leaves them at None.
SCENARIOS = {
    # -12 dB: audio alone is learnable (a CNN reaches ~95 %) yet a jointly trained
    # model leaves it under-trained (~20 % inside the joint model) -- the imbalance
    # this dataset exists to show. See README "The default dataset".
    "imbalanced": {"image_noise": 0.0, "audio_snr_db": -12.0},
    # chosen by measurement (joint runs, seed 0, 5 epochs of ~21 steps, dominance = argmax of the Shapley
    # shares smoothed over 10 steps): at 0 / +5 dB the audio dominates from the first steps; at 0 / -8 dB
    # the image keeps the lead through epoch 5; σ 0.2 / -5 dB: the image (MLP, fast, its probe accuracy
    # capped below the clean 96 % by the noise) leads epoch 1, the audio (CNN, slower; linearly separable
    # from -8 dB up) takes over at steps 33-37 in seeds 0, 1, 2 and dominates the whole last epoch
    # (tests/datasets/test_scenarios.py)
    "takeover": {"image_noise": 0.2, "audio_snr_db": -5.0},
}
SCENARIO_KNOBS = ("image_noise", "audio_snr_db")
OPTIONS = {"scenario": "imbalanced", "image_noise": None, "audio_snr_db": None, "test_fraction": 0.2, "seed": 0}
# checked by datasets.resolve_options: audio_snr_db=1e30 raised OverflowError, image_noise=1e300
# overflowed float32 (numpy warnings, inf pixels)
OPTION_RANGES = {"image_noise": (0.0, 1000.0), "audio_snr_db": (-100.0, 100.0), "seed": (0, None)}

# Bump when anything about the generated arrays changes, so stale caches are ignored.
FORMAT_VERSION = 1

SAMPLE_RATE = 8000  # Hz
WINDOW_SAMPLES = 3200  # 0.4 s
TONE_SECONDS = (0.15, 0.35)  # uniform tone duration
JITTER = 0.03  # each frequency times U(1 - JITTER, 1 + JITTER)
N_FFT = 128
HOP = 64
N_FREQ = 64  # rfft bins kept (of 65)
N_FRAMES = 48  # frames kept (of 49)

# digit -> (low Hz, high Hz), the telephone keypad.
DTMF = {
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
    0: (941, 1336),
}
DTMF_TABLE = np.array([DTMF[d] for d in range(10)], dtype=np.float64)  # row = digit

CLASS_NAMES = [str(d) for d in range(10)]


# --------------------------------------------------------------------------- audio


def synthesize_tones(labels, rng: np.random.Generator, snr_db: float | None = 0.0) -> np.ndarray:
    """Raw DTMF waveforms, shape (N, 3200) float64 at 8 kHz, one per digit label.

    ``snr_db=None`` returns the clean tones. Tone parameters (duration, start,
    phases, jitter) are drawn from ``rng`` before the noise, so two generators in
    the same state give the same tones for any ``snr_db`` and the difference of
    the two waveforms is exactly the added noise.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    lo_len = int(round(TONE_SECONDS[0] * SAMPLE_RATE))
    hi_len = int(round(TONE_SECONDS[1] * SAMPLE_RATE))
    length = rng.integers(lo_len, hi_len + 1, size=n)  # samples
    start = np.floor(rng.random(n) * (WINDOW_SAMPLES - length + 1)).astype(np.int64)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 2))
    freq = DTMF_TABLE[labels] * rng.uniform(1.0 - JITTER, 1.0 + JITTER, size=(n, 2))

    t = np.arange(WINDOW_SAMPLES, dtype=np.float64)  # sample index
    rel = t[None, :] - start[:, None]  # (N, T)
    gate = (rel >= 0) & (rel < length[:, None])
    omega = 2.0 * np.pi * freq / SAMPLE_RATE  # rad / sample
    wave = np.sin(omega[:, 0:1] * rel + phase[:, 0:1]) + np.sin(omega[:, 1:2] * rel + phase[:, 1:2])
    wave *= gate
    if snr_db is None:
        return wave
    signal_power = np.mean(wave**2, axis=1, keepdims=True)
    noise_std = np.sqrt(signal_power / 10.0 ** (float(snr_db) / 10.0))
    wave += noise_std * rng.standard_normal(wave.shape)
    return wave


def log_spectrogram(wave: np.ndarray) -> np.ndarray:
    """log1p |STFT| of (N, 3200) waveforms -> (N, 64, 48) float64 (frequency x time).

    Hann window, n_fft 128, hop 64, no centering or padding: frame k covers
    samples [64k, 64k + 128).
    """
    wave = np.asarray(wave, dtype=np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(wave, N_FFT, axis=1)[:, ::HOP]
    frames = frames[:, :N_FRAMES] * np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    spec = np.abs(np.fft.rfft(frames, axis=-1))[:, :, :N_FREQ]  # (N, frames, freq)
    return np.log1p(spec).transpose(0, 2, 1)


# --------------------------------------------------------------------------- split


def stratified_split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator):
    """Sorted (train_idx, test_idx): round(test_fraction * n_c) of each class c to test."""
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(test_fraction * len(idx)))
        test.append(rng.permutation(idx)[:k])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


# --------------------------------------------------------------------------- generate


def _check_options(image_noise, audio_snr_db, test_fraction, seed, scenario="imbalanced") -> dict:
    """The options checked and normalised; a knob left at None stays None (see :func:`knobs`)."""

    def number(name, value):
        if value is None:
            return None  # the scenario's value
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
            raise ValueError(f"av-digits option {name!r} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"av-digits option {name!r} must be finite, got {value!r}")
        return value

    if not isinstance(scenario, str) or scenario not in SCENARIOS:
        close = difflib.get_close_matches(str(scenario), SCENARIOS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"av-digits option 'scenario' must be one of {', '.join(SCENARIOS)}; {hint}got {scenario!r}")
    image_noise = number("image_noise", image_noise)
    audio_snr_db = number("audio_snr_db", audio_snr_db)
    test_fraction = number("test_fraction", test_fraction)
    if image_noise is not None and image_noise < 0:
        raise ValueError(f"av-digits option 'image_noise' must be >= 0 (a pixel noise std), got {image_noise}")
    if test_fraction is None or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"av-digits option 'test_fraction' must be in (0, 1), e.g. 0.2; got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"av-digits option 'seed' must be a non-negative int, got {seed!r}")
    return {
        "scenario": scenario,
        "image_noise": image_noise,
        "audio_snr_db": audio_snr_db,
        "test_fraction": test_fraction,
        "seed": int(seed),
    }


def knobs(image_noise=None, audio_snr_db=None, test_fraction=0.2, seed=0, scenario="imbalanced") -> dict:
    """The values the data are made from: the options with each None knob set to its scenario's value
    (no ``scenario`` key: the data depend on the knobs only)."""
    opts = _check_options(image_noise, audio_snr_db, test_fraction, seed, scenario)
    preset = SCENARIOS[opts.pop("scenario")]
    return {k: preset[k] if k in SCENARIO_KNOBS and v is None else v for k, v in opts.items()}


def generate(image_noise, audio_snr_db, test_fraction, seed, scenario="imbalanced") -> dict[str, np.ndarray]:
    """Build the arrays (no cache): x_{train,test}_{image,audio}, y_{train,test}, audio_{mean,std}.

    Measured on a 2-core CPU (numpy 2.4), with another job running: about 0.5 s
    once sklearn is imported (tone synthesis ~0.27 s, STFT ~0.1 s), about 1 s for
    the first ``load`` in a process (``load_digits`` + writing the 22.6 MB cache
    file); a cache hit takes ~15 ms.
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415 - scikit-learn loads only when it is used

    opts = knobs(image_noise, audio_snr_db, test_fraction, seed, scenario)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    split_ss, image_ss, audio_ss = np.random.SeedSequence(opts["seed"]).spawn(3)

    images = digits.images.astype(np.float64) / 16.0
    if opts["image_noise"] > 0:
        images = images + opts["image_noise"] * np.random.default_rng(image_ss).standard_normal(images.shape)

    wave = synthesize_tones(labels, np.random.default_rng(audio_ss), opts["audio_snr_db"])
    audio = log_spectrogram(wave)

    train, test = stratified_split(labels, opts["test_fraction"], np.random.default_rng(split_ss))
    mean = float(audio[train].mean())
    std = float(audio[train].std())
    audio = (audio - mean) / max(std, 1e-12)

    return {
        "x_train_image": images[train].astype(np.float32),
        "x_test_image": images[test].astype(np.float32),
        "x_train_audio": audio[train].astype(np.float32),
        "x_test_audio": audio[test].astype(np.float32),
        "y_train": labels[train],
        "y_test": labels[test],
        "index_train": train,
        "index_test": test,
        "audio_mean": np.float64(mean),
        "audio_std": np.float64(std),
    }


# --------------------------------------------------------------------------- cache


def cache_path(cache_dir, image_noise, audio_snr_db, test_fraction, seed, scenario="imbalanced") -> Path:
    """``cache_dir/av-digits/av-digits-v<FORMAT>-<hash of the sorted knob values>.npz``."""
    opts = knobs(image_noise, audio_snr_db, test_fraction, seed, scenario)
    key = json.dumps({"format": FORMAT_VERSION, **opts}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / NAME / f"{NAME}-v{FORMAT_VERSION}-{digest}.npz"


_KEYS = (
    "x_train_image",
    "x_test_image",
    "x_train_audio",
    "x_test_audio",
    "y_train",
    "y_test",
    "index_train",
    "index_test",
    "audio_mean",
    "audio_std",
)


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _KEYS}
    except (OSError, KeyError, ValueError, EOFError):
        return None  # missing or unreadable: regenerate (and overwrite)
    return arrays


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data/ cache should be readable
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------- load


def load(cache_dir, image_noise, audio_snr_db, test_fraction, seed, scenario="imbalanced") -> Splits:
    """av-digits as :class:`Splits`; generated once per set of knob values, then read from the cache."""
    opts = _check_options(image_noise, audio_snr_db, test_fraction, seed, scenario)
    values = knobs(**opts)
    arrays = None
    path = None
    if cache_dir is not None:
        path = cache_path(cache_dir, **values)
        arrays = _read(path)
    cached = arrays is not None
    if arrays is None:
        arrays = generate(**values)
        if path is not None:
            _write(path, arrays)

    def part(split):
        inputs = {
            "image": torch.from_numpy(np.ascontiguousarray(arrays[f"x_{split}_image"])),
            "audio": torch.from_numpy(np.ascontiguousarray(arrays[f"x_{split}_audio"])),
        }
        labels = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
        return MultimodalData(inputs, labels, num_classes=10)

    train, test = part("train"), part("test")
    info = {
        "name": NAME,
        "description": (
            "sklearn's 1,797 real 8x8 handwritten digits paired with a synthetic "
            "DTMF keypad tone of the same digit (8 kHz, log-STFT 64x48); "
            f"scenario {opts['scenario']}: image noise {values['image_noise']:g}, audio {values['audio_snr_db']:g} dB"
        ),
        "encoders": {"image": "mlp", "audio": "cnn"},
        "shapes": {m: tuple(x.shape[1:]) for m, x in train.inputs.items()},
        "options": dict(opts),  # as given: a knob left at None takes the scenario's value
        "scenario": opts["scenario"],
        "knobs": dict(values),  # the values the data were made from
        "class_names": list(CLASS_NAMES),
        "audio_standardisation": {"mean": float(arrays["audio_mean"]), "std": float(arrays["audio_std"])},
        "cache_file": str(path) if path is not None else None,
        "cache_hit": cached,
    }
    return Splits(train, test, info)
