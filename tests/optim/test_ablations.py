"""M-SAM's ablations: which modality is perturbed (``msam_dominant``) and how shares are made
(``share_rule`` softmax / loss), checked against hand computations of the update."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import msam_lab
from msam_lab.config import ConfigError
from msam_lab.methods import build_method
from msam_lab.training import setup
from tests.conftest import make_batch, make_config, make_model

LR, RHO = 0.1, 0.1
PLAIN = dict(lr=LR, momentum=0.0, weight_decay=0.0, rho=RHO)  # θ_new = θ − lr·g: g readable from θ


def double_batch(n_mod=2, n=48):
    inputs, labels = make_batch(n_mod=n_mod, n=n, informative=(2.0, 0.3, 1.0))
    return {m: x.double() for m, x in inputs.items()}, labels


def trained_model(inputs, labels, n_mod=2, steps=30):
    """A float64 model a few SGD steps in, so that the Shapley shares are no longer uniform."""
    model = make_model(n_mod=n_mod).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        opt.step()
    return model


def grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()))


def test_fixed_params_perturbs_the_chosen_encoder_with_the_dominant_share():
    """g = v_d·∇ℓ(θ + ε_c) + (1 − v_d)·∇ℓ(θ), ε_c = ρ·∇_c ℓ/‖∇_c ℓ‖ on encoder c only, v_d the Shapley
    dominant's share (not c's own: swapping keeps the amount of SAM of the Shapley arm)."""
    inputs, labels = double_batch()
    model = trained_model(inputs, labels)
    ref = copy.deepcopy(model)
    cfg = make_config(method="msam", msam_variant="params", msam_dominant="fixed:m1", **PLAIN)
    method = build_method(model, cfg)
    row = method.train_step(inputs, labels)
    assert (row["dominant"], row["perturbed"]) == ("m0", "m1")
    v_d = row["share_m0"]
    assert abs(v_d - row["share_m1"]) > 0.1 and row["rho_share"] == v_d

    g0 = grads(ref, F.cross_entropy(ref(inputs), labels))
    chosen = {id(p) for p in ref.encoder_parameters("m1")}
    norm = torch.sqrt(sum((g**2).sum() for p, g in zip(ref.parameters(), g0) if id(p) in chosen))
    theta = [p.detach().clone() for p in ref.parameters()]
    with torch.no_grad():
        for p, g in zip(ref.parameters(), g0):
            if id(p) in chosen:
                p.add_(RHO * g / norm)
    g1 = grads(ref, F.cross_entropy(ref(inputs), labels))
    for p, t, a, b in zip(model.parameters(), theta, g0, g1):
        # 1e-9: SAM takes ‖g‖ in float32; the weight v_c instead of v_d, or 1, is off by > 1e-5 here
        assert torch.allclose(p, t - LR * (v_d * b + (1 - v_d) * a), rtol=0, atol=1e-9)
    assert not torch.allclose(g1[0], g0[0])  # the perturbation mattered


def test_fixed_unimodal_swaps_the_chosen_and_the_dominant_share():
    """ρ = 0 leaves the split alone: g = ∇ Σ_m v'_m·CE(out_m), v' = v with the entries of m0 (dominant)
    and m1 (chosen) exchanged; out_m AGM's decomposed logits, out_0 = ½[f(a,b) − f(0,b) + f(a,0)]."""
    inputs, labels = double_batch()
    model = trained_model(inputs, labels)
    ref = copy.deepcopy(model)
    cfg = make_config(method="msam", msam_variant="unimodal", msam_dominant="fixed:m1", **{**PLAIN, "rho": 0.0})
    row = build_method(model, cfg).train_step(inputs, labels)
    assert row["dominant"] == "m0" and row["share_m0"] != row["share_m1"]
    full, only0, only1 = (ref(inputs, present) for present in ({"m0", "m1"}, {"m0"}, {"m1"}))
    out0, out1 = (full - only1 + only0) / 2, (full - only0 + only1) / 2
    loss = row["share_m1"] * F.cross_entropy(out0, labels) + row["share_m0"] * F.cross_entropy(out1, labels)
    for p, q, g in zip(model.parameters(), ref.parameters(), grads(ref, loss)):
        assert torch.allclose(p, q - LR * g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["params", "unimodal"])
