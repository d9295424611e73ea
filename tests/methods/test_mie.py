"""MIE / IGM's rules (msam_lab/methods/mie.py), each against an independent computation.

The reference step is written here with plain autograd on a copy of the model: mixup with
the method's λ and permutation, the per-tensor perturbation, the flat loss on a perturbed
COPY of the head, the weighted gradient; the projection against the eigen-decomposition of a
hand-made covariance.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msam_lab
from msam_lab.config import ConfigError
from msam_lab.methods import build_method
from msam_lab.methods.mie import mean_softmax_logits, mixup_draw, soft_projection
from msam_lab.models.multimodal import MultimodalModel, SumFusion, build_model, eval_mode
from msam_lab.training import setup


def tiny_model(n_mod=2, dim=6, n_classes=3, seed=0):
    torch.manual_seed(seed)
    return build_model({f"m{m}": (dim,) for m in range(n_mod)}, n_classes, "late_sum", feature_dim=8, hidden_dim=16)


def tiny_batch(n_mod=2, n=24, dim=6, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    means = torch.randn(n_classes, dim, generator=g)
    return {f"m{m}": 2.0 * means[labels] + torch.randn(n, dim, generator=g) for m in range(n_mod)}, labels


def mie_config(**kw):
    """lr = momentum = weight decay = 0 unless given: a step leaves the weights and the grads readable."""
    base = {
        "dataset": "synthetic",
        "method": "mie",
        "lr": 0.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "mie_stage_steps": 100,
    }
    return setup.resolve({**base, **kw})


def with_random_heads(model, seed=1):
    """Heads with large random values, so every gradient of the reference step is far from zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.fusion.heads:
            for p in head.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def reference_step(model, m, x, y, lam, perm, rho, w_ori=0.7, w_flat=0.3):
    """The MIE step of learner m by hand, on a copy: losses, g = ∇L_ori, ε, and the update's gradient."""
    ref = copy.deepcopy(model)
    enc, head = ref.encoders[f"m{m}"], ref.fusion.heads[m]
    enc_params, head_params = list(enc.parameters()), list(head.parameters())
    params = enc_params + head_params
    x_mix = lam * x + (1 - lam) * x[perm]
    feats = enc(x_mix)
    out = head(feats)
    loss_ori = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
    g_ori = torch.autograd.grad(loss_ori, params, retain_graph=True)
    eps = [rho * g / g.norm() for g in g_ori]
    moved = copy.deepcopy(head)  # the head at θ+ε, a separate module
    with torch.no_grad():
        for q, e in zip(moved.parameters(), eps[len(enc_params) :]):
            q.add_(e)
    loss_flat = F.cross_entropy(moved(feats), y)  # pre-perturbation features, un-mixed labels
    g_flat = torch.autograd.grad(loss_flat, enc_params + list(moved.parameters()), retain_graph=True)
    grad = [w_ori * a + w_flat * b for a, b in zip(g_ori, g_flat)]
    return {
        "loss_ori": loss_ori.detach(),
        "loss_flat": loss_flat.detach(),
        "g_ori": g_ori,
        "eps": eps,
        "grad": grad,
        "x_mix": x_mix,
        "feats": feats,
        "moved": moved,
    }


def learner(model, m):
    return list(model.encoders[f"m{m}"].parameters()) + list(model.fusion.heads[m].parameters())


def next_draw(method, n):
    """The λ and permutation the method's next step will draw (on a copy of its generator)."""
    return mixup_draw(copy.deepcopy(method.rng), n, method.options.mie_mixup_alpha)


# -- the schedule ---------------------------------------------------------------------
def test_stages_alternate_by_epochs_and_only_the_active_learner_trains():
    model = with_random_heads(tiny_model())
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(lr=0.1, mie_stage_steps=0, mie_stage_epochs=[1, 2], mie_order=["m1", "m0"]))
    with_random_heads(model)
    seen = []
    for epoch in range(6):
        method.start_epoch(epoch)
        seen.append(method.schedule())
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        row = method.step(inputs, labels)
        active = 1 if row["active"] == "m1" else 0
        for n, p in model.named_parameters():
            mine = n.startswith(f"encoders.m{active}.") or n.startswith(f"fusion.heads.{active}.")
            assert (p.grad is not None) == mine, n
            assert (not torch.equal(p, before[n])) == mine, n
    # (stage, covariance pass): m1 one epoch, m0 two (the pass only in a stage's last epoch), again
    assert seen == [(0, True), (1, False), (1, True), (2, True), (3, False), (3, True)]
    assert [method.model.modalities[method.active_modality(s)] for s, _ in seen] == ["m1", "m0", "m0", "m1", "m0", "m0"]


