"""``make figures`` (msam_lab.figures) in quick mode: every figure is written, notebook 08's included,
into the folder asked for, with nothing landing in the checkout."""

from __future__ import annotations

import pytest

from msam_lab import figures
from msam_lab.experiments import rivals

pytestmark = pytest.mark.slow  # make figures end to end

RIVAL_NAMES = ("rivals_comparison", "rho_sweep", "fixed_dominant", "sharpness_timeline")


def test_settings_carry_the_rivals_settings():
    for quick in (True, False):
        assert figures.settings(quick)["rivals"] == rivals.rival_settings(quick)
    assert set(figures.RIVAL_FIGURES) == set(RIVAL_NAMES)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    base = tmp_path_factory.mktemp("figures")
    out = base / "figures"
    out.mkdir()
    (out / "fig_stale.png").write_bytes(b"old")  # a previous run's file: removed (fresh=True)
    (out / "notes.txt").write_text("mine")  # not ours: left alone
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSAM_LAB_RUNS", str(base / "runs"))
        mp.setenv("MSAM_LAB_QUICK", "1")
        mp.setenv("MPLBACKEND", "agg")
        written = figures.make_figures(out, quick=True, verbose=False)
    return out, written


def test_make_figures_quick_writes_every_figure(made):
    out, written = made
    names = {p.name for p in out.iterdir()}
    assert {p.name for p in written if p.parent == out} <= names
    for name in ("training_curves", "landscape_1d", "sharpness", "method_comparison", *RIVAL_NAMES):
        assert {f"fig_{name}.pdf", f"fig_{name}.png"} <= names, f"fig_{name} not written"
    for table in ("table_comparison", "table_rivals", "table_rho_sweep", "table_fixed_dominant"):
        assert {f"{table}.csv", f"{table}.md"} <= names
    assert "table_sharpness_timeline.csv" in names
    assert "fig_stale.png" not in names and (out / "notes.txt").read_text() == "mine"
    html = (out / "interactive.html").read_text(encoding="utf-8")
    for name in RIVAL_NAMES:
        assert f"<h2>{name.replace('_', ' ')}</h2>" in html
    for p in written:
        if p.suffix in (".pdf", ".png"):
            assert p.stat().st_size > 1000, f"{p.name} is (nearly) empty"
