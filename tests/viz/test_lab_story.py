"""Issue 20's figure fixes: switches that can be read (per-epoch timing, a density strip, a log step
axis), ``refresh`` clearing what the new figure lacks, panels whose titles fit, the teaching lab's
presets and background training."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from msam_lab import viz
from msam_lab.viz.dominance import switch_clusters, switches_per_epoch
from tests.viz.test_viz import DOMINANT, fake_run, fake_surface


def brute_switches(dominant):
    return [i for i in range(1, len(dominant)) if dominant[i] != dominant[i - 1]]


def test_switches_per_epoch_matches_brute_force():
    run = fake_run(steps_per_epoch=4)
    table = switches_per_epoch(run.steps)
    sw = brute_switches(DOMINANT)
    epoch_of = dict(zip(run.steps["step"], run.steps["epoch"]))
    for row in table.itertuples():
        here = [s for s in sw if epoch_of[s] == row.epoch]
        assert row.switches == len(here)
        assert (np.isnan(row.first) and not here) or (row.first, row.last) == (min(here), max(here))
    assert table["switches"].sum() == len(sw)
    summary = viz.dominance_summary({"m": run}).iloc[0]
    assert (summary["first switch (step)"], summary["last switch (step)"]) == (min(sw), max(sw))
    assert summary["switches per epoch"].count("e") == run.steps["epoch"].nunique()


def test_clustered_switches_get_a_density_strip_that_counts_them():
    dominant = ["image", "audio"] * 4 + ["image"] * 292  # 7 switches in the first 8 of 300 steps
    run = fake_run(dominant=dominant, steps_per_epoch=100)
    assert switch_clusters(viz.switch_points(run.steps)["step"], 0, 299)
    fig = viz.shares_over_steps(run, accuracy=True)
    strip = [d for d in fig.data if (d.meta or {}).get("kind") == "switch_density"]
    assert len(strip) == 1 and int(np.sum(strip[0].y)) == len(brute_switches(dominant))
    assert "step" in fig.layout.xaxis3.title.text  # the step axis title sits under the strip
    spread = fake_run()  # switches at 2, 5, 6, 7, 10 of 12 steps: one marker each
    assert not switch_clusters(viz.switch_points(spread.steps)["step"], 0, 11)
    assert not [d for d in viz.shares_over_steps(spread).data if (d.meta or {}).get("kind") == "switch_density"]


def test_log_step_axis_moves_every_x_one_step_right():
    run = fake_run()
    lin, log = viz.shares_over_steps(run, density=False), viz.shares_over_steps(run, log_steps=True, density=False)
    assert log.layout.xaxis.type == "log" and "log" in log.layout.xaxis.title.text
    for a, b in zip(lin.data, log.data):
        if a.x is not None and len(a.x) and a.x[0] is not None:
            np.testing.assert_allclose(np.asarray(b.x, float), np.asarray(a.x, float) + 1)
    mfig = viz.shares_over_steps(run, log_steps=True, backend="matplotlib")
    assert mfig.axes[0].get_xscale() == "log"


def test_refresh_deletes_in_the_browser_what_the_new_figure_lacks():
    w = go.FigureWidget()
    sent = []
    send = w._send_relayout_msg
    w._send_relayout_msg = lambda data, source_view_id=None: (sent.append(dict(data)), send(data, source_view_id))
    waiting = go.Figure()
    waiting.add_annotation(text="waiting for the first rows", x=0.5, y=0.5, xref="paper", yref="paper")
    viz.refresh(w, waiting)
    sent.clear()
    viz.refresh(w, go.Figure(go.Scatter(y=[1, 2]), layout=dict(title="done")))
    assert {"annotations": None} in sent  # a relayout merges: without it the text stays drawn
    assert not w.layout.annotations


def test_side_by_side_contours_keep_titles_short_beside_the_first_panel():
    fig = viz.contour_grid({"a": fake_surface(), "b": fake_surface(offset=1.0, method="joint")}, "loss_only_audio")
    assert "<br>" in fig.layout.yaxis.title.text and "<br>" not in fig.layout.yaxis2.title.text
    assert all(len(line) <= 24 for line in fig.layout.coloraxis.colorbar.title.text.split("<br>"))


@pytest.mark.slow  # trains a run
def test_teaching_lab_presets_and_background_training(tmp_path):
    from msam_lab.widgets import AV_DIGITS_PRESETS, TeachingLab, synthetic_knobs

    lab = TeachingLab({"dataset": "av-digits"}, presets=AV_DIGITS_PRESETS)
    lab.controls["preset"].value = "takeover (audio takes over)"
    assert lab.config()["data"]["scenario"] == "takeover"
    lab.controls["preset"].value = "imbalanced (audio starved)"
    assert "scenario" not in lab.config().get("data", {})
    data = {"dataset": "synthetic", "data": {"n_modalities": 2, "n_samples": 120}, "batch_size": 32}
    lab = TeachingLab(data, knobs=synthetic_knobs(), epochs=1, root=tmp_path)
    assert lab.accuracy_figure.layout.annotations  # a placeholder is drawn before anything trains
    thread = lab.retrain(background=True)
    assert thread is not None and lab.retrain(background=True) in (None, thread)  # one run at a time
    run = lab.wait(timeout=120)
    assert run.finished and "done in" in lab.status.value and not lab.training
    texts = [a.text for f in (lab.accuracy_figure, lab.dominance_figure) for a in f.layout.annotations]
    assert not [t for t in texts if "press Train" in t or "waiting" in t], texts
    assert "ρ" in lab.accuracy_figure.layout.title.subtitle.text  # the settings, out of the title line


@pytest.mark.slow  # a thread that fails in the trainer
def test_teaching_lab_background_error_is_shown_and_reraised(tmp_path):
    from msam_lab.widgets import TeachingLab, synthetic_knobs

    lab = TeachingLab({"dataset": "no-such-dataset"}, knobs=synthetic_knobs(), epochs=1, root=tmp_path)
    lab.retrain(background=True)
    with pytest.raises(Exception, match="no-such-dataset"):
        lab.wait(timeout=60)
    assert "training failed" in lab.status.value


def timeline_table(trace_of):
    import pandas as pd  # noqa: PLC0415 - only here

    return pd.DataFrame(
        [
            dict(method=m, scope=sc, block="encoder", epoch=e, seed=0, lambda_1=1.0, trace=trace_of(m, e))
            | dict(trace_se=0.3, probes=2, n_samples=16)
            for m in ("joint", "msam")
            for e in (0, 1)
            for sc in ("m0", "m1")
        ]
    )


def test_negative_hessian_traces_are_explained_in_the_figure():
    negative = timeline_table(lambda m, e: -0.5 if (m, e) == ("msam", 1) else 1.0)
    for backend in ("plotly", "matplotlib"):
        fig = viz.sharpness_timeline_figure(negative, metric="trace", backend=backend)
        text = fig.layout.title.subtitle.text if backend == "plotly" else fig._suptitle.get_text()
        assert "below 0" in text and "probes" in text
    positive = viz.sharpness_timeline_figure(timeline_table(lambda m, e: 1.0), metric="trace")
    assert "below 0" not in positive.layout.title.subtitle.text
