"""msam_lab.experiments.rivals (notebook 08): settings, the ablation's arms and labels, the tables built from tiny
sweeps, the sharpness timeline read from runs trained with ``sharpness_every``, and the viz figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msam_lab import viz
from msam_lab.experiments import rivals
from msam_lab.experiments.sweep import RUNS_FILE
from msam_lab.runs.reader import load_run

TINY = {"dataset": "synthetic", "data": {"n_modalities": 2, "n_samples": 200}}


def tiny_settings(**changes) -> dict:
    s = rivals.rival_settings(quick=True)
    s.update(data=dict(TINY), epochs=1, seeds=[0])
    s["sharpness"] = dict(s["sharpness"], methods=["joint", "msam"], seeds=[0], every=1, samples=16, probes=1)
    s.update(changes)
    return s


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rivals-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSAM_LAB_RUNS", str(root))
        yield root


# ---------------------------------------------------------------- settings and labels (no training)


def test_settings_full_and_quick():
    full, quick = rivals.rival_settings(False), rivals.rival_settings(True)
    assert full["rhos"] == [0.01, 0.05, 0.1, 0.2, 0.5]
    assert len(quick["rhos"]) == 2 and set(quick["rhos"]) <= set(full["rhos"])
    assert full["seeds"] == [0, 1, 2] and quick["seeds"] == [0]
    assert full["data"] == {"dataset": "av-digits"} and quick["data"]["dataset"] == "synthetic"
    for s in (full, quick):
        assert {"joint", "sam", "msam", "masam", "mie"} == set(s["methods"])
        assert s["method_overrides"]["masam"] == {"rho": 0.3}
        assert sum(s["method_overrides"]["mie"]["mie_stage_epochs"]) < s["epochs"]  # both modalities get a stage
        assert s["ablation_variant"] in ("params", "unimodal")
        assert s["sharpness"]["every"] >= 1
    assert full["sharpness"]["every"] > 1 and quick["sharpness"]["every"] == 1


def test_base_config_applies_only_the_methods_own_overrides():
    s = tiny_settings()
    assert rivals.base_config(s, "masam")["rho"] == 0.3
    assert "rho" not in rivals.base_config(s, "msam")
    assert rivals.base_config(s, "mie")["mie_stage_epochs"] == s["method_overrides"]["mie"]["mie_stage_epochs"]
    assert rivals.base_config(s, "msam", msam_dominant="random")["msam_dominant"] == "random"
    groups = rivals._groups(["joint", "masam", "sam", "mie", "msam"], s)
    assert [g for g, _ in groups] == [["joint", "sam", "msam"], ["masam"], ["mie"]]


def test_ablation_arms_expand_fixed_per_modality():
    s = tiny_settings(ablation_arms=["shapley", "fixed", "random", "alternate", "fixed:audio"])
    assert rivals.ablation_arms(s, ["image", "audio"]) == [
        "shapley",
        "fixed:image",
        "fixed:audio",
        "random",
        "alternate",
    ]
    assert rivals.ablation_arms(tiny_settings()) == ["shapley", "fixed:m0", "fixed:m1", "random", "alternate"]


def test_arm_labels():
    assert viz.arm_label("fixed:audio") == "fixed: audio"
    assert viz.arm_label("shapley") == "Shapley-dominant (M-SAM)"
    assert viz.arm_label("random") == "random per step"
    assert viz.arm_label("something") == "something"


def test_timeline_stats_over_seeds():
    df = pd.DataFrame(
        {
            "method": ["msam"] * 4,
            "seed": [0, 1, 0, 1],
            "epoch": [0, 0, 1, 1],
            "scope": ["m0"] * 4,
            "trace": [1.0, 3.0, 2.0, 6.0],
            "trace_se": [0.1] * 4,
        }
    )
    st = viz.timeline_stats(df, "trace")
    assert st["mean"].tolist() == [2.0, 4.0]
    assert np.allclose(st["std"], [np.sqrt(2), np.sqrt(8)])
    assert st["n"].tolist() == [2, 2] and st["se"].isna().all()  # several seeds: no single-seed error bar
    one = viz.timeline_stats(df[df["seed"] == 0], "trace")
    assert one["se"].tolist() == [0.1, 0.1] and one["std"].isna().all()
    with pytest.raises(ValueError, match="no column"):
        viz.timeline_stats(df, "lambda_1")


def test_read_timeline_needs_sharpness_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="sharpness_every"):
        rivals.read_timeline({("joint", 0): tmp_path})


# ---------------------------------------------------------------- tiny sweeps


@pytest.fixture(scope="module")
def ablation(runs_root):
    return rivals.ablation_table(tiny_settings(), arms=["shapley", "fixed:m1", "alternate"])


def test_ablation_table_labels_each_arm_with_its_own_runs(ablation, runs_root):
    assert ablation["arm"].tolist() == ["shapley", "fixed:m1", "alternate"]
    assert ablation["arm_label"].tolist() == ["Shapley-dominant (M-SAM)", "fixed: m1", "alternating per step"]
    assert list(ablation.columns[:3]) == ["arm", "arm_label", "method"] and set(ablation["method"]) == {"msam"}
    # each row comes from a run trained with that arm (not, say, the same run three times)
    for arm in ablation["arm"]:
        cfg = rivals.base_config(tiny_settings(), "msam", msam_variant="params", msam_dominant=arm)
        table = pd.read_csv(rivals.sweep_dir("ablation-msam", cfg) / RUNS_FILE)
        run = load_run(table["run"].iloc[0])
        assert json.loads((run.path / "config.json").read_text())["msam_dominant"] == arm
        if arm == "fixed:m1":
            assert set(run.steps["perturbed"]) == {"m1"}
        if arm == "alternate":
            assert run.steps["perturbed"].iloc[:3].tolist() == ["m0", "m1", "m0"]


def test_ablation_figure_both_backends(ablation):
    fig = viz.ablation_bars(ablation)
    bars = [t for t in fig.data if t.type == "bar" and t.meta["part"] == "fused"]
    assert list(bars[0].x) == ["Shapley-dominant (M-SAM)", "fixed: m1", "alternating per step"]
    mpl = viz.ablation_bars(ablation, backend="matplotlib", include_tau=False)
    labels = [t.get_text() for t in mpl.axes[0].get_xticklabels()]
    assert labels == ["Shapley-dominant (M-SAM)", "fixed: m1", "alternating per step"]
    with pytest.raises(ValueError, match="arm"):
        viz.ablation_bars(ablation.drop(columns=["arm", "arm_label"]))


def test_rivals_table_keeps_order_and_overrides(runs_root):
    table = rivals.rivals_table(tiny_settings(), methods=["masam", "joint"])
    assert table["method"].tolist() == ["masam", "joint"]
    assert table["rho"].iloc[0] == 0.3 and np.isnan(table["rho"].iloc[1])


def test_rho_table_and_curve(runs_root):
    s = tiny_settings(rhos=[0.05, 0.5])
    table = rivals.rho_table(s, methods=["msam", "masam"])
    assert table[["method", "rho"]].values.tolist() == [["msam", 0.05], ["msam", 0.5], ["masam", 0.05], ["masam", 0.5]]
    fig = viz.rho_curve(table, parts=["fused"])
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["M-SAM", "MASAM"] and list(lines[0].x) == [0.05, 0.5]
    viz.rho_curve(table, backend="matplotlib")
    with pytest.raises(ValueError, match="no row with a ρ"):
        viz.rho_curve(table.assign(rho=np.nan))


def test_sharpness_timeline_reads_every_epoch_and_block(runs_root):
    s = tiny_settings()
    df = rivals.sharpness_timeline(s)
    assert set(rivals.TIMELINE_COLUMNS) <= set(df.columns)
    # 2 methods x epochs 0 and 1 x (m0, m1, fusion)
    assert len(df) == 2 * 2 * 3
    assert df["method"].tolist()[:6] == ["joint"] * 6 and df["epoch"].tolist()[:6] == [0, 0, 0, 1, 1, 1]
    assert df["scope"].tolist()[:3] == ["m0", "m1", "fusion"]
    assert df.groupby("scope")["block"].first().to_dict() == {"m0": "encoder", "m1": "encoder", "fusion": "fusion"}
    assert (df["probes"] == 1).all() and (df["n_samples"] == 16).all()
    assert np.isfinite(df["lambda_1"]).all() and np.isfinite(df["trace"]).all()
    # reused, not retrained: a second call finds the same rows without touching the runs
    csvs = {p: p.stat().st_mtime_ns for p in (Path(r) / "sharpness.csv" for r in df["run"].unique())}
    again = rivals.sharpness_timeline(s)
    pd.testing.assert_frame_equal(df, again)
    assert all(p.stat().st_mtime_ns == t for p, t in csvs.items())

    fig = viz.sharpness_timeline_figure(df, metric="trace")
    assert [a.text for a in fig.layout.annotations] == ["Joint", "M-SAM"]  # one panel per method
    names = [t.name for t in fig.data if t.mode == "lines+markers"]
    assert names == ["m0 encoder", "m1 encoder"] * 2
    by_scope = viz.sharpness_timeline_figure(df, metric="lambda_1", by="scope", scopes=["m0", "m1", "fusion"])
    assert [a.text for a in by_scope.layout.annotations] == ["m0 encoder", "m1 encoder", "fusion"]
    mpl = viz.sharpness_timeline_figure(df, backend="matplotlib")
    assert len(mpl.axes) == 2
    with pytest.raises(ValueError, match="scope"):
        viz.sharpness_timeline_figure(df, scopes=["audio"])
