"""msam_lab.MSAM, the one M-SAM: its steps against brute force and identities (ε of the dominant share's loss
by hand, the plain part, the update, ρ = 0, θ restored bit for bit, step(closure) = first_step/closure/
second_step, state dicts), the observation against the Shapley definition, the ablations, and its contract
(model modes, fp16, bad arguments)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import msam_lab
from msam_lab.methods import build_method
from msam_lab.optim.msam import coalition_logits
from tests.conftest import make_batch, make_config, make_model

OPT = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def problem(n_mod=2, n=40, seed=0):
    """A float64 model and batch with unequal modalities (m0 carries the label most)."""
    torch.manual_seed(seed)
    model = make_model(n_mod=n_mod).double()
    inputs, labels = make_batch(n_mod=n_mod, n=n, informative=(2.0, 0.3, 1.0)[:n_mod])
    return model, {m: x.double() for m, x in inputs.items()}, labels


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def msam(model, **kw):
    return msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=model.modalities, model=model, **kw)


def by_hand_loss(model, inputs, labels, variant, shares, d):
    """(L_d, L_s) from the definitions: the fused loss split by v_d, or each modality's own decomposed logits
    (two modalities: out_a = (f(a,b) − f(0,b) + f(a,0)) / 2, the empty coalition zero)."""
    if variant != "unimodal":
        loss = F.cross_entropy(model(inputs), labels)
        return shares[d] * loss, (1 - shares[d]) * loss
    f = {p: model(inputs, present=set(p)) for p in [("m0",), ("m1",), ("m0", "m1")]}
    out = [(f["m0", "m1"] - f[("m1",)] + f[("m0",)]) / 2, (f["m0", "m1"] - f[("m0",)] + f[("m1",)]) / 2]
    losses = [shares[m] * F.cross_entropy(out[m], labels) for m in range(2)]
    return losses[d], losses[1 - d]


def observed(opt, model, inputs, labels):
    rec = opt.observe(lambda present: model(inputs, present), labels)
    return rec, opt.split


# -- the algorithm against brute force and identities ------------------------------------------------------
@pytest.mark.parametrize("variant", ["default", "params", "unimodal"])
def test_epsilon_is_rho_times_the_normalised_gradient_of_the_dominant_share(variant):
    model, inputs, labels = problem()
    twin = copy.deepcopy(model)
    rho = 0.3
    opt = msam(model, rho=rho, variant=variant, lr=0.1)
    _, split = observed(opt, model, inputs, labels)
    assert 0 < split.v < 1  # a partial share: the split matters
    output = coalition_logits(lambda p: model(inputs, p), model.modalities) if variant == "unimodal" else model(inputs)
    opt.backward(opt.split_losses(output, labels) if variant == "unimodal" else F.cross_entropy(output, labels))
    before = weights(model)
    opt.first_step(zero_grad=True)
    eps = flat([p.detach() - b for p, b in zip(model.parameters(), before)])

    l_d, l_s = by_hand_loss(twin, inputs, labels, variant, split.shares, split.perturbed)
    params = list(twin.parameters())
    g_d = torch.autograd.grad(l_d, params, retain_graph=True, allow_unused=True)
    g_s = torch.autograd.grad(l_s, params, allow_unused=True)
    g_d = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_d)]
    if variant == "params":  # ε moves the perturbed modality's encoder only
        mine = {id(p) for p in twin.encoder_parameters(model.modalities[split.perturbed])}
        g_d = [g if id(p) in mine else torch.zeros_like(g) for p, g in zip(params, g_d)]
        assert 0 < len(mine) < len(params)
    g = flat(g_d)
    # SAM takes ‖g‖ in fp32 (optim/sam.py), so ε is exact to fp32's relative precision
    torch.testing.assert_close(eps, rho * g / g.norm(), rtol=1e-6, atol=1e-12)
    assert float(eps.norm()) == pytest.approx(rho, rel=1e-6)
    # the plain part ∇L_s(θ) is kept for second_step
    for p, q, g in zip(model.parameters(), params, g_s):
        if g is None:
            assert "plain" not in opt.state[p]
        else:
            torch.testing.assert_close(opt.state[p]["plain"], g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", ["default", "unimodal"])
def test_the_update_is_the_dominant_share_at_theta_plus_eps_and_the_rest_at_theta(variant):
    """Plain SGD: θ' = θ − lr·(∇L_d(θ+ε) + ∇L_s(θ)), every gradient by hand with autograd."""
    model, inputs, labels = problem(n=32, seed=1)
    twin = copy.deepcopy(model)
    rho, lr = 0.4, 0.3
    opt = msam(model, rho=rho, variant=variant, lr=lr)
    rec = opt.step(lambda present: model(inputs, present), labels)
    shares = [rec.shares[m] for m in model.modalities]
    d = model.modalities.index(rec.perturbed)

    params = list(twin.parameters())
    l_d, l_s = by_hand_loss(twin, inputs, labels, variant, shares, d)
    g_d = flat(torch.autograd.grad(l_d, params, retain_graph=True))
    g_s = flat(torch.autograd.grad(l_s, params))
    eps = rho * g_d / g_d.norm()
    with torch.no_grad():
        for p, e in zip(params, torch.split(eps, [p.numel() for p in params])):
            p.add_(e.view_as(p))
    g_d_eps = flat(torch.autograd.grad(by_hand_loss(twin, inputs, labels, variant, shares, d)[0], params))
    with torch.no_grad():
        for p, e in zip(params, torch.split(eps, [p.numel() for p in params])):
            p.sub_(e.view_as(p))
    expected = flat(params) - lr * (g_d_eps + g_s)
    torch.testing.assert_close(flat(model.parameters()).detach(), expected, rtol=1e-7, atol=1e-9)
    assert rec.loss == pytest.approx(F.cross_entropy(twin(inputs), labels).item(), rel=1e-12)


