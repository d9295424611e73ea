"""What each dataset is and where to get it (``msam-lab data info``): plain data + a formatter.

The entries quote a few of the loaders' own constants (layout strings, class names, feature shapes,
option defaults). The loaders import torch, and ``msam-lab data info`` answers without it, so those
constants are copied here once (``LOADER_FACTS``); a test checks every copy against its loader. The
rest (sizes of the published sets, download addresses) is written here only. The catalogue describes
the built-ins; a registered plug-in gets a short entry from its registration.
"""

from __future__ import annotations

from types import SimpleNamespace

from msam_lab.config import Config
from msam_lab.datasets import DATASETS, _module, dataset_names, is_plugin

# loader module -> the constants (and option defaults) the entries below quote, as the loader has them
LOADER_FACTS: dict[str, dict] = {
    "msam_lab.datasets.av_digits": {
        "OPTIONS": {"scenario": "imbalanced", "image_noise": None, "audio_snr_db": None, "test_fraction": 0.2},
        "SCENARIOS": {
            "imbalanced": {"image_noise": 0.0, "audio_snr_db": -12.0},
            "takeover": {"image_noise": 0.2, "audio_snr_db": -5.0},
        },
        "N_FREQ": 64,
        "N_FRAMES": 48,
        "SAMPLE_RATE": 8000,
        "CLASS_NAMES": [str(d) for d in range(10)],
    },
    "msam_lab.datasets.synthetic": {
        "OPTIONS": {"n_modalities": 3, "n_classes": 4, "n_features": 16, "n_samples": 1200, "test_fraction": 0.25}
    },
    "msam_lab.datasets.avmnist": {
        "AUDIO_SIDE": 112,
        "CLASS_NAMES": [str(d) for d in range(10)],
        "LAYOUT": (
            "<root>/image/{train,test}_data.npy (N,784) float, <root>/audio/{train,test}_data.npy "
            "(N,112,112), <root>/{train,test}_labels.npy (N,) digits 0-9 (MultiBench layout)"
        ),
    },
    "msam_lab.datasets.cremad": {
        "OPTIONS": {"n_frames": 1, "image_size": 64},
        "AUDIO_SHAPE": (257, 188),
        "N_FFT": 512,
        "HOP": 353,
        "EMOTIONS": ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG"),
        "CLASS_NAMES": ["neutral", "happy", "sad", "fear", "disgust", "anger"],
        "LAYOUT": (
            "<root>/{train,test}.csv rows clip_id,EMO with EMO in NEU HAP SAD FEA DIS ANG, "
            "<root>/Image-01-FPS/<clip_id>/NNNNN.jpg, <root>/AudioWAV/<clip_id>.wav (OGM-GE layout)"
        ),
    },
    "msam_lab.datasets.ave": {
        "LAYOUT": (
            "<root>/stat.txt (one class name per line), <root>/my_{train,test[,val]}.txt rows "
            "class,video_id,..., <root>/audio_spec/<video_id>.pkl float32 (257,1004), "
            "<root>/visual/<video_id>/frame_0000k.jpg (OGM-GE layout)"
        )
    },
    "msam_lab.datasets.urfunny": {
        "OPTIONS": {"use_valid_as": "val"},
        "CLASS_NAMES": ["not humorous", "humorous"],
        "VALID_USES": ("val", "drop", "train", "test"),
        "LAYOUT": (
            "<root>/humor.pkl, a pickled dict with train/valid/test, each a dict with vision (N,50,371), "
            "audio (N,50,81), text (N,50,300), labels (N,1) in {0,1} (MultiBench layout)"
        ),
    },
}
# read below as the modules would be: av_digits.N_FREQ, cremad.OPTIONS["n_frames"]
av_digits, synthetic, avmnist, cremad, ave, urfunny = (
    SimpleNamespace(**LOADER_FACTS[f"msam_lab.datasets.{m}"])
    for m in ("av_digits", "synthetic", "avmnist", "cremad", "ave", "urfunny")
)
_AV_SCENARIOS = av_digits.SCENARIOS
_AV_DEFAULT = _AV_SCENARIOS[av_digits.OPTIONS["scenario"]]  # the knobs' defaults: the default scenario's values


def _holdout() -> str:
    return f"none of its own: a seeded hold-out of train (config field val_fraction, default {Config().val_fraction})"


