"""The trainer and the run store: files, columns, checkpoints, determinism, atomicity."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import msam_lab
from msam_lab.config import ConfigError
from msam_lab.methods.joint import Joint
from msam_lab.runs.reader import load_run

SYN = {
    "dataset": "synthetic",
    "data": {"n_samples": 300, "n_modalities": 3},
    "epochs": 2,
    "batch_size": 50,
    "checkpoint_every": 1,
}


@pytest.fixture(scope="module")
def syn_run(tmp_path_factory):
    return msam_lab.train({**SYN, "method": "msam"}, out=tmp_path_factory.mktemp("r") / "msam", quiet=True)


def test_run_directory_has_the_promised_tables(syn_run):
    mods = ("m0", "m1", "m2")
    assert syn_run.modalities == mods
    steps, epochs = syn_run.steps, syn_run.epochs
    assert isinstance(steps, pd.DataFrame) and isinstance(epochs, pd.DataFrame)
    for col in ["step", "epoch", "loss", "dominant"] + [f"{k}_{m}" for k in ("shapley", "share") for m in mods]:
        assert col in steps.columns, col
    for col in (
        ["epoch", "train_acc", "test_acc", "train_loss", "test_loss", "tau", "tau_loss"]
        + [f"test_acc_{m}" for m in mods]
        + [f"test_acc_only_{m}" for m in mods]
    ):
        assert col in epochs.columns, col
    # 240 train samples / batch 50 -> 5 steps per epoch, 2 epochs
    assert list(steps["step"]) == list(range(10))
    assert list(epochs["epoch"]) == [0, 1, 2]
    assert set(steps["dominant"]) <= set(mods)
    shares = steps[[f"share_{m}" for m in mods]].sum(axis=1)
    assert (shares - 1).abs().max() < 1e-9
    assert syn_run.config.method == "msam"
    assert sorted(syn_run.checkpoints) == [0, 1, 2]


def test_tau_follows_its_definition(syn_run):
    e = syn_run.epochs
    expected = (e["train_acc"] - e["test_acc"]) / e["train_acc"]
    assert (e["tau"] - expected).abs().max() < 1e-12
    expected_loss = (e["test_loss"] - e["train_loss"]) / e["train_loss"]
    assert (e["tau_loss"] - expected_loss).abs().max() < 1e-12


def test_epoch_accuracy_matches_a_plain_forward(syn_run):
    model = syn_run.load_model()
    data = syn_run.load_data()
    with torch.no_grad():
        acc = (model(data.test.inputs).argmax(1) == data.test.labels).float().mean().item()
    assert syn_run.epochs["test_acc"].iloc[-1] == pytest.approx(acc)


def test_checkpoint_holds_model_optimizer_and_rng(syn_run):
    ckpt = syn_run.load_checkpoint(1)
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"model", "method", "rng"}
    assert {"python", "numpy", "torch", "batches"} <= set(ckpt["rng"])
    first, last = syn_run.load_model(0), syn_run.load_model()
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), last.state_dict().values()))


SELECTING = {  # validation improves at epochs 1-5 at this lr: four selections replaced
    "dataset": "synthetic",
    "data": {"n_samples": 300, "n_modalities": 2},
    "epochs": 6,
    "batch_size": 50,
    "checkpoint_every": 0,
    "val_fraction": 0.3,
    "method": "joint",
    "lr": 0.01,
}


def _improvements(epochs) -> int:
    val = epochs["val_acc"].to_numpy()
    return sum(val[e] > val[1:e].max(initial=-1.0) for e in range(1, len(val)))


def test_a_run_keeps_one_selected_checkpoint_beside_the_scheduled_ones(tmp_path):
    run = msam_lab.train(SELECTING, out=tmp_path / "run", quiet=True)
    assert _improvements(run.epochs) >= 3  # the replacing below is exercised, not skipped
    best = run.summary["best_epoch"]
    assert sorted(run.checkpoints) == sorted({0, 6, best})
    sidecars = {p.name for p in (run.path / "checkpoints").glob("epoch_*.pt.sha256")}
    assert sidecars == {f"epoch_{e:04d}.pt.sha256" for e in run.checkpoints}  # none left beside a dropped file
    torch.testing.assert_close(run.load_model(best).state_dict(), run.load_checkpoint(best)["model"])


def test_a_resumed_run_replaces_the_selection_it_was_interrupted_with(tmp_path):
    def stop_after_third(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(SELECTING, out=tmp_path / "run", quiet=True, on_epoch=stop_after_third)
    before = sorted(load_run(tmp_path / "run").checkpoints)
    assert before == [0, 3]  # epoch 3 was the best so far
    run = msam_lab.train(resume=tmp_path / "run", quiet=True)
    assert run.summary["best_epoch"] > 3
    assert sorted(run.checkpoints) == sorted({0, 6, run.summary["best_epoch"]})


def test_same_seed_same_run(tmp_path):
    a = msam_lab.train({**SYN, "method": "sam"}, out=tmp_path / "a", quiet=True)
    b = msam_lab.train({**SYN, "method": "sam"}, out=tmp_path / "b", quiet=True)
    c = msam_lab.train({**SYN, "method": "sam", "seed": 1}, out=tmp_path / "c", quiet=True)
    cols = [c_ for c_ in a.epochs.columns if c_ != "wall_time"]
    pd.testing.assert_frame_equal(a.epochs[cols], b.epochs[cols])
    pd.testing.assert_frame_equal(a.steps, b.steps)
    assert not a.steps["loss"].equals(c.steps["loss"])


def test_failed_run_is_kept_and_marked_failed(tmp_path, monkeypatch):
    def boom(self, inputs, labels):
        raise RuntimeError("boom")

    monkeypatch.setattr(Joint, "step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        msam_lab.train({**SYN, "method": "joint"}, out=tmp_path / "x", quiet=True)
    run = load_run(tmp_path / "x")
    assert run.state == "failed" and "RuntimeError: boom" in run.status["error"]
    assert not run.finished and not (tmp_path / "x" / "lock").exists()
    assert list(run.epochs["epoch"]) == [0]  # epoch 0 was evaluated before the first step


def test_bad_config_writes_nothing(tmp_path):
    with pytest.raises(ConfigError):
        msam_lab.train({**SYN, "method": "nope"}, out=tmp_path / "x", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_existing_run_is_not_overwritten(syn_run):
    before = (syn_run.path / "summary.json").read_text()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        msam_lab.train({**SYN, "method": "msam"}, out=syn_run.path, quiet=True)
    assert (syn_run.path / "summary.json").read_text() == before


def test_config_round_trips(syn_run):
    saved = json.loads((syn_run.path / "config.json").read_text())
    assert saved["data"]["n_samples"] == 300 and saved["data"]["n_modalities"] == 3
    assert msam_lab.training.setup.resolve(saved).to_dict() == saved


def test_load_run_rejects_a_non_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path)


@pytest.mark.parametrize("fusion", ["late_concat", "early"])
def test_other_fusions_train_above_chance(tmp_path, fusion):
    run = msam_lab.train({**SYN, "method": "msam", "fusion": fusion, "epochs": 4}, out=tmp_path / fusion, quiet=True)
    assert run.epochs["test_acc"].iloc[-1] > 0.5  # 4 classes: chance is 0.25


@pytest.mark.slow
def test_default_dataset_shows_the_imbalance(tmp_path):
    """At the av-digits defaults, audio alone is learnable but the joint model leaves it weak.

    A property of the data, measured on the whole train split (no validation hold-out): with 10 %
    fewer digits the audio-only model needs more than these 6 epochs to pass 60 %."""
    cfg = {"method": "joint", "epochs": 6, "val_fraction": 0.0}
    joint = msam_lab.train(cfg, out=tmp_path / "joint", quiet=True)
    audio = msam_lab.train({**cfg, "data": {"image_noise": 50.0}}, out=tmp_path / "audio", quiet=True)
    # with the image drowned in noise the same model must learn from audio alone
    audio_alone = audio.epochs["test_acc"].iloc[-1]
    audio_in_joint = joint.epochs["test_acc_audio"].iloc[-1]
    assert joint.epochs["test_acc"].iloc[-1] > 0.9
    assert audio_alone > 0.6
    assert audio_alone - audio_in_joint > 0.3


@pytest.mark.parametrize("argv", [["train", "--epochs", "abc"], ["trian"], ["train", "--no-such-flag"]])
def test_argparse_errors_are_one_line_and_exit_2(argv, capsys):
    from msam_lab.cli import commands as cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "error:" in err and "--help" in err
