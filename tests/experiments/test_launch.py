"""Sweeps through submitit (msam_lab.experiments.launch): one LocalExecutor job per cell gives the inline sweep's
numbers; a rerun submits nothing; a stopped cell is resumed by its job and a live one is waited for,
not submitted twice; a job pre-empted (USR2) is requeued by submitit and resumes; a failing cell is one
line and exit 1; the SLURM options map onto submitit's sbatch file without a cluster.

Every test runs under a SIGALRM deadline (pytest-timeout may not be installed); a deadline hit inside
a local sweep cancels its jobs (they are the test process's children).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit

import msam_lab
from msam_lab.cli import commands as cli
from msam_lab.config import ConfigError
from msam_lab.experiments import launch
from msam_lab.experiments.sweep import plan_sweep, run_sweep
from msam_lab.runs.reader import load_run, read_status

pytestmark = pytest.mark.slow  # submitit processes

# 120 samples / batch 40 = 3 steps per epoch
TINY = {
    "dataset": "synthetic",
    "data": {"n_samples": 120},
    "feature_dim": 8,
    "hidden_dim": 16,
    "epochs": 2,
    "checkpoint_every": 0,
    "train_eval_samples": 32,
    "val_fraction": 0.0,
    "batch_size": 40,
}
TINY_SET = [
    "data.n_samples=120",
    "feature_dim=8",
    "hidden_dim=16",
    "epochs=1",
    "checkpoint_every=0",
    "train_eval_samples=32",
    "val_fraction=0.0",
    "batch_size=40",
]


@pytest.fixture(autouse=True)
def deadline():
    def expired(signum, frame):
        raise TimeoutError("test ran past its 90 s deadline")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(90)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _job_files(out: Path) -> set[str]:
    folder = out / launch.LOG_DIR
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _hold(run_dir: Path, pid: int) -> None:
    """Make a stopped run read ``running``, as a live trainer (``pid``) leaves it."""
    (run_dir / "lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": time.time()}))
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "running", "pid": pid}))


def test_local_jobs_match_inline_resume_wait_for_a_live_cell_and_rerun_submits_nothing(tmp_path, capsys):
    grid = dict(methods=["joint", "sam"], seeds=[0, 1], config=TINY)
    inline = run_sweep(**grid, out=tmp_path / "inline", quiet=True)

    out = tmp_path / "local"
    stopped, live = plan_sweep(**grid, out=out)[1:3]  # joint seed 1, sam seed 0

    def stop(row):
        if row["step"] == 4:  # in epoch 2, after epoch 1's resume point
            raise KeyboardInterrupt

    for cell in (stopped, live):
        with pytest.raises(KeyboardInterrupt):
            msam_lab.train(cell.config, out=cell.path, quiet=True, on_step=stop)
    sleeper = subprocess.Popen(["sleep", "6"])  # a "live trainer" holding sam seed 0 for 6 s
    threading.Thread(target=sleeper.wait, daemon=True).start()  # reaped, so its pid reads dead after
    _hold(live.path, sleeper.pid)
    assert read_status(live.path)["state"] == "running"

    table = run_sweep(**grid, out=out, launcher="local", max_parallel=2)
    text = capsys.readouterr().out
    pd.testing.assert_frame_equal(table, inline)  # same seeds: bit-for-bit the inline runs
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "sweep_summary.csv"), pd.read_csv(tmp_path / "inline" / "sweep_summary.csv")
    )
    per_run = [pd.read_csv(d / "sweep.csv").drop(columns=["wall_s", "run"]) for d in (out, tmp_path / "inline")]
    pd.testing.assert_frame_equal(*per_run)
    logs = _job_files(out)
    assert len({name.split("_")[0] for name in logs if name.endswith("_log.out")}) == 4  # one job per cell
    for cell in (stopped, live):  # resumed by its job, not trained again
        run = load_run(cell.path)
        assert run.finished and run.summary["resumed"] == 1 and list(run.steps["step"]) == list(range(6))
    assert "[3/4] sam seed 0: being trained by pid" in text and "no second job, waiting for it" in text
    waited = text.index("[3/4] sam seed 0: its trainer stopped (interrupted); a job resumes it")
    assert text.index("[3/4] sam seed 0: job") > waited  # its job only once the trainer was gone
    assert "[2/4] joint seed 1: job" in text and "(resume ->" in text

    again = run_sweep(**grid, out=out, launcher="local")
    assert _job_files(out) == logs  # nothing submitted
    assert capsys.readouterr().out.count("reusing it") == 4
    pd.testing.assert_frame_equal(again, inline)


def test_a_preempted_job_is_requeued_by_submitit_and_resumes(tmp_path):
    cfg = {**TINY, "epochs": 12, "resume_every": 1}  # 36 steps, a resume point after each
    cell = plan_sweep(["joint"], [0], out=tmp_path, config=cfg)[0]
    executor = launch.build_executor(launch.plan_launch("local"), tmp_path)
    job = executor.submit(launch.CellJob(threads=1), cell)
    try:
        status = {}
        while status.get("last_step", -1) < 3:  # training, past a few resume points
            assert not job.done(), job.exception()
            time.sleep(0.05)
            status = read_status(cell.path) if (cell.path / "status.json").is_file() else {}
        os.kill(status["pid"], signal.SIGUSR2)  # what SLURM sends before a kill (--signal USR2@90)
        assert job.result() == "resume"  # the requeued call resumed the run
    finally:
        job.cancel(check=False)
    run = load_run(cell.path)
    assert run.finished and run.summary["resumed"] == 1 and list(run.steps["step"]) == list(range(36))
    assert "Requeued job" in job.stdout()  # submitit's log of the requeue


def test_a_failing_cell_is_one_line_and_exit_1_after_the_tables_of_the_rest(tmp_path, capsys):
    out = tmp_path / "sw"
    # rho=1e30: SAM's ascent step overflows at step 0 (joint has no rho): the job's trainer marks it failed
    code = cli.main(
        [
            "sweep",
            "--launcher",
            "local",
            "--methods",
            "joint,sam",
            "--seeds",
            "0",
            "--dataset",
            "synthetic",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "rho=1.0e+30",
        ]
        + [a for s in TINY_SET for a in ("--set", s)]
    )
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("msam-lab: error: [2/2] sam seed 0: failed: non-finite gradient")
    assert f"log {out / launch.LOG_DIR}" in lines[0]
    assert load_run(out / "sam" / "seed0").state == "failed"
    assert list(pd.read_csv(out / "sweep.csv")["method"]) == ["joint"]  # the finished cell's table
    assert "joint" in captured.out


def test_bad_launch_options_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "sw"
    base = ["sweep", "--methods", "joint", "--seeds", "0", "--dataset", "synthetic", "--out", str(out)]
    cases = [
        (["--slurm", "partition=gpu"], "--slurm options are for --launcher slurm"),
        (["--launcher", "local", "--slurm", "partition=gpu"], "--slurm options are for --launcher slurm"),
        (["--max-parallel", "2"], "--max-parallel is for --launcher local or slurm"),
        (["--launcher", "local", "--max-parallel", "0"], "--max-parallel must be a positive integer"),
        (["--launcher", "slurm", "--slurm", "partition"], "--slurm expects KEY=VALUE"),
        (["--launcher", "slurm", "--slurm", "partiton=gpu"], "accepted: account, "),
        (["--launcher", "slurm", "--slurm", "mem_gb=lots"], "mem_gb takes a number"),
        (["--launcher", "slurm", "--slurm", "partition=gpu"], "needs each job's time limit: --slurm timeout_min="),
    ]
    if shutil.which("srun") is None:
        cases.append((["--launcher", "slurm", "--slurm", "timeout_min=60"], "no SLURM here"))
    for extra, message in cases:
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not out.exists(), extra
    with pytest.raises(SystemExit) as exit_:
        cli.main(base + ["--launcher", "cluster"])
    assert exit_.value.code == 2 and not out.exists()


def test_slurm_options_map_onto_submitits_sbatch_file(tmp_path, monkeypatch):
    options = [
        "partition=gpu",
        "timeout_min=240",
        "gpus_per_node=1",
        "cpus-per-task=8",
        "mem_gb=32",
        "account=lab",
        "qos=high",
        "constraint=a100",
        "exclusive=true",
        "setup=module load cuda",
        "setup=source .venv/bin/activate",
        "max_num_timeout=5",
    ]
    parameters, constructor = launch.parse_slurm_options(options)
    assert parameters == {
        "slurm_partition": "gpu",
        "timeout_min": 240,
        "gpus_per_node": 1,
        "cpus_per_task": 8,
        "mem_gb": 32.0,
        "slurm_account": "lab",
        "slurm_qos": "high",
        "slurm_constraint": "a100",
        "slurm_exclusive": True,
        "slurm_setup": ["module load cuda", "source .venv/bin/activate"],
    }
    assert constructor == {"max_num_timeout": 5}
    submitit.AutoExecutor(tmp_path / "debug", cluster="debug").update_parameters(**parameters)  # submitit's check

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun is here"
    plan = launch.plan_launch("slurm", options + ["time=1-00:00:00"], max_parallel=3)
    assert plan.parameters["slurm_array_parallelism"] == 3 and plan.parameters["slurm_time"] == "1-00:00:00"
    executor = launch.build_executor(plan, tmp_path / "sw")
    slurm = executor._executor
    assert isinstance(slurm, submitit.SlurmExecutor) and slurm.max_num_timeout == 5
    assert slurm.folder == (tmp_path / "sw" / launch.LOG_DIR).absolute()
    sbatch = slurm._make_submission_file_text("python -m submitit.core._submit x", "uid").splitlines()
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "#SBATCH --job-name=msam-sweep",
        "#SBATCH --signal=USR2@90",
        "module load cuda",
        "source .venv/bin/activate",
    ]:
        assert line in sbatch, line
    assert not any("--array" in line for line in sbatch)  # one job here; a batch of them is an array
    with pytest.raises(ConfigError, match="say the same thing"):
        launch.plan_launch("slurm", ["timeout_min=60", "array_parallelism=4"], max_parallel=2)
    with pytest.raises(ConfigError, match="not a submitit option; accepted: .*partition"):
        launch.parse_slurm_options(["additional_parameters=x"])
