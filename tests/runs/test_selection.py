"""Model selection: the validation split (datasets.validation), val columns of the epoch table,
best_epoch / selection_summary, and the labelled best-val / last columns of compare and sweep tables."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from msam_lab import viz
from msam_lab.analysis import metrics
from msam_lab.config import Config
from msam_lab.datasets import MultimodalData, Splits
from msam_lab.datasets.validation import holdout_size, with_validation
from msam_lab.experiments import cells as cells_mod
from msam_lab.experiments import sweep
from msam_lab.runs.compare import compare_runs, format_table
from msam_lab.runs.selection import best_epoch, selection_summary
from msam_lab.runs.writer import RunWriter
from tests.conftest import make_batch, make_config, make_model


def ided(n: int, n_classes: int = 3, seed: int = 0) -> MultimodalData:
    """Data whose ``id`` modality is each sample's original index, labels unbalanced on purpose."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(n // 2, dtype=torch.long), torch.randint(1, n_classes, (n - n // 2,), generator=g)])
    return MultimodalData(
        {"id": torch.arange(n).float().unsqueeze(1), "x": torch.randn(n, 2, generator=g)}, labels, n_classes
    )


def ids(data) -> list[int]:
    return data.inputs["id"].flatten().long().tolist()


# ---------------------------------------------------------------- the validation split


def test_holdout_is_disjoint_from_train_covers_it_and_is_stratified():
    train, test = ided(203), ided(40, seed=1)
    out = with_validation(Splits(train, test, {"encoders": {}}), 0.2, seed=3)
    tr, va = ids(out.train), ids(out.val)
    assert set(tr).isdisjoint(va)
    assert sorted(tr + va) == list(range(203))  # exactly the original train split
    assert tr == sorted(tr) and va == sorted(va)  # sorted indices
    assert len(va) == holdout_size(203, 0.2) == round(0.2 * 203)
    assert out.test is test  # the test split is not touched
    for c in range(3):  # each class in proportion (±1)
        n_c = int((train.labels == c).sum())
        assert abs(int((out.val.labels == c).sum()) - 0.2 * n_c) <= 1
    assert torch.equal(out.val.labels, train.labels[torch.tensor(va)])  # rows move with their labels
    assert out.info == {"encoders": {}, "val_split": "holdout", "val_size": len(va), "val_fraction": 0.2}


def test_holdout_is_seeded_reproducible_and_leaves_global_rngs_alone():
    train, test = ided(100), ided(10)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a = with_validation(Splits(train, test), 0.25, seed=0)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    b = with_validation(Splits(train, test), 0.25, seed=0)
    c = with_validation(Splits(train, test), 0.25, seed=1)
    assert ids(a.val) == ids(b.val) and ids(a.train) == ids(b.train)
    assert ids(a.val) != ids(c.val)


def test_dataset_val_is_kept_and_zero_fraction_means_none():
    train, test, own = ided(50), ided(10), ided(12, seed=2)
    out = with_validation(Splits(train, test, val=own), 0.3, seed=0)
    assert out.val is own and out.train is train
    assert out.info["val_split"] == "dataset" and out.info["val_size"] == 12
    assert with_validation(Splits(train, test, val=own), 0.0, seed=0).val is own
    none = with_validation(Splits(train, test), 0.0, seed=0)
    assert none.val is None and none.train is train
    assert none.info["val_split"] == "none" and none.info["val_size"] == 0
    again = with_validation(with_validation(Splits(train, test), 0.2, 0), 0.2, 0)  # not held out twice
    assert again.info["val_split"] == "holdout" and len(again.train) == 40


def test_holdout_needs_only_len_labels_and_subset():
    class Streamed:  # what a streaming dataset offers, nothing more
        def __init__(self, index):
            self.index = list(index)

        def __len__(self):
            return len(self.index)

        @property
        def labels(self):
            return torch.tensor([i % 4 for i in self.index])

        def select(self, index):
            return Streamed([self.index[int(i)] for i in index])

    out = with_validation(Splits(Streamed(range(40)), Streamed(range(8))), 0.25, seed=0)
    assert len(out.val) == 10 and len(out.train) == 30
    assert sorted(out.val.index + out.train.index) == list(range(40))
    assert all(abs(out.val.labels.tolist().count(c) - 2.5) <= 1 for c in range(4))  # stratified