def test_fixed_on_the_dominant_modality_is_the_shapley_arm(variant):
    model = make_model(n_mod=2).double()
    inputs, labels = double_batch()
    twin = copy.deepcopy(model)
    a = build_method(model, make_config(method="msam", msam_variant=variant, **PLAIN))
    b = build_method(twin, make_config(method="msam", msam_variant=variant, msam_dominant="fixed:m0", **PLAIN))
    for _ in range(3):
        ra, rb = a.train_step(inputs, labels), b.train_step(inputs, labels)
        assert ra["dominant"] == rb["dominant"] == rb["perturbed"] == ra["perturbed"] == "m0"
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_the_shapley_observation_is_made_and_logged_whatever_is_perturbed():
    model = make_model(n_mod=3)
    inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
    rows = {}
    for choice in ("shapley", "fixed:m1", "random", "alternate"):
        method = build_method(
            copy.deepcopy(model), make_config(method="msam", msam_variant="params", msam_dominant=choice)
        )
        rows[choice] = method.train_step(inputs, labels)  # same θ: the same observation
    keys = [f"{k}_m{m}" for k in ("shapley", "share") for m in range(3)] + ["dominant"]
    for choice, row in rows.items():
        assert {k: row[k] for k in keys} == {k: rows["shapley"][k] for k in keys}, choice
    assert rows["fixed:m1"]["perturbed"] == "m1" and rows["alternate"]["perturbed"] == "m0"


@pytest.mark.parametrize("choice", ["random", "alternate"])
def test_a_resumed_method_perturbs_the_same_modalities(choice):
    model = make_model(n_mod=3)
    inputs, labels = make_batch(n_mod=3, n=32, informative=(2.0, 0.3, 1.0))
    cfg = make_config(method="msam", msam_variant="params", msam_dominant=choice, seed=5)
    method = build_method(model, cfg)
    first = [method.train_step(inputs, labels)["perturbed"] for _ in range(4)]
    twin = copy.deepcopy(model)
    resumed = build_method(twin, cfg)
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    rest = [method.train_step(inputs, labels)["perturbed"] for _ in range(8)]
    assert [resumed.train_step(inputs, labels)["perturbed"] for _ in range(8)] == rest
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    if choice == "alternate":
        assert first + rest == ["m0", "m1", "m2"] * 4
    else:
        assert len(set(first + rest)) == 3  # 12 uniform draws of 3: all seen (p ≈ 0.98)
        fresh = build_method(make_model(n_mod=3), cfg)
        assert [fresh.train_step(inputs, labels)["perturbed"] for _ in range(4)] == first  # seeded by seed


def test_share_rules_softmax_and_loss_in_the_builtin_observation():
    model = make_model(n_mod=3).double()
    inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
    inputs = {m: x.double() for m, x in inputs.items()}
    obs = build_method(model, make_config(method="msam", share_rule="softmax", share_temperature=0.2)).observe(
        inputs, labels
    )
    np.testing.assert_allclose(obs.share, torch.softmax(torch.tensor(obs.phi) / 0.2, 0).numpy(), rtol=1e-12)
    obs = build_method(model, make_config(method="msam", share_rule="loss", share_temperature=0.7)).observe(
        inputs, labels
    )
    with torch.no_grad():  # each modality alone, the others zeroed
        alone = torch.stack([F.cross_entropy(model(inputs, {m}), labels) for m in model.modalities])
    np.testing.assert_allclose(obs.share, torch.softmax(-alone / 0.7, 0).numpy(), rtol=1e-10)
    assert model.modalities[obs.dominant] == "m0"  # m0 alone fits best


def test_a_run_with_the_ablation_options_records_both_modalities(tmp_path):
    run = msam_lab.train(
        {
            "dataset": "synthetic",
            "data": {"n_samples": 120},
            "epochs": 1,
            "batch_size": 30,
            "checkpoint_every": 0,
            "method": "msam",
            "msam_variant": "params",
            "msam_dominant": "alternate",
            "share_rule": "loss",
            "share_temperature": 0.5,
        },
        out=tmp_path / "run",
        quiet=True,
    )
    steps = run.steps
    assert list(steps["perturbed"]) == [f"m{i % 3}" for i in range(len(steps))]
    assert "dominant" in steps.columns and np.allclose(steps[["share_m0", "share_m1", "share_m2"]].sum(axis=1), 1)
    assert np.isfinite(run.epochs["test_share_m0"]).all()  # the epoch evaluation uses the loss rule too


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"msam_dominant": "fixed:m1"}, "changes nothing with msam_variant=default"),
        ({"msam_dominant": "first", "msam_variant": "params"}, "msam_dominant must be one of"),
        ({"share_temperature": 0.0}, "share_temperature must be > 0"),
        ({"share_rule": "rank"}, "share_rule must be one of clip, shift, softmax, loss"),
    ],
)
def test_bad_ablation_settings_are_one_line_config_errors(settings, words):
    with pytest.raises(ConfigError, match=words) as err:
        setup.resolve({"dataset": "synthetic", "method": "msam", **settings})
    assert "\n" not in str(err.value)


def test_a_fixed_modality_must_be_one_of_the_datasets():
    cfg = setup.resolve(
        {"dataset": "synthetic", "method": "msam", "msam_variant": "params", "msam_dominant": "fixed:audio"}
    )
    with pytest.raises(ConfigError, match=r"msam_dominant: 'fixed:audio' names no modality; use fixed:<one of m0"):
        build_method(make_model(n_mod=2), cfg)
