"""Your own model and loop: msam_lab.evaluate_forward, RunLogger's run directory, and every reader
(load_run, compare, the dominance explorer, landscapes, sharpness) on such a run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import msam_lab
from msam_lab.analysis.metrics import evaluate
from msam_lab.config import ConfigError
from msam_lab.landscape import (
    ForwardEvaluation,
    evaluate_points,
    landscape_for_run,
    random_directions,
    sharpness_for_run,
)
from msam_lab.runs.compare import compare_runs
from tests.conftest import make_batch, make_model

MODALITIES = ("a", "b")


class TokenModel(torch.nn.Module):
    """Not a msam_lab model: dict input, an absent modality becomes a learned mask token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.ModuleDict(
            {m: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU()) for m in MODALITIES}
        )
        self.mask = torch.nn.ParameterDict({m: torch.nn.Parameter(torch.zeros(8)) for m in MODALITIES})
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x, present=MODALITIES):
        n = len(next(iter(x.values())))
        parts = [self.enc[m](x[m]) if m in present else self.mask[m].expand(n, 8) for m in MODALITIES]
        return self.head(torch.cat(parts, 1))


def forward(model, inputs, present):
    return model(inputs, present)  # present may be empty: the empty coalition's value


def data(seed=0, n=64):
    raw, labels = make_batch(n_mod=2, n=n, seed=seed)
    return {"a": raw["m0"], "b": raw["m1"]}, labels


def logged_run(out, epochs=3):
    model = TokenModel()
    (x, y), test = data(0), data(1)
    batches = [({m: v[i : i + 16] for m, v in x.items()}, y[i : i + 16]) for i in range(0, 64, 16)]
    opt = msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=MODALITIES, model=model, lr=0.2, momentum=0.9)

    def row():
        return msam_lab.epoch_row(
            train=msam_lab.evaluate_forward(model, forward, [(x, y)], MODALITIES),
            test=msam_lab.evaluate_forward(model, forward, [test], MODALITIES),
        )

    with msam_lab.RunLogger(
        out,
        modalities=MODALITIES,
        config={"lr": 0.2, "note": "mask tokens"},
        method="msam",
        dataset="toy",
        seed=3,
        epochs=epochs,
        scopes={"a": "enc.a", "b": "enc.b"},
    ) as log:
        log.log_epoch(0, row())
        log.checkpoint(0, model, opt)
        for epoch in range(1, epochs + 1):
            for inputs, labels in batches:
                log.log_step(opt.step(lambda present: forward(model, inputs, present), labels), lr=0.2)
            log.log_epoch(epoch, row())
            log.checkpoint(epoch, model, opt)
    return model, test


def test_evaluate_forward_equals_the_builtin_evaluation_on_a_msam_lab_model():
    """Two implementations of one definition: coalitions through forward vs through the fusion."""
    model = make_model(n_mod=3)
    inputs, labels = make_batch(n_mod=3, n=50, informative=(2.0, 0.3, 1.0))
    ref = evaluate(model, msam_lab.datasets.MultimodalData(inputs, labels, 3), batch_size=16)
    batches = [({m: v[i : i + 16] for m, v in inputs.items()}, labels[i : i + 16]) for i in range(0, 50, 16)]
    got = msam_lab.evaluate_forward(model, lambda mdl, x, p: mdl(x, p), batches, model.modalities)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-6)), key


def test_the_decomposed_accuracies_sum_the_fused_logits():
    """acc_<m> of a model whose logits are a sum of per-modality parts is each part's own accuracy."""
    torch.manual_seed(1)
    heads = {m: torch.nn.Linear(6, 3) for m in MODALITIES}
    x, y = data(0)

    def additive(model, inputs, present):
        return sum(heads[m](inputs[m]) for m in present) if present else torch.zeros(len(y), 3)

    got = msam_lab.evaluate_forward(torch.nn.Module(), additive, [(x, y)], MODALITIES)
    for m in MODALITIES:
        own = float((heads[m](x[m]).argmax(-1) == y).float().mean())
        assert got[f"acc_{m}"] == pytest.approx(own) == pytest.approx(got[f"acc_only_{m}"])


