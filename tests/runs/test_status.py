"""``msam-lab status``: one row per run (msam_lab.runs.status), for finished, failed, interrupted and running
runs, and the command's output and exit codes."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msam_lab.cli.commands import main
from msam_lab.config import Config
from msam_lab.runs.reader import load_run
from msam_lab.runs.status import display_table, format_age, format_status, status_table
from msam_lab.runs.writer import RunWriter
from msam_lab.training.loop import train

SPEC = {
    "input_shapes": {"image": [4], "audio": [4]},
    "num_classes": 3,
    "fusion": "late_sum",
    "encoders": {},
    "feature_dim": 8,
    "hidden_dim": 16,
}


def epoch_row(epoch, acc, share_image):
    row = {"epoch": epoch, "wall_time": float(epoch), "test_dominant": "image" if share_image >= 0.5 else "audio"}
    for split in ("train", "test"):
        row.update(
            {
                f"{split}_loss": 1.0,
                f"{split}_acc": acc,
                f"{split}_share_image": share_image,
                f"{split}_share_audio": 1 - share_image,
            }
        )
    return row


def write(path, method="msam", epochs=4, done_epochs=2, steps=6, share_image=0.95) -> RunWriter:
    """A run written by this process (it holds the lock) up to ``done_epochs`` of ``epochs``."""
    w = RunWriter(path, Config(dataset="synthetic", method=method, epochs=epochs).to_dict(), SPEC, flush_every=0)
    for e in range(done_epochs + 1):
        w.log_epoch(epoch_row(e, 0.25 + 0.2 * e, share_image))
    for s in range(steps):
        w.log_step({"step": s, "epoch": 1 + s * done_epochs // steps, "loss": 1.0, "dominant": "image"})
    return w


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("statusruns")
    train(
        {
            "dataset": "synthetic",
            "data": {"n_modalities": 2, "n_samples": 200},
            "method": "joint",
            "epochs": 2,
            "batch_size": 32,
        },
        out=root / "done",
        quiet=True,
    )
    return root / "done"


@pytest.fixture
def runs(tmp_path, finished):
    """Under ``tmp_path/runs``: a finished run, and in ``sweep/`` a failed, an interrupted and a running one."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(finished, root / "done")
    failed = write(root / "sweep" / "failed", method="sam", done_epochs=1, steps=3)
    failed.fail("non-finite loss at step 3 (epoch 2); last good checkpoint: none; run marked failed")
    gone = write(root / "sweep" / "killed", method="joint", done_epochs=1, steps=4, share_image=0.3)
    pid = dead_pid()
    (gone.out / "lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": time.time()}))
    gone.lock.held = False  # the dead trainer's lock stays, as a kill leaves it
    live = write(root / "sweep" / "live", method="msam", done_epochs=2, steps=6, share_image=0.95)
    yield root, pid
    live.finish({"method": "msam"})


def test_one_row_per_run_with_state_progress_accuracy_and_dominance(runs, finished):
    root, pid = runs
    table = status_table([root]).set_index("run")
    assert sorted(table.index) == ["done", "sweep/failed", "sweep/killed", "sweep/live"]

    done = table.loc["done"]
    epochs = load_run(finished).epochs.iloc[-1]
    assert (done["state"], done["method"], done["epoch"], done["epochs"]) == ("finished", "joint", 2, 2)
    assert done["test_acc"] == pytest.approx(epochs["test_acc"])
    assert done["dominant"] == epochs["test_dominant"]
    assert done["dominant_share"] == pytest.approx(epochs[f"test_share_{epochs['test_dominant']}"])
    assert done["step"] == len(load_run(finished).steps) - 1 and math.isnan(done["heartbeat_age_s"])

    failed = table.loc["sweep/failed"]
    assert failed["state"] == "failed" and failed["method"] == "sam" and "non-finite" in failed["error"]
    assert (failed["epoch"], failed["epochs"], failed["step"]) == (1, 4, 2)

    killed = table.loc["sweep/killed"]
    assert killed["state"] == "interrupted" and killed["stale"] == f"pid {pid} gone"
    assert (killed["dominant"], killed["dominant_share"]) == ("audio", pytest.approx(0.7))

    live = table.loc["sweep/live"]
    assert live["state"] == "running" and not live["stale"] and live["step"] == 5
    assert (live["epoch"], live["epochs"], live["test_acc"]) == (2, 4, pytest.approx(0.65))
    assert (live["dominant"], live["dominant_share"]) == ("image", pytest.approx(0.95))
    assert 0 <= live["heartbeat_age_s"] < 60