def test_rho_zero_is_the_base_optimizers_step():
    model, inputs, labels = problem()
    twin = copy.deepcopy(model)
    sgd = torch.optim.SGD(twin.parameters(), **OPT)
    opt = msam(model, rho=0.0, **OPT)
    start = weights(model)
    for _ in range(3):
        sgd.zero_grad()
        F.cross_entropy(twin(inputs), labels).backward()
        sgd.step()
        opt.step(lambda present: model(inputs, present), labels)
    # v_d·g + (1 − v_d)·g is g up to one rounding of each term
    for pa, pb in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), start))  # it moved


@pytest.mark.parametrize("variant", ["default", "params", "unimodal"])
def test_the_base_step_sees_the_exact_old_weights(variant):
    model, inputs, labels = problem(n_mod=3)
    opt = msam(model, rho=0.5, variant=variant, **OPT)
    before, seen = weights(model), {}
    base_step = opt.base_optimizer.step

    def spy(*args, **kwargs):
        seen["weights"] = weights(model)
        return base_step(*args, **kwargs)

    opt.base_optimizer.step = spy
    opt.step(lambda present: model(inputs, present), labels)
    assert all(torch.equal(a, b) for a, b in zip(before, seen["weights"]))
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    assert not any(opt.state[p] for p in model.parameters())  # no old weights, no plain part left over


def closure_form(opt, model, inputs, labels, by_hand: bool):
    opt.zero_grad(set_to_none=True)
    opt.observe(lambda present: model(inputs, present), labels)
    opt.backward(F.cross_entropy(model(inputs), labels))

    def closure():
        loss = opt.dominant_loss(model(inputs), labels)
        loss.backward()
        return loss

    if not by_hand:
        return opt.step(closure)
    opt.first_step(zero_grad=True)
    loss = closure()
    opt.second_step()
    return loss