def test_a_streaming_train_split_stays_streaming():
    from msam_lab.datasets import load_dataset
    from msam_lab.datasets.streaming import StreamingData

    memory = load_dataset("synthetic", n_samples=200, n_modalities=2)
    streamed = Splits(StreamingData.from_memory(memory.train), StreamingData.from_memory(memory.test))
    a, b = with_validation(memory, 0.2, seed=3), with_validation(streamed, 0.2, seed=3)
    assert isinstance(b.train, StreamingData) and isinstance(b.val, StreamingData)
    assert torch.equal(a.val.labels.cpu(), b.val.labels.cpu()) and len(a.train) == len(b.train)


def test_bad_fraction_and_tiny_train_are_errors():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            with_validation(Splits(ided(10), ided(4)), bad, 0)
    with pytest.raises(ValueError, match="too small"):
        with_validation(Splits(ided(1), ided(4)), 0.5, 0)
    assert len(with_validation(Splits(ided(5), ided(4)), 0.01, 0).val) == 1  # at least one sample


# ---------------------------------------------------------------- val columns of the epoch table


def test_epoch_metrics_val_columns_equal_evaluate_on_val():
    def data(seed):
        inputs, labels = make_batch(n=48, seed=seed)
        return MultimodalData(inputs, labels, 3)

    model, cfg = make_model(), make_config(eval_batch_size=16)
    train, test, val = data(0), data(1), data(2)
    plain = metrics.epoch_metrics(model, train, test, cfg)
    row = metrics.epoch_metrics(model, train, test, cfg, val=val)
    assert list(row)[: len(plain)] == list(plain) and all(row[k] == plain[k] for k in plain)  # unchanged
    kw = dict(
        batch_size=cfg.eval_batch_size,
        share_rule=cfg.share_rule,
        shapley_value=cfg.shapley_value,
        exact_max=cfg.shapley_exact_max,
        n_permutations=cfg.shapley_permutations,
        seed=cfg.seed,
    )
    ev = metrics.evaluate(model, val, **kw)
    assert {k: v for k, v in row.items() if k.startswith("val_")} == {f"val_{k}": v for k, v in ev.items()}
    per_mod = {k[len("test_") :] for k in plain if k.startswith("test_")}
    assert {k[len("val_") :] for k in row if k.startswith("val_")} == per_mod


# ---------------------------------------------------------------- best epoch


def test_best_epoch_ties_nan_missing_and_epoch_zero():
    t = pd.DataFrame({"epoch": [0, 1, 2, 3, 4, 5], "val_acc": [0.99, 0.5, 0.8, np.nan, 0.8, 0.7]})
    assert best_epoch(t) == 2  # tie 2/4 -> earliest; epoch 0 and NaN skipped
    assert best_epoch(t.iloc[::-1]) == 2  # row order does not matter
    assert best_epoch(t.drop(columns="val_acc")) is None  # no validation
    assert best_epoch(t.assign(val_acc=np.nan)) is None  # no finite value
    assert best_epoch(t.iloc[:1]) is None  # only the untrained model
    assert best_epoch(pd.DataFrame()) is None
    assert best_epoch(t.assign(val_acc=[0, 0.1, 0.2, 0.3, np.inf, 0.25])) == 3  # inf is not a value

    class RunLike:
        epochs = t

    assert best_epoch(RunLike()) == 2


def epochs_table(with_val: bool) -> pd.DataFrame:
    rows = []
    for e, (te, va) in enumerate([(0.3, 0.3), (0.6, 0.7), (0.8, 0.9), (0.7, 0.8)]):
        row = {
            "epoch": e,
            "train_loss": 1.0 - 0.1 * e,
            "train_acc": 0.4 + 0.2 * e,
            "test_loss": 2.0 - e * 0.1,
            "test_acc": te,
            "tau": 0.1 * e,
            "tau_loss": 0.2 * e,
            "test_acc_image": te - 0.1,
            "test_acc_audio": te / 2,
            "test_acc_only_image": te - 0.05,
            "test_acc_only_audio": 0.25,
            "test_share_image": 0.9,
            "test_dominant": "image",
            "wall_time": float(e),
        }
        if with_val:
            row.update({"val_loss": 1.5 - 0.1 * e, "val_acc": va, "val_acc_image": va - 0.1})
        rows.append(row)
    return pd.DataFrame(rows)


