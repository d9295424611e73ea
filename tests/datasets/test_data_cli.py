"""``msam-lab data check | info | build-avmnist`` on tiny fixtures in the real layouts.

The fixtures are written by tests/datasets/test_real_datasets.py's helpers (the loaders'
own tests), so a layout the check accepts is one the loaders read. The
build-avmnist test uses the real MNIST / FSDD files in ../shared/data and is
skipped when that folder is absent.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from msam_lab.cli import commands as cli
from msam_lab.datasets import DATASETS, ave, cremad, load_dataset, urfunny
from msam_lab.datasets.catalog import CATALOG
from msam_lab.datasets.layouts import CHECKS, check
from tests.datasets.test_real_datasets import SHARED_DATA, _humor_split, _write_ave, _write_avmnist, _write_cremad


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``msam-lab *argv`` in process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_one_line_error(err):
    assert err.startswith("msam-lab") and err.count("\n") == 1, err


# --------------------------------------------------------------------------- av-mnist


def test_check_avmnist_ok_and_every_breakage_named(tmp_path, capsys):
    root = tmp_path / "avm"
    _write_avmnist(root)
    code, out, err = run(capsys, "data", "check", "av-mnist", "--root", str(root))
    assert code == 0 and err == ""
    assert f"av-mnist at {root}: OK" in out
    assert "train: 6 samples; image (6, 784) float32, audio (6, 112, 112) uint8" in out
    assert "test: 4 samples" in out

    (root / "audio" / "train_data.npy").unlink()  # missing file
    np.save(root / "image" / "test_data.npy", np.zeros((4, 100), dtype=np.float32))  # wrong shape
    labels = np.load(root / "train_labels.npy")
    labels[2] = 12
    np.save(root / "train_labels.npy", labels)  # bad label
    raw = (root / "audio" / "test_data.npy").read_bytes()
    (root / "audio" / "test_data.npy").write_bytes(raw[: len(raw) // 2])  # truncated npy
    code, out, err = run(capsys, "data", "check", "av-mnist", "--root", str(root))
    assert code == 2
    lines = out.splitlines()
    assert (
        "audio/train_data.npy: missing; expected a .npy array (N, 112, 112) numbers: spectrograms, "
        "usually uint8" in lines
    )
    assert any(l.startswith("image/test_data.npy: has shape (4, 100); expected a .npy array (N, 784)") for l in lines)
    assert "train_labels.npy: 1 labels outside the digits 0-9 (first at index 2: 12); expected digits 0-9" in lines
    assert any(l.startswith("audio/test_data.npy: truncated or not a .npy array") for l in lines)
    assert len(lines) == 4, out
    assert_one_line_error(err)
    assert "4 problems" in err and "MultiBench layout" in err


def test_check_avmnist_lengths_and_nan(tmp_path, capsys):
    root = tmp_path / "avm"
    _write_avmnist(root)
    np.save(root / "test_labels.npy", np.zeros(3, dtype=np.uint8))
    image = np.load(root / "image" / "train_data.npy")
    image[4, 7] = np.nan
    np.save(root / "image" / "train_data.npy", image)
    code, out, _ = run(capsys, "data", "check", "av-mnist", "--root", str(root))
    assert code == 2
    assert "image/test_data.npy: has 4 samples but test_labels.npy has 3" in out
    assert "audio/test_data.npy: has 4 samples but test_labels.npy has 3" in out
    assert "image/train_data.npy: 1 sample hold NaN or infinite values (first at index 4)" in out


# --------------------------------------------------------------------------- crema-d

CREMA_TRAIN = [("1001_DFA_ANG_XX", "ANG"), ("1001_DFA_HAP_XX", "HAP"), ("1001_DFA_NEU_XX", "NEU")]
CREMA_TEST = [("1002_DFA_SAD_XX", "SAD")]


def test_check_cremad_ok_then_every_breakage_named(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "crema"
    _write_cremad(root, CREMA_TRAIN, CREMA_TEST, rng)
    code, out, _ = run(capsys, "data", "check", "crema-d", "--root", str(root))
    assert code == 0, out
    assert "train: 3 clips (NEU 1, HAP 1, ANG 1)" in out and "test: 1 clip (SAD 1)" in out
    assert "WAV sample rates: 16000 Hz x4" in out and "frames per clip: 3-3" in out
    assert f"audio {cremad.AUDIO_SHAPE}" in out
    splits = cremad.load(cache_dir=tmp_path, **{**cremad.OPTIONS, "root": str(root)})  # the loader agrees
    assert (len(splits.train), len(splits.test)) == (3, 1)

    (root / "AudioWAV" / "1001_DFA_HAP_XX.wav").unlink()  # missing WAV
    (root / "AudioWAV" / "1001_DFA_NEU_XX.wav").write_bytes(b"RIFF not really a wav")  # corrupt WAV
    (root / "Image-01-FPS" / "1001_DFA_ANG_XX" / "00002.jpg").write_bytes(b"\xff\xd8 truncated")
    for frame in (root / "Image-01-FPS" / "1002_DFA_SAD_XX").iterdir():  # no frames
        frame.unlink()
    with open(root / "test.csv", "ab") as f:
        f.write(b"garbage\r\n1002_DFA_XYZ_XX,XYZ\r\n/etc/passwd,ANG\r\n")  # malformed rows
    code, out, err = run(capsys, "data", "check", "crema-d", "--root", str(root))
    assert code == 2
    lines = out.splitlines()
    assert "AudioWAV/1001_DFA_HAP_XX.wav: missing (listed in train.csv line 2); expected a WAV file" in lines
    assert any(
        l.startswith("AudioWAV/1001_DFA_NEU_XX.wav: cannot read as WAV") and "(listed in train.csv line 3)" in l
        for l in lines
    )
    assert any(l.startswith("Image-01-FPS/1001_DFA_ANG_XX/00002.jpg: cannot be decoded as an image") for l in lines)
    assert (
        "Image-01-FPS/1002_DFA_SAD_XX/: holds no .jpg frames (listed in test.csv line 1); expected a "
        "folder of NNNNN.jpg frames (Image-01-FPS/<clip_id>/)"
    ) in lines
    assert (
        "test.csv line 2: expected clip_id,EMO, got 'garbage'; expected rows clip_id,EMO with EMO one of "
        "NEU HAP SAD FEA DIS ANG" in lines
    )
    assert any(l.startswith("test.csv line 3: unknown emotion 'XYZ'") for l in lines)
    assert any(l.startswith("test.csv line 4: clip id '/etc/passwd' is not a plain file name") for l in lines)
    assert len(lines) == 7, out
    assert_one_line_error(err)


def test_check_cremad_missing_csv_and_folder(tmp_path, capsys):
    root = tmp_path / "crema"
    _write_cremad(root, CREMA_TRAIN, CREMA_TEST, np.random.default_rng(1))
    (root / "test.csv").unlink()
    (root / "train.csv").write_bytes(b"\xff\xfe not utf-8 \xff\r\n")
    code, out, _ = run(capsys, "data", "check", "crema-d", "--root", str(root))
    assert code == 2
    assert "test.csv: missing; expected a CSV of rows clip_id,EMO" in out
    assert any(l.startswith("train.csv: cannot decode as UTF-8") for l in out.splitlines())
    code, out, _ = run(capsys, "data", "check", "crema-d", "--root", str(root), "--fps", "2")
    assert "Image-02-FPS/: missing" in out


# --------------------------------------------------------------------------- ave


def test_check_ave_ok_then_every_breakage_named(tmp_path, capsys):
    rng = np.random.default_rng(2)
    root = tmp_path / "ave"
    _write_ave(
        root,
        {"train": [("Male speech, man speaking", "v1"), ("Bus", "v2"), ("Cat", "v3")], "test": [("Church bell", "v4")]},
        rng,
        frames=2,
    )
    code, out, _ = run(capsys, "data", "check", "ave", "--root", str(root))
    assert code == 0, out
    assert "train: 3 videos in 3 classes" in out and "spectrograms: (257, 1004)" in out
    assert "5 classes" in out
    ave.load(cache_dir=tmp_path, **{**ave.OPTIONS, "root": str(root)})  # the loader agrees

    with open(root / "audio_spec" / "v2.pkl", "wb") as f:
        pickle.dump(np.zeros((257, 900), dtype=np.float32), f)  # wrong shape
    (root / "audio_spec" / "v3.pkl").write_bytes(b"\x80\x04 truncated")  # unreadable pickle
    for frame in (root / "visual" / "v1").iterdir():
        frame.unlink()
    (root / "visual" / "v1").rmdir()  # missing frames
    with open(root / "my_test.txt", "a") as f:
        f.write("Dog barking,v9,good,0,10\nCat,v10,good,0,10\n")  # bad class; missing pkl
    with open(root / "stat.txt", "a") as f:
        f.write("Bus\n")  # class listed twice
    (root / "my_val.txt").write_text("Cat,v4,good,0,10\nCow,v4,good,0,10\n")  # optional val split
    code, out, err = run(capsys, "data", "check", "ave", "--root", str(root))
    assert code == 2
    lines = out.splitlines()
    assert "stat.txt line 6: class 'Bus' listed twice; expected each class once" in lines
    assert (
        "audio_spec/v2.pkl: has shape (257, 900); expected the shape of the other spectrograms, "
        "(257, 1004) (2 files): all must agree" in lines
    )
    assert any(l.startswith("audio_spec/v3.pkl: cannot read as a pickled array") for l in lines)
    assert any(l.startswith("visual/v1/: missing (listed in my_train.txt line 1)") for l in lines)
    assert any(l.startswith("my_test.txt line 2: row does not start with a class of stat.txt") for l in lines)
    assert any(l.startswith("audio_spec/v10.pkl: missing (listed in my_test.txt line 3)") for l in lines)
    assert any(l.startswith("visual/v10/: missing") for l in lines)
    assert any(l.startswith("my_val.txt line 2: row does not start with a class") for l in lines)
    assert len(lines) == 8, out
    assert_one_line_error(err)


# --------------------------------------------------------------------------- ur-funny


def _write_humor(path, data):
    with open(path, "wb") as f:
        pickle.dump(data, f)


def test_check_urfunny_ok_then_every_breakage_named(tmp_path, capsys):
    rng = np.random.default_rng(3)
    data = {"train": _humor_split(rng, 6, zero_text=(1,)), "valid": _humor_split(rng, 3), "test": _humor_split(rng, 4)}
    data["train"]["audio"][0, 5, :3] = -np.inf
    _write_humor(tmp_path / "humor.pkl", data)
    code, out, _ = run(capsys, "data", "check", "ur-funny", "--root", str(tmp_path))
    assert code == 0, out
    assert "train: 5 samples (2 humorous), 1 all-zero-text dropped, 3 NaN/inf values set to 0" in out
    assert "valid: 3 samples" in out and "test: 4 samples" in out
    assert "text (50, 300), audio (50, 81), vision (50, 371)" in out
    code, out2, _ = run(capsys, "data", "check", "ur-funny", "--root", str(tmp_path / "humor.pkl"))
    assert code == 0 and out2.splitlines()[1:] == out.splitlines()[1:]  # root may be the file itself
    urfunny.load(cache_dir=tmp_path, **{**urfunny.OPTIONS, "root": str(tmp_path)})

    data["train"]["labels"][3] = 2.0  # bad label
    data["test"]["vision"] = data["test"]["vision"][:3]  # length mismatch
    del data["valid"]["audio"]  # missing key
    data["valid"]["text"] = data["valid"]["text"][:, :, 0]  # wrong ndim
    _write_humor(tmp_path / "humor.pkl", data)
    code, out, err = run(capsys, "data", "check", "ur-funny", "--root", str(tmp_path))
    assert code == 2
    lines = out.splitlines()
    assert (
        "humor.pkl ['train']['labels']: 1 labels other than 0 and 1 (first at index 3: 2.0); expected "
        "(N, 1) labels in {0, 1}"
    ) in lines
    assert (
        "humor.pkl ['test']['vision']: has 3 samples but 'labels' has 4; expected the same N for every "
        "key of a split" in lines
    )
    assert "humor.pkl ['valid']['audio']: missing; expected (N, 50, 81) numbers" in lines
    assert "humor.pkl ['valid']['text']: has shape (3, 50); expected (N, 50, 300) numbers" in lines
    assert len(lines) == 4, out
    assert_one_line_error(err)

    del data["valid"]
    _write_humor(tmp_path / "humor.pkl", data)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "humor.pkl").write_bytes(b"not a pickle")
    code, out, _ = run(capsys, "data", "check", "ur-funny", "--root", str(tmp_path))
    assert (
        "humor.pkl ['valid']: missing; expected a dict with vision, audio, text, labels (or train "
        "with --set data.use_valid_as=drop)" in out
    )
    code, out, _ = run(capsys, "data", "check", "ur-funny", "--root", str(tmp_path / "other"))
    assert code == 2 and out.startswith("humor.pkl: cannot unpickle")


# --------------------------------------------------------------------------- usage errors


def test_check_usage_errors_are_one_line(tmp_path, capsys):
    code, out, err = run(capsys, "data", "check", "crema-d", "--root", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert_one_line_error(err)
    assert f"missing {tmp_path / 'nope'}" in err and "--root DIR" in err
    code, _, err = run(capsys, "data", "check", "av-digits", "--root", str(tmp_path))
    assert code == 2 and "generated, not read from files" in err
    assert_one_line_error(err)
    code, _, err = run(capsys, "data", "check", "mnist", "--root", str(tmp_path))
    assert code == 2 and "unknown dataset 'mnist'" in err
    code, _, err = run(capsys, "data", "check", "ave", "--root", str(tmp_path), "--fps", "2")
    assert code == 2 and "--fps is a crema-d option" in err
    code, _, err = run(capsys, "data", "check", "ave")
    assert code == 2 and "--root" in err
    assert_one_line_error(err)
    code, _, err = run(capsys, "data")
    assert code == 2
    assert_one_line_error(err)


def test_check_function_returns_problems_and_summary(tmp_path):
    root = tmp_path / "avm"
    _write_avmnist(root)
    report = check("av-mnist", root)
    assert report.ok and report.problems == [] and len(report.summary) == 3
    (root / "test_labels.npy").unlink()
    report = check("av-mnist", root)
    assert [str(p) for p in report.problems] == [
        "test_labels.npy: missing; expected a .npy array (N,) digits 0-9, integers"
    ]
    with pytest.raises(ValueError, match="no layout check"):
        check("synthetic", root)
    assert set(cli.CHECKABLE) == set(CHECKS) == set(DATASETS) - {"av-digits", "synthetic"}


# --------------------------------------------------------------------------- info


def test_info_prints_every_dataset(capsys):
    assert set(CATALOG) == set(DATASETS)
    code, out, _ = run(capsys, "data", "info")
    assert code == 0
    for name in DATASETS:
        assert f"\n{name}: " in f"\n{out}"
    assert out.count("  modalities:") == len(DATASETS)
    code, out, _ = run(capsys, "data", "info", "crema-d")
    assert code == 0
    assert "github.com/CheyneyComputerScience/CREMA-D" in out
    assert f"audio: {cremad.AUDIO_SHAPE}" in out and "NEU neutral" in out
    assert "validation: none of its own: a seeded hold-out of train (config field val_fraction" in out
    assert cremad.LAYOUT in out and "msam-lab data check crema-d --root DIR" in out
    assert "msam-lab train --dataset crema-d --set data.root=DIR" in out
    code, out, _ = run(capsys, "data", "info", "ur-funny", "av-mnist", "ave", "av-digits", "synthetic")
    assert "validation: its own: humor.pkl's 'valid' split" in out
    assert "validation: its own when my_val.txt is present" in out
    assert "MultiBench" in out and "OGM-GE" in out and "AVE-ECCV18" in out
    assert "embedded" in out and "generated" in out
    code, _, err = run(capsys, "data", "info", "mnist")
    assert code == 2 and "unknown dataset 'mnist'" in err
    assert_one_line_error(err)


# --------------------------------------------------------------------------- build-avmnist


@pytest.fixture(scope="module")
def shared_data():
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fsdd" / "recordings").is_dir():
        pytest.skip(
            f"real MNIST/FSDD files not found under {SHARED_DATA} (../shared/data beside the "
            "repository); the build-avmnist test needs them"
        )
    return SHARED_DATA


def test_build_avmnist_then_check_and_load(shared_data, tmp_path, capsys):
    out_dir = tmp_path / "built" / "avm"
    args = (
        "data",
        "build-avmnist",
        "--mnist",
        str(shared_data / "mnist"),
        "--fsdd",
        str(shared_data / "fsdd" / "recordings"),
    )
    code, out, err = run(capsys, *args, "--out", str(out_dir), "--n-train", "30", "--n-test", "10", "--seed", "1")
    assert code == 0, err
    assert out.startswith(f"wrote {out_dir}: 30 train / 10 test samples")
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["avm"]  # no temporary folder left

    code, out, _ = run(capsys, "data", "check", "av-mnist", "--root", str(out_dir))
    assert code == 0, out
    assert "train: 30 samples; image (30, 784) float32, audio (30, 112, 112) uint8" in out
    splits = load_dataset("av-mnist", root=str(out_dir))
    assert (len(splits.train), len(splits.test)) == (30, 10)
    assert splits.info["shapes"] == {"image": (28, 28), "audio": (112, 112)}

    before = (out_dir / "train_labels.npy").read_bytes()
    code, _, err = run(capsys, *args, "--out", str(out_dir), "--n-train", "5", "--n-test", "5")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert_one_line_error(err)
    assert (out_dir / "train_labels.npy").read_bytes() == before  # untouched
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "big"), "--n-train", "100000")
    assert code == 2 and "exceeds" in err and "--n-train" in err
    assert not (tmp_path / "big").exists()
    code, _, err = run(
        capsys,
        "data",
        "build-avmnist",
        "--mnist",
        str(tmp_path / "none"),
        "--fsdd",
        str(shared_data / "fsdd" / "recordings"),
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "--mnist" in err and "no such folder" in err
    code, _, err = run(
        capsys,
        "data",
        "build-avmnist",
        "--mnist",
        str(shared_data / "fsdd"),
        "--fsdd",
        str(shared_data / "fsdd" / "recordings"),
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "images-idx3-ubyte" in err
    assert_one_line_error(err)
    assert not (tmp_path / "x").exists()
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "y"), "--n-test", "0")
    assert code == 2 and "--n-test must be a positive integer" in err


def test_build_avmnist_fsdd_without_recordings(tmp_path, capsys, shared_data):
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        capsys,
        "data",
        "build-avmnist",
        "--mnist",
        str(shared_data / "mnist"),
        "--fsdd",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "out"),
        "--n-train",
        "5",
        "--n-test",
        "5",
    )
    assert code == 2 and "no train recordings of digit(s)" in err
    assert_one_line_error(err)
    assert not (tmp_path / "out").exists()
