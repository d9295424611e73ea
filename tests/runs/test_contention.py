"""Run files under contention, raced by real processes (tests/contention_child.py, msam-lab itself):
the stale-lock takeover has one winner, sharpness.csv loses no row, landscapes of one run computed
at once all complete; and threads writing one file atomically never share a temporary name."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import msam_lab
from msam_lab.cli import commands as cli
from msam_lab.landscape import load_landscape
from msam_lab.runs import atomic
from msam_lab.runs.lock import RunLock, read_lock

pytestmark = pytest.mark.slow  # real processes racing on run files

CHILD = str(Path(__file__).resolve().parents[1] / "contention_child.py")
WAIT = 120.0
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_until(condition, what: str, procs=()) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        dead = [p for p in procs if p.poll() not in (None, 0)]
        if dead:
            raise AssertionError(f"a child failed while waiting for {what}: {dead[0].communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT} s for {what}")
        time.sleep(0.005)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def finish(procs) -> None:
    for p in procs:
        try:
            out, err = p.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        assert p.returncode == 0, err


def test_a_stale_lock_taken_over_by_eight_processes_at_once_has_one_holder(tmp_path):
    """8 processes x 25 rounds, each round a fresh run whose lock names a dead trainer."""
    n, rounds = 8, 25
    procs = [
        subprocess.Popen(
            [sys.executable, CHILD, "lock", str(tmp_path), str(i), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i in range(n)
    ]
    try:
        wait_until(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(n)), "the children", procs)
        stale = json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": time.time() - 60})
        winners = []
        for r in range(rounds):
            folder = tmp_path / str(r)
            folder.mkdir()
            (folder / "lock").write_text(stale)
            (folder / "go").touch()
            wait_until(lambda: all((folder / f"result-{i}").exists() for i in range(n)), f"round {r}", procs)
            won = [i for i in range(n) if (folder / f"result-{i}").read_text() == "won"]
            holder = read_lock(folder)
            winners.append(won)
            assert len(won) == 1, f"round {r}: {len(won)} processes hold the lock"
            assert holder.pid == procs[won[0]].pid, f"round {r}: the lock names another process"
    finally:
        (tmp_path / "done").touch()
    finish(procs)
    assert len({w[0] for w in winners}) > 1 or n == 1  # the race was real: not always the same process


def test_a_lock_whose_owner_lives_is_never_taken(tmp_path):
    mine = RunLock(tmp_path)
    assert mine.acquire() is None
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from msam_lab.runs.lock import RunLock\n"
            "try:\n RunLock(sys.argv[1]).acquire()\nexcept RuntimeError as e:\n print(e)",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=WAIT,
    )
    assert f"being trained by pid {os.getpid()}" in proc.stdout
    mine.release()
    assert not (tmp_path / "lock").exists()


def test_processes_updating_sharpness_csv_at_once_lose_no_row(tmp_path):
    n, each = 4, 50
    csv = tmp_path / "sharpness.csv"
    procs = [
        subprocess.Popen(
            [sys.executable, CHILD, "rows", str(csv), str(i), str(each)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for i in range(n)
    ]
    wait_until(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(n)), "the children", procs)
    (tmp_path / "go").touch()
    finish(procs)
    table = pd.read_csv(csv)
    assert len(table) == n * each
    assert set(zip(table["epoch"], table["scope"])) == {(i, f"s{k}") for i in range(n) for k in range(each)}
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []  # no temporary left


LANDSCAPE = """
import sys, torch
torch.set_num_threads(1)
from msam_lab.landscape import landscape_for_run
landscape_for_run(sys.argv[1], dim=2, grid=9, n_samples=32, threads=1, name=sys.argv[2], flush_every=1)
"""


def test_four_landscapes_of_one_run_at_once_all_complete(tmp_path):
    run = msam_lab.train(
        {
            "dataset": "synthetic",
            "data": {"n_samples": 300, "n_modalities": 2},
            "batch_size": 32,
            "epochs": 1,
            "train_eval_samples": 100,
            "method": "joint",
        },
        out=tmp_path / "run",
        quiet=True,
    )
    # four at once on one surface (one folder, the same file names, a flush after every point), then
    # one alone on another; the CLI is the same function with flushes every 32 points
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LANDSCAPE, str(run.path), "shared"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(4)
    ]
    finish(procs)
    assert (
        cli.main(
            [
                "landscape",
                str(run.path),
                "--dim",
                "2",
                "--grid",
                "9",
                "--n-samples",
                "32",
                "--threads",
                "1",
                "--quiet",
                "--name",
                "alone",
            ]
        )
        == 0
    )
    shared, alone = load_landscape(run.path, "shared"), load_landscape(run.path, "alone")
    assert shared.complete and shared.n_done == 81
    for metric in alone.metrics:
        np.testing.assert_array_equal(shared[metric], alone[metric])
    assert not [p for p in (run.path / "landscapes" / "shared").iterdir() if ".tmp" in p.name]


def test_threads_replacing_one_file_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "status.json"
    errors = []

    def writer(k):
        try:
            for i in range(50):
                atomic.write_json(target, {"writer": k, "i": i})
        except OSError as err:  # the old pid-only temporary name: one thread renamed another's
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and json.loads(target.read_text())["i"] == 49
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
