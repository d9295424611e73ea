"""The CPU benchmark scripts in bench/ run in their quick modes (their tables complete and finite;
no timing thresholds here: speed targets live in the scripts and docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
