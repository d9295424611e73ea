"""Landscapes and sharpness sharded over torchrun's ranks: the same files and numbers as one process.

Each test launches ``torchrun --standalone --nproc-per-node 2 -m msam_lab ...`` (gloo on the CPU,
one thread per rank) on a tiny trained run and compares its output with the single-process Python
API on the same run, also with one thread. Three launches in all (~10 s of start-up each).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from msam_lab.landscape import load_landscape
from msam_lab.landscape.for_run import SHARPNESS_CSV, landscape_for_run, open_run, timeline_for_run

pytestmark = pytest.mark.slow  # torchrun process groups

ROOT = Path(__file__).resolve().parents[2]
GRID = ["--grid", "9", "--n-samples", "64"]  # 81 points: two blocks of 32 points per rank
SETTINGS = dict(grid=9, n_samples=64)
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from msam_lab.training.loop import train

    out = tmp_path_factory.mktemp("dist-landscape") / "run"
    train(
        {
            "dataset": "synthetic",
            "method": "joint",
            "epochs": 2,
            "data": {"n_samples": 128},
            "val_fraction": 0.0,
            "device": "cpu",
            "checkpoint_every": 1,
        },
        out=out,
        quiet=True,
    )
    return out


@pytest.fixture(scope="module")
def reference(run):
    """The 1-process surface (one thread, like each rank), computed once."""
    return landscape_for_run(run, name="reference", threads=1, **SETTINGS)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "msam_lab",
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def assert_same_values(surface, reference, where=None):
    assert surface.complete
    assert surface.metrics == reference.metrics
    for k in reference.metrics:
        got, want = surface[k], reference[k]
        if where is not None:
            got, want = got[where], want[where]
        assert np.allclose(got, want, rtol=RTOL, atol=ATOL), f"{k}: sharded values differ from one process's"


def test_sharded_landscape_equals_one_process_and_resumes_in_one(run, reference):
    done = torchrun("landscape", str(run), *GRID, "--name", "sharded", "--quiet")
    # one rank prints (its two lines), the other nothing
    assert done.stdout.count("landscape written to") == 1, done.stdout
    sharded = load_landscape(run, "sharded")
    assert_same_values(sharded, reference)
    assert sharded.meta["n_done"] == 81 and sharded.meta["complete"]
    for k in ("model_sha1", "directions_sha1", "metrics", "n_samples", "subset_seed"):
        assert sharded.meta[k] == reference.meta[k]
    assert np.array_equal(sharded.subset_index, reference.subset_index)

    # the sharded run's file, with points missing (as an interrupted run leaves it), completed by one process
    sharded.done.reshape(-1)[1::3] = False
    for v in sharded.values.values():
        v.reshape(-1)[1::3] = np.nan
    sharded.save_values()
    resumed = landscape_for_run(run, name="sharded", threads=1, **SETTINGS)
    assert_same_values(resumed, reference)
    assert_same_values(load_landscape(run, "sharded"), reference)


def test_sharded_landscape_resumes_a_one_process_partial_surface(run, reference):
    partial = landscape_for_run(run, name="partial", threads=1, **SETTINGS)
    missing = np.zeros(partial.shape, dtype=bool)
    missing.reshape(-1)[::2] = True  # 41 of the 81 points to do, over both blocks
    partial.done[missing] = False
    for v in partial.values.values():
        v[missing] = np.nan
    # a kept point is not recomputed: mark one kept value so a recomputation would show
    partial.values["loss"][~missing] = -1.0
    partial.save_values()

    torchrun("landscape", str(run), *GRID, "--name", "partial", "--quiet")
    resumed = load_landscape(run, "partial")
    assert resumed.complete and resumed.meta["n_done"] == 81
    assert np.all(resumed["loss"][~missing] == -1.0), "the ranks recomputed points already done"
    assert_same_values(resumed, reference, where=missing)


def test_sharded_sharpness_timeline_equals_one_process(run):
    flags = ["--n-samples", "48", "--probes", "4", "--max-iter", "20"]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = timeline_for_run(run, n_samples=48, probes=4, max_iter=20, write=False)
    finally:
        torch.set_num_threads(old)
    n_scopes = len(open_run(run).modalities) + 1  # each encoder and the fusion
    assert len(want) == 3 * n_scopes  # at epochs 0, 1, 2

    done = torchrun("sharpness", str(run), "--timeline", *flags, "--quiet")
    assert done.stdout.count("rows added to") == 1, done.stdout
    got = pd.read_csv(run / SHARPNESS_CSV)
    assert list(zip(got["epoch"], got["scope"])) == list(zip(want["epoch"], want["scope"]))
    numeric = [c for c in ("loss", "lambda_1", "trace", "trace_se", "eps_sharpness") if c in want.columns]
    assert "lambda_1" in numeric and "trace" in numeric
    for c in numeric:
        assert np.allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=RTOL, atol=ATOL), (
            f"{c}: sharded sharpness differs from one process's"
        )
