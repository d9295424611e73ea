"""bench/suite.py: the one table of every ratio target (figure, target, measured, met or missed).

The quick run is the smoke test of every figure on the CPU (slow: it trains and times real models);
the verdict logic and the rows read from bench/gpu.py's gpu.json are checked in process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "bench" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_verdicts_compare_with_the_bound(suite):
    assert suite.verdict("x", 1.04, "≤", 1.05).status == "met"
    assert suite.verdict("x", 1.06, "≤", 1.05).status == "missed"
    assert suite.verdict("x", 1.7, "≥", 1.8).status == "missed"
    row = suite.verdict("x", 2.5, "≤", 3, ".1f", " %")
    assert (row.target, row.measured, row.status) == ("≤ 3 %", "2.5 %", "met")


def test_gpu_rows_from_gpu_json(suite):
    step = {"channels_last": False, "tflops": 10.0, "pct_of_ceiling": 20.0, "ceiling": "tf32", "peak_mib": 900.0}
    result = {
        "steps": [
            {**step, "method": "joint", "precision": "fp32", "step_ms": 40.0},
            {**step, "method": "joint", "precision": "bf16", "step_ms": 30.0},
            {**step, "method": "joint", "precision": "bf16", "step_ms": 99.0, "channels_last": True},
        ],
        "landscape": [{"precision": "fp32", "points_per_s": 12.5, "grid": "11x11", "samples": 512}],
    }
    rows = {r.figure: r for r in suite.gpu_rows(result)}
    ratio = rows["gpu: joint step bf16 / fp32"]
    assert ratio.measured == "0.75" and ratio.status == "met"  # 30 / 40, channels_last row left out
    assert rows["gpu: joint fp32 TFLOP/s (% of matmul ceiling)"].measured == "10.00 (20.0 % of tf32)"
    assert rows["gpu: landscape points/s (fp32)"].measured == "12.5"
    assert suite.gpu_rows({})[0].status == "pending"


def test_unknown_figure_is_one_line(suite, capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.main(["--only", "stpe"])
    assert exit_.value.code == 2
    assert "unknown figure 'stpe'; choose from step, paper" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_prints_one_row_per_target(tmp_path, suite):
    out = tmp_path / "suite.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "suite.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # under 3 minutes on 2 quiet cores; generous for a loaded machine
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r for r in rows if r["status"] == "error"] == []
    assert {r["status"] for r in rows} <= set(suite.STATUSES)
    prefixes = (
        "step:",
        "paper ResNet-18:",
        "syncs per step:",
        "landscape:",
        "streaming",
        "ddp:",
        "teaching lab:",
        "gpu:",
    )
    for prefix in prefixes:
        assert any(r["figure"].startswith(prefix) for r in rows), prefix
    for r in rows:
        if r["status"] in ("met", "missed"):
            assert r["target"][:1] in "≤≥" and r["measured"] != "-", r
    step = [r for r in rows if r["figure"].startswith("step:")]
    assert len(step) == 8 and all(r["status"] in ("met", "missed") for r in step)
    assert [r["status"] for r in rows if r["figure"].startswith("gpu:")] == ["pending"]  # no CUDA here
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| figure | target | measured | met or missed | note |"
    assert len(lines) == 1 + len(rows)
