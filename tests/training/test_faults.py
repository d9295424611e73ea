"""Faults of the environment: one line each, the run marked failed, nothing half-made, nothing lost.

The disk-full and read-only cases run on a real small tmpfs, mounted in a private mount namespace
(``unshare``) so nothing leaks out of the test: tests/fault_child.py fills it up or remounts it
read-only under ``msam-lab train``, ``train --resume``, ``landscape`` and ``sharpness``, at the start
and in the middle of each. They need root (or user namespaces) and are skipped without it.

Symlinks inside a run folder, and the leftovers of a start that failed, need no privilege.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import msam_lab
from msam_lab import faults
from msam_lab.cli import commands as cli
from msam_lab.runs.reader import check_output_dir, load_run

pytestmark = pytest.mark.slow  # kill, disk-full and read-only file systems in child processes

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "fault_child.py"
TIMEOUT = 300
SYN = {
    "dataset": "synthetic",
    "data": {"n_samples": 300, "n_modalities": 2},
    "batch_size": 32,
    "epochs": 2,
    "train_eval_samples": 100,
    "method": "joint",
}


def _namespaces_work(tmp: Path) -> str | None:
    """None when a private mount namespace with a tmpfs can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=64k tmpfs {tmp} && touch {tmp}/x",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace (needs root): {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """``scenario(name)`` -> the RESULT dict of tests/fault_child.py run on a fresh 8 MB tmpfs."""
    base = tmp_path_factory.mktemp("faults")
    (base / "probe").mkdir()
    why = _namespaces_work(base / "probe")
    if why is not None:
        pytest.skip(why)

    def run(name: str) -> dict:
        mnt = base / name
        mnt.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount -t tmpfs -o size=8m tmpfs '{mnt}' && exec '{sys.executable}' '{CHILD}' {name} '{mnt}'",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=ROOT,
            env=env,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert not any(mnt.iterdir()), "the tmpfs leaked out of its namespace"
        return json.loads(lines[-1][len("RESULT ") :])

    return run


def one_line(case: dict, *words: str) -> str:
    """The case's stderr is exactly one error line holding every one of ``words``; no traceback."""
    assert case["uncaught"] is None, case["uncaught"]
    assert len(case["err"]) == 1, case["err"]
    line = case["err"][0]
    assert line.startswith("msam-lab: error: ") and all(w in line for w in words), line
    return line


def test_disk_full_at_the_start_in_the_middle_and_on_resume_of_train(scenario):
    r = scenario("train_full")
    full = r["status_full"]
    assert full["disk_full"] and full["recorded"] and not full["status"]["lock"]
    assert full["status"]["state"] == "failed" and full["status"]["error"].startswith("EEEE")

    # full as the run starts: one line naming the file; nothing left to block --out or status
    one_line(r["start"], "no space left on device writing", "/a/lock")
    assert r["start"]["code"] == 1 and r["start"]["left"] is None
    assert r["start"]["status"]["lines"] == ["no runs found"]
    assert r["start_then_out"]["code"] == 0

    # full in the epoch-0 evaluation: failed before its first step, then resumed (c1) or replaced (c2)
    for name in ("c1", "c2"):
        case = r[f"before_step_{name}"]
        one_line(case, "no space left on device writing", "run marked failed", "--resume")
        assert case["code"] == 1
        assert (
            case["status"] == {"state": "failed", "error": case["status"]["error"], "last_step": -1, "lock": False}
            and "no space left" in case["status"]["error"]
        )
    assert r["before_step_resume"]["code"] == 0 and r["before_step_resume"]["steps"] == list(range(14))
    assert r["before_step_out"]["code"] == 0 and r["before_step_out"]["steps"] == list(range(14))

    # full at step 9 of 14: the run is marked failed with the error, the lock released, nothing lost
    mid = r["mid"]
    assert mid["fired"] and mid["code"] == 1
    one_line(mid, "no space left on device writing", "run marked failed", "msam-lab train --resume")
    assert mid["status"]["state"] == "failed" and "no space left on device" in mid["status"]["error"]
    assert not mid["status"]["lock"] and mid["lost"] == []
    assert mid["steps"] == list(range(len(mid["steps"]))) and mid["checkpoints_load"]
    row = next(line for line in mid["status_cmd"]["lines"] if line.startswith("b "))
    assert " failed " in row

    # --resume while still full: one line, the run as it was; with space again it finishes, each step once
    one_line(r["resume_full"], "no space left on device writing")
    assert r["resume_full"]["code"] == 1 and r["resume_full"]["lost"] == []
    assert r["resume_full"]["status"]["state"] in ("failed", "interrupted") and not r["resume_full"]["status"]["lock"]
    assert r["resume"]["code"] == 0 and r["resume"]["status"]["state"] == "finished"
    assert r["resume"]["steps"] == list(range(14)) and r["resume"]["epochs"] == [0, 1, 2]


