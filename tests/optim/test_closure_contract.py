"""MSAM under torch's optimizer contract (issue 21 item 1): ``observe`` then ``step(closure)`` with the closure
of every torch loop (zero_grad, forward, ℓ.backward(), return ℓ) takes the step ``step(forward, labels)`` takes,
to 1e-12 in float64; its errors (no fresh observe, unimodal, fp16); LR schedulers on ``opt`` and on
``opt.base_optimizer``."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import msam_lab

MODALITIES = ("image", "audio", "text")


class Net(torch.nn.Module):
    """Encoders -> concatenation -> head; an absent modality's features are zeros (no BatchNorm, no dropout:
    the observation's eval mode and the step's train mode compute the same function)."""

    def __init__(self, dims=(10, 6, 4), hidden=8, classes=3):
        super().__init__()
        self.enc = torch.nn.ModuleDict({m: torch.nn.Linear(d, hidden) for m, d in zip(MODALITIES, dims)})
        self.head = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(hidden * len(dims), classes))

    def encoder_parameters(self, m):  # what variant="params" perturbs (found on the model, as on msam_lab's)
        return list(self.enc[m].parameters())

    def forward(self, x, present=MODALITIES):
        feats = [self.enc[m](x[m]) if m in present else x[m].new_zeros(len(x[m]), 8) for m in MODALITIES]
        return self.head(torch.cat(feats, 1))


def problem(seed=0, n=48):
    torch.manual_seed(seed)
    y = torch.randint(0, 3, (n,))
    x = {
        "image": torch.randn(n, 10) + y[:, None],
        "audio": torch.randn(n, 6) + 0.3 * y[:, None],
        "text": torch.randn(n, 4),
    }
    return Net().double(), {m: v.double() for m, v in x.items()}, y


def msam(model, **kw):
    kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "rho": 0.2, **kw}
    return msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=MODALITIES, model=model, **kw)


def closure_step(opt, model, x, y):
    rec = opt.observe(lambda present: model(x, present), y)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return rec, opt.step(closure)


@pytest.mark.parametrize("variant", ["default", "params"])
def test_step_closure_is_the_forward_labels_step_in_float64(variant):
    model, x, y = problem()
    twin = copy.deepcopy(model)
    a, b = msam(model, variant=variant), msam(twin, variant=variant)
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(4):
        ra = a.step(lambda present: model(x, present), y)
        rb, loss = closure_step(b, twin, x, y)
        assert (ra.dominant, ra.shares) == (rb.dominant, rb.shares)
        assert abs(float(loss.detach()) - ra.loss) < 1e-12  # the closure's loss at θ
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start):
        assert not torch.equal(p, p0)  # it moved
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_step_closure_mixes_the_two_gradients_as_the_definition_says():
    """g = v_d·∇ℓ(θ+ε) + (1−v_d)·∇ℓ(θ), ε = ρ·∇ℓ(θ)/‖∇ℓ(θ)‖, by hand with autograd (plain SGD, lr 1)."""
    model, x, y = problem(seed=3)
    rho = 0.3
    theta = [p.detach().clone() for p in model.parameters()]
    opt = msam(model, lr=1.0, momentum=0.0, weight_decay=0.0, rho=rho)
    rec, _ = closure_step(opt, model, x, y)
    v = rec.shares[rec.dominant]
    assert 0 < v < 1
    ref = copy.deepcopy(model)
    for p, t in zip(ref.parameters(), theta):
        p.data.copy_(t)
    g0 = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    # SAM computes ‖g‖ and ρ/‖g‖ in fp32 by design (mixed precision), so the reference does too
    scale = (rho / (torch.stack([g.float().norm() for g in g0]).norm() + 1e-12)).double()
    with torch.no_grad():
        for p, g in zip(ref.parameters(), g0):
            p.add_(g * scale)
    g1 = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    for p, t, a, b in zip(model.parameters(), theta, g0, g1):
        torch.testing.assert_close(p, t - (v * b + (1 - v) * a), rtol=0, atol=1e-12)


def test_step_closure_needs_a_fresh_observe():
    model, x, y = problem()
    opt = msam(model)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="call observe"):
        opt.step(closure)
    closure_step(opt, model, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="call observe"):  # the record of the last batch is used up
        opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # nothing half-done


def test_unimodal_with_a_closure_says_to_use_step_forward_labels():
    model, x, y = problem()
    opt = msam(model, variant="unimodal")
    opt.observe(lambda present: model(x, present), y)
    with pytest.raises(ValueError, match=r"unimodal.*step\(forward, labels\)"):
        opt.step(lambda: F.cross_entropy(model(x), y))
    opt.step(lambda present: model(x, present), y)  # the supported form still works


def test_a_missing_closure_names_the_lightning_fix():
    model, _, _ = problem()
    with pytest.raises(ValueError, match="bf16-mixed"):
        msam(model).step()


@pytest.mark.parametrize("on", ["opt", "base"])
@pytest.mark.parametrize("form", ["closure", "forward", "by_hand"])
def test_lr_schedulers_on_the_optimizer_and_on_its_base(on, form):
    model, x, y = problem()
    opt = msam(model, lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt if on == "opt" else opt.base_optimizer, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would be an error here
        for _ in range(3):
            if form == "closure":
                closure_step(opt, model, x, y)
            elif form == "forward":
                opt.step(lambda present: model(x, present), y)
            else:
                opt.zero_grad()
                opt.observe(lambda present: model(x, present), y)
                opt.backward(F.cross_entropy(model(x), y))
                opt.first_step(zero_grad=True)
                opt.dominant_loss(model(x), y).backward()
                opt.second_step()
            sched.step()
    assert opt.param_groups[0]["lr"] == opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