def test_stages_counted_in_steps_visit_the_order():
    model = tiny_model(n_mod=3)
    inputs, labels = tiny_batch(n_mod=3)
    method = build_method(model, mie_config(lr=0.1, mie_stage_steps=2, mie_order=["m2", "m0", "m1"]))
    rows = [method.step(inputs, labels) for _ in range(7)]
    assert [r["active"] for r in rows] == ["m2", "m2", "m0", "m0", "m1", "m1", "m2"]
    assert [r["stage"] for r in rows] == [0, 0, 1, 1, 2, 2, 3]
    for col in ("loss", "dominant", "shapley_m0", "share_m2", "lambda_mix", "loss_ori", "loss_flat"):
        assert col in rows[0], col


# -- mixup, the perturbation, the flat loss, the weighting -----------------------------
def test_mixup_mixes_the_active_inputs_and_weights_the_labels_by_lambda():
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(mie_rho=0.0))
    with_random_heads(model)
    lam, perm = next_draw(method, len(labels))
    ref = reference_step(model, 0, inputs["m0"], labels, lam, torch.as_tensor(perm), rho=0.0)
    row = method.step(inputs, labels)
    assert row["lambda_mix"] == lam and 0.05 < lam < 0.95  # a real mix (seeded draw)
    assert row["loss_ori"] == pytest.approx(float(ref["loss_ori"]), rel=1e-6)
    with torch.no_grad():  # the wrong rules give other numbers
        out = model.fusion.heads[0](model.encoders["m0"](inputs["m0"]))
        assert abs(row["loss_ori"] - float(F.cross_entropy(out, labels))) > 1e-3  # no mixing
        mixed = model.fusion.heads[0](model.encoders["m0"](ref["x_mix"]))
        assert abs(row["loss_ori"] - float(F.cross_entropy(mixed, labels))) > 1e-3  # labels not mixed


def test_perturbation_is_rho_times_each_tensors_own_unit_gradient():
    rho = 0.05
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(mie_rho=rho))  # lr 0: the step is ε alone
    with_random_heads(model)
    lam, perm = next_draw(method, len(labels))
    ref = reference_step(model, 0, inputs["m0"], labels, lam, torch.as_tensor(perm), rho=rho)
    before = [p.detach().clone() for p in learner(model, 0)]
    method.step(inputs, labels)
    deltas = [p.detach() - b for p, b in zip(learner(model, 0), before)]
    assert len(deltas) > 2
    for d, e in zip(deltas, ref["eps"]):
        assert torch.allclose(d, e, atol=1e-6)
        assert float(d.norm()) == pytest.approx(rho, rel=1e-3)  # a global norm would make each smaller
    total = math.sqrt(sum(float(d.norm()) ** 2 for d in deltas))
    assert total > 2 * rho


def test_restore_undoes_the_perturbation_before_the_update():
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(mie_rho=0.05, mie_restore=True))
    before = [p.detach().clone() for p in model.parameters()]
    method.step(inputs, labels)  # lr 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_flat_loss_is_the_perturbed_head_on_pre_perturbation_features_with_unmixed_labels():
    rho = 0.5
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(mie_rho=rho))
    with_random_heads(model)
    lam, perm = next_draw(method, len(labels))
    ref = reference_step(model, 0, inputs["m0"], labels, lam, torch.as_tensor(perm), rho=rho)
    head_at_theta = copy.deepcopy(model.fusion.heads[0])
    row = method.step(inputs, labels)
    assert row["loss_flat"] == pytest.approx(float(ref["loss_flat"]), rel=1e-6)
    with torch.no_grad():
        # the features of the perturbed encoder, or the mixed labels, would give other values
        f_eps = model.encoders["m0"](ref["x_mix"])  # the method left θ+ε in place (restore off)
        assert abs(row["loss_flat"] - float(F.cross_entropy(ref["moved"](f_eps), labels))) > 1e-4
        out = ref["moved"](ref["feats"])
        mixed = lam * F.cross_entropy(out, labels) + (1 - lam) * F.cross_entropy(out, labels[perm])
        assert abs(row["loss_flat"] - float(mixed)) > 1e-3
        assert abs(row["loss_flat"] - float(F.cross_entropy(head_at_theta(ref["feats"]), labels))) > 1e-4