def test_read_only_file_system_at_the_start_on_resume_and_under_a_running_trainer(scenario):
    r = scenario("train_readonly")
    assert r["setup"]["code"] == 130
    one_line(r["start"], "read-only file system", "/new")
    assert r["start"]["code"] == 1 and not r["start"]["exists"]
    one_line(r["resume_ro"], "read-only file system", "/r/lock")
    assert r["resume_ro"]["code"] == 1 and r["resume_ro"]["lost"] == []
    assert r["resume_ro"]["status"]["state"] == "interrupted" and not r["resume_ro"]["status"]["lock"]

    # the file system goes read-only under a real trainer process, which then exits: nothing can be
    # recorded, so the run reads interrupted with its dead trainer named, and resumes once writable
    mid = r["mid"]
    errors = [line for line in mid["err"] if "error" in line or "Traceback" in line]
    assert mid["code"] == 1 and len(errors) == 1 and errors[0] == mid["err"][-1], mid["err"]
    assert "read-only file system" in errors[0] and "could not record it" in errors[0]
    assert mid["lost"] == [] and mid["status"]["state"] == "running" and mid["status"]["lock"]
    row = next(line for line in mid["status_cmd"]["lines"] if line.startswith("r "))
    assert f"interrupted (pid {mid['pid']} gone)" in row
    assert r["resume"]["code"] == 0 and r["resume"]["status"]["state"] == "finished"
    assert r["resume"]["steps"] == list(range(14))


def test_landscape_and_sharpness_check_they_can_write_before_computing(scenario):
    r = scenario("analysis")
    assert r["setup"]["code"] == 0 and r["setup_sharpness"]["code"] == 0
    for label, what, cause in [
        ("landscape_full", "the landscape", "no space left on device"),
        ("sharpness_full", "sharpness.csv", "no space left on device"),
        ("landscape_ro", "the landscape", "read-only file system"),
        ("sharpness_ro", "sharpness.csv", "read-only file system"),
    ]:
        case = r[label]
        one_line(case, f"cannot write {what} into", cause, "nothing was computed")
        assert case["code"] == 1 and case["computed"] == {"surface": 0, "sharpness": 0}, label
        assert case["lost"] == [] and case["landscapes"] == [], label

    # the disk fills at a landscape's second flush: one line; the first flush's 32 points stay, and
    # a rerun with space completes the surface with the values of an uninterrupted one
    one_line(r["landscape_mid"], "no space left on device writing", "landscapes/mid/surface.npz")
    assert r["landscape_mid"]["code"] == 1 and r["landscape_mid"]["lost"] == []
    assert r["landscape_mid"]["saved_points"] == 32
    assert r["landscape_again"]["code"] == 0 and r["landscape_again"]["complete"]
    assert r["landscape_again"]["same_as_reference"]
    assert all(f.startswith("landscapes/mid/") for f in r["landscape_again"]["lost"])

    # ... and between sharpness's measuring and its write: one line, the table as it was
    one_line(r["sharpness_mid"], "no space left on device writing", "sharpness.csv")
    assert r["sharpness_mid"]["code"] == 1 and r["sharpness_mid"]["lost"] == []
    assert r["sharpness_mid"]["computed"]["sharpness"] > 0
    assert r["sharpness_again"]["code"] == 0


# ---------------------------------------------------------------- the words, without a namespace


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on device writing runs/x/steps.csv (free some space)"),
        (errno.EROFS, "read-only file system: runs/x/steps.csv (write to a writable file system)"),
        (errno.EACCES, "permission denied: runs/x/steps.csv (check the folder's owner and permissions)"),
        (errno.EDQUOT, "disk quota exceeded writing runs/x/steps.csv"),
    ],
)
def test_an_os_error_in_words_with_its_path(code, words):
    assert faults.describe(OSError(code, os.strerror(code), "runs/x/steps.csv")).startswith(words)
    assert code in faults.ENVIRONMENT


def test_a_message_of_our_own_is_kept_and_an_unnamed_write_is_named():
    assert faults.describe(FileNotFoundError("no run directory at x")) == "no run directory at x"
    err = faults.named(OSError(errno.ENOSPC, "No space left on device"), "runs/x/status.json")
    assert faults.describe(err).startswith("no space left on device writing runs/x/status.json")


