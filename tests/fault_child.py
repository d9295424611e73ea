"""Fault scenarios on a real small file system, for tests/training/test_faults.py; not a test module.

    unshare --mount --propagation private sh -c 'mount -t tmpfs -o size=8m tmpfs DIR &&
        exec python tests/fault_child.py SCENARIO DIR'

DIR is a tmpfs of this process's own mount namespace: it is filled up (``fill``) or remounted
read-only (``remount``) under the commands, which run in this process through ``msam_lab.cli.commands.main``
(stdout and stderr captured; an exception escaping ``main`` is recorded: it would have been a
traceback). The one command that must die for real (a trainer whose disk goes read-only under it)
runs as a child process. Prints ``RESULT <json>``: per case, the exit code, the stderr lines, and
what the run folders hold afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)

from msam_lab import cli  # noqa: E402
from msam_lab.runs import atomic  # noqa: E402
from msam_lab.runs.reader import load_run, read_table  # noqa: E402
from msam_lab.runs.writer import RunWriter  # noqa: E402

# the modules, not the functions of the same names that msam_lab.landscape exports
landscape_runs = importlib.import_module("msam_lab.landscape.for_run")
sharpness_mod = importlib.import_module("msam_lab.landscape.sharpness")
surface_mod = importlib.import_module("msam_lab.landscape.surface")

TRAIN = [
    "--dataset",
    "synthetic",
    "--epochs",
    "2",
    "--set",
    "data.n_samples=300",
    "--set",
    "data.n_modalities=2",
    "--set",
    "batch_size=32",
    "--set",
    "train_eval_samples=100",
    "--set",
    "flush_every=0",
    "--quiet",
]
FILLER = ".filler"


def fill(root: Path) -> None:
    """Take every free block of the file system of ``root``."""
    fd = os.open(root / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


def free(root: Path) -> None:
    (root / FILLER).unlink(missing_ok=True)


def remount(root: Path, mode: str) -> None:
    for _ in range(200):  # EBUSY while a file is open for writing: try again
        if subprocess.run(["mount", "-o", f"remount,{mode}", str(root)], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"cannot remount {root} {mode}")


def run_cli(args) -> dict:
    out, err = io.StringIO(), io.StringIO()
    uncaught = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except BaseException:  # would have been a traceback
            code, uncaught = None, traceback.format_exc()
    return {"code": code, "err": err.getvalue().splitlines(), "uncaught": uncaught}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(run: Path) -> dict:
    """Every file of a run but status.json, lock and temporaries: name -> sha256 (tables: their text)."""
    files = {}
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run).as_posix()
        if p.is_file() and rel not in ("status.json", "lock") and not p.name.startswith("."):
            files[rel] = p.read_text() if p.suffix == ".csv" else digest(p)
    return files


def intact(before: dict, run: Path) -> list[str]:
    """Files of ``before`` that changed (a table may only have grown by whole rows) or went missing."""
    now = snapshot(run)
    lost = []
    for rel, value in before.items():
        if rel not in now:
            lost.append(f"{rel} missing")
        elif rel.endswith(".csv"):
            if not now[rel].startswith(value) or not now[rel].endswith("\n"):
                lost.append(f"{rel} changed")
        elif now[rel] != value:
            lost.append(f"{rel} changed")
    return lost


def status_of(run: Path) -> dict:
    try:
        status = json.loads((run / "status.json").read_text())
    except (OSError, ValueError) as err:
        return {"unreadable": str(err)}
    return {
        "state": status.get("state"),
        "error": status.get("error"),
        "last_step": status.get("last_step"),
        "lock": (run / "lock").exists(),
    }


def status_lines(root: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["status", str(root)])
    return {"code": code, "lines": out.getvalue().splitlines()}


def steps_of(run: Path) -> list[int]:
    return [int(s) for s in read_table(run / "steps.csv")["step"]]


@contextlib.contextmanager
def hook(cls, name, when, action):
    """Call ``action()`` once, the first time ``cls.name(self, arg)`` is called with ``when(arg)`` true."""
    real = getattr(cls, name)
    fired = []

    def patched(self, arg, *a, **kw):
        if not fired and when(arg):
            fired.append(True)
            action()
        return real(self, arg, *a, **kw)

    setattr(cls, name, patched)
    try:
        yield fired
    finally:
        setattr(cls, name, real)


# ---------------------------------------------------------------- scenarios


def train_full(root: Path) -> dict:
    res = {}
    # 0. status.json on a disk without one free block: no new file can be made, yet the failure is
    # recorded (rewritten in place, in the room its padding left; a long error clipped to fit)
    writer = RunWriter(root / "s", {"epochs": 1, "method": "joint"}, {"modalities": ["a"]})
    fill(root)
    try:
        atomic.write_bytes(root / "probe", b"x")
        full = False
    except OSError as err:
        full = err.errno == errno.ENOSPC
    recorded = writer.fail("E" * 5000)
    res["status_full"] = {"disk_full": full, "recorded": recorded, "status": status_of(root / "s")}
    free(root)
    shutil.rmtree(root / "s")

    # 1. full as a run starts: one line, nothing left behind; with space again, --out works
    fill(root)
    res["start"] = run_cli(["train", "--out", root / "a", *TRAIN])
    res["start"]["left"] = sorted(p.name for p in (root / "a").iterdir()) if (root / "a").exists() else None
    res["start"]["status"] = status_lines(root)
    free(root)
    res["start_then_out"] = run_cli(["train", "--out", root / "a", *TRAIN])

    # 2. full in the epoch-0 evaluation (before the first step): resumable, or replaced by --out
    for name in ("c1", "c2"):
        with hook(RunWriter, "log_epoch", lambda row: row["epoch"] == 0, lambda: fill(root)):
            res[f"before_step_{name}"] = run_cli(["train", "--out", root / name, *TRAIN])
        res[f"before_step_{name}"]["status"] = status_of(root / name)
        free(root)
    res["before_step_resume"] = run_cli(["train", "--resume", root / "c1"])
    res["before_step_resume"]["steps"] = steps_of(root / "c1")
    res["before_step_out"] = run_cli(["train", "--out", root / "c2", *TRAIN])
    res["before_step_out"]["steps"] = steps_of(root / "c2")

    # 3. full in the middle of a run (step 9 of 14), then --resume while still full, then with space
    before = {}

    def fill_mid():
        before.update(snapshot(root / "b"))
        fill(root)

    with hook(RunWriter, "log_step", lambda row: row["step"] == 9, fill_mid) as fired:
        res["mid"] = run_cli(["train", "--out", root / "b", *TRAIN])
    res["mid"].update(
        fired=bool(fired),
        status=status_of(root / "b"),
        lost=intact(before, root / "b"),
        steps=steps_of(root / "b"),
        status_cmd=status_lines(root),
    )
    res["mid"]["checkpoints_load"] = sorted(load_run(root / "b").checkpoints)
    for epoch in res["mid"]["checkpoints_load"]:
        load_run(root / "b").load_checkpoint(epoch)
    before = snapshot(root / "b")
    res["resume_full"] = run_cli(["train", "--resume", root / "b"])
    res["resume_full"].update(status=status_of(root / "b"), lost=intact(before, root / "b"))
    free(root)
    res["resume"] = run_cli(["train", "--resume", root / "b"])
    res["resume"].update(
        status=status_of(root / "b"),
        steps=steps_of(root / "b"),
        epochs=[int(e) for e in read_table(root / "b" / "epochs.csv")["epoch"]],
    )
    return res


CHILD = """
import subprocess, sys, time
import torch
torch.set_num_threads(1)
from msam_lab.cli import commands as cli
from msam_lab.runs.writer import RunWriter
root, at = sys.argv[1], int(sys.argv[2])
real = RunWriter.log_step
def log_step(self, row):
    if row["step"] == at:
        for _ in range(200):
            if subprocess.run(["mount", "-o", "remount,ro", root], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
    return real(self, row)
RunWriter.log_step = log_step
sys.exit(cli.main(sys.argv[3:]))
"""


def train_readonly(root: Path) -> dict:
    res = {}
    with hook(RunWriter, "log_step", lambda row: row["step"] == 9, lambda: (_ for _ in ()).throw(KeyboardInterrupt)):
        res["setup"] = run_cli(["train", "--out", root / "r", *TRAIN])  # an interrupted run to resume
    before = snapshot(root / "r")
    remount(root, "ro")
    res["start"] = run_cli(["train", "--out", root / "new", *TRAIN])
    res["start"]["exists"] = (root / "new").exists()
    res["resume_ro"] = run_cli(["train", "--resume", root / "r"])
    res["resume_ro"].update(status=status_of(root / "r"), lost=intact(before, root / "r"))
    remount(root, "rw")

    # read-only in the middle of a resumed run, in a process that then exits for real
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), "11", "train", "--resume", str(root / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    remount(root, "rw")
    res["mid"] = {
        "code": proc.returncode,
        "err": proc.stderr.splitlines(),
        "pid": None,
        "status": status_of(root / "r"),
        "lost": intact(before, root / "r"),
        "status_cmd": status_lines(root),
    }
    with contextlib.suppress(OSError, ValueError):
        res["mid"]["pid"] = json.loads((root / "r" / "lock").read_text())["pid"]
    res["resume"] = run_cli(["train", "--resume", root / "r"])
    res["resume"].update(status=status_of(root / "r"), steps=steps_of(root / "r"))
    return res


def analysis(root: Path) -> dict:
    res = {}
    run = root / "run"
    res["setup"] = run_cli(["train", "--out", run, *TRAIN])
    res["setup_sharpness"] = run_cli(
        ["sharpness", run, "--n-samples", "32", "--probes", "2", "--max-iter", "5", "--quiet"]
    )
    land = ["landscape", run, "--dim", "2", "--grid", "9", "--n-samples", "32", "--quiet", "--threads", "1"]
    sharp = ["sharpness", run, "--epoch", "0", "--n-samples", "32", "--probes", "2", "--max-iter", "5", "--quiet"]
    calls = {"surface": 0, "sharpness": 0}
    real_compute, real_sharpness = landscape_runs.compute_surface, sharpness_mod.sharpness

    def compute(*a, **kw):
        calls["surface"] += 1
        return real_compute(*a, **kw)

    def measure(*a, **kw):
        calls["sharpness"] += 1
        return real_sharpness(*a, **kw)

    # for_run binds `sharpness` at import: patch its name as well as the module's
    landscape_runs.compute_surface, sharpness_mod.sharpness, landscape_runs.sharpness = compute, measure, measure

    def case(label, args):
        before, calls["surface"], calls["sharpness"] = snapshot(run), 0, 0
        res[label] = run_cli(args)
        res[label].update(
            lost=intact(before, run),
            computed=dict(calls),
            landscapes=sorted(p.name for p in (run / "landscapes").iterdir()) if (run / "landscapes").is_dir() else [],
        )

    fill(root)
    case("landscape_full", land + ["--name", "full"])
    case("sharpness_full", sharp)
    free(root)
    remount(root, "ro")
    case("landscape_ro", land + ["--name", "ro"])
    case("sharpness_ro", sharp)
    remount(root, "rw")

    # the disk fills in the middle of a landscape (at its second flush) and at sharpness's write
    real_save = surface_mod.Surface.save_values
    flushes = []

    def save_values(self, *a, **kw):
        flushes.append(self.n_done)
        if len(flushes) == 2:
            fill(root)
        return real_save(self, *a, **kw)

    surface_mod.Surface.save_values = save_values
    case("landscape_mid", land + ["--name", "mid"])
    surface_mod.Surface.save_values = real_save
    res["landscape_mid"]["saved_points"] = int(surface_mod.Surface.load(run / "landscapes" / "mid").n_done)
    res["landscape_mid"]["flushes"] = flushes
    free(root)

    def measure_then_fill(*a, **kw):
        calls["sharpness"] += 1
        row = real_sharpness(*a, **kw)
        fill(root)
        return row

    sharpness_mod.sharpness = landscape_runs.sharpness = measure_then_fill
    case("sharpness_mid", sharp)
    sharpness_mod.sharpness = landscape_runs.sharpness = measure
    free(root)

    # with space again: everything goes through, the interrupted landscape resumes to the same values
    case("landscape_again", land + ["--name", "mid"])
    case("landscape_reference", land + ["--name", "reference"])
    a = surface_mod.Surface.load(run / "landscapes" / "mid")
    b = surface_mod.Surface.load(run / "landscapes" / "reference")
    res["landscape_again"]["complete"] = a.complete
    res["landscape_again"]["same_as_reference"] = bool(
        all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a.metrics)
    )
    case("sharpness_again", sharp)
    return res


def main(argv):
    scenario, root = argv[0], Path(argv[1])
    result = {"train_full": train_full, "train_readonly": train_readonly, "analysis": analysis}[scenario](root)
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