def test_selection_summary_keys_and_values():
    s = selection_summary(epochs_table(True))
    assert s["best_epoch"] == 2 and s["best_val_acc"] == 0.9 and s["best_val_loss"] == pytest.approx(1.3)
    assert s["test_acc_at_best"] == 0.8 and s["test_loss_at_best"] == pytest.approx(1.8)
    assert s["test_acc_image_at_best"] == pytest.approx(0.7) and s["test_acc_only_audio_at_best"] == 0.25
    assert s["tau_at_best"] == pytest.approx(0.2) and s["tau_loss_at_best"] == pytest.approx(0.4)
    assert s["last_epoch"] == 3 and s["test_acc_last"] == 0.7 and s["tau_last"] == pytest.approx(0.3)
    assert "test_share_image_last" not in s and "test_dominant_at_best" not in s
    json.dumps(s)  # goes into summary.json as it is

    old = selection_summary(epochs_table(False))
    assert old["best_epoch"] is None and old["best_val_acc"] is None
    assert old["test_acc_at_best"] is None and old["test_acc_image_at_best"] is None
    assert old["test_acc_last"] == 0.7 and old["test_acc_audio_last"] == 0.35
    assert set(old) == set(s)


# ---------------------------------------------------------------- compare and sweep tables

SPEC = {
    "input_shapes": {"image": [4], "audio": [4]},
    "num_classes": 3,
    "fusion": "late_sum",
    "encoders": {},
    "feature_dim": 8,
    "hidden_dim": 16,
}


def write_run(path, with_val: bool, method="joint", seed=0):
    epochs = epochs_table(with_val)
    w = RunWriter(path, Config(dataset="synthetic", method=method, seed=seed, epochs=3).to_dict(), SPEC, flush_every=0)
    for row in epochs.to_dict("records"):
        w.log_epoch(row)
    w.log_step({"step": 0, "epoch": 1, "loss": 1.0, "dominant": "image"})
    final = epochs.iloc[-1].to_dict()
    w.finish(
        {
            "method": method,
            "seed": seed,
            "epochs": 3,
            "wall_time": 3.0,
            "dominance_switches": 0,
            **{k: final[k] for k in final if k.startswith(("test_", "train_", "tau"))},
        }
    )
    return path


def test_compare_has_labelled_best_and_last_columns_with_and_without_val(tmp_path):
    new, old = write_run(tmp_path / "new", True), write_run(tmp_path / "old", False)
    df = compare_runs([new, old])
    for key in ("test_acc", "test_acc_image", "test_acc_audio", "tau"):
        assert f"{key} (best val)" in df.columns and f"{key} (last)" in df.columns
    a, b = df.iloc[0], df.iloc[1]
    assert a["best_epoch"] == 2 and a["test_acc (best val)"] == 0.8 and a["test_acc (last)"] == 0.7
    assert pd.isna(b["best_epoch"]) and math.isnan(b["test_acc (best val)"]) and b["test_acc (last)"] == 0.7
    text = format_table(df)
    assert "test_acc (best val)" in text and "0.800" in text and "-" in text.splitlines()[2]