def test_update_gradient_is_point_seven_ori_plus_point_three_flat():
    rho = 0.2
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(mie_rho=rho))
    with_random_heads(model)
    lam, perm = next_draw(method, len(labels))
    ref = reference_step(model, 0, inputs["m0"], labels, lam, torch.as_tensor(perm), rho=rho)
    swapped = reference_step(model, 0, inputs["m0"], labels, lam, torch.as_tensor(perm), rho=rho, w_ori=0.3, w_flat=0.7)
    row = method.step(inputs, labels)
    assert row["loss"] == pytest.approx(0.7 * float(ref["loss_ori"]) + 0.3 * float(ref["loss_flat"]), rel=1e-6)
    for p, want, wrong in zip(learner(model, 0), ref["grad"], swapped["grad"]):
        assert torch.allclose(p.grad, want, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(p.grad, wrong, rtol=1e-3, atol=1e-6)


# -- ρ is a real knob --------------------------------------------------------------------
def _trained(rho, restore=False, steps=3):
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, mie_config(lr=0.1, momentum=0.9, mie_rho=rho, mie_restore=restore))
    for _ in range(steps):
        method.step(inputs, labels)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_released_rho_1e_10_is_nil_and_a_real_rho_changes_the_update():
    zero = _trained(0.0)
    assert torch.allclose(_trained(1e-10), zero, rtol=1e-5, atol=1e-7)
    assert torch.allclose(_trained(1e-10, restore=True), zero, rtol=1e-5, atol=1e-7)
    real = _trained(0.05)
    assert (real - zero).abs().max() > 1e-3
    assert (_trained(0.05, restore=True) - real).abs().max() > 1e-3  # leaving θ+ε in place matters


# -- the projection ------------------------------------------------------------------------
def test_soft_projection_is_v_exp_of_the_normalised_spectrum_v_transposed():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    lam = torch.tensor([5.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    cov = (q @ torch.diag(lam) @ q.t()).float()
    want = q @ torch.diag(torch.exp(-0.4 * (lam - 0.5) / 4.5)) @ q.t()
    got = soft_projection(cov, 0.4)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert not torch.allclose(got.double(), q @ torch.diag(torch.exp(-0.4 * lam / 5.0)) @ q.t(), atol=1e-3)
    assert torch.allclose(soft_projection(torch.eye(3) * 2.0, 0.4), torch.eye(3))  # flat spectrum: no change


def two_kinds_model(n_classes=3):
    """m0: conv, Linear(32→8) (shape of m1's), Linear(8→7); m1: conv (same shape), dropout, Linear(32→8).

    The dropout makes train and eval mode differ: the covariance is the eval-mode one.
    """
    torch.manual_seed(0)
    enc0 = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU()
    )
    enc1 = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(32, 8), nn.ReLU()
    )
    return MultimodalModel({"m0": enc0, "m1": enc1}, SumFusion([7, 8], n_classes), {"m0": (1, 4, 4), "m1": (1, 4, 4)})


def test_projection_right_multiplies_only_shape_matching_linear_weights():
    model = two_kinds_model()
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(12) % 3
    inputs = {m: torch.randn(12, 1, 4, 4, generator=g) for m in ("m0", "m1")}
    method = build_method(model, mie_config(mie_rho=0.0, mie_stage_steps=1, mie_order=["m1", "m0"]))
    with_random_heads(model)
    method.step(inputs, labels)  # stage 0: m1 (lr 0), its covariances collected
    with torch.no_grad(), eval_mode(model):  # m1's Linear inputs by hand: batch mean, outer product
        x1 = model.encoders["m1"][:4](inputs["m1"]).mean(0, keepdim=True)
        x2 = model.encoders["m1"](inputs["m1"]).mean(0, keepdim=True)
    lam, perm = next_draw(method, len(labels))
    ref = reference_step(model, 0, inputs["m0"], labels, lam, torch.as_tensor(perm), rho=0.0)
    row = method.step(inputs, labels)  # stage 1: m0, projected by m1's P
    assert row["active"] == "m0" and row["stage"] == 1
    p_enc = soft_projection(x1.t() @ x1, 0.4)
    assert torch.allclose(method.projections[0], p_enc, atol=1e-6)
    assert torch.allclose(method.projections[1], soft_projection(x2.t() @ x2, 0.4), atol=1e-6)
    raw = dict(
        zip([n for n, _ in model.named_parameters() if n.startswith(("encoders.m0.", "fusion.heads.0."))], ref["grad"])
    )
    grads = {n: p.grad for n, p in model.named_parameters() if n in raw}
    matched = "encoders.m0.3.weight"  # Linear(32→8), the shape of m1's first Linear
    assert torch.allclose(grads[matched], raw[matched] @ p_enc, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads[matched], raw[matched], rtol=1e-3, atol=1e-6)
    for n in raw:  # conv (same shape as m1's), biases, other Linears
        if n != matched:
            assert torch.allclose(grads[n], raw[n], rtol=1e-5, atol=1e-7), n


