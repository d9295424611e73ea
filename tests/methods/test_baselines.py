"""The baselines' rules (OGM-GE, AGM, CGGM, ReconBoost, unimodal), their training, and sweeps.

Each rule is checked against an independent computation written here (plain autograd
on a copy of the model, the formula by hand), never against numbers the code produced.
"""

from __future__ import annotations

import argparse
import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import msam_lab
from msam_lab.cli import sweep as cli_sweep
from msam_lab.config import ConfigError
from msam_lab.experiments import cells as cells_mod
from msam_lab.experiments import sweep
from msam_lab.methods import build_method
from msam_lab.methods.agm import agm_coefficients
from msam_lab.methods.cggm import cggm_coefficients
from msam_lab.methods.ogm_ge import ogm_coefficients
from msam_lab.methods.unimodal_logits import unimodal_logits
from msam_lab.models.multimodal import build_model
from msam_lab.runs import migrate
from msam_lab.training import setup


# -- fixtures ----------------------------------------------------------------------
def tiny_model(fusion="late_sum", n_mod=2, dim=6, n_classes=3, seed=0, hidden=16):
    torch.manual_seed(seed)
    return build_model({f"m{m}": (dim,) for m in range(n_mod)}, n_classes, fusion, feature_dim=8, hidden_dim=hidden)


