"""bench/gpu.py and bench/gpu.sh on a machine without CUDA: the quick mode's table has every row and
column the GPU run promises, and the wrapper refuses to run without CUDA in one line.

The quick mode swaps the paper's ResNet-18 encoders for msam_lab's small ``cnn`` (tiny batch and
inputs, one repeat) so that it takes seconds on a loaded 2-core CPU; on the CPU peak memory is
reported as ``n/a`` (the process's peak RSS goes to ``cpu_peak_rss_mib`` instead).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("joint", "sam", "msam")
PRECISIONS = ("fp32", "bf16")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout, json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


@pytest.mark.slow
def test_quick_table_has_every_row_and_column(quick):
    stdout, result, md = quick
    assert result["device"] == "cpu" and result["quick"] and not result["errors"] and not result["skipped"]
    rows = {(r["method"], r["precision"], r["channels_last"]): r for r in result["steps"]}
    for method in METHODS:
        for precision in PRECISIONS:
            r = rows[(method, precision, False)]
            assert r["step_ms"] > 0 and r["gflop_per_step"] > 0 and r["tflops"] > 0
            assert r["pct_of_ceiling"] > 0 and r["ceiling"] == precision  # no TF32 on the CPU
            assert r["peak_mib"] is None  # n/a on the CPU
    for precision in PRECISIONS:
        assert rows[("joint", precision, True)]["step_ms"] > 0
    assert rows[("sam", "fp32", False)]["gflop_per_step"] > rows[("joint", "fp32", False)]["gflop_per_step"]
    assert set(result["ceiling"]) == {"fp32", "bf16"} and all(v["tflops"] > 0 for v in result["ceiling"].values())
    land = {r["precision"]: r for r in result["landscape"]}
    assert set(land) == set(PRECISIONS)
    for r in land.values():
        assert r["grid"] == "3x3" and r["points"] == 9 and r["points_per_s"] > 0 and r["steady_points_per_s"] > 0
        assert r["metrics"] == 10  # loss/acc: fused, each modality alone, each removed
    assert result["cpu_peak_rss_mib"] > 0
    for table in (stdout, md):  # the printed table and gpu.md are the same
        for column in (
            "step ms (median)",
            "GFLOP/step",
            "TFLOP/s",
            "% of ceiling",
            "peak memory MiB",
            "points/s (compute_surface)",
            "points/s (steady)",
            "matmul ceiling",
        ):
            assert column in table
        for method in METHODS:
            for precision in PRECISIONS:
                assert f"| {method} | {precision} |" in table
        for precision in PRECISIONS:
            assert f"| joint channels_last | {precision} |" in table
            assert f"| {precision} | 3x3 |" in table
        assert "| n/a |" in table and "peak memory: n/a on the CPU" in table


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_sh_without_cuda_exits_with_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "BENCH_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--allow-cpu" in lines[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