@pytest.mark.parametrize("variant", ["default", "params"])
def test_step_closure_is_first_step_closure_second_step(variant):
    model, inputs, labels = problem(n_mod=3)
    twin = copy.deepcopy(model)
    a, b = msam(model, variant=variant, **OPT), msam(twin, variant=variant, **OPT)
    for _ in range(3):
        la = closure_form(a, model, inputs, labels, by_hand=False)
        lb = closure_form(b, twin, inputs, labels, by_hand=True)
        assert torch.equal(la, lb)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_step_forward_is_the_closure_form_with_the_observation_after_the_clean_pass():
    model, inputs, labels = problem(n_mod=3)
    twin = copy.deepcopy(model)
    a, b = msam(model, **OPT), msam(twin, **OPT)
    for _ in range(3):
        a.step(lambda present: model(inputs, present), labels)
        b.zero_grad(set_to_none=True)
        loss = F.cross_entropy(twin(inputs), labels)
        b.observe(lambda present: twin(inputs, present), labels)
        b.backward(loss)
        b.step(lambda: b.dominant_loss(twin(inputs), labels).backward())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_a_step_needs_the_batch_split_first():
    model, inputs, labels = problem()
    opt = msam(model, lr=0.1)
    F.cross_entropy(model(inputs), labels).backward()
    with pytest.raises(RuntimeError, match="call observe"):
        opt.step(lambda: None)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_state_dict_round_trip_continues_identically():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    opt = msam(model, tie_rule="previous", variant="params", dominant="random", **OPT)
    opt.step(lambda p: model(inputs, p), labels)
    twin = copy.deepcopy(model)
    opt2 = msam(twin, tie_rule="previous", variant="params", dominant="random", seed=5, **OPT)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as saved to disk: no shared buffers
    assert opt2.previous_dominant == opt.previous_dominant is not None
    for _ in range(3):
        ra = opt.step(lambda p: model(inputs, p), labels)
        rb = opt2.step(lambda p: twin(inputs, p), labels)
        assert ra.perturbed == rb.perturbed  # the random draw resumed too
    for pa, pb in zip(model.parameters(), twin.parameters()):
        assert torch.equal(pa, pb)


# -- the observation ---------------------------------------------------------------------------------------
def brute_force_shapley(value, names):
    """Average marginal contribution over every ordering (the definition)."""
    phi = dict.fromkeys(names, 0.0)
    for order in itertools.permutations(names):
        present = set()
        for m in order:
            phi[m] += value(present | {m}) - value(present)
            present |= {m}
    return {m: v / math.factorial(len(names)) for m, v in phi.items()}


@pytest.mark.parametrize("shapley_value", ["accuracy", "loss"])
def test_observe_is_the_shapley_value_of_the_coalition_game(shapley_value):
    model, inputs, labels = problem(n_mod=3, n=48)
    model.eval()
    with torch.no_grad():

        def value(present):
            z = model(inputs, present)
            return (
                -F.cross_entropy(z, labels).item()
                if shapley_value == "loss"
                else (z.argmax(1) == labels).double().mean().item()
            )

        expected = brute_force_shapley(value, model.modalities)
    rec = msam_lab.observe(
        lambda p: model(inputs, p), labels, model.modalities, model=model, shapley_value=shapley_value
    )
    assert rec.shapley == pytest.approx(expected, abs=1e-6)
    pos = {m: max(v, 0.0) for m, v in expected.items()}
    assert rec.shares == pytest.approx({m: v / sum(pos.values()) for m, v in pos.items()}, abs=1e-6)
    assert rec.dominant == max(pos, key=pos.get) == "m0"
    assert np.isnan(rec.loss) and rec.perturbed is None  # no update, nothing perturbed


def test_the_trainers_observation_is_observe_through_the_fusion():
    """Method.observe (each encoder once, the coalitions through the fusion) = observe over forward."""
    model = make_model(n_mod=3)
    inputs, labels = make_batch(n_mod=3, n=40, informative=(2.0, 0.3, 1.0))
    for share_rule in ("clip", "loss"):
        rec = msam_lab.observe(lambda p: model(inputs, p), labels, model.modalities, model=model, share_rule=share_rule)
        ref = build_method(model, make_config(method="msam", share_rule=share_rule)).observe(inputs, labels)
        assert np.allclose([rec.shapley[m] for m in model.modalities], ref.phi, atol=1e-6)
        assert np.allclose([rec.shares[m] for m in model.modalities], ref.share, atol=1e-6)
        assert rec.dominant == model.modalities[ref.dominant]


def test_coalition_passes_run_in_eval_mode_and_the_mode_is_restored():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    seen = []

    def forward(present):
        seen.append((model.training, torch.is_grad_enabled(), present))
        return model(inputs, present)

    opt = msam(model, lr=0.1)
    model.train()
    opt.step(forward, labels)
    # the clean pass, the 2^M no-grad eval-mode coalition passes, the perturbed pass
    assert [s[:2] for s in seen] == [(True, True)] + [(False, False)] * 4 + [(True, True)]
    assert {s[2] for s in seen[1:5]} == {frozenset(), frozenset({"m0"}), frozenset({"m1"}), frozenset({"m0", "m1"})}
    assert model.training


