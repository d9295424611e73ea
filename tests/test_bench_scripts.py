"""The CPU benchmark scripts in bench/ run in their quick modes (their tables complete and finite;
no timing thresholds here: speed targets live in the scripts and docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # the benchmark scripts end to end

ROOT = Path(__file__).resolve().parent.parent


def test_shapley_overhead_bench_runs_in_quick_mode():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shapley_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| synthetic")]
    assert len(rows) == 4 and all(float(r.split("|")[-2]) > 0 for r in rows)


def test_ddp_scaling_bench_runs_in_quick_mode():
    """1 process and 2 gloo ranks under torchrun: a row per (method, ranks) with a positive rate."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "ddp_scaling.py"),
            "--quick",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--methods",
            "joint",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| joint")]
    assert [r[2].strip() for r in rows] == ["1", "2"]
    assert all(float(r[3]) > 0 for r in rows) and float(rows[0][5]) == 1.0


def test_val_curves_averages_the_finished_runs_per_epoch(tmp_path, monkeypatch):
    """Mean validation accuracy per epoch over the finished runs a glob matches; a running run is left out,
    a glob with no finished run is a one-line error naming it."""
    spec = importlib.util.spec_from_file_location("val_curves", ROOT / "bench" / "val_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = {
        "a/seed0": (True, [0.2, 0.4, 0.6]),
        "a/seed1": (True, [0.4, 0.6, 0.9]),
        "a/seed2": (False, [0.0]),
        "b/seed0": (True, [0.1, 0.5]),
    }
    for name in runs:
        (tmp_path / name).mkdir(parents=True)

    def load_run(path):
        finished, val = runs[str(Path(path).relative_to(tmp_path))]
        return types.SimpleNamespace(finished=finished, epochs=pd.DataFrame({"epoch": range(len(val)), "val_acc": val}))

    monkeypatch.setattr(module.msam_lab, "load_run", load_run)
    out = module.val_table({"A": f"{tmp_path}/a/seed*", "B": f"{tmp_path}/b/seed*"}).splitlines()
    assert out[0] == "| runs | epoch 0 | epoch 1 | epoch 2 |"
    assert out[2] == "| A (2 runs) | 0.30 | 0.50 | 0.75 |"
    assert out[3] == "| B (1 run) | 0.10 | 0.50 |  |"
    bad = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "val_curves.py"), f"C={tmp_path}/none/*"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "none/*" in bad.stderr and "Traceback" not in bad.stderr


def test_finite_check_bench_runs_and_both_checks_agree():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "finite_check.py"), "--repeats", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "all_finite (aminmax)" in proc.stdout and "ratio" in proc.stdout


def test_observation_cost_bench_prints_a_row_per_modality_count():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "observation_cost.py"), "--modalities", "2,3", "--repeats", "1",
         "--steps", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| M |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = [dict(zip(cols, (c.strip() for c in line.strip("|").split("|")))) for line in proc.stdout.splitlines()
            if line.startswith(("| 2 |", "| 3 |"))]  # fmt: skip
    assert [r["coalitions"] for r in rows] == ["4", "8"]
    for r in rows:
        assert all(float(r[k]) > 0 for k in ("joint_ms", "msam_ms", "observe_ms", "calls/joint"))