def test_a_logged_run_reads_like_a_trained_one(tmp_path):
    model, _ = logged_run(tmp_path / "mine")
    run = msam_lab.load_run(tmp_path / "mine")
    assert run.state == "finished" and run.logged and run.modalities == MODALITIES
    assert run.raw_config == {
        "lr": 0.2,
        "note": "mask tokens",
        "method": "msam",
        "dataset": "toy",
        "seed": 3,
        "epochs": 3,
    }
    assert (run.config.method, run.config.seed, run.config.lr) == ("msam", 3, 0.2)
    assert list(run.steps["step"]) == list(range(12)) and list(run.steps["epoch"]) == [1] * 4 + [2] * 4 + [3] * 4
    assert set(run.steps["dominant"]) <= set(MODALITIES)
    np.testing.assert_allclose(run.steps[["share_a", "share_b"]].sum(axis=1), 1.0)
    assert list(run.epochs["epoch"]) == [0, 1, 2, 3] and sorted(run.checkpoints) == [0, 1, 2, 3]
    s = run.summary
    assert s["steps"] == 12 and s["epochs"] == 3 and s["test_acc"] == run.epochs["test_acc"].iloc[-1]
    assert s["dominance_switches"] == int((run.steps["dominant"] != run.steps["dominant"].shift()).sum() - 1)
    loaded = run.load_model(factory=TokenModel)
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), model.parameters()))
    table = compare_runs([run])
    assert table.loc[0, "method"] == "msam" and table.loc[0, "test_acc (last)"] == s["test_acc"]
    assert "test_acc_a (last)" in table.columns


def test_the_dominance_explorer_shows_a_logged_run(tmp_path):
    pytest.importorskip("ipywidgets")
    from msam_lab.widgets import DominanceExplorer

    logged_run(tmp_path / "mine")
    explorer = DominanceExplorer(msam_lab.load_run(tmp_path / "mine"))
    traces = {t.name: t for t in explorer.figure.data}
    assert len(traces["share of a"].x) == len(traces["share of b"].x) == 12  # one point per step
    assert len(traces["acc: a (Shapley-decomposed)"].x) == 4  # one per logged epoch


def test_a_landscape_of_a_logged_run_is_its_forward_evaluated_at_the_grid(tmp_path):
    model, test = logged_run(tmp_path / "mine")
    run = msam_lab.load_run(tmp_path / "mine")
    surface = landscape_for_run(
        run, dim=2, grid=3, span=0.5, model_factory=TokenModel, forward=forward, batches=[test], name="s"
    )
    assert surface.complete and surface.shape == (3, 3)
    ref = msam_lab.evaluate_forward(model, forward, [test], MODALITIES)  # θ at the last epoch
    assert surface["loss"][1, 1] == pytest.approx(ref["loss"], rel=1e-6)
    assert surface["acc_only_a"][1, 1] == pytest.approx(ref["acc_only_a"])
    # a grid point by brute force: θ + c·d written by hand, the forward's loss and accuracy
    d = surface.directions
    probe = TokenModel()
    probe.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in probe.named_parameters():
            p.add_(0.5 * d[0][name] - 0.5 * d[1][name])
    by_hand = msam_lab.evaluate_forward(probe, forward, [test], MODALITIES)
    assert surface["loss"][2, 0] == pytest.approx(by_hand["loss"], rel=1e-5)
    assert surface["acc_without_b"][2, 0] == pytest.approx(by_hand["acc_only_a"])
    assert msam_lab.load_run(tmp_path / "mine").landscapes == {"s": tmp_path / "mine" / "landscapes" / "s"}


def test_forward_evaluation_equals_the_builtin_point_evaluator():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2, n=40)
    dirs = random_directions(model, 2, seed=0)
    points = np.array([[0.0, 0.0], [0.3, -0.2], [-1.0, 0.5]])
    names, ref = evaluate_points(model, msam_lab.datasets.MultimodalData(inputs, labels, 3), dirs, points)
    ev = ForwardEvaluation(lambda mdl, x, p: mdl(x, p), [(inputs, labels)], model.modalities)
    from msam_lab.landscape.points import PointEvaluator
    from msam_lab.landscape.state import preserved

    with preserved(model):
        model.eval()
        pe = PointEvaluator(model, None, dirs, evaluation=ev)
        got = np.stack([pe(p) for p in points])
    assert pe.names == names
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_sharpness_of_a_logged_run_per_encoder(tmp_path):
    model, test = logged_run(tmp_path / "mine")
    table = sharpness_for_run(
        tmp_path / "mine", epochs=[0, 3], topk=1, probes=4, model_factory=TokenModel, forward=forward, batches=[test]
    )
    assert list(table["scope"]) == ["model", "a", "b"] * 2
    n_enc = sum(p.numel() for p in model.enc["a"].parameters())
    assert set(table[table.scope == "a"]["n_parameters"]) == {n_enc}
    assert (table["trace"].notna()).all() and (table["lambda_1"] > -1e-6).all()
    # λ_max of the whole model bounds each block's (the block Hessian is a principal submatrix)
    for e in (0, 3):
        t = table[table.epoch == e].set_index("scope")
        assert t.loc["model", "lambda_1"] >= max(t.loc["a", "lambda_1"], t.loc["b", "lambda_1"]) - 1e-4
    assert (tmp_path / "mine" / "sharpness.csv").is_file()


