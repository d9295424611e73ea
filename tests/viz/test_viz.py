"""The plotting functions (msam_lab.viz), the dashboards (msam_lab.widgets) and the notebook helpers.

Most tests use hand-made runs and surfaces with known content, so each assertion checks a figure
against numbers it must show; a few train one tiny synthetic run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly")
import plotly.graph_objects as go  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from msam_lab import notebook_utils as nbu  # noqa: E402
from msam_lab import viz  # noqa: E402
from msam_lab.config import Config  # noqa: E402
from msam_lab.landscape import Surface  # noqa: E402
from msam_lab.runs.reader import Run  # noqa: E402

MODS = ("image", "audio")
DOMINANT = ["image", "image", "audio", "audio", "audio", "image", "audio", "image", "image", "image", "audio", "audio"]


def fake_run(method="msam", dominant=DOMINANT, steps_per_epoch=4, seed=0, name=None) -> Run:
    rng = np.random.default_rng(seed)
    n = len(dominant)
    share_image = np.where(np.array(dominant) == "image", 0.6 + 0.4 * rng.random(n), 0.4 * rng.random(n))
    steps = pd.DataFrame(
        {
            "step": np.arange(n),
            "epoch": np.arange(n) // steps_per_epoch + 1,
            "loss": np.linspace(2.3, 0.5, n),
            "dominant": dominant,
            "shapley_image": share_image * 0.8,
            "share_image": share_image,
            "shapley_audio": (1 - share_image) * 0.8,
            "share_audio": 1 - share_image,
        }
    )
    n_ep = steps["epoch"].max()
    ep = np.arange(n_ep + 1)
    epochs = pd.DataFrame({"epoch": ep})
    for split, off in (("train", 0.05), ("test", 0.0)):
        acc = np.clip(0.1 + 0.25 * ep + off, 0, 1)
        epochs[f"{split}_loss"] = 2.3 - 0.5 * ep - off
        epochs[f"{split}_acc"] = acc
        epochs[f"{split}_acc_image"] = acc * 0.9
        epochs[f"{split}_acc_audio"] = acc * 0.2
        epochs[f"{split}_acc_only_image"] = acc * 0.95
        epochs[f"{split}_acc_only_audio"] = acc * 0.3
        epochs[f"{split}_share_image"] = 0.8
        epochs[f"{split}_share_audio"] = 0.2
    epochs["tau"] = (epochs["train_acc"] - epochs["test_acc"]) / epochs["train_acc"]
    epochs["tau_loss"] = (epochs["test_loss"] - epochs["train_loss"]) / epochs["train_loss"]
    return Run(
        path=Path(name or f"fake-{method}-{seed}"),
        config=Config(method=method),
        steps=steps,
        epochs=epochs,
        summary={"dominance_switches": 0},
        model_spec={"input_shapes": {"image": [64], "audio": [64]}},
    )


def fake_surface(dim=2, offset=0.0, scale=1.0, n=5, method="msam", pca=True) -> Surface:
    coords = [np.linspace(-1, 1, n) for _ in range(dim)]
    mesh = np.meshgrid(*coords, indexing="ij")
    base = offset + scale * sum(m**2 for m in mesh)
    values = {"loss": base, "acc": 1 - base / (base.max() + 1)}
    for i, m in enumerate(MODS):
        values[f"loss_only_{m}"] = base + 0.5 * (i + 1)
        values[f"acc_only_{m}"] = values["acc"] * 0.5
    meta = {"modalities": list(MODS), "method": method, "epoch": 3, "directions": "pca" if pca else "random"}
    if pca and dim == 2:
        meta.update(
            explained_variance_ratio=[0.9, 0.05],
            trajectory_epochs=[0, 1, 2, 3],
            trajectory=[[-0.9, 0.4], [-0.5, 0.3], [-0.2, 0.1], [0.0, 0.0]],
        )
    return Surface(coords, values, np.ones(base.shape, bool), [{}] * dim, meta)


def titles(fig) -> list[str]:
    lay = fig.layout
    return [getattr(lay, k).title.text or "" for k in lay if k.startswith(("xaxis", "yaxis"))]


# ---------------------------------------------------------------- style / helpers


def test_shared_range_spans_every_array():
    assert viz.shared_range([np.array([1.0, 5.0]), np.array([[0.5, np.nan], [2.0, 3.0]])]) == (0.5, 5.0)
    with pytest.raises(ValueError):
        viz.shared_range([np.array([np.nan])])


def test_modality_colours_are_fixed_and_distinct():
    assert viz.modality_color("image") != viz.modality_color("audio")
    assert viz.modality_color("audio", ("x", "audio")) == viz.modality_color("audio")


# ---------------------------------------------------------------- curves


def test_training_curves_axes_and_traces():
    runs = {"A": fake_run("joint"), "B": fake_run("msam", seed=1)}
    fig = viz.training_curves(runs, smooth=3)
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 8  # per run: raw, smoothed, train, test
    t = titles(fig)
    assert "training step (mini-batch)" in t and any("epoch" in x for x in t)
    assert all("(nats)" in x for x in t if "loss" in x)
    smoothed = [d for d in fig.data if d.name == "A"][0]
    np.testing.assert_allclose(smoothed.y, runs["A"].steps["loss"].rolling(3, min_periods=1, center=True).mean())
    mfig = viz.training_curves(runs, backend="matplotlib")
    assert isinstance(mfig, Figure)
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in mfig.axes)


@pytest.mark.parametrize("per_modality,column", [("decomposed", "test_acc_audio"), ("only", "test_acc_only_audio")])
def test_accuracy_curves_per_modality_definition(per_modality, column):
    run = fake_run()
    fig = viz.accuracy_curves(run, per_modality=per_modality)
    audio = [d for d in fig.data if d.name.startswith("audio")]
    assert len(audio) == 1
    np.testing.assert_allclose(audio[0].y, 100 * run.epochs[column])  # shown in percent
    assert audio[0].line.color == viz.modality_color("audio")
    assert list(fig.layout.yaxis.range) == [0, 101]
    assert fig.layout.yaxis.title.text == "test accuracy (%)"


def test_accuracy_panels_share_the_y_axis():
    fig = viz.accuracy_curves([fake_run("joint"), fake_run("msam")], backend="matplotlib")
    a, b = fig.axes[:2]
    assert a.get_ylim() == b.get_ylim() == (0, 101)


@pytest.mark.parametrize("form,column,needle", [("acc", "tau", "Acc_train"), ("loss", "tau_loss", "L_train")])
def test_tau_axis_says_which_form(form, column, needle):
    run = fake_run()
    fig = viz.tau_curves(run, form=form)
    assert needle in fig.layout.yaxis.title.text
    np.testing.assert_allclose(fig.data[0].y, run.epochs[column][run.epochs["epoch"] > 0])
    with pytest.raises(ValueError):
        viz.tau_curves(run, form="other")


def test_modality_gap_table_is_train_minus_test():
    table = viz.modality_gap_table(fake_run())
    row = table[table["part"] == "image"].iloc[0]
    assert row["gap_pp"] == pytest.approx(row["train_acc_%"] - row["test_acc_%"])


# ---------------------------------------------------------------- dominance


def band_at(trace, step) -> float:
    """Value of a step-shaped (hv) band trace at ``step``."""
    xs, ys = np.asarray(trace.x, float), np.asarray(trace.y, float)
    return ys[np.flatnonzero(xs <= step)[-1]]


def test_segments_and_switches_follow_the_dominant_column():
    run = fake_run()
    seg = viz.dominance_segments(run.steps)
    rebuilt = [d for s, e, d in zip(seg["start"], seg["end"], seg["dominant"]) for _ in range(s, e + 1)]
    assert rebuilt == DOMINANT
    sw = viz.switch_points(run.steps)
    assert list(sw["step"]) == [2, 5, 6, 7, 10]
    assert list(sw["to"]) == ["audio", "image", "audio", "image", "audio"]


def test_dominance_bands_match_the_dominant_column():
    run = fake_run()
    fig = viz.shares_over_steps(run, smooth=1)
    bands = {d.meta["modality"]: d for d in fig.data if (d.meta or {}).get("kind") == "band"}
    assert set(bands) == set(MODS)
    for step, dom in enumerate(DOMINANT):
        for m, trace in bands.items():
            assert band_at(trace, step) == (1.0 if m == dom else 0.0), (step, m)
    switch = [d for d in fig.data if (d.meta or {}).get("kind") == "switch"][0]
    assert list(switch.x) == [2, 5, 6, 7, 10]
    assert list(switch.marker.color) == [viz.modality_color(t) for t in ["audio", "image", "audio", "image", "audio"]]
    assert "share" in fig.layout.yaxis.title.text.lower() and "step" in fig.layout.xaxis.title.text


def test_smoothing_step_range_and_modality_toggle():
    run = fake_run()
    fig = viz.shares_over_steps(run, smooth=4, step_range=(3, 9), modalities=["audio"])
    shares = [d for d in fig.data if (d.meta or {}).get("kind") == "share"]
    assert [d.meta["modality"] for d in shares] == ["audio"]
    expected = run.steps["share_audio"].rolling(4, min_periods=1, center=True).mean()[3:10]
    np.testing.assert_allclose(shares[0].y, expected)  # smoothed on the full series, then cut
    assert list(shares[0].x) == list(range(3, 10))
    assert not [d for d in fig.data if (d.meta or {}).get("modality") == "image"]
    assert list(fig.layout.xaxis.range) == [2.5, 9.5]


def test_smoothed_bands_are_argmax_of_smoothed_shares():
    run = fake_run()
    fig = viz.shares_over_steps(run, smooth=5, bands="smoothed")
    dom = viz.smoothed_dominant(run.steps, MODS, 5)
    band = [d for d in fig.data if (d.meta or {}).get("kind") == "band" and d.meta["modality"] == "audio"][0]
    for step in range(len(DOMINANT)):
        assert band_at(band, step) == float(dom[step] == "audio")
    assert not [d for d in viz.shares_over_steps(run, bands=None).data if (d.meta or {}).get("kind") == "band"]


def test_linked_accuracy_sits_on_epoch_boundaries():
    run = fake_run(steps_per_epoch=4)
    fig = viz.shares_over_steps(run, accuracy=True)
    acc = [d for d in fig.data if (d.meta or {}).get("kind") == "accuracy"]
    assert len(acc) == 3  # fused + 2 modalities
    assert list(acc[0].x) == [-0.5, 3.5, 7.5, 11.5]  # epochs 0..3 end after 0, 4, 8, 12 steps
    np.testing.assert_allclose(acc[0].y, 100 * run.epochs["test_acc"])
    assert acc[0].xaxis == "x2"
    assert "x2" in (fig.layout.xaxis.matches, fig.layout.xaxis2.matches) or "x" in (
        fig.layout.xaxis.matches,
        fig.layout.xaxis2.matches,
    )  # the panels share the step axis
    mfig = viz.shares_over_steps(run, accuracy=True, backend="matplotlib")
    assert len(mfig.axes) == 2 and mfig.axes[0].get_shared_x_axes().joined(mfig.axes[0], mfig.axes[1])


def test_matplotlib_bands_one_span_per_segment():
    run = fake_run()
    fig = viz.shares_over_steps(run, backend="matplotlib")
    ax = fig.axes[0]
    spans = [p for p in ax.patches]
    assert len(spans) == len(viz.dominance_segments(run.steps))


# ---------------------------------------------------------------- landscapes


def test_curves_1d_share_one_y_range():
    a, b = fake_surface(1, offset=0.0), fake_surface(1, offset=2.0, scale=3.0)
    fig = viz.curves_1d({"A": a, "B": b})
    lo, hi = fig.layout.yaxis.range
    assert lo <= 0.0 and hi >= 2.0 + 3.0 + 1.0  # covers both panels and per-modality lines
    assert fig.layout.yaxis2.matches == "y" or list(fig.layout.yaxis2.range) == [lo, hi]
    metrics = {d.meta["metric"] for d in fig.data}
    assert metrics == {"loss", "loss_only_image", "loss_only_audio"}
    assert "filter-normalised" in fig.layout.xaxis.title.text or "PC1" in fig.layout.xaxis.title.text


def test_surface_figure_uses_given_colour_range_and_draws_trajectory():
    s = fake_surface()
    fig = viz.surface_figure(s, "loss", zmin=0.2, zmax=1.5)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.2, 1.5)
    surf = [d for d in fig.data if d.type == "surface"][0]
    assert np.nanmax(surf.z) <= 1.5 and np.nanmin(surf.z) >= 0.2  # clipped to the shared range
    contour = [d for d in fig.data if d.type == "contour"][0]
    assert (contour.contours.start, contour.contours.end) == (0.2, 1.5)
    np.testing.assert_allclose(np.asarray(contour.z), s["loss"].T)  # rows of z are the 2nd direction
    traj = [d for d in fig.data if (d.meta or {}).get("kind") == "trajectory" and d.type == "scatter"][0]
    np.testing.assert_allclose(traj.x, [-0.9, -0.5, -0.2, 0.0])
    assert (
        "cross-entropy" in fig.layout.coloraxis.colorbar.title.text
        and "nats" in fig.layout.coloraxis.colorbar.title.text
    )


def test_contour_grid_shares_one_colour_scale():
    a, b = fake_surface(offset=0.0), fake_surface(offset=5.0, method="joint")
    fig = viz.contour_grid({"A": a, "B": b}, "loss")
    contours = [d for d in fig.data if d.type == "contour"]
    assert len(contours) == 2
    assert all(c.coloraxis == "coloraxis" for c in contours)
    assert fig.layout.coloraxis.cmin == pytest.approx(0.0) and fig.layout.coloraxis.cmax == pytest.approx(7.0)
    assert len({(c.contours.start, c.contours.end, c.contours.size) for c in contours}) == 1
    zmin, zmax = viz.shared_z([a, b], "loss")
    assert (zmin, zmax) == (pytest.approx(0.0), pytest.approx(7.0))
    mfig = viz.contour_grid({"A": a, "B": b}, "loss", backend="matplotlib")
    sets = [c for ax in mfig.axes for c in ax.collections if hasattr(c, "levels") and c.filled]
    assert len(sets) == 2
    assert all(np.array_equal(sets[0].levels, s.levels) for s in sets)
    for s in sets:  # one norm: the same colour for the same value
        assert (s.norm.vmin, s.norm.vmax) == (pytest.approx(0.0), pytest.approx(7.0))


def test_surface_metric_names_and_errors():
    assert viz.metric_key("audio") == "loss_only_audio" and viz.metric_key(None, "acc") == "acc"
    assert "audio alone" in viz.metric_title("loss_only_audio")
    with pytest.raises(ValueError):
        viz.surface_figure(fake_surface(1))
    assert viz.trajectory(fake_surface(pca=False)) is None


def test_sharpness_bars_and_lines():
    rows = [
        {
            "epoch": e,
            "scope": s,
            "lambda_1": 1.0 + e + i,
            "trace": 10.0 + i,
            "trace_se": 0.5,
            "eps_sharpness": 0.01,
            "rho": 0.05,
            "split": "test",
            "n_samples": 64,
        }
        for e in (1, 2)
        for i, s in enumerate(["model", "image", "audio"])
    ]
    table = pd.DataFrame(rows)
    last = table[table["epoch"] == 2]
    fig = viz.sharpness_figure({"Joint": last, "M-SAM": last.assign(lambda_1=last["lambda_1"] / 2)})
    assert [d.type for d in fig.data] == ["bar", "bar"]
    assert list(fig.data[1].y) == list(last["lambda_1"] / 2)
    assert list(fig.data[0].x) == ["whole model", "image encoder", "audio encoder"]
    fig = viz.sharpness_figure({"Joint": last}, "trace")
    assert list(fig.data[0].error_y.array) == [0.5, 0.5, 0.5]
    fig = viz.sharpness_figure({"Joint": table})  # several epochs: one panel per scope
    assert len(fig.data) == 3 and all(d.type == "scatter" for d in fig.data)
    assert "ρ = 0.05" in viz.sharpness_figure({"J": last}, "eps_sharpness").layout.yaxis.title.text


# ---------------------------------------------------------------- comparison


def sweep_runs() -> pd.DataFrame:
    rows = []
    for method, accs in (("joint", [0.90, 0.92, 0.94]), ("msam", [0.93, 0.95, 0.97])):
        for seed, a in enumerate(accs):
            rows.append(
                {
                    "method": method,
                    "rho": np.nan if method == "joint" else 0.05,
                    "seed": seed,
                    "acc": a,
                    "acc_image": a - 0.1,
                    "acc_audio": 0.2 + 0.01 * seed,
                    "acc_only_image": a,
                    "acc_only_audio": 0.3,
                    "tau": 0.01 * (seed + 1),
                }
            )
    return pd.DataFrame(rows)


def test_comparison_bars_error_bars_are_std_over_seeds():
    runs = sweep_runs()
    fig = viz.comparison_bars(runs)  # per-run table is summarised here
    fused = [d for d in fig.data if (d.meta or {}).get("part") == "fused"][0]
    np.testing.assert_allclose(fused.y, [92.0, 95.0])
    np.testing.assert_allclose(fused.error_y.array, [2.0, 2.0])  # sample std (ddof=1) of 90, 92, 94
    assert list(fused.x) == ["Joint", "M-SAM"]
    assert "3 seeds" in fig.layout.title.text
    assert {d.meta["part"] for d in fig.data} == {"fused", "image", "audio", "tau"}
    table = viz.comparison_table(runs)
    assert table.loc[0, "fused acc (%, last)"] == "92.0 ± 2.0"  # an old per-run table: last-epoch numbers
    assert table.loc[0, "fused acc (%, best val)"] == ""  # no validation: blank, not an error
    assert isinstance(viz.comparison_bars(runs, backend="matplotlib"), Figure)


# ---------------------------------------------------------------- saving


def test_save_mpl_writes_pdf_and_png(tmp_path):
    paths = viz.save_mpl(viz.tau_curves(fake_run(), backend="matplotlib"), tmp_path / "fig_tau")
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_write_html_is_self_contained(tmp_path):
    path = viz.write_html({"one": viz.tau_curves(fake_run()), "two": viz.tau_curves(fake_run())}, tmp_path / "x.html")
    text = path.read_text()
    assert text.count("<h2>") == 2
    assert text.count("* plotly.js v") == 1 and len(text) > 1_000_000  # plotly.js embedded, once
    assert 'src="https://cdn' not in text  # nothing fetched from a CDN
    assert text.count("Plotly.newPlot") == 2


def test_plotly_png_is_skipped_without_chromium(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(viz.style, "find_chromium", lambda: None)
    assert viz.write_plotly_png({"tau": viz.tau_curves(fake_run())}, tmp_path) == []
    assert "no Chromium" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- refresh and widgets


def test_refresh_updates_a_figure_widget_in_place():
    w = go.FigureWidget(viz.shares_over_steps(fake_run(), smooth=1))
    n = len(w.data)
    viz.refresh(w, viz.shares_over_steps(fake_run(), smooth=5))
    assert len(w.data) == n
    share = [d for d in w.data if (d.meta or {}).get("kind") == "share"][0]
    expected = fake_run().steps["share_image"].rolling(5, min_periods=1, center=True).mean()
    np.testing.assert_allclose(share.y, expected)
    viz.refresh(w, viz.tau_curves(fake_run()))  # different traces: replaced
    assert len(w.data) == 1 and w.layout.yaxis.title.text.startswith("τ")


def test_dominance_explorer_slider_changes_the_figure():
    from msam_lab.widgets import DominanceExplorer

    ex = DominanceExplorer({"Joint": fake_run("joint"), "M-SAM": fake_run("msam", seed=3)})
    share = lambda: [d for d in ex.figure.data if (d.meta or {}).get("kind") == "share"][0]  # noqa: E731
    before = np.array(share().y)
    ex.controls["smooth"].value = 4
    assert not np.allclose(before, share().y)
    ex.controls["steps"].value = (2, 6)
    assert list(share().x) == [2, 3, 4, 5, 6]
    ex.controls["modalities"]["audio"].value = False
    assert {(d.meta or {}).get("modality") for d in ex.figure.data} <= {"image", None}
    ex.controls["run"].value = "M-SAM"
    assert ex.controls["steps"].value == (0, len(DOMINANT) - 1)
    assert "switches" in ex.status.value


def test_teaching_lab_config_from_sliders():
    from msam_lab.widgets import AV_DIGITS_KNOBS, TeachingLab, synthetic_knobs
    from msam_lab.widgets.teaching_lab import set_field

    lab = TeachingLab({"dataset": "av-digits"}, knobs=AV_DIGITS_KNOBS, epochs=2)
    lab.controls["data.audio_snr_db"].value = 5.0
    lab.controls["rho"].value = 0.2
    cfg = lab.config()
    assert cfg["data"]["audio_snr_db"] == 5.0 and cfg["rho"] == 0.2 and cfg["epochs"] == 2
    assert cfg["checkpoint_every"] == 1
    syn = TeachingLab(nbu.QUICK_DATA, knobs=synthetic_knobs((2.0, 1.0)))
    assert syn.config()["data"]["informativeness"] == [2.0, 1.0]
    assert set_field({}, "data.x[1]", 3.0) == {"data": {"x": [None, 3.0]}}


# ---------------------------------------------------------------- notebook helpers and a real tiny run


def test_quick_mode_is_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MSAM_LAB_QUICK", "1")
    assert viz.quick_mode() and nbu.pick("full", "quick") == "quick"
    assert nbu.data_settings()["dataset"] == "synthetic"
    monkeypatch.setenv("MSAM_LAB_QUICK", "0")
    assert not nbu.quick_mode() and nbu.data_settings() == {"dataset": "av-digits"}
    monkeypatch.setenv("MSAM_LAB_RUNS", str(tmp_path))
    assert nbu.runs_root() == tmp_path


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vizruns")
    data = {"dataset": "synthetic", "data": {"n_modalities": 2, "n_samples": 160}}
    return {
        m: nbu.ensure_run(m, nbu.make_config(m, data, epochs=2, batch_size=32), root=root) for m in ("joint", "msam")
    }, root


def test_ensure_run_reuses_a_finished_run(tiny_runs):
    runs, root = tiny_runs
    run = runs["msam"]
    stamp = (run.path / "summary.json").stat().st_mtime_ns
    again = nbu.ensure_run("msam", run.config.to_dict(), root=root)
    assert again.path == run.path and (run.path / "summary.json").stat().st_mtime_ns == stamp
    other = nbu.run_path("msam", {**run.config.to_dict(), "seed": 1}, root)
    assert other != run.path


def test_landscape_explorer_shares_the_colour_scale_across_runs(tiny_runs):
    from msam_lab.widgets import LandscapeExplorer

    runs, _ = tiny_runs
    ex = LandscapeExplorer({"Joint": runs["joint"], "M-SAM": runs["msam"]}, grid=3, grid_1d=5, n_samples=16)
    assert ex.controls["epoch"].options == (0, 1, 2)
    surfaces = [ex.surface(label, 2, 2) for label in ("Joint", "M-SAM")]
    lo, hi = viz.shared_z(surfaces, "loss", log=True)  # log10 colour scale by default
    assert (ex.figure.layout.coloraxis.cmin, ex.figure.layout.coloraxis.cmax) == (pytest.approx(lo), pytest.approx(hi))
    ex.controls["log"].value = False
    lo, hi = viz.shared_z(surfaces, "loss")
    assert (ex.figure.layout.coloraxis.cmin, ex.figure.layout.coloraxis.cmax) == (pytest.approx(lo), pytest.approx(hi))
    ex.controls["shared"].value = False
    own = viz.shared_z([surfaces[0]], "loss")
    assert ex.figure.layout.coloraxis.cmin == pytest.approx(own[0])
    ex.controls["dim"].value = 1
    assert {d.type for d in ex.figure.data} == {"scatter"}
    ex.controls["modality"].value = runs["joint"].modalities[1]
    assert [d.meta["metric"] for d in ex.figure.data] == [f"loss_only_{runs['joint'].modalities[1]}"]
    ex.controls["run"].value = "all runs (side by side)"
    assert len(ex.figure.data) == 2


def test_ensure_sharpness_reuses_rows_even_when_the_split_is_smaller_than_asked(tiny_runs):
    runs, _ = tiny_runs
    run = runs["joint"]
    first = nbu.ensure_sharpness(run, n_samples=10_000, probes=2, topk=1)  # more than the test split holds
    assert list(first["scope"]) == ["model", *run.modalities]
    stamp = (run.path / "sharpness.csv").stat().st_mtime_ns
    again = nbu.ensure_sharpness(run, n_samples=10_000, probes=2, topk=1)
    assert (run.path / "sharpness.csv").stat().st_mtime_ns == stamp  # read back, not recomputed
    np.testing.assert_allclose(again["lambda_1"], first["lambda_1"])
    nbu.ensure_sharpness(run, n_samples=10_000, probes=3, topk=1)  # other settings: computed
    assert (run.path / "sharpness.csv").stat().st_mtime_ns != stamp


def test_ensure_landscape_reloads_a_finished_surface(tiny_runs):
    runs, _ = tiny_runs
    s1 = nbu.ensure_landscape(runs["msam"], dim=1, grid=5, n_samples=16)
    s2 = nbu.ensure_landscape(runs["msam"], dim=1, grid=5, n_samples=16)
    assert s1.path == s2.path and s2.complete
    np.testing.assert_array_equal(s1["loss"], s2["loss"])
    s3 = nbu.ensure_landscape(runs["msam"], dim=1, grid=7, n_samples=16)  # another grid: its own folder
    assert s3.path != s1.path and s3.shape == (7,)
