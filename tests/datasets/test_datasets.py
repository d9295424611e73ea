"""Tests for the av-digits and synthetic datasets and their registry entries.

Run with ``-s`` to see the linear-probe accuracies printed by the probe tests.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from msam_lab.datasets import av_digits, load_dataset

# The telephone keypad, written out here independently of the module under test.
KEYPAD = {
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
FS = 8000
WINDOW = 3200


@functools.lru_cache(maxsize=None)
def _av(image_noise=0.0, audio_snr_db=av_digits.OPTIONS["audio_snr_db"], test_fraction=0.2, seed=0):
    """av-digits without a cache, memoised across tests (callers must not mutate it)."""
    return av_digits.load(
        None, image_noise=image_noise, audio_snr_db=audio_snr_db, test_fraction=test_fraction, seed=seed
    )


def _tensors(splits):
    out = {}
    for part in ("train", "test"):
        data = getattr(splits, part)
        out[f"{part}/labels"] = data.labels
        for m, x in data.inputs.items():
            out[f"{part}/{m}"] = x
    return out


def _probe(splits, modality) -> float:
    """Test accuracy of a logistic-regression probe on flattened train features."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    xtr = splits.train.inputs[modality].reshape(len(splits.train), -1).numpy()
    xte = splits.test.inputs[modality].reshape(len(splits.test), -1).numpy()
    # one BLAS thread: on a small shared CPU a multi-threaded BLAS makes this 10-30x slower
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # ConvergenceWarning: the probe need not be optimal
        clf = LogisticRegression(max_iter=300).fit(xtr, splits.train.labels.numpy())
    return float(clf.score(xte, splits.test.labels.numpy()))


def _peaks(wave, n_fft=1 << 15, exclude_hz=60.0):
    """The two strongest spectral peaks (Hz, ascending) of a real waveform, by a plain FFT."""
    mag = np.abs(np.fft.rfft(wave, n=n_fft))
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / FS)
    first = int(np.argmax(mag))
    mag = mag.copy()
    mag[np.abs(freqs - freqs[first]) < exclude_hz] = 0.0
    second = int(np.argmax(mag))
    return tuple(sorted((freqs[first], freqs[second])))


# ============================================================================ av-digits


def _source_index(images):
    """Index into sklearn's digits of each clean (noise-free) image, by exact nearest neighbour."""
    from sklearn.datasets import load_digits

    ref = torch.from_numpy(load_digits().images.astype(np.float32) / 16).reshape(1797, 64)
    dist = torch.cdist(images.reshape(len(images), 64).double(), ref.double())
    assert float(dist.min(1).values.max()) == 0.0
    return dist.argmin(1), ref


def test_av_same_options_bit_identical_and_seed_changes_data():
    a = av_digits.load(None, image_noise=0.3, audio_snr_db=0.0, test_fraction=0.2, seed=7)
    b = av_digits.load(None, image_noise=0.3, audio_snr_db=0.0, test_fraction=0.2, seed=7)
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k

    # a different data seed gives a different split ...
    idx7, ref = _source_index(_av(seed=7).test.inputs["image"])
    idx8, _ = _source_index(_av(seed=8).test.inputs["image"])
    common = sorted(set(idx7.tolist()) & set(idx8.tolist()))
    assert 0 < len(common) < 0.5 * len(idx7)
    # ... and different image noise and audio for the same source digit
    # (the split does not depend on image_noise: see test_av_knobs_are_independent)
    c = av_digits.load(None, image_noise=0.3, audio_snr_db=0.0, test_fraction=0.2, seed=8)
    pos7 = {int(j): i for i, j in enumerate(idx7)}
    pos8 = {int(j): i for i, j in enumerate(idx8)}
    i7 = torch.tensor([pos7[j] for j in common])
    i8 = torch.tensor([pos8[j] for j in common])
    noise7 = a.test.inputs["image"][i7].reshape(-1, 64) - ref[common]
    noise8 = c.test.inputs["image"][i8].reshape(-1, 64) - ref[common]
    assert abs(float(noise7.std()) - 0.3) < 0.03 and abs(float(noise8.std()) - 0.3) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([noise7.flatten(), noise8.flatten()]))[0, 1])) < 0.1
    assert not torch.allclose(a.test.inputs["audio"][i7], c.test.inputs["audio"][i8], atol=0.1)


def test_av_knobs_are_independent():
    """Changing the audio SNR leaves the split and the images bit-identical, and vice versa."""
    base, loud = _av(), _av(audio_snr_db=20.0)
    assert torch.equal(base.train.labels, loud.train.labels)
    assert torch.equal(base.test.inputs["image"], loud.test.inputs["image"])
    assert not torch.equal(base.test.inputs["audio"], loud.test.inputs["audio"])
    noisy = _av(image_noise=0.5)
    assert torch.equal(base.test.inputs["audio"], noisy.test.inputs["audio"])
    assert not torch.equal(base.test.inputs["image"], noisy.test.inputs["image"])


