"""Quick mode never writes into ``figures/``: ``figures_dir()`` points elsewhere and the writers refuse it."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from msam_lab import figures, paths


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A fake checkout root with a publication figures/ folder holding one file."""
    monkeypatch.setattr(paths, "project_root", lambda: tmp_path)
    monkeypatch.delenv(paths.FIGURES_ENV, raising=False)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "fig_method_comparison.png").write_bytes(b"publication")
    return tmp_path


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_figures_dir_in_quick_mode_is_not_figures(checkout, monkeypatch):
    monkeypatch.setenv(paths.QUICK_ENV, "0")
    assert paths.figures_dir() == checkout / "figures"
    monkeypatch.setenv(paths.QUICK_ENV, "1")
    assert paths.figures_dir() == checkout / "runs" / "quick" / "figures"
    monkeypatch.setenv(paths.FIGURES_ENV, str(checkout / "elsewhere"))
    assert paths.figures_dir() == checkout / "elsewhere"


def test_quick_writers_leave_figures_untouched(checkout, monkeypatch):
    monkeypatch.setenv(paths.QUICK_ENV, "1")
    before = _snapshot(checkout / "figures")
    table = pd.DataFrame(  # a sweep summary: mean ± std over 2 seeds
        [
            {
                "method": m,
                "rho": 0.05,
                "n_seeds": 2,
                **{f"{k}_last_mean": v for k, v in (("acc", a), ("acc_m0", a), ("acc_m1", 0.5), ("tau", 0.1))},
                **{f"{k}_last_std": 0.01 for k in ("acc", "acc_m0", "acc_m1", "tau")},
            }
            for m, a in (("joint", 0.8), ("msam", 0.85))
        ]
    )
    written = figures.comparison_figures(table)  # notebook 05's call, default folder
    assert written and all(checkout / "runs" / "quick" / "figures" in p.parents for p in written)
    with pytest.raises(ValueError, match="publication figures"):
        figures.comparison_figures(table, checkout / "figures")
    with pytest.raises(ValueError, match="publication figures"):
        figures.rival_figures({}, checkout / "figures")
    assert _snapshot(checkout / "figures") == before


@pytest.mark.slow  # a fresh interpreter imports torch
def test_quick_make_figures_into_figures_is_one_line_error(tmp_path):
    root = paths.project_root()
    proc = subprocess.run(
        [sys.executable, "-m", "msam_lab.figures", "--quick", "--out", str(root / "figures")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "MSAM_LAB_RUNS": str(tmp_path / "runs")},
    )
    assert proc.returncode == 2
    assert "publication figures" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before anything was trained
