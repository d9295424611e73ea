"""TensorBoard logging, live (RunLogger, train) and exported (msam-lab export): the event files read back
with TensorBoard's own reader and compared cell by cell with the run's tables."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "tensorboard", reason="the [tensorboard] extra is not installed: pip install 'msam-lab[tensorboard]'"
)

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

import msam_lab  # noqa: E402
from msam_lab.cli.commands import main  # noqa: E402
from msam_lab.config import ConfigError, parse  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_runs"
MODS = ("image", "audio")


def events(folder):
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    scalars = {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}
    return ea, scalars


def table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def expected(rows, prefix, x, modalities, skip=()):
    """tag -> {x: float32 value}, from the CSV text: every number, and a modality name as its index."""
    out = {}
    for row in rows:
        for key, cell in row.items():
            if key == x or key in skip or cell == "":
                continue
            try:
                value, tag = float(cell), f"{prefix}/{key}"
            except ValueError:
                if cell not in modalities:
                    continue
                value, tag = float(modalities.index(cell)), f"{prefix}/{key}_index"
            out.setdefault(tag, {})[int(float(row[x]))] = np.float32(value)
    return out


def check_tables(run, folder, modalities):
    ea, scalars = events(folder)
    want = {
        **expected(table(run / "steps.csv"), "steps", "step", modalities),
        **expected(table(run / "epochs.csv"), "epochs", "epoch", modalities),
    }
    got = {t: v for t, v in scalars.items() if not t.startswith("sharpness/")}
    assert set(got) == set(want)
    for tag, points in want.items():
        assert set(got[tag]) == set(points), tag
        for at, value in points.items():
            assert np.float32(got[tag][at]) == value or np.isnan(value) and np.isnan(got[tag][at]), (tag, at)
    return ea, scalars


def logged_run(out, loggers=("tensorboard",)):
    rng = np.random.default_rng(0)
    with msam_lab.RunLogger(out, modalities=MODS, config={"lr": 0.05, "widths": [4, 8]}, loggers=list(loggers)) as log:
        log.log_epoch(0, test_acc=0.1, test_acc_image=0.1, test_acc_audio=0.2, test_dominant="audio")
        for epoch in (1, 2):
            for _ in range(5):
                share = float(rng.uniform())
                log.log_step(
                    loss=float(rng.uniform()),
                    dominant=MODS[int(share < 0.5)],
                    share_image=share,
                    share_audio=1 - share,
                    lr=0.05 * epoch,
                )
            log.log_epoch(epoch, test_acc=0.3 * epoch, test_acc_image=0.2, test_acc_audio=0.25 * epoch, tau=0.1)
    return Path(out)


def test_run_logger_writes_every_cell_of_its_tables_the_config_and_the_figures(tmp_path):
    run = logged_run(tmp_path / "run")
    ea, scalars = check_tables(run, run / "tensorboard", MODS)
    assert scalars["steps/dominant_index"]  # the dominant modality, as its index in ...
    modalities = ea.Tensors("modalities/text_summary")[0].tensor_proto.string_val[0].decode()
    assert modalities == "0: image, 1: audio"  # ... this list
    config = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"widths": [\n    4,\n    8\n  ]' in config and '"loggers": [\n    "tensorboard"' in config
    start = plugin_data_pb2.HParamsPluginData.FromString(
        ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert start["lr"].number_value == 0.05 and start["epochs"].string_value == "null"
    assert start["method"].string_value == "custom" and start["widths"].string_value == "[4, 8]"
    images = ea.Tags()["images"]
    assert sorted(images) == ["figures/curves", "figures/dominance"]
    png = ea.Images("figures/dominance")[0]
    assert png.width > 100 and png.height > 100 and png.encoded_image_string[:4] == b"\x89PNG"


def test_export_of_a_logged_run_reads_back_as_the_live_one(tmp_path):
    run = logged_run(tmp_path / "run")
    assert main(["export", str(run), "--tensorboard", str(tmp_path / "tb")]) == 0
    _, live = events(run / "tensorboard")
    _, exported = events(tmp_path / "tb" / "run")
    assert live == exported


def test_export_of_an_old_run_holds_its_tables_and_sharpness(tmp_path, capsys):
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURES / "old_run", run)
    assert main(["export", str(run), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert "8 steps, 3 epochs, 16 sharpness rows" in capsys.readouterr().out
    ea, scalars = check_tables(run, tmp_path / "tb" / "old_run", ("m0", "m1", "m2"))
    sharp = table(run / "sharpness.csv")
    for row in sharp:
        tag = f"sharpness/{row['split']}/{row['scope']}/lambda_1"
        assert np.float32(scalars[tag][int(row["epoch"])]) == np.float32(float(row["lambda_1"]))
    assert sorted(ea.Tags()["images"]) == ["figures/curves", "figures/dominance"]
    # a second export into the same folder would double every point: refused, or replaced with --overwrite
    assert main(["export", str(run), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--tensorboard", str(tmp_path / "tb"), "--overwrite"]) == 0
    assert len(list((tmp_path / "tb" / "old_run").glob("events.out.tfevents.*"))) == 1


def test_export_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory" in err[0]
    assert not (tmp_path / "tb").exists()


def test_a_bad_logger_name_is_one_line_with_the_closest_name(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown logger 'tensorbord'; did you mean 'tensorboard'\?") as err:
        parse({"loggers": ["tensorbord"]})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="'loggers' must be list"):
        parse({"loggers": "tensorboard"})
    with pytest.raises(ConfigError, match="unknown logger 'wandbb'; did you mean 'wandb'"):
        msam_lab.RunLogger(tmp_path / "run", modalities=MODS, loggers=["wandbb"])
    assert not (tmp_path / "run").exists()  # nothing half-written
    assert parse({"loggers": ["tensorboard"]}).loggers == ["tensorboard"]


def test_a_failing_logger_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    from msam_lab.loggers.tensorboard import TensorBoardLogger

    def broken(self, values, axis, at):
        raise OSError("disk gone")

    monkeypatch.setattr(TensorBoardLogger, "scalars", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = logged_run(tmp_path / "run")
    stopped = [w for w in caught if "tensorboard logger stopped" in str(w.message)]
    assert len(stopped) == 1 and "msam-lab export" in str(stopped[0].message)
    assert msam_lab.load_run(run).state == "finished" and len(table(run / "epochs.csv")) == 3


@pytest.mark.slow
def test_train_with_loggers_tensorboard_writes_its_tables_live(tmp_path):
    config = {
        "dataset": "synthetic",
        "method": "msam",
        "epochs": 2,
        "feature_dim": 4,
        "hidden_dim": 8,
        "batch_size": 32,
        "data": {"n_samples": 160, "n_features": 6},
        "loggers": ["tensorboard"],
        "flush_every": 0.0,
    }
    run = msam_lab.train(config, out=tmp_path / "run", quiet=True)
    ea, _ = check_tables(run.path, run.path / "tensorboard", run.modalities)
    assert sorted(ea.Tags()["images"]) == ["figures/curves", "figures/dominance"]
