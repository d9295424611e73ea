"""Every plotly figure the notebooks and widgets draw, rendered by Chromium at the sizes they are shown at,
has no two text elements (titles, axis titles, tick labels, colour-bar titles, annotations, legend
entries) overlapping: bounding boxes of the SVG ``<text>`` elements in the page.

The runs are quick-mode ones (synthetic data, 3 epochs; a temporary runs folder). Screenshots of the
failing figures go to test-artifacts/overlaps/. Skipped when /usr/bin/chromium or playwright is missing.
WebGL text (3-D scenes' tick labels) is not SVG and is not checked here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains quick runs, computes landscapes, drives Chromium

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "overlaps"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

# JupyterLab's output area at a 1400-px window, and a narrower one (a laptop with the file browser open)
WIDTHS = (1000, 760)
MIN_OVERLAP_PX = 2.0  # both ways: anti-aliasing and glyph side-bearings are not overlaps

# Boxes of every visible SVG text of the plot, in page pixels (three times: plotly lays out async).
TEXT_BOXES_JS = """gd => Array.from(gd.querySelectorAll('svg text')).map(t => {
  const r = t.getBoundingClientRect(), s = getComputedStyle(t);
  let hidden = s.display === 'none' || s.visibility === 'hidden' || Number(s.opacity) === 0;
  for (let p = t.parentElement; p && p !== gd && !hidden; p = p.parentElement) {
    const ps = getComputedStyle(p);
    hidden = ps.display === 'none' || Number(ps.opacity) === 0;
  }
  return {text: t.textContent.trim(), cls: (t.getAttribute('class') || '') + ' < ' +
          (t.parentElement.getAttribute('class') || ''), x0: r.left, y0: r.top, x1: r.right, y1: r.bottom,
          hidden};
}).filter(b => b.text && !b.hidden && b.x1 > b.x0 && b.y1 > b.y0)"""


# The plot areas of the 2-D subplots (plotly's drag rectangles) and of the 3-D scenes (their domains),
# same format.
PLOT_AREAS_JS = """gd => {
  const areas = Array.from(gd.querySelectorAll('rect.nsewdrag')).map((t, i) => {
    const r = t.getBoundingClientRect();
    return {text: 'plot area ' + i, cls: 'area', x0: r.left, y0: r.top, x1: r.right, y1: r.bottom};
  });
  const L = gd._fullLayout, box = gd.getBoundingClientRect(), sz = L._size;
  for (const k of Object.keys(L).filter(k => /^scene\\d*$/.test(k))) {
    const d = L[k].domain;
    areas.push({text: '3-D ' + k, cls: 'area', x0: box.left + sz.l + d.x[0] * sz.w,
                x1: box.left + sz.l + d.x[1] * sz.w, y0: box.top + sz.t + (1 - d.y[1]) * sz.h,
                y1: box.top + sz.t + (1 - d.y[0]) * sz.h});
  }
  return areas;
}"""
# Titles that must sit outside every plot area (an axis title over the neighbouring panel, ...).
TITLE_CLASS = re.compile(r"[xy]\d*title|cbtitle|gtitle")


def _cross(a: dict, b: dict, tol: float) -> bool:
    w = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
    h = min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])
    return w > tol and h > tol


def overlaps(boxes: list[dict], areas=(), tol: float = MIN_OVERLAP_PX) -> list[tuple[str, str]]:
    """Pairs of text boxes whose intersection is wider and taller than ``tol`` pixels, and titles
    (axis, colour-bar and figure titles) that reach into a plot area."""
    found = [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if _cross(a, b, tol)]
    titles = [b for b in boxes if any(TITLE_CLASS.fullmatch(c) for c in b.get("cls", "").replace("<", " ").split())]
    found += [(t["text"], area["text"]) for t in titles for area in areas if _cross(t, area, tol)]
    return found


def test_overlaps_finds_crossing_boxes_only():
    box = lambda t, x0, y0, x1, y1: {"text": t, "x0": x0, "y0": y0, "x1": x1, "y1": y1}  # noqa: E731
    assert overlaps([box("a", 0, 0, 10, 10), box("b", 5, 5, 15, 15)]) == [("a", "b")]
    assert overlaps([box("a", 0, 0, 10, 10), box("b", 9, 0, 20, 10)]) == []  # 1 px: within tolerance
    assert overlaps([box("a", 0, 0, 10, 10), box("b", 0, 20, 10, 30)]) == []
    title = {**box("y title", 0, 0, 10, 50), "cls": "ytitle < g-ytitle"}
    assert overlaps([title], [box("plot area", 5, 0, 100, 100)]) == [("y title", "plot area")]
    assert overlaps([title], [box("plot area", 20, 0, 100, 100)]) == []
    assert overlaps([box("tick", 0, 0, 10, 50)], [box("plot area", 5, 0, 100, 100)]) == []  # not a title


def render_boxes(page, fig, width: int) -> tuple[list[dict], list[dict]]:
    """Draw ``fig`` with plotly.js in a ``width``-px container (its own height); its text boxes and plot areas."""
    spec = fig.to_plotly_json()
    page.evaluate(
        """([spec, width]) => {
          document.body.innerHTML = '';
          const div = document.createElement('div');
          div.style.width = width + 'px';
          document.body.appendChild(div);
          window.gd = div;
          return Plotly.newPlot(div, spec.data, spec.layout, {responsive: false});
        }""",
        [json.loads(json.dumps(spec, default=_jsonable)), width],
    )
    page.wait_for_function("() => window.gd && window.gd._fullLayout && !window.gd._transitioning")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return page.evaluate(f"() => ({TEXT_BOXES_JS})(window.gd)"), page.evaluate(f"() => ({PLOT_AREAS_JS})(window.gd)")


def _jsonable(value):
    import numpy as np  # noqa: PLC0415 - only for odd values in a figure's JSON

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value)}")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """{name: plotly figure} for what notebooks 01-08 and the widgets draw, from quick-mode runs."""
    import os  # noqa: PLC0415 - the environment is set before msam_lab reads it

    base = tmp_path_factory.mktemp("overlaps")
    old = {k: os.environ.get(k) for k in ("MSAM_LAB_QUICK", "MSAM_LAB_RUNS", "MSAM_LAB_FIGURES")}
    os.environ.update(MSAM_LAB_QUICK="1", MSAM_LAB_RUNS=str(base / "runs"), MSAM_LAB_FIGURES=str(base / "fig"))
    try:
        yield build_figures()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_figures() -> dict:
    from msam_lab import notebook_utils as nb  # noqa: PLC0415 - after the quick-mode environment is set
    from msam_lab import viz  # noqa: PLC0415 - plotly loads with it
    from msam_lab.widgets import LandscapeExplorer, TeachingLab, synthetic_knobs  # noqa: PLC0415 - ipywidgets

    runs = nb.method_runs(["joint", "msam"], epochs=3, seed=0)
    one = next(iter(runs.values()))
    land1 = {k: nb.ensure_landscape(r, dim=1, grid=7, n_samples=48) for k, r in runs.items()}
    land2 = {k: nb.ensure_landscape(r, dim=2, directions="pca", grid=5, n_samples=48) for k, r in runs.items()}
    sharp = {k: nb.ensure_sharpness(r, n_samples=48, probes=2) for k, r in runs.items()}
    z = viz.shared_z(land2.values(), "loss", log=True)
    figs = {
        "01 shares_over_steps": viz.shares_over_steps(one, smooth=5, accuracy=True),
        "01 epoch_shares": viz.epoch_shares(runs),
        "02 curves_1d": viz.curves_1d(land1),
        "02 curves_1d acc": viz.curves_1d(land1, what="acc"),
        "02 sharpness lambda_1": viz.sharpness_figure(sharp, "lambda_1"),
        "02 sharpness eps": viz.sharpness_figure(sharp, "eps_sharpness"),
        "03 surface_figure": viz.surface_figure(next(iter(land2.values())), "loss", zmin=z[0], zmax=z[1], log=True),
        "03 contour_grid": viz.contour_grid(land2, "loss", log=True),
        "04 train_test acc": viz.train_test_curves(runs, "acc"),
        "04 tau": viz.tau_curves(runs, form="acc"),
        "04 accuracy_curves": viz.accuracy_curves(runs, split="train"),
        "05 training_curves": viz.training_curves(runs),
    }
    mods = list(one.modalities)
    figs["03 contour_grid one modality"] = viz.contour_grid(land2, viz.metric_key(mods[-1]), log=True)
    figs["08 rho_curve"] = viz.rho_curve(_rho_summary(mods))
    from tests.viz.test_lab_story import timeline_table  # noqa: PLC0415 - a table with a negative trace

    negative = timeline_table(lambda m, e: -0.5 if (m, e) == ("msam", 1) else 1.0)
    figs["08 sharpness_timeline, a trace below 0"] = viz.sharpness_timeline_figure(negative, metric="trace")
    explorer = LandscapeExplorer(runs, grid=5, grid_1d=7, n_samples=48)
    explorer.controls["run"].value = "all runs (side by side)"
    figs["03 explorer side by side"] = explorer.build_figure()
    explorer.controls["run"].value = next(iter(runs))
    figs["03 explorer one run"] = explorer.build_figure()
    explorer.controls["modality"].value = mods[-1]
    figs["03 explorer one run, one modality"] = explorer.build_figure()
    lab = TeachingLab(nb.QUICK_DATA, knobs=synthetic_knobs(), epochs=2)
    lab.retrain()
    figs["06 lab accuracy"] = _plain(lab.accuracy_figure)
    figs["06 lab dominance"] = _plain(lab.dominance_figure)
    return figs


def _rho_summary(mods):
    """A ρ-sweep summary as ``rivals.rho_table`` gives it (SAM and M-SAM at three ρ, 2 seeds)."""
    import pandas as pd  # noqa: PLC0415 - only for this table

    keys = ["acc", *(f"acc_{m}" for m in mods), "tau"]
    return pd.DataFrame(
        [
            {
                "method": m,
                "rho": r,
                "n_seeds": 2,
                **{f"{k}_last_mean": 0.5 + r for k in keys},
                **{f"{k}_last_std": 0.02 for k in keys},
            }
            for m in ("sam", "msam")
            for r in (0.01, 0.05, 0.2)
        ]
    )


def _plain(widget):
    import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn

    return go.Figure(widget)


def test_no_two_texts_of_a_figure_overlap_in_chromium(figures, tmp_path):
    from plotly.offline import get_plotlyjs  # noqa: PLC0415 - plotly loads only when a figure is drawn

    found = {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--headless"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(60_000)
            page.set_content("<html><head><meta charset='utf-8'></head><body style='margin:0'></body></html>")
            page.add_script_tag(content=get_plotlyjs())
            page.wait_for_function("() => typeof Plotly !== 'undefined'")
            for name, fig in figures.items():
                for width in WIDTHS:
                    pairs = overlaps(*render_boxes(page, fig, width))
                    if pairs:
                        found[f"{name} @ {width}px"] = pairs
                        slug = "".join(c if c.isalnum() else "_" for c in name)
                        page.screenshot(path=str(ARTIFACTS / f"{slug}_{width}.png"), full_page=True)
        finally:
            browser.close()
    report = "\n".join(
        f"  {name}: " + "; ".join(f"{a[:40]!r} × {b[:40]!r}" for a, b in pairs[:6]) for name, pairs in found.items()
    )
    assert not found, f"text elements overlap in {len(found)} figure renderings:\n{report}"