def test_a_logged_run_needs_its_factory_forward_and_batches(tmp_path):
    logged_run(tmp_path / "mine", epochs=1)
    with pytest.raises(ConfigError, match="model_factory.*missing: forward, batches"):
        landscape_for_run(tmp_path / "mine", grid=3, model_factory=TokenModel)
    with pytest.raises(ValueError, match="factory="):
        msam_lab.load_run(tmp_path / "mine").load_model()
    cli = subprocess.run(
        [sys.executable, "-m", "msam_lab", "landscape", str(tmp_path / "mine"), "--grid", "3"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "your own model" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mine" / "landscapes").exists()


def test_run_logger_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "x"
    for kwargs, match in [
        ({"modalities": ()}, "modalities"),
        ({"modalities": ("a", "a")}, "modalities"),
        ({"modalities": MODALITIES, "config": {"seed": 1}}, "RunLogger argument"),
        ({"modalities": MODALITIES, "config": {"f": object()}}, "plain values"),
        ({"modalities": MODALITIES, "scopes": {"c": "enc.c"}}, "scopes"),
        ({"modalities": MODALITIES, "seed": "0"}, "seed"),
    ]:
        with pytest.raises(ConfigError, match=match):
            msam_lab.RunLogger(out, **kwargs)
        assert not out.exists()
    (out / "f").parent.mkdir()
    (out / "f").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        msam_lab.RunLogger(out, modalities=MODALITIES)


def test_run_logger_rows_are_checked_and_a_crash_marks_the_run_failed(tmp_path):
    log = msam_lab.RunLogger(tmp_path / "r", modalities=MODALITIES)
    with pytest.raises(ValueError, match="dominant"):
        log.log_step({"loss": 1.0, "dominant": "c"})
    with pytest.raises(ValueError, match="at least one log_epoch"):
        log.close()
    log.log_epoch(0, test_acc=0.5)
    with pytest.raises(ValueError, match="must increase"):
        log.log_epoch(0, test_acc=0.6)
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.log_step(loss=1.0)
    with pytest.raises(ZeroDivisionError):
        with msam_lab.RunLogger(tmp_path / "crash", modalities=MODALITIES) as log:
            log.log_step(loss=0.5, dominant="a")
            1 / 0
    status = json.loads((tmp_path / "crash" / "status.json").read_text())
    assert status["state"] == "failed" and "ZeroDivisionError" in status["error"]
    assert msam_lab.load_run(tmp_path / "crash").steps["loss"].tolist() == [0.5]  # its rows stay readable
    with pytest.raises(ConfigError, match="your own loop"):
        msam_lab.train(resume=tmp_path / "crash")


def test_the_notebook_helpers_and_the_landscape_explorer_take_a_logged_run(tmp_path):
    pytest.importorskip("ipywidgets")
    from msam_lab import notebook_utils as nb
    from msam_lab.widgets import LandscapeExplorer

    _, test = logged_run(tmp_path / "mine", epochs=1)
    run = msam_lab.load_run(tmp_path / "mine")
    own = {"model_factory": TokenModel, "forward": forward, "batches": [test]}
    first = nb.ensure_sharpness(run, probes=2, **own)
    again = nb.ensure_sharpness(run, probes=2, **own)  # read back from sharpness.csv
    assert list(again["scope"]) == list(first["scope"]) == ["model", "a", "b"]
    np.testing.assert_allclose(again["lambda_1"], first["lambda_1"])
    explorer = LandscapeExplorer(run, grid=3, grid_1d=3, landscape_kwargs=own)
    assert explorer.figure.data and run.landscapes  # a surface computed and drawn


def test_restart_replaces_only_an_unfinished_run(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with msam_lab.RunLogger(tmp_path / "r", modalities=MODALITIES) as log:
            log.log_step(loss=1.0, dominant="a")
            raise KeyboardInterrupt
    assert msam_lab.load_run(tmp_path / "r").state == "interrupted"
    with pytest.raises(ConfigError, match="interrupted"):
        msam_lab.RunLogger(tmp_path / "r", modalities=MODALITIES)  # not without restart=True
    with msam_lab.RunLogger(tmp_path / "r", modalities=MODALITIES, restart=True) as log:
        log.log_epoch(0, test_acc=0.5)
    run = msam_lab.load_run(tmp_path / "r")
    assert run.state == "finished" and run.steps.empty  # started afresh
    with pytest.raises(ConfigError, match="finished"):
        msam_lab.RunLogger(tmp_path / "r", modalities=MODALITIES, restart=True)  # a finished run is kept
    assert msam_lab.load_run(tmp_path / "r").state == "finished"


def test_a_saved_surface_is_not_reused_on_other_batches(tmp_path):
    _, test = logged_run(tmp_path / "mine", epochs=1)
    own = dict(grid=3, model_factory=TokenModel, forward=forward, name="s")
    first = landscape_for_run(tmp_path / "mine", batches=[test], **own)
    again = landscape_for_run(tmp_path / "mine", batches=[test], **own)  # same data: read back
    np.testing.assert_array_equal(again["loss"], first["loss"])
    with pytest.raises(ConfigError, match="batches_sha1"):  # same size, other samples
        landscape_for_run(tmp_path / "mine", batches=[data(seed=7)], **own)
