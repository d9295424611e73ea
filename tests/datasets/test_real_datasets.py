"""Loaders of the field's real datasets, on tiny fixtures written in their exact layouts.

The AV-MNIST builder test uses the real MNIST / FSDD files in ../shared/data and
is skipped when that folder is absent (a fresh clone has none).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import wavfile

from msam_lab.datasets import ave, avmnist, cremad, urfunny
from msam_lab.datasets.files import read_wav, stft_magnitude

pytestmark = pytest.mark.slow  # the real FSDD/MNIST subsets

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _load(module, tmp_path, root, **options):
    return module.load(cache_dir=tmp_path / "cache", **{**module.OPTIONS, "root": str(root), **options})


def _check_info(splits, name, modalities):
    info = splits.info
    assert info["name"] == name
    assert tuple(splits.modalities) == modalities
    assert set(info["encoders"]) == set(modalities)
    assert set(info["encoders"].values()) <= {"mlp", "cnn"}
    for split in (splits.train, splits.test):
        for m in modalities:
            assert split.inputs[m].dtype == torch.float32
            assert tuple(split.inputs[m].shape[1:]) == tuple(info["shapes"][m])
        assert split.labels.dtype == torch.int64
    assert len(info["class_names"]) == splits.num_classes
    assert isinstance(info["description"], str) and info["options"]


def _write_jpg(path, rng, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _write_wav(path, rng, rate, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(rate * seconds)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) + 0.05 * rng.standard_normal(n)
    wavfile.write(path, rate, (tone * 32767).astype(np.int16))


# --------------------------------------------------------------------------- av-mnist


def _write_avmnist(root, n_train=6, n_test=4, audio_dtype=np.uint8):
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True)
    (root / "audio").mkdir()
    for split, n in (("train", n_train), ("test", n_test)):
        np.save(root / "image" / f"{split}_data.npy", rng.normal(0, 60, (n, 784)).astype(np.float32))
        np.save(root / "audio" / f"{split}_data.npy", rng.integers(0, 256, (n, 112, 112)).astype(audio_dtype))
        np.save(root / f"{split}_labels.npy", (np.arange(n) % 10).astype(np.uint8))


def test_avmnist_loader_shapes_scaling_and_pooling(tmp_path):
    root = tmp_path / "avm"
    _write_avmnist(root)
    splits = _load(avmnist, tmp_path, root)
    _check_info(splits, "av-mnist", ("image", "audio"))
    assert splits.info["shapes"] == {"image": (28, 28), "audio": (112, 112)}
    assert len(splits.train) == 6 and len(splits.test) == 4
    raw_audio = np.load(root / "audio" / "train_data.npy")
    raw_image = np.load(root / "image" / "train_data.npy")
    assert torch.allclose(splits.train.inputs["audio"], torch.from_numpy(raw_audio / 255.0).float())
    assert torch.allclose(splits.train.inputs["image"], torch.from_numpy(raw_image.reshape(-1, 28, 28) / 255.0))
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 4, 5]

    pooled = _load(avmnist, tmp_path, root, audio_size=56, max_samples=3)
    assert tuple(pooled.train.inputs["audio"].shape) == (3, 56, 56)
    assert pooled.info["shapes"]["audio"] == (56, 56)
    expected = raw_audio[1].reshape(56, 2, 56, 2).mean(axis=(1, 3)) / 255.0  # middle of 3 of 6
    assert pooled.train.labels.tolist() == [1, 3, 5]
    assert np.allclose(pooled.train.inputs["audio"][0].numpy(), expected, atol=1e-6)


def test_avmnist_errors_name_the_file(tmp_path):
    root = tmp_path / "avm"
    _write_avmnist(root)
    np.save(root / "test_labels.npy", np.zeros(3, dtype=np.uint8))  # 4 images / 4 spectrograms
    with pytest.raises(ValueError, match=re.escape(str(root / "test_labels.npy")) + " has 3"):
        _load(avmnist, tmp_path, root)
    (root / "audio" / "train_data.npy").unlink()
    with pytest.raises(
        ValueError,
        match=r"^av-mnist: missing "
        + re.escape(str(root / "audio" / "train_data.npy"))
        + r"; expected .*MultiBench layout\)$",
    ):
        _load(avmnist, tmp_path, root)
    with pytest.raises(ValueError, match="no root given"):
        avmnist.load(cache_dir=tmp_path, **avmnist.OPTIONS)
    (root / "train_labels.npy").write_bytes(b"not an npy file")
    np.save(root / "audio" / "train_data.npy", np.zeros((6, 112, 112), dtype=np.uint8))
    with pytest.raises(ValueError, match="cannot read " + re.escape(str(root / "train_labels.npy"))):
        _load(avmnist, tmp_path, root)


@pytest.fixture(scope="module")
def built_avmnist(tmp_path_factory):
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fsdd" / "recordings").is_dir():
        pytest.skip(
            f"real MNIST/FSDD files not found under {SHARED_DATA} (../shared/data beside "
            "the repository); the AV-MNIST builder test needs them"
        )
    out = tmp_path_factory.mktemp("built") / "avmnist"
    avmnist.build_avmnist(
        SHARED_DATA / "mnist", SHARED_DATA / "fsdd" / "recordings", out, n_train=200, n_test=50, seed=3
    )
    return out


def test_build_avmnist_on_real_data(built_avmnist, tmp_path):
    from sklearn.decomposition import PCA

    out = built_avmnist
    assert not list(out.parent.glob(".*tmp")), "temporary build folder left behind"
    info = json.loads((out / "build_info.json").read_text())
    splits = _load(avmnist, tmp_path, out)
    _check_info(splits, "av-mnist", ("image", "audio"))
    assert (len(splits.train), len(splits.test)) == (200, 50)
    assert np.load(out / "audio" / "train_data.npy").dtype == np.uint8
    assert np.load(out / "image" / "train_data.npy").shape == (200, 784)

    images, digits = avmnist.read_mnist(SHARED_DATA / "mnist")
    train_idx = np.array(info["mnist_indices"]["train"])
    test_idx = np.array(info["mnist_indices"]["test"])
    assert not set(train_idx) & set(test_idx)
    assert splits.train.labels.tolist() == digits[train_idx].tolist()
    assert splits.test.labels.tolist() == digits[test_idx].tolist()

    # PCA: the fewest components explaining >= 25 % (brute force with sklearn), no mean added back.
    x_train = images[train_idx].reshape(200, -1).astype(np.float64)
    pca = PCA().fit(x_train)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    k = info["pca_components"]
    assert cumulative[k - 1] >= 0.25 and (k == 1 or cumulative[k - 2] < 0.25)
    assert np.linalg.matrix_rank(np.load(out / "image" / "train_data.npy"), tol=1e-2) == k
    v = pca.components_[:k]
    for idx, stored in ((train_idx, splits.train), (test_idx, splits.test)):
        x = images[idx].reshape(len(idx), -1).astype(np.float64)
        expected = (x - pca.mean_) @ v.T @ v / 255.0
        assert np.allclose(stored.inputs["image"].reshape(len(idx), -1).numpy(), expected, atol=1e-3)

    # Audio: each sample's FSDD recording is of its digit, from the right upstream split,
    # and the stored spectrogram is that recording's.
    recordings = SHARED_DATA / "fsdd" / "recordings"
    for split, data in (("train", splits.train), ("test", splits.test)):
        names = info["fsdd_files"][split]
        assert len(names) == len(data)
        for name, label in zip(names, data.labels.tolist()):
            digit, _, index = Path(name).stem.split("_")
            assert int(digit) == label
            assert (int(index) < 5) == (split == "test")
        for i in (0, len(names) - 1):
            spec = avmnist.fsdd_spectrogram(recordings / names[i])
            assert spec.shape == (112, 112) and spec.dtype == np.uint8
            assert spec.min() == 0 and spec.max() == 255
            assert torch.allclose(data.inputs["audio"][i], torch.from_numpy(spec / 255.0).float())

    with pytest.raises(FileExistsError):
        avmnist.build_avmnist(SHARED_DATA / "mnist", recordings, out, n_train=5, n_test=5)


# --------------------------------------------------------------------------- crema-d


def _write_cremad(root, train_rows, test_rows, rng):
    root.mkdir(parents=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        text = "".join(f"{clip},{emo}\r\n" for clip, emo in rows)
        (root / f"{split}.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
        for i, (clip, _) in enumerate(rows):
            _write_wav(root / "AudioWAV" / f"{clip}.wav", rng, 16000, 0.4 + 1.5 * i)
            for k in range(1, 4):
                _write_jpg(root / "Image-01-FPS" / clip / f"{k:05d}.jpg", rng)


def test_cremad_layout_labels_and_features(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "crema"
    train_rows = [(f"10{i:02d}_IEO_{emo}_HI", emo) for i, emo in enumerate(cremad.EMOTIONS)]
    test_rows = [("1091_TAI_ANG_XX", "ANG"), ("1091_TAI_NEU_XX", "NEU")]
    _write_cremad(root, train_rows, test_rows, rng)
    splits = _load(cremad, tmp_path, root)
    _check_info(splits, "crema-d", ("audio", "visual"))
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert splits.test.labels.tolist() == [5, 0]
    assert splits.info["shapes"] == {"audio": (257, 188), "visual": (3, 64, 64)}
    visual = splits.train.inputs["visual"]
    assert 0.0 <= visual.min() and visual.max() <= 1.0

    # The audio feature against an independent STFT (scipy) of the resampled, tiled 3 s clip.
    from scipy.signal import resample_poly, stft

    rate, x = read_wav(root / "AudioWAV" / f"{train_rows[0][0]}.wav", "t", "t")
    assert rate == 16000
    x = resample_poly(x, 441, 320)
    x = np.clip(np.tile(x, 8)[:66150], -1, 1)
    _, _, z = stft(x, nperseg=512, noverlap=512 - 353, window="hann", boundary="zeros", padded=False)
    expected = np.log(np.abs(z) * np.hanning(513)[:-1].sum() + 1e-7)
    assert expected.shape == (257, 188)
    assert np.allclose(splits.train.inputs["audio"][0].numpy(), expected, atol=1e-3)
    assert np.allclose(stft_magnitude(x, 512, 353), np.abs(z) * np.hanning(513)[:-1].sum())

    # The middle frame by default; several frames stack along channels.
    middle = (
        np.asarray(
            Image.open(root / "Image-01-FPS" / train_rows[0][0] / "00002.jpg")
            .convert("RGB")
            .resize((64, 64), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255
    )
    assert np.allclose(visual[0].numpy(), middle.transpose(2, 0, 1))
    multi = _load(cremad, tmp_path, root, n_frames=2, image_size=32, max_samples=3)
    assert tuple(multi.train.inputs["visual"].shape) == (3, 6, 32, 32)
    assert multi.info["shapes"]["visual"] == (6, 32, 32)
    assert len(multi.test) == 2


def test_cremad_errors(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "crema"
    _write_cremad(root, [("1001_DFA_ANG_XX", "ANG"), ("1001_DFA_HAP_XX", "HAP")], [("1002_DFA_SAD_XX", "SAD")], rng)
    wav = root / "AudioWAV" / "1001_DFA_HAP_XX.wav"
    wav.unlink()
    with pytest.raises(ValueError, match=r"^crema-d: missing " + re.escape(str(wav))):
        _load(cremad, tmp_path, root)
    skipped = _load(cremad, tmp_path, root, skip_missing=True)
    assert len(skipped.train) == 1 and skipped.info["skipped"] == {"train": 1, "test": 0}

    (root / "test.csv").write_bytes(b"1002_DFA_SAD_XX,SAD\r\n1002_DFA_XYZ_XX,XYZ\r\n")
    with pytest.raises(ValueError, match=re.escape(str(root / "test.csv")) + " line 2: unknown emotion 'XYZ'"):
        _load(cremad, tmp_path, root, skip_missing=True)
    (root / "test.csv").unlink()
    with pytest.raises(ValueError, match="missing " + re.escape(str(root / "test.csv"))):
        _load(cremad, tmp_path, root, skip_missing=True)


# --------------------------------------------------------------------------- ave

AVE_CLASSES = ["Church bell", "Male speech, man speaking", "Bus", "Bus, truck", "Cat"]


def _write_ave(root, rows_by_split, rng, frames=4):
    root.mkdir(parents=True)
    (root / "stat.txt").write_text("\n".join(AVE_CLASSES) + "\n")
    for split, rows in rows_by_split.items():
        lines = [f"{cls},{vid},good,0,10" for cls, vid in rows]
        (root / f"my_{split}.txt").write_text("\n".join(lines) + "\n")
        for _, vid in rows:
            (root / "audio_spec").mkdir(exist_ok=True)
            with open(root / "audio_spec" / f"{vid}.pkl", "wb") as f:
                pickle.dump(rng.standard_normal((257, 1004)).astype(np.float32), f)
            for k in range(1, frames + 1):
                _write_jpg(root / "visual" / vid / f"frame_{k:05d}.jpg", rng)


def test_ave_comma_class_names_and_features(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "ave"
    _write_ave(
        root,
        {
            "train": [("Male speech, man speaking", "v1"), ("Bus, truck", "v2"), ("Bus", "v3"), ("Cat", "v4")],
            "test": [("Church bell", "v5"), ("Male speech, man speaking", "v6")],
        },
        rng,
    )
    splits = _load(ave, tmp_path, root)
    _check_info(splits, "ave", ("audio", "visual"))
    assert splits.num_classes == 5 and splits.info["class_names"] == AVE_CLASSES
    assert splits.train.labels.tolist() == [1, 3, 2, 4]
    assert splits.test.labels.tolist() == [0, 1]
    assert splits.info["shapes"] == {"audio": (257, 1004), "visual": (3, 64, 64)}
    with open(root / "audio_spec" / "v1.pkl", "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(splits.train.inputs["audio"][0], torch.from_numpy(raw))

    pooled = _load(ave, tmp_path, root, audio_time_pool=4, n_frames=3, image_size=16)
    assert pooled.info["shapes"] == {"audio": (257, 251), "visual": (9, 16, 16)}
    assert np.allclose(pooled.train.inputs["audio"][0].numpy(), raw.reshape(257, 251, 4).mean(axis=2), atol=1e-6)


def test_ave_errors(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "ave"
    _write_ave(root, {"train": [("Cat", "v1")], "test": [("Bus", "v2")]}, rng, frames=1)
    with open(root / "my_test.txt", "a") as f:
        f.write("Dog, barking,v3,good,0,10\n")
    with pytest.raises(ValueError, match=re.escape(str(root / "my_test.txt")) + " line 2"):
        _load(ave, tmp_path, root)
    (root / "my_test.txt").write_text("Bus,v2,good,0,10\nCat,v9,good,0,10\n")
    with pytest.raises(ValueError, match="missing " + re.escape(str(root / "audio_spec" / "v9.pkl"))):
        _load(ave, tmp_path, root)
    assert _load(ave, tmp_path, root, skip_missing=True).info["skipped"] == {"train": 0, "test": 1}
    with open(root / "audio_spec" / "v2.pkl", "wb") as f:
        pickle.dump(np.zeros((257, 900), dtype=np.float32), f)
    (root / "my_test.txt").write_text("Bus,v2,good,0,10\nCat,v1,good,0,10\n")
    with pytest.raises(ValueError, match=re.escape(str(root / "audio_spec" / "v1.pkl")) + " has shape"):
        _load(ave, tmp_path, root)
    (root / "stat.txt").unlink()
    with pytest.raises(ValueError, match=r"^ave: missing " + re.escape(str(root / "stat.txt"))):
        _load(ave, tmp_path, root)


# --------------------------------------------------------------------------- ur-funny


def _humor_split(rng, n, zero_text=()):
    text = rng.standard_normal((n, 50, 300)).astype(np.float32)
    text[:, :10] = 0.0  # left zero-padding
    for i in zero_text:
        text[i] = 0.0
    return {
        "vision": rng.standard_normal((n, 50, 371)).astype(np.float32),
        "audio": rng.standard_normal((n, 50, 81)).astype(np.float32),
        "text": text,
        "labels": (np.arange(n) % 2).reshape(n, 1).astype(np.float32),
        "id": np.array([f"clip{i}" for i in range(n)]),
    }


def test_urfunny_cleaning_dropping_and_splits(tmp_path):
    rng = np.random.default_rng(5)
    data = {
        "train": _humor_split(rng, 6, zero_text=(2,)),
        "valid": _humor_split(rng, 3),
        "test": _humor_split(rng, 4, zero_text=(0, 3)),
    }
    data["train"]["audio"][0, 20, :5] = -np.inf
    data["train"]["audio"][1, 30, 7] = np.nan
    data["train"]["vision"][4, 40, 0] = np.nan
    root = tmp_path / "humor"
    root.mkdir()
    with open(root / "humor.pkl", "wb") as f:
        pickle.dump(data, f)

    splits = _load(urfunny, tmp_path, root)
    _check_info(splits, "ur-funny", ("text", "audio", "vision"))
    assert splits.info["shapes"] == {"text": (50, 300), "audio": (50, 81), "vision": (50, 371)}
    assert set(splits.info["encoders"].values()) == {"mlp"}
    assert splits.info["dropped"] == {"train": 1, "valid": 0, "test": 2}
    assert splits.train.labels.tolist() == [0, 1, 1, 0, 1]  # sample 2 dropped
    assert splits.val is not None and splits.val.labels.tolist() == [0, 1, 0]  # valid -> Splits.val
    dropped_valid = _load(urfunny, tmp_path, root, use_valid_as="drop")
    assert dropped_valid.val is None and dropped_valid.info["dropped"] == {"train": 1, "test": 2}
    assert splits.test.labels.tolist() == [1, 0]
    for m in ("text", "audio", "vision"):
        assert torch.isfinite(splits.train.inputs[m]).all()
    assert (splits.train.inputs["audio"][0, 20, :5] == 0).all()
    assert splits.train.inputs["audio"][1, 30, 7] == 0
    assert torch.equal(splits.train.inputs["text"][3], torch.from_numpy(data["train"]["text"][4]))

    as_train = _load(urfunny, tmp_path, root / "humor.pkl", use_valid_as="train")
    assert len(as_train.train) == 8 and len(as_train.test) == 2
    as_test = _load(urfunny, tmp_path, root, use_valid_as="test", max_samples=2)
    assert len(as_test.test) == 2 and len(as_test.train) == 2
    assert as_test.info["dropped"] == {"train": 1, "valid": 0, "test": 2}


def test_urfunny_errors(tmp_path):
    with pytest.raises(ValueError, match="missing " + re.escape(str(tmp_path / "humor.pkl"))):
        _load(urfunny, tmp_path, tmp_path)
    rng = np.random.default_rng(6)
    data = {"train": _humor_split(rng, 3), "test": _humor_split(rng, 2)}
    data["test"]["labels"] = np.ones((3, 1))
    with open(tmp_path / "humor.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(
        ValueError,
        match=re.escape(str(tmp_path / "humor.pkl")) + r" \['test'\]: 'text' has 2 samples but 'labels' has 3",
    ):
        _load(urfunny, tmp_path, tmp_path)
    del data["test"]["audio"]
    with open(tmp_path / "humor.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(ValueError, match=r"\['test'\] has no key 'audio'"):
        _load(urfunny, tmp_path, tmp_path)
    with pytest.raises(ValueError, match="use_valid_as"):
        _load(urfunny, tmp_path, tmp_path, use_valid_as="both")