def tiny_batch(n_mod=2, n=48, dim=6, n_classes=3, seed=0, strength=(3.0, 0.2, 1.0)):
    """Modality m carries the label with strength[m]: m0 strong, m1 nearly noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    means = torch.randn(n_classes, dim, generator=g)
    inputs = {f"m{m}": strength[m] * means[labels] + torch.randn(n, dim, generator=g) for m in range(n_mod)}
    return inputs, labels


def frozen_config(method, **kw):
    """lr = momentum = weight decay = 0: a step leaves the weights alone and the grads readable."""
    base = {"dataset": "synthetic", "method": method, "lr": 0.0, "momentum": 0.0, "weight_decay": 0.0}
    return setup.resolve({**base, **kw})


def plain_grads(model, inputs, labels, params):
    """Gradient of the fused cross-entropy, computed on a copy with autograd."""
    ref = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    ref_params = dict(ref.named_parameters())
    loss = F.cross_entropy(ref(inputs), labels)
    grads = torch.autograd.grad(loss, [ref_params[names[i]] for i in params], allow_unused=True)
    return grads


def close(a, b, tol=1e-5):
    """Equal up to float32 rounding (relative tol, plus a small absolute floor)."""
    return torch.allclose(a, b, rtol=tol, atol=tol * 1e-1)


# -- the unimodal-logits helper ----------------------------------------------------
def test_unimodal_logits_late_sum_are_the_heads_and_sum_to_the_fused():
    model = tiny_model("late_sum", n_mod=3)
    inputs, _ = tiny_batch(n_mod=3)
    feats = model.encode(inputs)
    out = unimodal_logits(model, feats)
    for m, f in enumerate(feats):
        assert close(out[m], f @ model.fusion.heads[m].weight.t() + model.fusion.heads[m].bias)
    assert close(sum(out), model.fuse(feats))


def test_unimodal_logits_late_concat_use_the_weight_block_and_bias_over_m():
    model = tiny_model("late_concat", n_mod=3)
    inputs, _ = tiny_batch(n_mod=3)
    feats = model.encode(inputs)
    out = unimodal_logits(model, feats)
    w, b = model.fusion.head.weight, model.fusion.head.bias
    for m, f in enumerate(feats):
        assert close(out[m], f @ w[:, 8 * m : 8 * (m + 1)].t() + b / 3)
    assert close(sum(out), model.fuse(feats))
    out[1].sum().backward()  # differentiable into the head block and the encoder
    assert w.grad[:, 8:16].abs().sum() > 0 and w.grad[:, :8].abs().sum() == 0


def test_unimodal_logits_early_fusion_is_the_model_with_only_m_present():
    model = tiny_model("early", n_mod=3).eval()
    inputs, _ = tiny_batch(n_mod=3)
    out = unimodal_logits(model, model.encode(inputs))
    for m in range(3):
        assert close(out[m], model(inputs, present={f"m{m}"}), 1e-5)


# -- OGM-GE ------------------------------------------------------------------------
def test_ogm_coefficients_are_eq10_one_minus_tanh_alpha_rho():
    """Paper Eq. (10) and GeWu-Lab/OGM-GE_CVPR2022 main.py: k = 1 − tanh(α·ρ) for ρ > 1, else 1
    (the code's ``relu(ratio)`` is a no-op inside that branch)."""
    alpha = 0.5
    k = ogm_coefficients([30.0, 10.0], alpha)
    assert k[0] == pytest.approx(1 - math.tanh(alpha * 3.0)) and k[1] == 1.0
    assert k[0] != pytest.approx(1 - math.tanh(alpha * 2.0))  # not the 1 − tanh(α(ρ−1)) variant
    assert list(ogm_coefficients([10.0, 30.0], alpha)) == pytest.approx([1.0, 1 - math.tanh(1.5)])
    # M = 3: each modality against the weakest one
    k3 = ogm_coefficients([6.0, 3.0, 2.0], alpha)
    assert list(k3) == pytest.approx([1 - math.tanh(alpha * 3), 1 - math.tanh(alpha * 1.5), 1.0])
    assert list(ogm_coefficients([4.0, 4.0], alpha)) == [1.0, 1.0]


@pytest.mark.parametrize("fusion", ["late_concat", "late_sum"])
def test_ogm_scales_the_stronger_encoder_by_the_coefficient_and_leaves_the_weaker(fusion):
    alpha = 0.3
    model = tiny_model(fusion)
    inputs, labels = tiny_batch()
    # scores by hand: softmax of each modality's own logits, summed true-class probability
    with torch.no_grad():
        feats = model.encode(inputs)
        if fusion == "late_concat":
            w, b = model.fusion.head.weight, model.fusion.head.bias
            own = [feats[0] @ w[:, :8].t() + b / 2, feats[1] @ w[:, 8:].t() + b / 2]
        else:
            own = [h(f) for h, f in zip(model.fusion.heads, feats)]
        score = [float(F.softmax(o, 1)[torch.arange(len(labels)), labels].sum()) for o in own]
    strong, weak = (0, 1) if score[0] > score[1] else (1, 0)
    k = 1 - math.tanh(alpha * score[strong] / score[weak])

    names = [n for n, _ in model.named_parameters()]
    idx = {m: [i for i, n in enumerate(names) if n.startswith(f"encoders.m{m}.")] for m in (0, 1)}
    head_idx = [i for i, n in enumerate(names) if n.startswith("fusion.")]
    ref = plain_grads(model, inputs, labels, range(len(names)))
    method = build_method(model, frozen_config("ogm_ge", ogm_alpha=alpha, ogm_noise=False))
    row = method.step(inputs, labels)
    params = list(model.parameters())
    assert row[f"coef_m{strong}"] == pytest.approx(k) and row[f"coef_m{weak}"] == 1.0
    assert k < 0.95
    for i in idx[weak] + head_idx:
        assert close(params[i].grad, ref[i]), names[i]
    for i in idx[strong]:
        assert close(params[i].grad, k * ref[i]), names[i]
        assert not close(params[i].grad, ref[i])


def test_ogm_outside_its_epoch_window_is_plain_joint_training():
    model = tiny_model("late_concat")
    inputs, labels = tiny_batch()
    ref = plain_grads(model, inputs, labels, range(len(list(model.parameters()))))
    method = build_method(model, frozen_config("ogm_ge", ogm_start_epoch=0, ogm_end_epoch=2))
    method.start_epoch(3)
    row = method.step(inputs, labels)
    assert row["coef_m0"] == row["coef_m1"] == 1.0
    for p, g in zip(model.parameters(), ref):
        assert close(p.grad, g)


def test_ogm_ge_noise_has_the_gradients_own_std():
    model = tiny_model("late_concat", hidden=128)
    inputs, labels = tiny_batch()
    first = "encoders.m1.net.1.weight"  # 128 x 6 weights
    i = [n for n, _ in model.named_parameters()].index(first)
    ref = plain_grads(model, inputs, labels, [i])[0]
    # α = 0 makes every coefficient 1 − tanh(0) = 1, so what remains is the GE noise alone
    method = build_method(model, frozen_config("ogm_ge", ogm_alpha=0.0, ogm_noise=True))
    method.step(inputs, labels)
    noise = dict(model.named_parameters())[first].grad - ref
    assert noise.abs().max() > 0
    assert noise.std().item() == pytest.approx(ref.std().item(), rel=0.2)
    assert abs(noise.mean().item()) < 0.2 * ref.std().item()


# -- AGM ---------------------------------------------------------------------------
def test_agm_decomposed_logits_sum_to_the_fused_logits_with_gradient():
    for n_mod, fusion in [(2, "late_concat"), (3, "early")]:
        model = tiny_model(fusion, n_mod=n_mod)
        inputs, _ = tiny_batch(n_mod=n_mod)
        method = build_method(model, frozen_config("agm"))
        feats = model.encode(inputs)
        per = method.decomposed(feats)
        assert per.shape[0] == n_mod and per.requires_grad
        assert close(per.sum(0), model.fuse(feats), 1e-5)
    # two modalities: out_a = ½[f(a,v) − f(0,v) + f(a,0)] through whole-network passes
    model = tiny_model("late_concat")
    inputs, _ = tiny_batch()
    per = build_method(model, frozen_config("agm")).decomposed(model.encode(inputs))
    f_av, f_a, f_v = model(inputs), model(inputs, present={"m0"}), model(inputs, present={"m1"})
    assert close(per[0], 0.5 * (f_av - f_v + f_a), 1e-5)
    assert close(per[1], 0.5 * (f_av - f_a + f_v), 1e-5)


def test_agm_coefficients_move_against_the_modality_ahead_of_its_history():
    alpha, clip = 1.0, 7.0
    balanced = [1.0, 1.0]
    # m0's loss is lower than m1's now, while the history is balanced: slow m0, speed m1
    k = agm_coefficients([0.5, 1.5], balanced, alpha, clip)
    assert k[0] < 1 < k[1]
    assert k[0] == pytest.approx(math.exp(alpha * (1 - math.exp(1.0))))
    assert k[1] == pytest.approx(math.exp(alpha * (1 - math.exp(-1.0))))
    # history favoured m0 (its running loss lower); now they are level: m0 fell behind, speed it up
    k = agm_coefficients([1.0, 1.0], [0.5, 1.5], alpha, clip)
    assert k[0] > 1 > k[1]
    # three modalities, m0 ahead now: the two others are sped up alike
    k = agm_coefficients([0.2, 1.0, 1.0], [1.0, 1.0, 1.0], alpha, clip)
    assert k[0] < 1 < k[1] and k[1] == pytest.approx(k[2])
    assert list(agm_coefficients([0.2, 3.0], balanced, 0.0, clip)) == [1.0, 1.0]
    assert agm_coefficients([5.0, 0.0], [0.0, 5.0], alpha, 2.0)[0] == pytest.approx(math.exp(2.0))


def test_agm_step_scales_the_gradient_through_each_out_m_by_its_coefficient():
    alpha = 10.0
    model = tiny_model("late_concat")
    inputs, labels = tiny_batch()
    ref = copy.deepcopy(model)
    f_av, f_a, f_v = ref(inputs), ref(inputs, present={"m0"}), ref(inputs, present={"m1"})
    out = [0.5 * (f_av - f_v + f_a), 0.5 * (f_av - f_a + f_v)]
    s = [
        float(-F.log_softmax(o.detach(), 1)[torch.arange(len(labels)), labels].clamp(min=math.log(1e-8)).mean())
        for o in out
    ]
    # first step: running scores 0, so η = 1; r_m = exp(s_other − s_m)
    k = [math.exp(alpha * min(1 - math.exp(s[1] - s[0]), 7.0)), math.exp(alpha * min(1 - math.exp(s[0] - s[1]), 7.0))]
    fused = out[0] + out[1]
    g = torch.autograd.grad(F.cross_entropy(fused, labels), fused, retain_graph=True)[0]
    expected = torch.autograd.grad(k[0] * (out[0] * g).sum() + k[1] * (out[1] * g).sum(), list(ref.parameters()))

    method = build_method(model, frozen_config("agm", agm_alpha=alpha))
    row = method.step(inputs, labels)
    assert [row["coef_m0"], row["coef_m1"]] == pytest.approx(k)
    assert abs(k[0] - 1) > 0.05
    for p, e in zip(model.parameters(), expected):
        assert close(p.grad, e, 1e-4)
    assert list(method.running) == pytest.approx(s, rel=1e-5)  # running mean after one step


def test_agm_with_unit_coefficients_is_joint_training():
    model = tiny_model("early", n_mod=3)
    inputs, labels = tiny_batch(n_mod=3)
    ref = plain_grads(model, inputs, labels, range(len(list(model.parameters()))))
    method = build_method(model, frozen_config("agm", agm_alpha=0.0))
    method.step(inputs, labels)
    for p, g in zip(model.parameters(), ref):
        assert close(p.grad, g, 1e-5)


# -- CGGM --------------------------------------------------------------------------
def test_cggm_coefficients_follow_the_accuracy_change_formula():
    b = cggm_coefficients([0.5, 0.2], [0.7, 0.3])
    assert list(b) == pytest.approx([(0.3 - 0.2) / 0.3, (0.3 - 0.1) / 0.3])
    b = cggm_coefficients([0.0, 0.0, 0.0], [0.6, 0.3, 0.1])
    assert list(b) == pytest.approx([0.4, 0.7, 0.9])
    assert list(cggm_coefficients([0.4, 0.4], [0.4, 0.4])) == pytest.approx([1.0, 1.0])


def test_cggm_published_coefficients_explode_when_the_accuracy_changes_cancel():
    # batch 64: one sample more right for m0, one fewer for m1, Σ diff = 0 -> B = 1 ∓ (1/64)/1e-8
    b = cggm_coefficients([0.5, 0.5], [0.5 + 1 / 64, 0.5 - 1 / 64])
    assert list(b) == pytest.approx([1 - 1.5625e6, 1 + 1.5625e6], rel=1e-9)
    assert list(cggm_coefficients([0.5, 0.5], [0.5 + 1 / 64, 0.5 - 1 / 64], bound=1.0)) == [0.0, 1.0]


ACC = st.integers(0, 64)


@settings(max_examples=300, deadline=None)
@given(
    n=st.sampled_from([16, 64, 128]),
    prev=st.lists(ACC, min_size=2, max_size=4),
    step=st.lists(st.integers(-8, 8), min_size=4, max_size=4),
    bound=st.sampled_from([0.5, 1.0, 2.0, 7.0]),
)
@example(n=64, prev=[32, 32], step=[1, -1, 0, 0], bound=1.0)  # exact cancellation
@example(n=64, prev=[32, 32, 10], step=[3, -1, -2, 0], bound=1.0)
def test_cggm_guarded_coefficients_stay_in_bounds_and_keep_the_published_rule_there(n, prev, step, bound):
    """Accuracies are counts/n as on a batch of n, so Σ diff = 0 with diff ≠ 0 really occurs."""
    acc_prev = np.array(prev) / n
    acc_now = np.clip(np.array(prev) + step[: len(prev)], 0, n) / n
    published = cggm_coefficients(acc_prev, acc_now)
    guarded = cggm_coefficients(acc_prev, acc_now, bound=bound)
    assert np.all((guarded >= 0) & (guarded <= bound))
    inside = (published >= 0) & (published <= bound)
    assert np.array_equal(guarded[inside], published[inside])  # the published rule, bit for bit
    assert np.all(guarded[published < 0] == 0) and np.all(guarded[published > bound] == bound)
    diff = acc_now - acc_prev
    if bound >= 1 and (np.all(diff >= 0) and diff.sum() > 0):
        assert np.array_equal(guarded, published)  # all improved: B is the others' fraction of the gain
    if len(prev) == 2 and bound == 1.0 and np.any(diff != 0):
        assert guarded.sum() == pytest.approx(1.0, abs=1e-5)  # two modalities: modulation moved, not added


def test_cggm_step_scales_encoders_by_rho_b_and_adds_the_direction_term():
    rho, lam = 1.3, 0.5
    model = tiny_model("late_sum")
    inputs, labels = tiny_batch()
    names = [n for n, _ in model.named_parameters()]
    method = build_method(model, frozen_config("cggm", cggm_rho=rho, cggm_lambda=lam, cggm_clip=0.0))
    assert all(p.device == next(model.parameters()).device for p in method.aux.parameters())
    with torch.no_grad():
        feats = model.encode(inputs)
        acc = [float((head(f).argmax(1) == labels).float().mean()) for head, f in zip(method.aux, feats)]
    diff = np.array(acc)  # previous accuracies start at 0
    b = (diff.sum() + 1e-8 - diff) / (diff.sum() + 1e-8)
    ref = plain_grads(model, inputs, labels, range(len(names)))
    row = method.step(inputs, labels)
    assert [row["coef_m0"], row["coef_m1"]] == pytest.approx(list(b))
    params = list(model.parameters())
    for i, n in enumerate(names):
        m = n.split(".")[1]
        want = rho * b[int(m[1])] * ref[i] if n.startswith("encoders.") else ref[i]
        assert close(params[i].grad, want), n

    # second step: the fusion weights get λ·∂L_gm/∂w, L_gm = (Σ|B| − Σ B_m cos(w_aux_m, w_fus_m)) / M
    ref2 = plain_grads(model, inputs, labels, range(len(names)))
    heads = [model.fusion.heads[m].weight.detach().clone().requires_grad_(True) for m in range(2)]
    cos = [
        (a.out_layer.weight.detach() * w).sum() / (a.out_layer.weight.detach().norm() * w.norm())
        for a, w in zip(method.aux, heads)
    ]
    l_gm = (np.abs(b).sum() - sum(float(bm) * c for bm, c in zip(b, cos))) / 2
    extra = torch.autograd.grad(l_gm, heads)
    row2 = method.step(inputs, labels)
    assert row2["l_gm"] == pytest.approx(float(l_gm.detach()), rel=1e-5)
    for m in range(2):
        assert close(
            model.fusion.heads[m].weight.grad, ref2[names.index(f"fusion.heads.{m}.weight")] + lam * extra[m], 1e-5
        )
        assert extra[m].abs().max() > 1e-4


@pytest.mark.parametrize("guard", [True, False])
def test_cggm_guard_bounds_the_encoder_scaling_on_a_cancelling_step(guard):
    rho = 1.3
    model = tiny_model("late_sum")
    inputs, labels = tiny_batch()
    method = build_method(model, frozen_config("cggm", cggm_rho=rho, cggm_lambda=0.0, cggm_clip=0.0, cggm_guard=guard))
    with torch.no_grad():
        feats = model.encode(inputs)
        acc = np.array([float((head(f).argmax(1) == labels).float().mean()) for head, f in zip(method.aux, feats)])
    method.acc_prev = acc + np.array([-1, 1]) / len(labels)  # m0 gains one sample, m1 loses one: Σ diff = 0
    ref = plain_grads(model, inputs, labels, range(len(list(model.parameters()))))
    row = method.step(inputs, labels)
    huge = (1 / len(labels)) / 1e-8
    want = [0.0, 1.0] if guard else [1 - huge, 1 + huge]  # guarded: the gaining encoder pauses
    assert [row["coef_m0"], row["coef_m1"]] == pytest.approx(want, rel=1e-6)
    for (name, p), g in zip(model.named_parameters(), ref):
        if name.startswith("encoders."):
            assert close(p.grad, rho * want[int(name.split(".")[1][1])] * g, 1e-4), name


def test_cggm_old_runs_without_the_guard_field_resume_unguarded():
    # a format-1 config.json (every baseline option, no format_version) written before the guard existed
    stored = migrate.as_format_1(setup.resolve({"dataset": "synthetic", "method": "cggm"}).to_dict())
    del stored["cggm_guard"]
    assert "format_version" not in stored and "agm_alpha" in stored
    assert migrate.stored_config(stored).method_options["cggm_guard"] is False
    assert setup.resolve(migrate.config_values(stored)).method_options["cggm_guard"] is False  # resume's path
    assert setup.resolve({"dataset": "synthetic", "method": "cggm"}).method_options["cggm_guard"] is True
    with pytest.raises(ConfigError, match="cggm_bound must be > 0"):
        setup.resolve({"dataset": "synthetic", "method": "cggm", "cggm_bound": 0.0})


def test_cggm_state_dict_carries_the_aux_classifiers():
    model = tiny_model("late_concat")
    inputs, labels = tiny_batch()
    cfg = setup.resolve({"dataset": "synthetic", "method": "cggm"})
    method = build_method(model, cfg)
    method.step(inputs, labels)
    state = copy.deepcopy(method.state_dict())
    other = build_method(copy.deepcopy(model), cfg)
    other.load_state_dict(state)
    for p, q in zip(method.aux.parameters(), other.aux.parameters()):
        assert torch.equal(p, q)
    assert list(other.acc_prev) == list(method.acc_prev)
    assert other.pending["coef"] == method.pending["coef"]


# -- ReconBoost --------------------------------------------------------------------
def test_reconboost_visits_modalities_in_its_stage_order():
    model = tiny_model("late_sum", n_mod=3)
    inputs, labels = tiny_batch(n_mod=3)
    method = build_method(
        model,
        setup.resolve(
            {
                "dataset": "synthetic",
                "method": "reconboost",
                "recon_stage_steps": 2,
                "recon_correct_steps": 1,
                "recon_order": ["m1", "m0", "m2"],
            }
        ),
    )
    rows, ensembles = [], []
    for _ in range(10):
        rows.append(method.step(inputs, labels))
        ensembles.append(list(method.ensemble))
    assert [r["active"] for r in rows] == ["m1", "m1", "ensemble", "m0", "m0", "ensemble", "m2", "m2", "ensemble", "m1"]
    assert [r["stage"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert [r["phase"] for r in rows] == [1, 1, 2, 1, 1, 2, 1, 1, 2, 1]
    assert ensembles[2] == [1] and ensembles[5] == [1, 0] and ensembles[8] == [1, 0, 2]


def test_reconboost_phase_one_trains_only_the_active_learner_on_the_boosting_loss():
    w1, w2 = 5.0, 1.0
    model = tiny_model("late_sum", n_mod=3)
    inputs, labels = tiny_batch(n_mod=3)
    cfg = setup.resolve(
        {"dataset": "synthetic", "method": "reconboost", "lr": 0.1, "recon_stage_steps": 2, "recon_correct_steps": 1}
    )
    method = build_method(model, cfg)
    for p in model.fusion.parameters():
        assert p.abs().sum() == 0  # learners start silent
    for _ in range(3):  # stage 0: m0 twice, then the correction
        method.step(inputs, labels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    beta = float(method.boost_rate.detach())
    with torch.no_grad():  # stage 1, m1 active, against β·g_m0 by hand
        heads = model.fusion.heads
        g0 = heads[0](model.encoders["m0"](inputs["m0"]))
        g1 = heads[1](model.encoders["m1"](inputs["m1"]))
        p = F.softmax(beta * g0, 1)[torch.arange(len(labels)), labels]
        logp = F.log_softmax(g1, 1)[torch.arange(len(labels)), labels]
        want = (-(w1 - w2 * p) * logp / 3).mean()
    row = method.step(inputs, labels)
    assert row["active"] == "m1"
    assert row["loss"] == pytest.approx(float(want), rel=1e-5)
    after = dict(model.named_parameters())
    for n, old in before.items():
        moved = not torch.equal(after[n], old)
        assert moved == (n.startswith("encoders.m1.") or n.startswith("fusion.heads.1.")), n


def test_reconboost_ensemble_is_beta_times_the_sum_of_the_learners():
    model = tiny_model("late_sum", n_mod=2)
    inputs, labels = tiny_batch(n_mod=2)
    method = build_method(
        model,
        setup.resolve(
            {
                "dataset": "synthetic",
                "method": "reconboost",
                "lr": 0.1,
                "recon_stage_steps": 2,
                "recon_correct_steps": 2,
            }
        ),
    )
    for _ in range(8):
        method.step(inputs, labels)
    assert sorted(method.ensemble) == [0, 1]
    beta = method.boost_rate.detach()
    assert float(beta) != 1.0  # β is learnt in the correction phases
    with torch.no_grad():
        learners = [model.fusion.heads[m](model.encoders[f"m{m}"](inputs[f"m{m}"])) for m in range(2)]
        ens = method.ensemble_logits(unimodal_logits(model, model.encode(inputs)), method.ensemble)
        assert close(ens, beta * (learners[0] + learners[1]), 1e-5)
        assert close(ens, beta * model(inputs), 1e-5)  # what the trainer evaluates, scaled
    state = copy.deepcopy(method.state_dict())
    other = build_method(copy.deepcopy(model), method.config)
    other.load_state_dict(state)
    assert float(other.boost_rate.detach()) == float(beta) and other.ensemble == method.ensemble
    assert other.phase_key == method.phase_key


@pytest.mark.parametrize("fusion", ["late_sum", "late_concat"])
def test_reconboost_with_an_mlp_head_zeroes_only_its_output_layer_and_learns(fusion):
    # An all-zero MLP head (head_hidden) is a saddle: hidden activations 0 and output weight 0
    # give every parameter but the output bias a zero gradient, and the run never learns.
    torch.manual_seed(0)
    model = build_model({f"m{m}": (6,) for m in range(2)}, 3, fusion, feature_dim=8, hidden_dim=16, head_hidden=[5])
    inputs, labels = tiny_batch(n_mod=2)
    method = build_method(
        model,
        setup.resolve(
            {
                "dataset": "synthetic",
                "method": "reconboost",
                "fusion": fusion,
                "head_hidden": [5],
                "lr": 0.1,
                "momentum": 0.0,
                "weight_decay": 0.0,
                "recon_stage_steps": 2,
                "recon_correct_steps": 1,
            }
        ),
    )
    heads = model.fusion.heads if fusion == "late_sum" else [model.fusion.head]
    for head in heads:
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 2
        assert all(p.abs().sum() == 0 for p in linears[-1].parameters())  # learners start silent
        assert linears[0].weight.abs().sum() > 0  # ... but not dead
    enc = model.encoders["m0"]
    enc_before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    out_before = heads[0][-1].weight.detach().clone()
    method.step(inputs, labels)  # stage 0, phase 1: m0
    assert not torch.equal(heads[0][-1].weight, out_before)  # the output weight learns
    method.step(inputs, labels)  # and now the encoder too
    assert any(not torch.equal(p, enc_before[n]) for n, p in enc.named_parameters())


def test_reconboost_rejects_early_fusion_and_a_bad_order():
    with pytest.raises(ConfigError, match="late_sum or late_concat"):
        setup.resolve({"dataset": "synthetic", "method": "reconboost", "fusion": "early"})
    cfg = setup.resolve({"dataset": "synthetic", "method": "reconboost", "recon_order": ["m0", "x"]})
    with pytest.raises(ConfigError, match="recon_order"):
        build_method(tiny_model("late_sum"), cfg)


# -- unimodal ------------------------------------------------------------------------
def test_unimodal_ignores_the_other_modalities():
    model = tiny_model("late_concat", n_mod=3)
    inputs, labels = tiny_batch(n_mod=3)
    other = dict(inputs, m0=torch.randn_like(inputs["m0"]) * 5, m2=torch.zeros_like(inputs["m2"]))
    cfg = setup.resolve({"dataset": "synthetic", "method": "unimodal", "modality": "m1", "lr": 0.1})
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ma, mb = build_method(a, cfg), build_method(b, cfg)
    for _ in range(3):
        ra, _ = ma.step(inputs, labels), mb.step(other, labels)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(next(a.encoders["m1"].parameters()), next(model.encoders["m1"].parameters()))
    for mode in (True, False):
        a.train(mode)
        assert torch.equal(a(inputs), a(other))
        assert torch.equal(a(inputs), a(inputs, present={"m1"}))
    assert ra["shapley_m0"] == 0 and ra["shapley_m2"] == 0  # null players, exactly
    assert ra["share_m1"] >= max(ra["share_m0"], ra["share_m2"])


def test_unimodal_needs_a_modality_of_the_dataset():
    with pytest.raises(ConfigError, match="modality=NAME"):
        setup.resolve({"dataset": "synthetic", "method": "unimodal"})
    cfg = setup.resolve({"dataset": "synthetic", "method": "unimodal", "modality": "audio"})
    with pytest.raises(ConfigError, match="m0, m1"):
        build_method(tiny_model(), cfg)


# -- training on the synthetic dataset ------------------------------------------------
SYN = {"dataset": "synthetic", "data": {"n_samples": 600}, "epochs": 3, "batch_size": 50, "checkpoint_every": 0}
TRAINED = {
    "ogm_ge": ({}, ["coef_m0", "score_m0"]),
    "agm": ({}, ["coef_m2", "score_m2"]),
    "cggm": ({}, ["coef_m1", "aux_acc_m1", "l_gm"]),
    "masam": ({"rho": 0.3}, ["aps_dominant", "aps_m2", "kappa", "aux_loss_m1"]),
    "reconboost": ({"recon_stage_epochs": 1, "recon_correct_epochs": 1}, ["active", "boost_rate"]),
    "mie": ({"mie_stage_epochs": [2, 1]}, ["active", "stage", "lambda_mix", "loss_ori", "loss_flat"]),
    "unimodal": ({"modality": "m0"}, []),
}


@pytest.mark.parametrize("method", list(TRAINED))
def test_each_method_trains_synthetic_well_above_chance(method, tmp_path):
    extra, columns = TRAINED[method]
    run = msam_lab.train({**SYN, "method": method, **extra}, out=tmp_path / method, quiet=True)
    assert run.summary["test_acc"] > 0.6  # 4 classes: chance 0.25
    for col in ["loss", "dominant", "shapley_m0", "share_m2"] + columns:
        assert col in run.steps.columns, col
    if method == "unimodal":  # test_acc is the unimodal model's: other modalities changed, same acc
        assert (run.epochs["test_acc"] == run.epochs["test_acc_only_m0"]).all()
        model, data = run.load_model(), run.load_data()
        scrambled = {m: (x if m == "m0" else torch.randn_like(x)) for m, x in data.test.inputs.items()}
        with torch.no_grad():
            logits = model(scrambled)
            assert torch.equal(logits, model(data.test.inputs))  # the reloaded model is blind too
            acc = (logits.argmax(1) == data.test.labels).float().mean().item()
        assert acc == pytest.approx(run.summary["test_acc"])
    if method == "reconboost":
        assert list(run.steps.groupby("epoch")["active"].first()) == ["m0", "ensemble", "m1"]


# -- sweeps --------------------------------------------------------------------------
TINY = ["data.n_samples=120", "batch_size=40", "epochs=1", "checkpoint_every=0"]


def test_sweep_trains_the_grid_resumes_and_summarises(tmp_path, monkeypatch):
    calls = []
    real_train = cells_mod.train

    def counting_train(*args, **kw):
        calls.append(kw["out"])
        return real_train(*args, **kw)

    monkeypatch.setattr(cells_mod, "train", counting_train)
    out = tmp_path / "sw"
    table = sweep.run_sweep(["joint", "agm"], [0, 1], dataset="synthetic", out=out, overrides=TINY, quiet=True)
    assert len(calls) == 4
    runs = pd.read_csv(out / "sweep.csv")
    assert len(runs) == 4 and set(runs["method"]) == {"joint", "agm"}
    for method in ("joint", "agm"):
        accs = [json.loads((out / method / f"seed{s}" / "summary.json").read_text())["test_acc"] for s in (0, 1)]
        row = table[table["method"] == method].iloc[0]
        assert row["n_seeds"] == 2
        assert row["acc_last_mean"] == pytest.approx(np.mean(accs))  # summary.json's test_acc: the last epoch
        assert row["acc_last_std"] == pytest.approx(np.std(accs, ddof=1))
        for col in (
            "acc_m0_last_mean",
            "acc_only_m2_last_std",
            "tau_last_mean",
            "acc_at_best_mean",
            "acc_m0_at_best_mean",
            "best_epoch_mean",
        ):
            assert col in table.columns
    assert (out / "sweep_summary.csv").is_file()

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")}
    again = sweep.run_sweep(["joint", "agm"], [0, 1], dataset="synthetic", out=out, overrides=TINY, quiet=True)
    assert len(calls) == 4  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")} == mtimes
    pd.testing.assert_frame_equal(again, table)

    with pytest.raises(ConfigError, match="epochs"):  # a different config at a finished run's path
        sweep.run_sweep(["agm", "joint"], [0], dataset="synthetic", out=out, overrides=TINY + ["epochs=2"], quiet=True)
    assert len(calls) == 4


def test_sweep_grid_layout_and_validation_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(cells_mod, "train", lambda *a, **k: pytest.fail("nothing may train"))
    cells = sweep.plan_sweep(
        ["joint", "msam"], [0, 1], rhos=[0.05, 0.1], dataset="synthetic", out=tmp_path, overrides=TINY
    )
    assert [(c.method, c.rho, c.seed) for c in cells] == [
        ("joint", None, 0),
        ("joint", None, 1),
        ("msam", 0.05, 0),
        ("msam", 0.05, 1),
        ("msam", 0.1, 0),
        ("msam", 0.1, 1),
    ]
    assert cells[4].path == tmp_path / "msam" / "rho0.1" / "seed0" and cells[4].config.rho == 0.1
    assert cells[0].path == tmp_path / "joint" / "seed0"
    for bad in [
        dict(methods=["joint", "nope"]),
        dict(seeds=[0, "x"]),
        dict(seeds=[]),
        dict(methods=["unimodal"]),
        dict(rhos=[-0.1]),
    ]:
        kw = {**dict(methods=["joint"], seeds=[0], dataset="synthetic", out=tmp_path, overrides=TINY), **bad}
        with pytest.raises(ConfigError):
            sweep.run_sweep(**kw, quiet=True)


def _cli(argv, capsys):
    from msam_lab.errors import UsageError

    parser = argparse.ArgumentParser(prog="msam-lab")
    cli_sweep.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (UsageError, ConfigError) as err:
        print(f"msam-lab: error: {err}")
        code = 2
    return code, capsys.readouterr().out


def test_sweep_command_line(tmp_path, capsys):
    out = str(tmp_path / "cli")
    code, text = _cli(["sweep", "--methods", "joint", "--seeds", "0,x", "--out", out], capsys)
    assert code == 2 and "--seeds" in text and len(text.strip().splitlines()) == 1
    code, text = _cli(["sweep", "--methods", "joint,bogus", "--seeds", "0", "--out", out], capsys)
    assert code == 2 and "bogus" in text
    code, text = _cli(
        [
            "sweep",
            "--methods",
            "joint",
            "--seeds",
            "0",
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--out",
            out,
            "--quiet",
        ]
        + sum((["--set", s] for s in TINY[:2]), []),
        capsys,
    )
    assert code == 0 and "joint" in text and (tmp_path / "cli" / "joint" / "seed0" / "summary.json").is_file()