_N_FRAMES, _SIZE = cremad.OPTIONS["n_frames"], cremad.OPTIONS["image_size"]
_VISUAL = (
    f"(3*n_frames, image_size, image_size) float32 in [0, 1], default "
    f"({3 * _N_FRAMES}, {_SIZE}, {_SIZE}): RGB frames, options data.n_frames / data.image_size"
)

CATALOG: dict[str, dict] = {
    "av-digits": {
        "summary": "the embedded default: scikit-learn's 1,797 real 8x8 handwritten digits paired with a "
        "synthesized telephone-keypad (DTMF) tone of the same digit",
        "modalities": {
            "image": f"(8, 8) float32 in [0, 1] (+ noise data.image_noise, default {_AV_DEFAULT['image_noise']})",
            "audio": f"({av_digits.N_FREQ}, {av_digits.N_FRAMES}) float32 log-STFT of an "
            f"{av_digits.SAMPLE_RATE // 1000} kHz tone at data.audio_snr_db "
            f"(default {_AV_DEFAULT['audio_snr_db']} dB)",
        },
        "scenarios": "data.scenario = "
        + ", ".join(
            f"{name} ({', '.join(f'{k} {v:g}' for k, v in knobs.items())})" for name, knobs in _AV_SCENARIOS.items()
        )
        + f"; default {av_digits.OPTIONS['scenario']}",
        "classes": av_digits.CLASS_NAMES,
        "splits": f"train / test, stratified, data.test_fraction = {av_digits.OPTIONS['test_fraction']}",
        "own_val": False,
        "source": "embedded: generated from scikit-learn's bundled digits in about a second, cached under "
        "data/ ($MSAM_LAB_DATA); nothing to download",
        "layout": None,
    },
    "synthetic": {
        "summary": "M-modality Gaussian class clusters with one informativeness knob per modality "
        "(tests, M >= 3, teaching)",
        "modalities": {
            "m0 .. m{M-1}": f"(data.n_features,) float32, default "
            f"M = {synthetic.OPTIONS['n_modalities']}, "
            f"{synthetic.OPTIONS['n_features']} features; informativeness "
            "3.0, 1.5, 0.75, ... (data.informativeness)"
        },
        "classes": f"data.n_classes, default {synthetic.OPTIONS['n_classes']}",
        "splits": f"train / test, stratified, {synthetic.OPTIONS['n_samples']} samples, data.test_fraction = "
        f"{synthetic.OPTIONS['test_fraction']}",
        "own_val": False,
        "source": "generated: instant, seeded (data.seed), nothing cached or downloaded",
        "layout": None,
    },
    "av-mnist": {
        "summary": "MNIST digits reduced to the PCA components explaining ~25 % of the variance, paired "
        "with a 112x112 spectrogram of a Free Spoken Digit Dataset recording of the same digit",
        "modalities": {
            "image": "(28, 28) float32 (stored (N, 784), divided by 255)",
            "audio": f"({avmnist.AUDIO_SIDE}, {avmnist.AUDIO_SIDE}) float32 (divided by 255; "
            "data.audio_size < 112 average-pools it)",
        },
        "classes": avmnist.CLASS_NAMES,
        "splits": "train 60,000 / test 10,000 in the published set",
        "own_val": False,
        "source": "MultiBench (https://github.com/pliang279/MultiBench, AV-MNIST download link in its "
        "README); or build a small real one from MNIST IDX files and FSDD recordings "
        "(https://github.com/Jakobovski/free-spoken-digit-dataset): msam-lab data build-avmnist "
        "--mnist DIR --fsdd DIR --out DIR",
        "layout": avmnist.LAYOUT,
    },
    "crema-d": {
        "summary": "CREMA-D: 91 actors speaking 12 sentences in 6 emotions, 7,442 clips; audio and face frames",
        "modalities": {
            "audio": f"{cremad.AUDIO_SHAPE} float32 log-magnitude STFT (22.05 kHz, 3 s, "
            f"n_fft {cremad.N_FFT}, hop {cremad.HOP})",
            "visual": _VISUAL,
        },
        "classes": [f"{code} {name}" for code, name in zip(cremad.EMOTIONS, cremad.CLASS_NAMES)],
        "splits": "train / test from OGM-GE's train.csv / test.csv (6,698 / 744 clips)",
        "own_val": False,
        "source": "https://github.com/CheyneyComputerScience/CREMA-D (AudioWAV/, VideoFlash/); frames "
        "extracted at 1 fps and train.csv / test.csv as in OGM-GE "
        "(https://github.com/GeWu-Lab/OGM-GE_CVPR2022)",
        "layout": cremad.LAYOUT,
    },
    "ave": {
        "summary": "AVE (Audio-Visual Event): 4,143 10-second YouTube videos of 28 event classes",
        "modalities": {"audio": "(257, 1004 // data.audio_time_pool) float32 stored spectrogram", "visual": _VISUAL},
        "classes": "28, read from stat.txt (line order = label)",
        "splits": "train / test from my_train.txt / my_test.txt, val from my_val.txt when present",
        "own_val": "its own when my_val.txt is present (OGM-GE's layout has it); else {holdout}",
        "source": "videos from the AVE authors (Tian et al., https://github.com/YapengTian/AVE-ECCV18); "
        "spectrograms, frames and split files prepared with OGM-GE's scripts "
        "(https://github.com/GeWu-Lab/OGM-GE_CVPR2022)",
        "layout": ave.LAYOUT,
    },
    "ur-funny": {
        "summary": "UR-Funny: TED-talk punchline humour detection from GloVe text, COVAREP audio and "
        "OpenFace video features, 50 time steps, left zero-padded",
        "modalities": {
            "text": "(50, 300) float32",
            "audio": "(50, 81) float32 (-inf set to 0)",
            "vision": "(50, 371) float32",
        },
        "classes": urfunny.CLASS_NAMES,
        "splits": "train / valid / test of humor.pkl (all-zero-text samples dropped); data.use_valid_as "
        f"= {' | '.join(urfunny.VALID_USES)}",
        "own_val": (
            f"its own: humor.pkl's 'valid' split (data.use_valid_as: {' | '.join(urfunny.VALID_USES)}; "
            f"default {urfunny.OPTIONS['use_valid_as']})"
        ),
        "source": "MultiBench's humor.pkl (https://github.com/pliang279/MultiBench, affective computing "
        "datasets); the original UR-FUNNY: https://github.com/ROC-HCI/UR-FUNNY",
        "layout": urfunny.LAYOUT,
    },
}

