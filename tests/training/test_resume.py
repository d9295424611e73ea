"""Resume after a real kill: SIGKILL a training subprocess in the middle of an epoch, resume it, and
the final parameters, optimizer state and step table are bitwise those of an uninterrupted run.

Also: Ctrl-C (SIGINT) and SIGTERM mark a run interrupted and keep it; a second trainer is refused
while the first is alive; a dead trainer's lock is detected as stale, named and taken over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import msam_lab
from msam_lab.cli import commands as cli
from msam_lab.runs import checkpoint_io
from msam_lab.runs.reader import load_run

CHILD = str(Path(__file__).resolve().parents[1] / "train_child.py")
TIMEOUT = 300  # generous: these children share 2 cores with whatever else runs
# 202 train samples (224 less the 10 % validation hold-out) / batch 16 = 13 steps per epoch;
# the kill lands at step 22 (epoch 2, batch 9)
BASE = {
    "dataset": "synthetic",
    "data": {"n_samples": 300, "n_modalities": 2},
    "batch_size": 16,
    "epochs": 3,
    "deterministic": True,
    "flush_every": 0,
    "checkpoint_every": 1,
    "train_eval_samples": 100,
}
PAUSE_AT = 22
STEPS_PER_EPOCH = 13
# Every method that keeps state beyond its parameters, with settings that exercise that state across the
# kill: ReconBoost changes phase every few steps, OGM-GE draws gradient noise from the torch RNG, and half
# of them resume from a resume point inside the epoch (resume_every) rather than the last epoch end.
METHODS = {
    "joint": {},
    "sam": {"resume_every": 5},
    "msam": {"resume_every": 5},
    "ogm_ge": {"ogm_noise": True},
    "agm": {"resume_every": 7},
    "cggm": {},
    "reconboost": {"recon_stage_steps": 6, "recon_correct_steps": 3, "resume_every": 4},
    "masam": {"resume_every": 5, "rho": 0.3},  # its APS running losses cross the kill
    "mie": {"mie_stage_steps": 6, "resume_every": 4},  # stage, mixup generator and covariances cross it
}


def child(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_paused(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()  # blocks until the child reaches PAUSE_AT (or dies)
    if line.strip() != "PAUSED":
        proc.kill()
        raise AssertionError(f"child did not pause: {line!r} {proc.communicate(timeout=TIMEOUT)}")


def finish(proc: subprocess.Popen) -> int:
    try:
        proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode


def assert_bitwise_equal(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            assert_bitwise_equal(x, y, f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), f"{where}.{k}"
            for i, (u, v) in enumerate(zip(x, y)):
                assert_bitwise_equal({"i": u}, {"i": v}, f"{where}.{k}[{i}]")
        elif torch.is_tensor(x):
            assert x.dtype == y.dtype and torch.equal(x, y), f"{where}.{k} differs"
        else:
            assert x == y or (x != x and y != y), f"{where}.{k}: {x!r} != {y!r}"


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_sigkill_mid_epoch_then_resume_is_bitwise_the_uninterrupted_run(tmp_path, method):
    cfg = json.dumps({**BASE, "method": method, **METHODS[method]})
    ref = child("train", cfg, str(tmp_path / "ref"))
    killed = child("train", cfg, str(tmp_path / "run"), str(PAUSE_AT))
    wait_paused(killed)
    killed.send_signal(signal.SIGKILL)
    assert finish(killed) == -signal.SIGKILL
    assert finish(ref) == 0

    broken = load_run(tmp_path / "run")
    assert broken.state == "interrupted" and f"pid {killed.pid}" in broken.status["stale_lock"]
    assert broken.steps["step"].max() == PAUSE_AT  # rows were on disk up to the kill
    assert (
        STEPS_PER_EPOCH < PAUSE_AT < 2 * STEPS_PER_EPOCH - 1 and broken.status["resume_point"]["epoch"] == 1
    )  # killed inside epoch 2

    resumed = child("resume", str(tmp_path / "run"))
    assert finish(resumed) == 0, resumed.stderr
    a, b = load_run(tmp_path / "ref"), load_run(tmp_path / "run")
    assert b.state == "finished" and b.summary["resumed"] == 1
    assert list(b.steps["step"]) == list(range(3 * STEPS_PER_EPOCH))  # each step exactly once
    pd.testing.assert_frame_equal(a.steps, b.steps)  # same losses, shares, method columns, bit for bit
    cols = [c for c in a.epochs.columns if c != "wall_time"]
    pd.testing.assert_frame_equal(a.epochs[cols], b.epochs[cols])
    ca, cb = a.load_checkpoint(3), b.load_checkpoint(3)
    assert_bitwise_equal(ca["model"], cb["model"], "model")
    assert_bitwise_equal(ca["method"], cb["method"], "method")


def test_resume_really_depends_on_the_restored_state(tmp_path):
    """The bitwise test above can fail: resuming with the optimizer state dropped gives other weights."""
    cfg = {**BASE, "method": "joint", "epochs": 2}
    ref = msam_lab.train(cfg, out=tmp_path / "ref", quiet=True)

    def stop(row):
        if row["step"] == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(cfg, out=tmp_path / "run", quiet=True, on_step=stop)
    point_file = tmp_path / "run" / "checkpoints" / "resume.pt"
    point = checkpoint_io.load(point_file)
    point["method"]["optimizer"]["state"] = {}  # forget the momentum buffers
    checkpoint_io.save(point_file, point)  # with a matching checksum: loaded, not fallen back from
    run = msam_lab.train(resume=tmp_path / "run", quiet=True)
    ours, theirs = ref.load_checkpoint(2)["model"], run.load_checkpoint(2)["model"]
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_signal_marks_the_run_interrupted_and_keeps_it(tmp_path, sig):
    cfg = json.dumps({**BASE, "method": "msam", "epochs": 2})
    proc = child("train", cfg, str(tmp_path / "run"), "20")
    wait_paused(proc)
    proc.send_signal(sig)
    assert finish(proc) != 0
    run = load_run(tmp_path / "run")
    assert run.state == "interrupted" and "stale_lock" not in run.status  # said so itself, lock released
    assert "--resume" in run.status["error"] and not (tmp_path / "run" / "lock").exists()
    assert list(run.steps["step"]) == list(range(21))
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    done = load_run(tmp_path / "run")
    assert done.finished and list(done.steps["step"]) == list(range(2 * STEPS_PER_EPOCH))


@pytest.mark.slow
def test_second_trainer_is_refused_and_a_stale_lock_is_named(tmp_path, capsys):
    cfg = {**BASE, "method": "joint", "epochs": 2}
    out = tmp_path / "run"
    proc = child("train", json.dumps(cfg), str(out), "5")
    try:
        wait_paused(proc)
        assert load_run(out).state == "running"
        assert cli.main(["train", "--resume", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "still training" in err and str(proc.pid) in err
        assert cli.main(["train", "--dataset", "synthetic", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "already holds a running run" in err
    finally:
        proc.send_signal(signal.SIGKILL)
        finish(proc)
    run = load_run(out)
    assert run.state == "interrupted" and run.status["stale_lock"] == f"pid {proc.pid} on {run.status['host']} is gone"
    assert cli.main(["train", "--resume", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"took over the stale lock of pid {proc.pid}" in captured.err
    assert load_run(out).finished


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    run = msam_lab.train({**BASE, "method": "joint", "epochs": 1}, out=tmp_path / "done", quiet=True)
    assert cli.main(["train", "--resume", str(run.path)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err  # a missing path says so (issue 20)
    assert cli.main(["train", "--resume", str(run.path), "--epochs", "3"]) == 2
    assert "own config" in capsys.readouterr().err


def test_sweep_resumes_an_interrupted_run_instead_of_starting_again(tmp_path):
    from msam_lab.experiments.sweep import plan_sweep, run_sweep

    cfg = {**BASE, "epochs": 2}
    cell = plan_sweep(["joint"], [0], out=tmp_path, config=cfg)[0]

    def stop(row):
        if row["step"] == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(cell.config, out=cell.path, quiet=True, on_step=stop)
    assert load_run(cell.path).state == "interrupted"
    run_sweep(["joint"], [0], out=tmp_path, config=cfg, quiet=True)
    run = load_run(cell.path)
    assert run.finished and run.summary["resumed"] == 1 and list(run.steps["step"]) == list(range(2 * STEPS_PER_EPOCH))