def test_unimodal_never_runs_the_empty_coalition_with_grad():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    seen = []

    def forward(present):
        seen.append((torch.is_grad_enabled(), present))
        return model(inputs, present)

    msam(model, variant="unimodal", lr=0.1).step(forward, labels)
    with_grad = [p for g, p in seen if g]
    assert frozenset() not in with_grad and len(with_grad) == 2 * 3  # 3 coalitions, clean and perturbed


def test_a_coalitions_hook_gives_the_same_steps_with_one_call_per_observation():
    """coalitions(presents) -> (K, B, C): the observation from one call, the same record and update."""
    model, inputs, labels = problem(n_mod=3)
    twin = copy.deepcopy(model)
    calls = []

    def coalitions(presents):
        calls.append(len(presents))
        assert not twin.training and not torch.is_grad_enabled()  # eval mode, no grad
        features, zeros = twin.encode(inputs), twin.zero_features()  # each encoder once
        n = len(labels)
        return torch.stack(
            [
                twin.fuse([f if m in p else z.expand(n, -1) for m, f, z in zip(twin.modalities, features, zeros)])
                for p in presents
            ]
        )

    plain, hooked = msam(model, rho=0.1, **OPT), msam(twin, rho=0.1, **OPT)
    for _ in range(3):
        r1 = plain.step(lambda present: model(inputs, present), labels)
        r2 = hooked.step(lambda present: twin(inputs, present), labels, coalitions=coalitions)
        assert r1.dominant == r2.dominant and r1.shapley == pytest.approx(r2.shapley, abs=1e-12)
    assert calls == [8, 8, 8]
    for pa, pb in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        msam_lab.observe(lambda p: twin(inputs, p), labels, twin.modalities, coalitions=lambda ps: torch.zeros(2, 3))


# -- the ablations -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dominant", ["fixed:m1", "random", "alternate"])
def test_a_chosen_modality_takes_the_dominant_ones_place_share_included(dominant):
    model, inputs, labels = problem(n_mod=3)
    opt = msam(model, variant="params", dominant=dominant, seed=1, **OPT)
    perturbed, restore = [], opt.restore
    for _ in range(6):
        before = weights(model)
        seen = {}

        def spy():
            seen["moved"] = {n for (n, p), b in zip(model.named_parameters(), before) if not torch.equal(p, b)}
            seen["split"] = opt.split
            restore()

        opt.restore = spy
        rec = opt.step(lambda present: model(inputs, present), labels)
        perturbed.append(rec.perturbed)
        # ε moved exactly the chosen modality's encoder
        assert seen["moved"] and all(n.startswith(f"encoders.{rec.perturbed}.") for n in seen["moved"])
        # its share is the Shapley-dominant one's: the same amount of SAM as the Shapley arm
        shares = [rec.shares[m] for m in model.modalities]
        d, c = model.modalities.index(rec.dominant), model.modalities.index(rec.perturbed)
        swapped = list(shares)
        swapped[d], swapped[c] = swapped[c], swapped[d]
        np.testing.assert_array_equal(seen["split"].shares, swapped)
        assert seen["split"].v == rec.shares[rec.dominant]
    if dominant == "fixed:m1":
        assert perturbed == ["m1"] * 6
    elif dominant == "alternate":
        assert perturbed == ["m0", "m1", "m2"] * 2
    else:
        assert len(set(perturbed)) > 1


def test_the_split_swaps_the_shares_of_the_dominant_and_the_chosen_modality():
    model = make_model(n_mod=3)
    opt = msam(model, variant="unimodal", dominant="fixed:m2", lr=0.1)
    split = opt.choose(np.array([0.5, 0.3, 0.2]), 0)
    assert split.perturbed == 2 and split.v == 0.5
    np.testing.assert_array_equal(split.shares, [0.2, 0.3, 0.5])
    same = msam(model, variant="unimodal", lr=0.1).choose(np.array([0.5, 0.3, 0.2]), 0)
    assert same.perturbed == 0 and same.v == 0.5


@pytest.mark.parametrize("share_rule", ["softmax", "loss"])
def test_the_share_rules_reach_the_split(share_rule):
    model, inputs, labels = problem(n_mod=3)
    opt = msam(model, share_rule=share_rule, share_temperature=0.3, **OPT)
    ref = msam_lab.observe(
        lambda p: model(inputs, p), labels, model.modalities, model=model, share_rule=share_rule, share_temperature=0.3
    )
    rec = opt.observe(lambda p: model(inputs, p), labels)
    assert rec.shares == ref.shares and rec.perturbed == rec.dominant == ref.dominant
    assert opt.split.v == ref.shares[ref.dominant]
    assert abs(sum(rec.shares.values()) - 1) < 1e-12