# -- state, config, training ------------------------------------------------------------------
def test_state_dict_round_trip_continues_identically():
    model = tiny_model()
    inputs, labels = tiny_batch()
    cfg = mie_config(lr=0.1, momentum=0.9, mie_rho=0.05, mie_stage_steps=3)
    method = build_method(model, cfg)
    for _ in range(4):  # mid stage 1: projections from m0, covariances of m1
        method.step(inputs, labels)
    assert method.cov and method.projections
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    twin_model = tiny_model(seed=5)
    twin = build_method(twin_model, cfg)
    twin_model.load_state_dict(saved["model"])
    fresh_lam = next_draw(twin, len(labels))[0]
    twin.load_state_dict(saved["method"])
    assert next_draw(twin, len(labels))[0] == next_draw(method, len(labels))[0] != fresh_lam
    for _ in range(5):  # through stage 2, whose P comes from the saved covariance
        a, b = method.step(inputs, labels), twin.step(inputs, labels)
        assert a == b
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)
    assert all(torch.equal(method.projections[k], twin.projections[k]) for k in method.projections)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"fusion": "late_concat"}, "fusion=late_sum"),
        ({"mie_ori_weight": 1.5}, r"mie_ori_weight must be in \[0, 1\]"),
        ({"mie_flat_weight": -0.1}, r"mie_flat_weight must be in \[0, 1\]"),
        ({"mie_ori_weight": 0.0, "mie_flat_weight": 0.0}, "both 0"),
        ({"mie_stage_epochs": []}, "mie_stage_epochs"),
        ({"mie_stage_epochs": [25, 0]}, "mie_stage_epochs"),
        ({"mie_stage_epochs": ["a"]}, "mie_stage_epochs"),
        ({"mie_stage_steps": -1}, "mie_stage_steps"),
        ({"mie_rho": -1.0}, "mie_rho must be >= 0"),
        ({"mie_temperature": -0.4}, "mie_temperature"),
        ({"mie_order": ["m0", "m0"]}, "mie_order"),
    ],
)
def test_bad_config_is_a_one_line_error(values, match):
    with pytest.raises(ConfigError, match=match) as err:
        setup.resolve({"dataset": "synthetic", "method": "mie", **values})
    assert len(str(err.value).splitlines()) == 1


def test_an_order_naming_other_modalities_is_refused_at_build():
    with pytest.raises(ConfigError, match="mie_order must list each modality once: m0, m1"):
        build_method(
            tiny_model(), setup.resolve({"dataset": "synthetic", "method": "mie", "mie_order": ["m0", "audio"]})
        )


def test_mean_softmax_logits_give_the_mean_of_the_unimodal_softmaxes():
    model = with_random_heads(tiny_model())
    inputs, _ = tiny_batch()
    with torch.no_grad():
        feats = model.encode(inputs)
        want = sum(F.softmax(h(f), 1) for h, f in zip(model.fusion.heads, feats)) / 2
        assert torch.allclose(F.softmax(mean_softmax_logits(model, inputs), 1), want, atol=1e-6)


def test_mie_trains_on_synthetic(tmp_path):
    run = msam_lab.train(
        {
            "dataset": "synthetic",
            "method": "mie",
            "data": {"n_samples": 160},
            "epochs": 2,
            "batch_size": 40,
            "checkpoint_every": 0,
            "mie_stage_epochs": [1],
            "mie_rho": 0.05,
        },
        out=tmp_path / "mie",
        quiet=True,
    )
    assert run.epochs["test_acc"].map(math.isfinite).all()
    assert list(run.steps.groupby("epoch")["active"].first()) == ["m0", "m1"]
    for col in ("stage", "lambda_mix", "loss_ori", "loss_flat", "shapley_m0", "share_m1"):
        assert col in run.steps.columns, col