def test_av_shapes_dtypes_labels_info_and_stratification():
    s = _av()
    assert s.modalities == ("image", "audio")
    n_total = len(s.train) + len(s.test)
    assert n_total == 1797
    for data in (s.train, s.test):
        assert data.inputs["image"].dtype == torch.float32
        assert data.inputs["audio"].dtype == torch.float32
        assert data.inputs["image"].shape == (len(data), 8, 8)
        assert data.inputs["audio"].shape == (len(data), 64, 48)
        assert data.labels.dtype == torch.int64
        assert int(data.labels.min()) >= 0 and int(data.labels.max()) <= 9
        assert data.num_classes == 10
        assert torch.isfinite(data.inputs["audio"]).all()

    info = s.info
    assert info["name"] == "av-digits"
    assert info["encoders"] == {"image": "mlp", "audio": "cnn"}
    assert info["shapes"] == {"image": (8, 8), "audio": (64, 48)}
    assert info["options"] == {**av_digits.OPTIONS, "image_noise": 0.0}  # the options as given are recorded
    assert info["knobs"] == {**av_digits.SCENARIOS["imbalanced"], "test_fraction": 0.2, "seed": 0}  # and used
    assert info["class_names"] == [str(d) for d in range(10)]
    assert isinstance(info["description"], str) and "\n" not in info["description"]

    # stratified: each class's test count within 1 of its proportional share
    all_labels = torch.cat([s.train.labels, s.test.labels])
    total = torch.bincount(all_labels, minlength=10).double()
    test = torch.bincount(s.test.labels, minlength=10).double()
    assert (test - 0.2 * total).abs().max() <= 1.0
    assert abs(len(s.test) - 0.2 * n_total) <= 5

    # audio standardised with the train split's statistics
    tr = s.train.inputs["audio"].double()
    assert abs(float(tr.mean())) < 1e-4 and abs(float(tr.std()) - 1.0) < 1e-3
    assert abs(float(s.test.inputs["audio"].mean())) < 0.2


def test_av_images_are_sklearn_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    ref = torch.from_numpy(digits.images.astype(np.float32) / 16).reshape(1797, 64)
    s = _av()
    ours = torch.cat([s.train.inputs["image"], s.test.inputs["image"]]).reshape(-1, 64)
    labels = torch.cat([s.train.labels, s.test.labels])
    # nearest neighbour of every image among sklearn's: exact match with the same label
    dist = torch.cdist(ours.double(), ref.double())
    nn = dist.argmin(1)
    assert float(dist.min(1).values.max()) == 0.0
    assert torch.equal(ref[nn], ours)
    assert torch.equal(labels, torch.from_numpy(digits.target)[nn].long())

    # and as multisets (train + test is a partition of sklearn's set)
    def canon(x):
        return sorted(map(tuple, x.tolist()))

    assert canon(ours) == canon(ref)

    # with image noise the residual is Gaussian with the requested std
    noisy = _av(image_noise=0.5)
    resid = noisy.test.inputs["image"] - s.test.inputs["image"]
    assert abs(float(resid.std()) - 0.5) < 0.02 and abs(float(resid.mean())) < 0.02


def test_av_audio_encodes_the_label():
    """Clean tones: the two strongest FFT peaks are the digit's DTMF pair within the jitter."""
    labels = np.repeat(np.arange(10), 15)
    wave = av_digits.synthesize_tones(labels, np.random.default_rng(123), snr_db=100.0)
    assert wave.shape == (len(labels), WINDOW)
    ratios = []
    for y, w in zip(labels, wave):
        low, high = _peaks(w)
        nominal_low, nominal_high = KEYPAD[int(y)]
        # +-3 % jitter plus a few Hz for FFT leakage from a short rectangular-gated tone
        assert abs(low - nominal_low) <= 0.03 * nominal_low + 4, (y, low)
        assert abs(high - nominal_high) <= 0.03 * nominal_high + 4, (y, high)
        ratios += [low / nominal_low, high / nominal_high]
    # the jitter is really there (uniform +-3 % has std 1.7 %)
    assert np.std(ratios) > 0.01

    # tone durations 0.15-0.35 s inside the 0.4 s window
    clean = av_digits.synthesize_tones(labels, np.random.default_rng(123), snr_db=None)
    nz = np.abs(clean) > 0
    first = nz.argmax(1)
    last = WINDOW - 1 - nz[:, ::-1].argmax(1)
    length = last - first + 1
    assert length.min() >= 0.15 * FS - 2 and length.max() <= 0.35 * FS
    assert length.max() - length.min() > 0.1 * FS  # durations really vary
    assert first.min() < 0.05 * FS and last.max() > WINDOW - 0.05 * FS  # starts really vary