# -- the contract: any model, precision, arguments ---------------------------------------------------------
def test_a_mask_token_model_that_msam_lab_did_not_build():
    """forward decides how a modality is removed: here a learned mask token replaces it."""
    torch.manual_seed(0)

    class TokenModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(6, 8) for m in ("a", "b")})
            self.mask = torch.nn.ParameterDict({m: torch.nn.Parameter(torch.zeros(8)) for m in ("a", "b")})
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x, present):
            parts = [self.proj[m](x[m]) if m in present else self.mask[m].expand(len(x[m]), 8) for m in ("a", "b")]
            return self.head(torch.relu(torch.cat(parts, 1)))

    model = TokenModel()
    raw, labels = make_batch(n_mod=2)
    x = {"a": raw["m0"], "b": raw["m1"]}
    opt = msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=("a", "b"), model=model, lr=0.5)
    before = F.cross_entropy(model(x, {"a", "b"}), labels).item()
    recs = [opt.step(lambda present: model(x, present), labels) for _ in range(20)]
    assert F.cross_entropy(model(x, {"a", "b"}), labels).item() < before
    assert all(abs(sum(r.shares.values()) - 1) < 1e-9 for r in recs)
    assert recs[-1].dominant == "a"  # m0 carries the label 2.0 strong, m1 0.3
    # the coalitions really go through the mask tokens: moving one changes the observed game
    ref = msam_lab.observe(lambda present: model(x, present), labels, ("a", "b"), model=model, shapley_value="loss")
    with torch.no_grad():
        model.mask["a"].add_(3.0)
    moved = msam_lab.observe(lambda present: model(x, present), labels, ("a", "b"), model=model, shapley_value="loss")
    assert moved.shapley != ref.shapley


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_stays_near_fp32(mode):
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2, n=64)
    ref = copy.deepcopy(model)
    opt, fp32 = msam(model, rho=0.1, precision=mode, **OPT), msam(ref, rho=0.1, **OPT)
    start = weights(model)
    rec = opt.step(lambda present: model(inputs, present), labels)
    fp32.step(lambda present: ref(inputs, present), labels)
    assert rec.overflow is False
    delta = flat([p - s for p, s in zip(model.parameters(), start)])
    delta32 = flat([p - s for p, s in zip(ref.parameters(), start)])
    assert 0 < (delta - delta32).norm() / delta32.norm() < 0.05  # low precision, not another update
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_an_fp16_overflow_skips_the_update_and_lowers_the_scale():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    opt = msam(model, precision="fp16", **OPT)
    state = opt.precision.scaler.state_dict()
    opt.precision.scaler.load_state_dict({**state, "scale": 3.0e38})  # every scaled gradient overflows
    before = weights(model)
    rec = opt.step(lambda present: model(inputs, present), labels)
    assert rec.overflow is True
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # θ restored, no step taken
    assert opt.precision.scaler.get_scale() < 3.0e38
    opt.precision.scaler.load_state_dict(state)  # a sane scale steps again
    rec = opt.step(lambda present: model(inputs, present), labels)
    assert rec.overflow is False
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_bad_arguments_are_one_line_errors():
    model = make_model(n_mod=2)
    cases = [
        ({"variant": "per-modality"}, "variant must be one of default, unimodal, params"),
        ({"precision": "fp8"}, "precision"),
        ({"rho": -1}, "rho must be >= 0"),
        ({"shapley_value": "gain"}, "shapley_value must be accuracy or loss"),
        ({"bn_policy": "keep"}, "bn_policy must be restore or update"),
        ({"dominant": "fixed:zz", "variant": "params"}, "fixed:<one of m0, m1>"),
        ({"dominant": "random"}, "changes nothing with variant='default'"),
        ({"share_temperature": 0.0}, "share_temperature must be > 0"),
        ({"share_rule": "rank"}, "share_rule must be one of clip, shift, softmax, loss"),
    ]
    for kw, words in cases:
        with pytest.raises(ValueError, match=words) as err:
            msam(model, lr=0.1, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="modalities"):
        msam_lab.MSAM(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="modality_parameters"):
        msam_lab.MSAM(model.parameters(), modalities=("a", "b"), variant="params", lr=0.1)