# ---------------------------------------------------------------- symlinks inside a run folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return msam_lab.train(SYN, out=tmp_path_factory.mktemp("sym") / "done", quiet=True).path


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("sym") / "stopped"

    def stop(row):
        if row["step"] == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(SYN, out=out, quiet=True, on_step=stop)
    return out


def refused(capsys, args, named: Path) -> None:
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(named) in err[0] and "symlink" in err[0], err


def test_a_symlinked_landscapes_folder_is_refused_before_anything_is_written(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "landscapes").symlink_to(outside)
    refused(capsys, ["landscape", run, "--dim", "1", "--grid", "3", "--n-samples", "16", "--quiet"], run / "landscapes")
    assert list(outside.iterdir()) == []


def test_a_symlinked_sharpness_table_is_refused_and_its_target_untouched(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    target = tmp_path / "elsewhere.csv"
    target.write_text("precious\n")
    (run / "sharpness.csv").symlink_to(target)
    refused(
        capsys,
        ["sharpness", run, "--n-samples", "16", "--probes", "1", "--max-iter", "2", "--quiet"],
        run / "sharpness.csv",
    )
    assert target.read_text() == "precious\n" and (run / "sharpness.csv").is_symlink()


@pytest.mark.parametrize("name", ["checkpoints", "steps.csv", "epochs.csv", "status.json"])
def test_resume_refuses_a_run_with_a_symlinked_file_or_folder(interrupted, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    outside = tmp_path / f"outside-{name}"
    (run / name).rename(outside)
    (run / name).symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir()) if outside.is_dir() else outside.read_bytes()
    refused(capsys, ["train", "--resume", run], run / name)
    after = sorted(p.name for p in outside.iterdir()) if outside.is_dir() else outside.read_bytes()
    assert after == before and not (run / "lock").exists()


def test_appends_never_follow_a_symlink(tmp_path):
    from msam_lab.runs.writer import CsvAppender

    target = tmp_path / "target.csv"
    target.write_text("a\n1\n")
    (tmp_path / "steps.csv").symlink_to(target)
    table = CsvAppender(tmp_path / "steps.csv")
    with pytest.raises(OSError) as err:
        table.append([{"a": 2}])
    assert err.value.errno == errno.ELOOP and "symlink" in faults.describe(err.value)
    assert target.read_text() == "a\n1\n"


# ---------------------------------------------------------------- what a failed start leaves


def test_the_leftovers_of_a_start_on_a_full_disk_block_nothing(tmp_path, capsys):
    """What the old code left when the disk was full as a run started: checkpoints/ and an empty lock."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "lock").write_text("")
    os.utime(out / "lock", (1e9, 1e9))  # left by an earlier start (a fresh empty one may be being written)
    assert cli.main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "no runs found"
    assert check_output_dir(out) == out
    run = msam_lab.train({**SYN, "epochs": 1}, out=out, quiet=True)
    assert run.finished and list(run.steps["step"]) == list(range(7))


def test_a_run_that_failed_before_its_first_step_is_replaced_by_out(tmp_path, monkeypatch):
    from msam_lab.runs.writer import RunWriter

    real = RunWriter.log_epoch

    def full(self, row):
        if row["epoch"] == 0:
            raise faults.named(OSError(errno.ENOSPC, "No space left on device"), self.out / "epochs.csv")
        return real(self, row)

    monkeypatch.setattr(RunWriter, "log_epoch", full)
    with pytest.raises(OSError):
        msam_lab.train({**SYN, "epochs": 1, "seed": 5}, out=tmp_path / "run", quiet=True)
    monkeypatch.setattr(RunWriter, "log_epoch", real)
    failed = load_run(tmp_path / "run")
    assert failed.state == "failed" and failed.status["last_step"] == -1
    assert failed.status["error"].startswith("no space left on device writing")
    run = msam_lab.train({**SYN, "epochs": 1}, out=tmp_path / "run", quiet=True)
    assert run.finished and run.config.seed == SYN.get("seed", 0) and run.status["resumed"] == 0


def test_a_folder_with_anything_more_is_still_refused(tmp_path, interrupted):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "lock").write_text("")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(msam_lab.ConfigError, match="exists and is not empty"):
        check_output_dir(out)
    with pytest.raises(msam_lab.ConfigError, match="already holds a interrupted run|already holds an? interrupted"):
        check_output_dir(interrupted)  # it took steps: resumed, never replaced
