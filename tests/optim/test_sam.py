"""SAM and M-SAM against the identities of DESIGN §2 and one step worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msam_lab.methods import build_method
from msam_lab.methods.base import Observation
from msam_lab.models.multimodal import MultimodalModel, SumFusion, running_stats_kept
from msam_lab.optim.sam import SAM, add_to_grads
from tests.conftest import make_config, make_model


def one_step(method_name, model, batch, **cfg):
    method = build_method(model, make_config(method=method_name, **cfg))
    method.step(*batch)
    return method


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same_params(a, b, atol=1e-7):
    for x, y in zip(params(a), params(b)):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


def force_share(method, share):
    """Make ``observe`` report a fixed share vector (for the identities with v_d = 1)."""
    share = np.asarray(share, dtype=float)

    def observe(inputs, labels, features=None):
        return Observation(phi=share.copy(), share=share, dominant=int(np.argmax(share)))

    method.observe = observe


@pytest.mark.parametrize("fusion", ["late_sum", "early"])
def test_sam_with_rho_zero_equals_base_step(batch, fusion):
    a, b = make_model(fusion=fusion), make_model(fusion=fusion)
    one_step("joint", a, batch)
    one_step("sam", b, batch, rho=0.0)
    assert_same_params(a, b)


@pytest.mark.parametrize("variant", ["default", "params", "unimodal"])
def test_msam_with_rho_zero_equals_base_step_of_its_loss(batch, variant):
    a, b = make_model(), make_model()
    one_step("msam", b, batch, rho=0.0, msam_variant=variant)
    if variant == "unimodal":
        # ρ=0: the step descends Σ_m v_m·CE(out_m) — check against that gradient, built independently
        method = build_method(a, make_config(method="joint"))
        inputs, labels = batch
        obs = build_method(make_model(), make_config(method="msam")).observe(inputs, labels)
        allc = torch.stack([a(inputs, present=p) for p in (set(), {"m0"}, {"m1"}, {"m0", "m1"})])
        out0 = 0.5 * (allc[3] - allc[2] + allc[1])
        out1 = 0.5 * (allc[3] - allc[1] + allc[2])
        loss = obs.share[0] * F.cross_entropy(out0, labels) + obs.share[1] * F.cross_entropy(out1, labels)
        method.optimizer.zero_grad()
        loss.backward()
        method.optimizer.step()
    else:
        one_step("joint", a, batch)
    assert_same_params(a, b, atol=1e-6)


def test_msam_with_full_share_equals_sam(batch):
    a, b = make_model(), make_model()
    one_step("sam", a, batch, rho=0.2)
    method = build_method(b, make_config(method="msam", rho=0.2))
    force_share(method, [1.0, 0.0])
    method.step(*batch)
    assert_same_params(a, b, atol=1e-6)


def test_msam_differs_from_sam_when_share_is_partial(batch):
    a, b = make_model(), make_model()
    one_step("sam", a, batch, rho=0.5)
    method = build_method(b, make_config(method="msam", rho=0.5))
    force_share(method, [0.6, 0.4])
    method.step(*batch)
    diff = max(float((x - y).abs().max()) for x, y in zip(params(a), params(b)))
    assert diff > 1e-5


def test_sam_restores_weights_bitwise(batch):
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    before = params(model)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    opt.first_step(zero_grad=True)
    moved = params(model)
    assert any(not torch.equal(x, y) for x, y in zip(before, moved))
    opt.restore()
    for x, y in zip(before, params(model)):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "method_name,kw",
    [("sam", {}), ("msam", {}), ("msam", {"msam_variant": "params"}), ("msam", {"msam_variant": "unimodal"})],
)
def test_base_step_sees_restored_weights(batch, method_name, kw):
    model = make_model()
    before = params(model)
    method = build_method(model, make_config(method=method_name, rho=0.3, **kw))
    seen = {}
    base_step = method.optimizer.step

    def spy(*args, **kwargs):
        seen["params"] = params(model)
        return base_step(*args, **kwargs)

    method.optimizer.step = spy
    method.step(*batch)
    for x, y in zip(before, seen["params"]):
        assert torch.equal(x, y)


def test_first_step_norm_and_direction(batch):
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    before = params(model)
    opt.first_step()
    eps = [p.detach() - b for p, b in zip(model.parameters(), before)]
    gnorm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert float(torch.sqrt(sum((e**2).sum() for e in eps))) == pytest.approx(0.3, rel=1e-5)
    for e, g in zip(eps, grads):
        torch.testing.assert_close(e, 0.3 * g / gnorm, rtol=1e-4, atol=1e-7)


def test_adaptive_perturbation_scales_by_weight_magnitude(batch):
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, adaptive=True, lr=0.1)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    before = params(model)
    opt.first_step()
    norm = torch.sqrt(sum(((w.abs() * g) ** 2).sum() for w, g in zip(before, grads)))
    for p, w, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach() - w, 0.2 * w * w * g / norm, rtol=1e-4, atol=1e-7)


def test_params_variant_perturbs_only_the_dominant_encoder(batch):
    model = make_model()
    method = build_method(model, make_config(method="msam", rho=0.5, msam_variant="params"))
    force_share(method, [0.3, 0.7])  # modality m1 dominant
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = {}
    restore = method.sam.restore

    def spy():
        for n, p in model.named_parameters():
            moved[n] = not torch.equal(p.detach(), before[n])
        restore()

    method.sam.restore = spy
    method.step(*batch)
    assert all(moved[n] for n in moved if n.startswith("encoders.m1."))
    assert not any(moved[n] for n in moved if not n.startswith("encoders.m1."))


def test_rho_negative_is_rejected():
    with pytest.raises(ValueError, match="rho"):
        SAM(make_model().parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)


def _bn_model():
    torch.manual_seed(3)
    enc = {m: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()) for m in ("m0", "m1")}
    return MultimodalModel(enc, SumFusion([8, 8], 3), {"m0": (6,), "m1": (6,)})


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("method_name", ["sam", "msam"])
def test_restore_policy_updates_running_stats_once(batch, method_name):
    reference = _bn_model()
    reference.train()
    with torch.no_grad():
        reference.encode(batch[0])  # exactly one train-mode pass at θ
    model = _bn_model()
    build_method(model, make_config(method=method_name, rho=0.5, bn_policy="restore")).step(*batch)
    ref, got = _bn_buffers(reference), _bn_buffers(model)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    updated = _bn_model()
    build_method(updated, make_config(method=method_name, rho=0.5, bn_policy="update")).step(*batch)
    assert any(not torch.equal(_bn_buffers(updated)[k], ref[k]) for k in ref if "running" in k)


def test_running_stats_kept_is_a_noop_when_disabled():
    model = _bn_model().train()
    before = _bn_buffers(model)
    with running_stats_kept(model, enabled=False):
        model.encode({"m0": torch.randn(8, 6), "m1": torch.randn(8, 6)})
    assert any(not torch.equal(_bn_buffers(model)[k], before[k]) for k in before if "running" in k)


def test_one_msam_step_by_hand():
    """A bias-free linear late-fusion model; every quantity computed independently in numpy."""
    rng = np.random.default_rng(5)  # a draw where both modalities get a positive share
    n, d, c = 12, 3, 3
    y = rng.integers(0, c, n)
    xa = np.eye(c)[y] * 2.0 + rng.normal(0, 0.5, (n, d))  # strongly informative modality
    xb = np.eye(c)[y] * 0.8 + rng.normal(0, 1.0, (n, d))  # weakly informative modality
    Wa, Wb = rng.normal(0, 0.5, (c, d)), rng.normal(0, 0.5, (c, d))
    rho, lr = 0.4, 0.3

    # the same model in torch: identity encoders, linear heads without bias
    model = MultimodalModel({"a": nn.Identity(), "b": nn.Identity()}, SumFusion([d, d], c), {"a": (d,), "b": (d,)})
    with torch.no_grad():
        for head, W in zip(model.fusion.heads, (Wa, Wb)):
            head.weight.copy_(torch.tensor(W, dtype=torch.float32))
            head.bias.zero_()
            head.bias.requires_grad_(False)
    inputs = {"a": torch.tensor(xa, dtype=torch.float32), "b": torch.tensor(xb, dtype=torch.float32)}
    cfg = make_config(method="msam", rho=rho, lr=lr, momentum=0.0, weight_decay=0.0)
    build_method(model, cfg).step(inputs, torch.tensor(y))

    def acc(z):
        return float((z.argmax(1) == y).mean())

    def grads(A, B):  # CE gradient of a linear model: (softmax − onehot)ᵀ x / n
        z = xa @ A.T + xb @ B.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        r = (p - np.eye(c)[y]) / n
        return r.T @ xa, r.T @ xb

    zero = np.zeros((n, c))
    v = {0: acc(zero), 1: acc(xa @ Wa.T), 2: acc(xb @ Wb.T), 3: acc(xa @ Wa.T + xb @ Wb.T)}
    phi = np.array([0.5 * (v[1] - v[0] + v[3] - v[2]), 0.5 * (v[2] - v[0] + v[3] - v[1])])
    pos = np.maximum(phi, 0)
    share = pos / pos.sum() if pos.sum() > 0 else np.full(2, 0.5)
    dom = int(np.argmax(share))
    assert 0.5 <= share[dom] < 1.0  # a partial share: the mix matters
    ga, gb = grads(Wa, Wb)
    norm = np.sqrt((ga**2).sum() + (gb**2).sum())
    ea, eb = rho * ga / norm, rho * gb / norm
    ga1, gb1 = grads(Wa + ea, Wb + eb)
    vd = share[dom]
    Wa_new = Wa - lr * (vd * ga1 + (1 - vd) * ga)
    Wb_new = Wb - lr * (vd * gb1 + (1 - vd) * gb)
    np.testing.assert_allclose(model.fusion.heads[0].weight.detach().numpy(), Wa_new, atol=1e-5)
    np.testing.assert_allclose(model.fusion.heads[1].weight.detach().numpy(), Wb_new, atol=1e-5)


def test_add_to_grads_adds_each_pair_once_and_fills_missing_gradients():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(4)] + [torch.nn.Parameter(torch.randn(2).double())]
    for p in params[:2] + params[4:]:
        p.grad = torch.randn_like(p)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    extra = [torch.randn(3), None, torch.randn(3), None, torch.randn(2).double()]
    add_to_grads(params, extra)
    for p, b, g in zip(params, before, extra):
        if g is None:
            assert (p.grad is None) == (b is None) and (b is None or torch.equal(p.grad, b))
        else:
            assert torch.equal(p.grad, g if b is None else b + g)
            assert p.grad is not g  # a missing gradient becomes a copy, not the caller's tensor
