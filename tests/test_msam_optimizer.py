"""msam_lab.MSAM, the model-agnostic optimizer: the built-in trainer's M-SAM steps on its own models
(float64), the ρ = 0 identity, model modes and BatchNorm statistics, state dicts, msam_lab.observe."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import msam_lab
from msam_lab.methods import build_method
from msam_lab.models.multimodal import build_model
from tests.conftest import make_batch, make_config, make_model

OPT = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def pair(model):
    twin = copy.deepcopy(model)
    return model, twin


def builtin_and_wrapper(model, rho=0.1, **msam_kw):
    a, b = pair(model)
    builtin = build_method(a, make_config(method="msam", rho=rho, **OPT))
    opt = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=rho, **OPT, **msam_kw)
    return a, builtin, b, opt


def bn_model():
    torch.manual_seed(0)
    return build_model({"img": (1, 8, 8), "spec": (1, 8, 8)}, 3, "late_concat",
                       encoders={"img": "resnet18", "spec": "resnet18"}, feature_dim=8).double()


def bn_batch(n=16):
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (n,), generator=g)
    img = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64) + labels.view(-1, 1, 1, 1)
    spec = 0.3 * torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64) + 0.2 * labels.view(-1, 1, 1, 1)
    return {"img": img, "spec": spec}, labels


@pytest.mark.parametrize("case", ["mlp-3-modalities", "batchnorm-resnet"])
def test_msam_takes_the_builtin_trainers_steps(case):
    if case == "batchnorm-resnet":
        model, (inputs, labels) = bn_model(), bn_batch()
    else:
        model = make_model(n_mod=3).double()
        inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
        inputs = {m: x.double() for m, x in inputs.items()}
    a, builtin, b, opt = builtin_and_wrapper(model)
    for _ in range(4):
        row = builtin.train_step(inputs, labels)
        rec = opt.step(lambda present: b(inputs, present), labels)
        assert rec.dominant == row["dominant"]
        assert rec.loss == pytest.approx(row["loss"], rel=1e-12)
        for m in b.modalities:
            assert rec.shares[m] == pytest.approx(row[f"share_{m}"], abs=1e-12)
            assert rec.shapley[m] == pytest.approx(row[f"shapley_{m}"], abs=1e-12)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-10)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):                # BN statistics moved alike
        assert torch.allclose(ba.double(), bb.double(), atol=1e-10), name


@pytest.mark.parametrize("variant", ["unimodal", "params"])
def test_the_variants_take_the_builtin_trainers_steps(variant):
    """unimodal: the wrapper builds the decomposed logits from forward over every coalition."""
    model = make_model(n_mod=3).double()
    inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
    inputs = {m: x.double() for m, x in inputs.items()}
    a, b = pair(model)
    builtin = build_method(a, make_config(method="msam", rho=0.1, msam_variant=variant, **OPT))
    opt = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=0.1,
                        variant=variant, **OPT)
    for _ in range(4):
        row = builtin.train_step(inputs, labels)
        rec = opt.step(lambda present: b(inputs, present), labels)
        assert rec.dominant == row["dominant"]
        assert rec.loss == pytest.approx(row["loss"], rel=1e-12)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-10)
    start = make_model(n_mod=3).double()
    assert not all(torch.allclose(p, q) for p, q in zip(b.parameters(), start.parameters()))


def test_unimodal_never_runs_the_empty_coalition_with_grad():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    seen = []

    def forward(present):
        seen.append((torch.is_grad_enabled(), present))
        return model(inputs, present)

    opt = msam_lab.MSAM(model.parameters(), modalities=model.modalities, model=model, variant="unimodal", lr=0.1)
    opt.step(forward, labels)
    with_grad = [p for g, p in seen if g]
    assert frozenset() not in with_grad and len(with_grad) == 2 * 3      # 3 coalitions, clean and perturbed


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_matches_the_builtin_trainer_and_stays_near_fp32(mode):
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2, n=64)
    a, b = pair(model)
    ref = copy.deepcopy(model)
    builtin = build_method(a, make_config(method="msam", rho=0.1, precision=mode, **OPT))
    opt = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=0.1,
                        precision=mode, **OPT)
    fp32 = msam_lab.MSAM(ref.parameters(), torch.optim.SGD, modalities=ref.modalities, model=ref, rho=0.1, **OPT)
    start = [p.detach().clone() for p in model.parameters()]
    builtin.train_step(inputs, labels)
    rec = opt.step(lambda present: b(inputs, present), labels)
    fp32.step(lambda present: ref(inputs, present), labels)
    assert rec.overflow is False
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-6)
    delta = torch.cat([(p - s).flatten() for p, s in zip(b.parameters(), start)])
    delta32 = torch.cat([(p - s).flatten() for p, s in zip(ref.parameters(), start)])
    assert 0 < (delta - delta32).norm() / delta32.norm() < 0.05          # low precision, not another update
    assert all(p.dtype == torch.float32 for p in b.parameters())


def test_an_fp16_overflow_skips_the_update_and_lowers_the_scale():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    opt = msam_lab.MSAM(model.parameters(), modalities=model.modalities, model=model, precision="fp16", **OPT)
    state = opt.precision.scaler.state_dict()
    opt.precision.scaler.load_state_dict({**state, "scale": 3.0e38})      # every scaled gradient overflows
    before = [p.detach().clone() for p in model.parameters()]
    rec = opt.step(lambda present: model(inputs, present), labels)
    assert rec.overflow is True
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))   # θ restored, no step taken
    assert opt.precision.scaler.get_scale() < 3.0e38
    opt.precision.scaler.load_state_dict(state)                             # a sane scale steps again
    rec = opt.step(lambda present: model(inputs, present), labels)
    assert rec.overflow is False
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_rho_zero_is_the_base_optimizers_step():
    model = make_model(n_mod=2).double()
    inputs, labels = make_batch(n_mod=2)
    inputs = {m: x.double() for m, x in inputs.items()}
    a, b = pair(model)
    sgd = torch.optim.SGD(a.parameters(), **OPT)
    opt = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=0.0, **OPT)
    for _ in range(3):
        sgd.zero_grad()
        F.cross_entropy(a(inputs), labels).backward()
        sgd.step()
        opt.step(lambda present: b(inputs, present), labels)
    # v_d·g + (1 − v_d)·g is g up to one rounding of each term
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-12, atol=1e-14)
    start = make_model(n_mod=2).double()
    assert not all(torch.equal(p, q) for p, q in zip(b.parameters(), start.parameters()))   # it moved


def test_coalition_passes_run_in_eval_mode_and_the_mode_is_restored():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    seen = []

    def forward(present):
        seen.append((model.training, torch.is_grad_enabled(), present))
        return model(inputs, present)

    opt = msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=model.modalities, model=model, lr=0.1)
    model.train()
    opt.step(forward, labels)
    # the clean pass, the 2^M no-grad eval-mode coalition passes, the perturbed pass
    assert [s[:2] for s in seen] == [(True, True)] + [(False, False)] * 4 + [(True, True)]
    assert {s[2] for s in seen[1:5]} == {frozenset(), frozenset({"m0"}), frozenset({"m1"}), frozenset({"m0", "m1"})}
    assert model.training


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
    assert recs[-1].dominant == "a"                       # m0 carries the label 2.0 strong, m1 0.3
    # the coalitions really go through the mask tokens: moving one changes the observed game
    ref = msam_lab.observe(lambda present: model(x, present), labels, ("a", "b"), model=model, shapley_value="loss")
    with torch.no_grad():
        model.mask["a"].add_(3.0)
    moved = msam_lab.observe(lambda present: model(x, present), labels, ("a", "b"), model=model, shapley_value="loss")
    assert moved.shapley != ref.shapley


def test_state_dict_round_trip_continues_identically():
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    opt = msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=model.modalities, model=model,
                        tie_rule="previous", **OPT)
    opt.step(lambda p: model(inputs, p), labels)
    twin = copy.deepcopy(model)
    opt2 = msam_lab.MSAM(twin.parameters(), torch.optim.SGD, modalities=twin.modalities, model=twin,
                         tie_rule="previous", **OPT)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))        # as saved to disk: no shared buffers
    assert opt2.previous_dominant == opt.previous_dominant is not None
    for _ in range(2):
        opt.step(lambda p: model(inputs, p), labels)
        opt2.step(lambda p: twin(inputs, p), labels)
    for pa, pb in zip(model.parameters(), twin.parameters()):
        assert torch.equal(pa, pb)


def test_observe_equals_the_builtin_observation():
    model = make_model(n_mod=3)
    inputs, labels = make_batch(n_mod=3, n=40, informative=(2.0, 0.3, 1.0))
    rec = msam_lab.observe(lambda p: model(inputs, p), labels, model.modalities, model=model)
    ref = build_method(model, make_config(method="msam")).observe(inputs, labels)
    assert np.allclose([rec.shapley[m] for m in model.modalities], ref.phi, atol=1e-12)
    assert rec.dominant == model.modalities[ref.dominant]


def test_bad_arguments_are_one_line_errors():
    model = make_model(n_mod=2)
    with pytest.raises(ValueError, match="variant"):
        msam_lab.MSAM(model.parameters(), modalities=model.modalities, model=model, variant="per-modality", lr=0.1)
    with pytest.raises(ValueError, match="precision"):
        msam_lab.MSAM(model.parameters(), modalities=model.modalities, precision="fp8", lr=0.1)
    with pytest.raises(ValueError, match="modalities"):
        msam_lab.MSAM(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        msam_lab.MSAM(model.parameters(), modalities=model.modalities, rho=-1, lr=0.1)


@pytest.mark.parametrize("variant, dominant", [("params", "fixed:m1"), ("unimodal", "fixed:m1"),
                                               ("params", "random"), ("unimodal", "alternate")])
def test_a_chosen_perturbed_modality_takes_the_builtin_trainers_steps(variant, dominant):
    model = make_model(n_mod=3).double()
    inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
    inputs = {m: x.double() for m, x in inputs.items()}
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(20):                                   # a few steps in: the shares are no longer uniform
        sgd.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        sgd.step()
    a, b = pair(model)
    builtin = build_method(a, make_config(method="msam", rho=0.1, msam_variant=variant, msam_dominant=dominant,
                                          seed=1, **OPT))     # seed 1 draws m1 m1 m2 m2 m0: mostly not d
    opt = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=0.1,
                        variant=variant, dominant=dominant, seed=1, **OPT)
    perturbed, swapped = [], 0
    for _ in range(5):
        row = builtin.train_step(inputs, labels)
        rec = opt.step(lambda present: b(inputs, present), labels)
        assert (rec.dominant, rec.perturbed) == (row["dominant"], row["perturbed"])
        assert rec.loss == pytest.approx(row["loss"], rel=1e-12)
        perturbed.append(rec.perturbed)
        swapped += rec.shares[rec.perturbed] < rec.shares[rec.dominant] - 0.05     # the swap really acts
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-10)
    assert swapped >= 2
    if dominant == "fixed:m1":
        assert perturbed == ["m1"] * 5
    # the choice's state travels with the optimizer's
    twin = msam_lab.MSAM(copy.deepcopy(b).parameters(), modalities=b.modalities, model=b, variant=variant,
                         dominant=dominant, seed=0, lr=0.1)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert [twin.perturbed(0) for _ in range(6)] == [opt.perturbed(0) for _ in range(6)]


@pytest.mark.parametrize("share_rule", ["softmax", "loss"])
def test_the_new_share_rules_take_the_builtin_trainers_steps(share_rule):
    model = make_model(n_mod=3).double()
    inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
    inputs = {m: x.double() for m, x in inputs.items()}
    a, b = pair(model)
    builtin = build_method(a, make_config(method="msam", rho=0.1, share_rule=share_rule, share_temperature=0.3,
                                          **OPT))
    opt = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=0.1,
                        share_rule=share_rule, share_temperature=0.3, **OPT)
    for _ in range(3):
        row = builtin.train_step(inputs, labels)
        rec = opt.step(lambda present: b(inputs, present), labels)
        assert rec.perturbed == rec.dominant == row["dominant"]
        for m in b.modalities:
            assert rec.shares[m] == pytest.approx(row[f"share_{m}"], abs=1e-12)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-10)
    assert msam_lab.observe(lambda p: b(inputs, p), labels, b.modalities, model=b, share_rule=share_rule,
                            share_temperature=0.3).perturbed is None        # no update, nothing perturbed


def test_bad_ablation_arguments_are_one_line_errors():
    model = make_model(n_mod=2)
    for kw, words in [({"dominant": "fixed:zz", "variant": "params"}, "fixed:<one of m0, m1>"),
                      ({"dominant": "random"}, "changes nothing with variant='default'"),
                      ({"share_temperature": 0.0}, "share_temperature must be > 0"),
                      ({"share_rule": "rank"}, "share_rule must be one of clip, shift, softmax, loss")]:
        with pytest.raises(ValueError, match=words):
            msam_lab.MSAM(model.parameters(), modalities=model.modalities, model=model, lr=0.1, **kw)


def test_a_coalitions_hook_gives_the_same_steps_with_one_call_per_observation():
    """coalitions(presents) -> (K, B, C): the observation from one call, the same record and update."""
    model = make_model(n_mod=3).double()
    inputs, labels = make_batch(n_mod=3, n=48, informative=(2.0, 0.3, 1.0))
    inputs = {m: x.double() for m, x in inputs.items()}
    a, b = pair(model)
    calls = []

    def coalitions(presents):
        calls.append(len(presents))
        assert not b.training and not torch.is_grad_enabled()            # eval mode, no grad
        features, zeros = b.encode(inputs), b.zero_features()             # each encoder once
        n = len(labels)
        return torch.stack([b.fuse([f if m in p else z.expand(n, -1) for m, f, z in zip(b.modalities, features, zeros)])
                            for p in presents])

    plain = msam_lab.MSAM(a.parameters(), torch.optim.SGD, modalities=a.modalities, model=a, rho=0.1, **OPT)
    hooked = msam_lab.MSAM(b.parameters(), torch.optim.SGD, modalities=b.modalities, model=b, rho=0.1, **OPT)
    for _ in range(3):
        r1 = plain.step(lambda present: a(inputs, present), labels)
        r2 = hooked.step(lambda present: b(inputs, present), labels, coalitions=coalitions)
        assert r1.dominant == r2.dominant and r1.shapley == pytest.approx(r2.shapley, abs=1e-12)
    assert calls == [8, 8, 8]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        msam_lab.observe(lambda p: b(inputs, p), labels, b.modalities, coalitions=lambda ps: torch.zeros(2, 3))