def test_sweep_tables_have_labelled_best_and_last_columns(tmp_path):
    cells = []
    for method, with_val in (("joint", True), ("msam", False)):
        for seed in (0, 1):
            path = write_run(tmp_path / method / f"seed{seed}", with_val, method, seed)
            cells.append(cells_mod.Cell(method, seed, None, Config(method=method, seed=seed), path))
    runs = pd.DataFrame([sweep._row(c) for c in cells])
    for col in ("acc_at_best", "acc_last", "acc_image_at_best", "acc_only_audio_last", "tau_at_best", "tau_last"):
        assert col in runs.columns
    joint, msam = runs[runs["method"] == "joint"].iloc[0], runs[runs["method"] == "msam"].iloc[0]
    assert joint["best_epoch"] == 2 and joint["acc_at_best"] == 0.8 and joint["acc_last"] == 0.7
    assert math.isnan(msam["best_epoch"]) and math.isnan(msam["acc_at_best"]) and msam["acc_last"] == 0.7

    table = sweep.summarise(runs)
    j, m = table.iloc[0], table.iloc[1]
    assert j["acc_at_best_mean"] == 0.8 and j["acc_last_mean"] == 0.7 and j["best_epoch_mean"] == 2
    assert math.isnan(m["acc_at_best_mean"]) and m["acc_last_mean"] == 0.7
    text = sweep.format_sweep(table)
    assert "acc (best val)" in text and "acc (last)" in text and "acc_image (best val)" in text

    shown = viz.comparison_table(table)
    assert shown.loc[0, "fused acc (%, best val)"] == "80.0 ± 0.0"
    assert shown.loc[0, "fused acc (%, last)"] == "70.0 ± 0.0"
    assert shown.loc[1, "fused acc (%, best val)"] == "" and shown.loc[1, "fused acc (%, last)"] == "70.0 ± 0.0"
    assert "last epoch" in viz.comparison_bars(table).layout.title.text  # not every row has a best
    fig = viz.comparison_bars(table.iloc[:1])
    assert "best-validation" in fig.layout.title.text
    fused = [d for d in fig.data if (d.meta or {}).get("part") == "fused"][0]
    np.testing.assert_allclose(fused.y, [80.0])
    with pytest.raises(ValueError, match="at must be"):
        viz.comparison_bars(table, at="bogus")


def test_old_sweep_tables_read_as_last_epoch_numbers(tmp_path):
    old_runs = pd.DataFrame(
        [
            {
                "method": "joint",
                "rho": np.nan,
                "seed": s,
                "acc": 0.9 + 0.02 * s,
                "acc_image": 0.5,
                "acc_only_image": 0.6,
                "tau": 0.1,
            }
            for s in (0, 1)
        ]
    )
    table = sweep.summarise(old_runs)
    assert table.loc[0, "acc_last_mean"] == pytest.approx(0.91) and "acc_at_best_mean" not in table
    old_summary = table.rename(columns=lambda c: c.replace("_last", ""))  # as sweep_summary.csv was
    old_summary.to_csv(tmp_path / "sweep_summary.csv", index=False)
    read = viz.summary_table(tmp_path / "sweep_summary.csv")
    assert read.loc[0, "acc_last_mean"] == pytest.approx(0.91)
    shown = viz.comparison_table(tmp_path / "sweep_summary.csv")
    assert shown.loc[0, "fused acc (%, last)"] == "91.0 ± 1.4" and shown.loc[0, "fused acc (%, best val)"] == ""
    assert "acc (last)" in sweep.format_sweep(old_summary)


def test_a_run_written_before_validation_resumes_without_a_holdout(tmp_path):
    """An interrupted run whose config.json predates val_fraction trained on the whole train split;
    resuming it must not start holding samples out (its remaining epochs would train on other data)."""
    import json

    import msam_lab

    cfg = {
        "dataset": "synthetic",
        "data": {"n_samples": 200, "n_modalities": 2},
        "epochs": 2,
        "batch_size": 50,
        "method": "joint",
        "val_fraction": 0.0,
        "resume_every": 1,
    }

    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(cfg, out=tmp_path / "old", quiet=True, on_step=stop)
    stored = json.loads((tmp_path / "old" / "config.json").read_text())
    del stored["val_fraction"]  # as a run written before the field existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(stored))
    resumed = msam_lab.train(resume=tmp_path / "old", quiet=True)
    whole = msam_lab.train(cfg, out=tmp_path / "whole", quiet=True)
    assert resumed.config.val_fraction == 0.0 and "val_acc" not in resumed.epochs.columns
    assert list(resumed.steps["loss"]) == list(whole.steps["loss"])