assert set(CATALOG) == set(DATASETS), "every built-in dataset needs a catalogue entry"


def _plugin_entry(name: str) -> str:
    """What msam_lab knows of a plug-in without loading it: who registered it and its options."""
    entry = _module(name)
    options = ", ".join(f"{k}={v!r}" for k, v in entry.OPTIONS.items()) or "none"
    return "\n".join(
        [
            f"{name}: a plug-in dataset ({entry!r})",
            f"  options (data.NAME): {options}",
            f"  train on it: msam-lab train --dataset {name}",
        ]
    )


def format_entry(name: str) -> str:
    """The catalogue entry of ``name`` as a few indented lines."""
    if is_plugin(name):
        return _plugin_entry(name)
    if name not in CATALOG:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")
    e = CATALOG[name]
    classes = e["classes"]
    classes = f"{len(classes)}: {', '.join(classes)}" if isinstance(classes, list) else classes
    val = e["own_val"].replace("{holdout}", _holdout()) if e["own_val"] else _holdout()
    lines = [f"{name}: {e['summary']}", "  modalities:"]
    lines += [f"    {m}: {shape}" for m, shape in e["modalities"].items()]
    lines += [f"  scenarios: {e['scenarios']}"] if e.get("scenarios") else []
    lines += [f"  classes: {classes}", f"  splits: {e['splits']}", f"  validation: {val}", f"  get it: {e['source']}"]
    if e["layout"]:
        lines += [
            f"  layout: {e['layout']}",
            f"  check it: msam-lab data check {name} --root DIR",
            f"  train on it: msam-lab train --dataset {name} --set data.root=DIR",
        ]
    else:
        lines += [f"  train on it: msam-lab train --dataset {name}"]
    return "\n".join(lines)


def format_catalog(names=None) -> str:
    """Entries of ``names`` (default: every dataset, plug-ins included), separated by blank lines."""
    return "\n\n".join(format_entry(n) for n in (names or dataset_names()))


__all__ = ["CATALOG", "format_entry", "format_catalog"]