def test_the_text_table(runs):
    root, pid = runs
    text = format_status(status_table([root], now=time.time() + 130))
    lines = {line.split()[0]: line for line in text.splitlines()}
    assert lines["run"].split() == ["run", "method", "state", "epoch", "step", "test", "acc", "dominant", "heartbeat"]
    assert "finished" in lines["done"] and lines["done"].endswith("—")
    assert f"interrupted (pid {pid} gone)" in lines["sweep/killed"] and "audio 0.70" in lines["sweep/killed"]
    assert " 2/4 " in lines["sweep/live"] and "image 0.95" in lines["sweep/live"]
    assert lines["sweep/live"].endswith("2 min") and "0.650" in lines["sweep/live"]
    assert "sweep/failed:" in lines and "non-finite loss" in lines["sweep/failed:"]  # the error, below


def test_ages():
    assert [format_age(s) for s in (3.2, 150, 3 * 3600, 3 * 86400)] == ["3 s", "2 min", "3.0 h", "3.0 d"]
    assert format_age(math.nan) == format_age(None) == "—"


def test_cli_prints_the_table_and_exits_0(runs, capsys, monkeypatch):
    root, pid = runs
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert "sweep/live" in out and f"interrupted (pid {pid} gone)" in out and "running" in out
    assert main(["status", str(root / "done"), str(root / "sweep")]) == 0  # several paths
    out = capsys.readouterr().out
    assert str(root / "done") in out and str(root / "sweep" / "live") in out
    monkeypatch.chdir(root.parent)  # default: runs/
    assert main(["status"]) == 0
    assert "sweep/failed" in capsys.readouterr().out


def test_cli_missing_path_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    assert main(["status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    monkeypatch.chdir(tmp_path)  # no runs/ here
    assert main(["status"]) == 2
    assert "runs" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.strip() == "no runs found"


# ---------------------------------------------------------------- real trainers: killed, resumed, finished

TRAIN_CHILD = str(Path(__file__).resolve().parents[1] / "train_child.py")
RESUME_CHILD = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import msam_lab
out, here, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

def on_step(row):
    if not here.exists():                 # the first step of the resumed run: let the parent look
        here.touch()
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

msam_lab.train(resume=out, quiet=True, on_step=on_step)
"""
WAIT = 120.0


def _wait(condition, what, proc):
    deadline = time.monotonic() + WAIT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended while waiting for {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT} s for {what}")
        time.sleep(0.02)


def _last_step(out) -> int:
    try:
        return json.loads((out / "status.json").read_text()).get("last_step", -1)
    except (OSError, ValueError):  # not written yet
        return -1


def _shown(out) -> str:
    return display_table(status_table([out]))["state"].iloc[0]


@pytest.mark.slow
def test_a_killed_then_resumed_run_shows_each_state_truthfully(tmp_path):
    cfg = {
        "dataset": "synthetic",
        "data": {"n_samples": 300, "n_modalities": 2},
        "batch_size": 32,
        "epochs": 2,
        "train_eval_samples": 100,
        "method": "joint",
        "flush_every": 0,
    }
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, TRAIN_CHILD, "train", json.dumps(cfg), str(out), "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait(lambda: _last_step(out) >= 5, "step 5 in status.json", first)
        assert _shown(out) == f"running (pid {first.pid})"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=WAIT)
    assert _shown(out) == f"interrupted (pid {first.pid} gone)"

    here, go = tmp_path / "resumed", tmp_path / "go"
    second = subprocess.Popen(
        [sys.executable, "-c", RESUME_CHILD, str(out), str(here), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait(here.exists, "the resumed run's first step", second)
        row = status_table([out]).iloc[0]
        assert (row["state"], row["stale"], row["pid"]) == ("running", "", f"pid {second.pid}")
        assert _shown(out) == f"running (pid {second.pid})"
    finally:
        go.touch()
        _, err = second.communicate(timeout=WAIT)
    assert second.returncode == 0, err
    assert _shown(out) == "finished"
    assert "stale_lock" not in json.loads((out / "status.json").read_text())  # computed, never stored
    assert load_run(out).status["resumed"] == 1
