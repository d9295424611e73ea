"""Sharpness over training (msam_lab.analysis.sharpness_timeline): λ_max and Hutchinson trace per encoder block
and the fusion, checked block by block against the explicit Hessian of a tiny model; the
``sharpness_every`` rows of a training run, bit-identical training, resume, and ``--timeline``."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import msam_lab
from msam_lab.analysis import sharpness_timeline as st
from msam_lab.analysis.hessian import _random_like
from msam_lab.cli import main as cli_main
from msam_lab.config import ConfigError
from msam_lab.datasets import MultimodalData
from msam_lab.models.multimodal import MultimodalModel, SumFusion, build_model
from msam_lab.training.setup import resolve

SHAPES = {"a": (3,), "b": (2,)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread (two contend on a shared 2-core machine, 10x slower); put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model():
    torch.manual_seed(0)
    return build_model(SHAPES, 3, "late_concat", feature_dim=3, hidden_dim=4).double()


def tiny_data(n=12):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 3
    inputs = {
        m: torch.randn(n, s[0], generator=g, dtype=torch.float64) + 0.5 * labels[:, None] for m, s in SHAPES.items()
    }
    return MultimodalData(inputs, labels, 3)


def full_hessian(model, data):
    """The explicit Hessian of the mean fused cross-entropy w.r.t. all parameters, in named order."""
    params = dict(model.named_parameters())
    names = list(params)
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss(theta):
        chunks = {n: c.reshape(params[n].shape) for n, c in zip(names, torch.split(theta, sizes))}
        return F.cross_entropy(functional_call(model, chunks, (data.inputs,)), data.labels)

    H = torch.autograd.functional.hessian(loss, flat).numpy()
    offsets = np.cumsum([0, *sizes])
    return H, {n: np.arange(offsets[i], offsets[i + 1]) for i, n in enumerate(names)}


def block_of(H, where, model, scope):
    prefix = f"encoders.{scope}." if scope in SHAPES else f"{scope}."
    idx = np.concatenate([where[n] for n in where if n.startswith(prefix)])
    return H[np.ix_(idx, idx)]


def test_each_block_matches_the_diagonal_block_of_the_explicit_hessian(monkeypatch):
    model, data = tiny_model(), tiny_data()
    H, where = full_hessian(model, data)
    # converge the power iteration fully (the run's settings stop at 1e-3 relative)
    monkeypatch.setattr(st, "MAX_ITER", 50000)
    monkeypatch.setattr(st, "TOL", 1e-13)
    probes = 400
    rows = {r["scope"]: r for r in st.measure(model, data, 0, n_samples=0, probes=probes)}
    assert list(rows) == ["a", "b", "fusion"]
    for scope, row in rows.items():
        B = block_of(H, where, model, scope)
        eigs = np.linalg.eigvalsh(B)
        top = max(eigs, key=abs)
        assert row["n_parameters"] == len(B) and row["n_samples"] == len(data)
        assert row["lambda_1"] == pytest.approx(top, rel=1e-6, abs=1e-9), scope
        # Rademacher probes: Var(zᵀBz) = 2 Σ_{i≠j} B_ij²; the mean within 4σ/√P, its SE ≈ σ/√P
        sigma = math.sqrt(2 * (np.sum(B**2) - np.sum(np.diag(B) ** 2)))
        assert abs(row["trace"] - np.trace(B)) <= 4 * sigma / math.sqrt(probes) + 1e-10, scope
        assert row["trace_se"] == pytest.approx(sigma / math.sqrt(probes), rel=0.25, abs=1e-10), scope
    # λ_max of the whole Hessian bounds every block's (a principal submatrix)
    assert all(max(np.linalg.eigvalsh(H)) >= rows[s]["lambda_1"] - 1e-9 for s in rows)


def test_each_hutchinson_sample_is_z_B_z_for_the_seeded_probes():
    """The estimator exactly: its samples are zᵀBz for the probes the seed draws (so E = tr B)."""
    model, data = tiny_model(), tiny_data()
    H, where = full_hessian(model, data)
    from msam_lab.analysis.hessian import HessianOperator, fused_loss_fn, hutchinson_trace

    for scope in ("b", "fusion"):
        prefix = f"encoders.{scope}." if scope in SHAPES else f"{scope}."
        params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
        B = block_of(H, where, model, scope)
        op = HessianOperator(fused_loss_fn(model, data), params)
        _, _, samples = hutchinson_trace(op, params, probes=5, seed=st.SEED)
        gen = torch.Generator().manual_seed(st.SEED)
        zs = [torch.cat([t.reshape(-1) for t in _random_like(params, gen, "rademacher")]).numpy() for _ in range(5)]
        np.testing.assert_allclose(samples, [z @ B @ z for z in zs], rtol=1e-10, atol=1e-12)
        # and the HVP of the block is the block times the vector
        v = [torch.randn_like(p) for p in params]
        flat = torch.cat([t.reshape(-1) for t in v]).numpy()
        np.testing.assert_allclose(torch.cat([t.reshape(-1) for t in op(v)]).numpy(), B @ flat, atol=1e-12)


def test_measure_leaves_the_model_and_every_rng_as_they_were():
    torch.manual_seed(0)
    enc_a = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.3))
    enc_b = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
    model = MultimodalModel({"a": enc_a, "b": enc_b}, SumFusion([4, 4], 3), SHAPES).double()
    model.train()
    model.encoders["b"].eval()
    model.fusion.heads[1].weight.requires_grad_(False)
    model.encoders["a"][0].bias.grad = torch.ones(4, dtype=torch.float64)

    def bits(t):
        return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    def record():
        return (
            [(id(p), bits(p), p.requires_grad, None if p.grad is None else bits(p.grad)) for p in model.parameters()],
            [(id(b), bits(b)) for b in model.buffers()],
            [m.training for m in model.modules()],
            bits(torch.get_rng_state()),
            str(np.random.get_state()[1][:8]),
            random.getstate(),
        )

    before = record()
    rows = st.measure(model, tiny_data(), 0, n_samples=8, probes=3)
    assert record() == before
    assert [r["n_samples"] for r in rows] == [8] * 3


# ---------------------------------------------------------------- training runs

CFG = {
    "dataset": "synthetic",
    "data": {"n_samples": 160, "n_modalities": 2, "n_features": 5},
    "epochs": 2,
    "batch_size": 40,
    "method": "joint",
    "feature_dim": 5,
    "hidden_dim": 6,
    "checkpoint_every": 1,
    "train_eval_samples": 64,
    "deterministic": True,
    "sharpness_samples": 48,
    "sharpness_probes": 4,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline")
    with_sharpness = msam_lab.train({**CFG, "sharpness_every": 1}, out=root / "with", quiet=True)
    without = msam_lab.train(CFG, out=root / "without", quiet=True)
    return with_sharpness, without


def test_sharpness_every_writes_one_row_per_epoch_and_scope(runs):
    run, _ = runs
    table = pd.read_csv(run.path / st.SHARPNESS_CSV)
    assert len(table) == 3 * 3 and not table.duplicated(["epoch", "scope"]).any()
    assert set(table["epoch"]) == {0, 1, 2} and list(table["scope"][:3]) == ["m0", "m1", "fusion"]
    assert set(table["split"]) == {"train"} and set(table["probes"]) == {4} and set(table["topk"]) == {1}
    assert set(table["n_samples"]) == {48}
    for col in ("lambda_1", "trace", "trace_se", "eps_sharpness", "loss", "n_parameters"):
        assert table[col].notna().all(), col


def test_a_run_with_sharpness_every_trains_bit_identically(runs):
    run, plain = runs
    assert not (plain.path / st.SHARPNESS_CSV).exists()
    a, b = run.load_checkpoint(2)["model"], plain.load_checkpoint(2)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    cols = [c for c in plain.steps.columns if c != "wall_time" and not c.startswith("time")]
    pd.testing.assert_frame_equal(run.steps[cols], plain.steps[cols])
    pd.testing.assert_frame_equal(run.epochs.drop(columns="wall_time"), plain.epochs.drop(columns="wall_time"))


def test_timeline_after_the_fact_gives_the_in_training_numbers(runs, tmp_path):
    run, _ = runs
    during = pd.read_csv(run.path / st.SHARPNESS_CSV)
    (run.path / st.SHARPNESS_CSV).rename(tmp_path / "during.csv")
    try:
        assert cli_main(["sharpness", str(run.path), "--timeline", "--quiet"]) == 0
        after = pd.read_csv(run.path / st.SHARPNESS_CSV)
        pd.testing.assert_frame_equal(after, during)
        # again, plus an ad-hoc measurement with other settings: replaced, and kept beside
        assert cli_main(["sharpness", str(run.path), "--timeline", "--quiet"]) == 0
        assert (
            cli_main(
                [
                    "sharpness",
                    str(run.path),
                    "--epoch",
                    "2",
                    "--probes",
                    "2",
                    "--n-samples",
                    "16",
                    "--max-iter",
                    "3",
                    "--quiet",
                ]
            )
            == 0
        )
        table = pd.read_csv(run.path / st.SHARPNESS_CSV)
        assert len(table) == 9 + 3 and (table["n_samples"] == 48).sum() == 9
    finally:
        (tmp_path / "during.csv").replace(run.path / st.SHARPNESS_CSV)


def test_a_resumed_run_neither_duplicates_nor_loses_rows(runs, tmp_path):
    run, _ = runs

    def stop_after_epoch_1(row):
        if row["epoch"] == 1:  # after its sharpness rows, before its resume point
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train({**CFG, "sharpness_every": 1}, out=tmp_path / "r", quiet=True, on_epoch=stop_after_epoch_1)
    assert len(pd.read_csv(tmp_path / "r" / st.SHARPNESS_CSV)) == 2 * 3
    msam_lab.train(resume=tmp_path / "r", quiet=True)
    resumed = pd.read_csv(tmp_path / "r" / st.SHARPNESS_CSV).sort_values(["epoch", "scope"], ignore_index=True)
    full = pd.read_csv(run.path / st.SHARPNESS_CSV).sort_values(["epoch", "scope"], ignore_index=True)
    pd.testing.assert_frame_equal(resumed, full)


def test_sharpness_every_settings_only_when_due():
    cfg = resolve({**CFG, "epochs": 7, "sharpness_every": 3})
    assert [e for e in range(8) if st.due(e, cfg)] == [0, 3, 6, 7]
    assert not any(st.due(e, resolve(CFG)) for e in range(3))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"sharpness_every": -1}, "sharpness_every must be >= 0"),
        ({"sharpness_probes": 0}, "sharpness_probes must be >= 1"),
        ({"sharpness_samples": -5}, "sharpness_samples must be >= 0"),
        ({"sharpness_every": 3, "eval_every": 2}, "multiple of eval_every"),
        ({"sharpness_every": 1, "compile": True}, "compile=false"),
    ],
)
def test_bad_sharpness_settings_are_one_line_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        resolve({**CFG, **bad})
    assert "\n" not in str(err.value)


def test_timeline_options_name_the_argument(runs):
    from msam_lab.landscape import OptionError, TimelineOptions, timeline_for_run

    run, plain = runs
    with pytest.raises(OptionError, match=r"^n_samples must be >= 1, got 0$"):
        timeline_for_run(plain.path, n_samples=0)
    with pytest.raises(OptionError, match=r"^epochs 9: .*pass epochs= one of"):
        timeline_for_run(plain.path, TimelineOptions(epochs=9))
    with pytest.raises(TypeError):
        timeline_for_run(plain.path, scopes=["m0"])  # the timeline's scopes are the run's


def test_timeline_bad_input_exits_2_and_writes_nothing(runs, tmp_path, capsys):
    run, plain = runs
    logged = tmp_path / "mine"
    with msam_lab.RunLogger(logged, modalities=("a", "b")) as log:
        log.log_epoch(0, test_acc=0.5)
    assert cli_main(["sharpness", str(plain.path), "--timeline", "--scope", "m0"]) == 2
    assert cli_main(["sharpness", str(plain.path), "--timeline", "--n-samples", "0"]) == 2
    assert cli_main(["sharpness", str(plain.path), "--timeline", "--epoch", "9"]) == 2
    assert cli_main(["sharpness", str(tmp_path), "--timeline"]) == 2
    assert cli_main(["sharpness", str(logged), "--timeline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(e.startswith("msam-lab: error:") for e in err)
    assert "drop --scope" in err[0] and "--n-samples must be >= 1, got 0" in err[1]
    assert "pass --epoch one of" in err[2] and "RUN " in err[3]  # flags, not the library's arguments
    assert "your own model" in err[-1]
    assert not (plain.path / st.SHARPNESS_CSV).exists() and not (logged / st.SHARPNESS_CSV).exists()