@pytest.mark.parametrize("snr_db", [-8.0, 0.0, 20.0])
def test_av_snr_knob_is_real(snr_db):
    labels = np.tile(np.arange(10), 40)
    clean = av_digits.synthesize_tones(labels, np.random.default_rng(5), snr_db=None)
    noisy = av_digits.synthesize_tones(labels, np.random.default_rng(5), snr_db=snr_db)
    noise = noisy - clean
    signal_power = (clean**2).mean(1)  # over the whole 0.4 s window
    noise_power = (noise**2).mean(1)
    ratio = noise_power / (signal_power / 10 ** (snr_db / 10))
    assert abs(ratio.mean() - 1) < 0.03
    assert np.all(np.abs(ratio - 1) < 0.15)  # per sample: 3,200 draws, ~2.5 % std
    # white: flat spectrum, no tone in it
    spec = np.abs(np.fft.rfft(noise, axis=1)) ** 2
    band = spec[:, 1:-1].mean(0)
    halves = band[: len(band) // 2].mean(), band[len(band) // 2 :].mean()
    assert abs(halves[0] / halves[1] - 1) < 0.05


def test_av_cache_hit_and_distinct_files(tmp_path):
    opts = dict(av_digits.OPTIONS)
    first = av_digits.load(tmp_path, **opts)
    files = sorted((tmp_path / "av-digits").glob("*.npz"))
    assert len(files) == 1 and first.info["cache_hit"] is False
    assert not list((tmp_path / "av-digits").glob("*.tmp"))  # atomic write left no temp file
    assert files[0].stat().st_mode & 0o044 == 0o044  # readable by group and others
    mtime = files[0].stat().st_mtime_ns

    second = av_digits.load(tmp_path, **opts)
    assert second.info["cache_hit"] is True
    assert files[0].stat().st_mtime_ns == mtime
    t1, t2 = _tensors(first), _tensors(second)
    for k in t1:
        assert t1[k].dtype == t2[k].dtype and torch.equal(t1[k], t2[k]), k
    # the cached tensors equal freshly generated ones
    for k, v in _tensors(_av()).items():
        assert torch.equal(v, t1[k]), k

    av_digits.load(tmp_path, **{**opts, "audio_snr_db": 5.0})
    files2 = sorted((tmp_path / "av-digits").glob("*.npz"))
    assert len(files2) == 2
    # int vs float spelling of the same option is the same file
    assert av_digits.cache_path(tmp_path, 0, -12, 0.2, 0) == files[0]

    # a corrupt cache file is regenerated, not trusted
    files[0].write_bytes(b"not an npz")
    third = av_digits.load(tmp_path, **opts)
    assert third.info["cache_hit"] is False
    assert torch.equal(third.test.inputs["audio"], first.test.inputs["audio"])


def test_av_through_registry(tmp_path):
    s = load_dataset("av-digits", cache_dir=tmp_path)
    assert s.info["name"] == "av-digits" and s.modalities == ("image", "audio")
    assert list((tmp_path / "av-digits").glob("*.npz"))
    with pytest.raises(ValueError, match="snr"):
        load_dataset("av-digits", cache_dir=tmp_path, snr=3)
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("av-digits", cache_dir=tmp_path, test_fraction=1.5)
    with pytest.raises(ValueError, match="image_noise"):
        load_dataset("av-digits", cache_dir=tmp_path, image_noise=-1)


# Down to about -8 dB the DTMF tones are linearly separable (the probe scores ~100 %);
# the audio becomes the weaker modality for a linear probe below about -12 dB.
# The data-level check is made at -14 dB; the training-level imbalance at the
# defaults is checked in tests/training/test_trainer.py.
IMBALANCED_SNR_DB = -14.0


def test_av_probe_imbalance_and_snr_direction():
    defaults = _av()
    acc = {"image@defaults": _probe(defaults, "image"), "audio@0dB": _probe(_av(audio_snr_db=0.0), "audio")}
    for snr in (-16.0, IMBALANCED_SNR_DB, -8.0, 20.0):
        acc[f"audio@{snr:+g}dB"] = _probe(_av(audio_snr_db=snr), "audio")
    acc["image@noise0.5"] = _probe(_av(image_noise=0.5), "image")
    print("\nlinear-probe test accuracies (logistic regression, av-digits seed 0):")
    for k, v in acc.items():
        print(f"  {k:>22s}: {v:.3f}")

    chance = 0.1
    assert acc["image@defaults"] > 0.9
    # image clearly stronger than audio at the imbalanced operating point
    assert acc["image@defaults"] - acc[f"audio@{IMBALANCED_SNR_DB:+g}dB"] > 0.15
    # the SNR knob works in the claimed direction
    assert acc["audio@-16dB"] < acc[f"audio@{IMBALANCED_SNR_DB:+g}dB"] < acc["audio@-8dB"]
    assert acc["audio@+20dB"] >= acc["audio@0dB"] - 0.01
    assert acc["audio@+20dB"] > acc[f"audio@{IMBALANCED_SNR_DB:+g}dB"] + 0.2
    assert acc["audio@0dB"] > 0.9 and acc["audio@-16dB"] > chance + 0.1
    # and the image knob too
    assert acc["image@noise0.5"] < acc["image@defaults"] - 0.1


# ============================================================================ synthetic


def _syn(**options):
    return load_dataset("synthetic", **options)


def test_synthetic_shapes_info_balance_stratification():
    s = _syn()
    assert s.modalities == ("m0", "m1", "m2")
    assert len(s.train) + len(s.test) == 1200
    for data in (s.train, s.test):
        for m in s.modalities:
            assert data.inputs[m].dtype == torch.float32 and data.inputs[m].shape == (len(data), 16)
        assert data.labels.dtype == torch.int64 and data.num_classes == 4
    labels = torch.cat([s.train.labels, s.test.labels])
    counts = torch.bincount(labels, minlength=4)
    assert int(counts.max() - counts.min()) <= 1
    test = torch.bincount(s.test.labels, minlength=4).double()
    assert (test - 0.25 * counts.double()).abs().max() <= 1.0
    info = s.info
    assert info["name"] == "synthetic"
    assert info["encoders"] == {"m0": "mlp", "m1": "mlp", "m2": "mlp"}
    assert info["shapes"] == {m: (16,) for m in ("m0", "m1", "m2")}
    assert info["class_names"] == ["0", "1", "2", "3"]
    inf = info["options"]["informativeness"]
    assert len(inf) == 3 and inf[0] > inf[1] > inf[2] > 0
    assert isinstance(info["description"], str) and "\n" not in info["description"]

    assert _syn(informativeness=2.0).info["options"]["informativeness"] == [2.0, 2.0, 2.0]
    five = _syn(n_modalities=5, n_classes=3, n_features=4)
    assert five.modalities == tuple(f"m{i}" for i in range(5)) and five.num_classes == 3
    assert five.train.inputs["m4"].shape[1] == 4


def test_synthetic_determinism_and_seed():
    a, b, c = _syn(seed=3), _syn(seed=3), _syn(seed=4)
    for k, v in _tensors(a).items():
        assert torch.equal(v, _tensors(b)[k]), k
    assert not torch.equal(a.train.inputs["m0"], c.train.inputs["m0"])
    # a modality's data do not depend on the other modalities' knobs
    d = _syn(seed=3, informativeness=[3.0, 0.0, 9.0])
    assert torch.equal(a.train.inputs["m0"], d.train.inputs["m0"])


def test_synthetic_informativeness_shows_in_probe():
    s = _syn(n_samples=2000, informativeness=[3.0, 1.5, 0.75])
    acc = [_probe(s, m) for m in s.modalities]
    print(f"\nsynthetic probe accuracies for informativeness 3.0/1.5/0.75: {acc}")
    assert acc[0] > acc[1] + 0.05 > acc[2] + 0.1


def test_synthetic_zero_informativeness_is_chance():
    # Features independent of the label give any classifier an expected accuracy of exactly
    # 1/n_classes on a balanced test set; with 1,000 test samples the binomial std is
    # sqrt(0.25 * 0.75 / 1000) = 0.014, so 0.07 is a 5-sigma band.
    s = _syn(n_modalities=2, informativeness=[2.0, 0.0], n_samples=4000)
    acc_info, acc_zero = _probe(s, "m0"), _probe(s, "m1")
    print(f"\nsynthetic: informativeness 2.0 -> {acc_info:.3f}, 0.0 -> {acc_zero:.3f} (chance 0.25)")
    assert abs(acc_zero - 0.25) < 0.07
    assert acc_info > 0.5


@pytest.mark.parametrize(
    "options, name",
    [
        ({"n_modalities": 0}, "n_modalities"),
        ({"n_modalities": 2.5}, "n_modalities"),
        ({"n_classes": 1}, "n_classes"),
        ({"n_features": 0}, "n_features"),
        ({"informativeness": [1.0, 2.0]}, "informativeness"),
        ({"informativeness": [1.0, -2.0, 1.0]}, "informativeness"),
        ({"informativeness": -1.0}, "informativeness"),
        ({"informativeness": "high"}, "informativeness"),
        ({"informativeness": [1.0, float("nan"), 1.0]}, "informativeness"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"n_samples": 5}, "n_samples"),
        ({"n_samples": 8, "test_fraction": 0.1}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"n_modes": 3}, "n_modes"),
    ],
)
def test_synthetic_bad_options(options, name):
    with pytest.raises(ValueError, match=name) as err:
        _syn(**options)
    assert "\n" not in str(err.value)
