"""Optimisation: base optimizer choice, lr schedules against torch's own schedulers, clipping rules,
the lr in epochs.csv, schedules across a resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import msam_lab
from msam_lab.methods import build_method
from msam_lab.optim import base as optim
from msam_lab.optim import schedules
from msam_lab.runs.reader import load_run
from tests.conftest import make_batch, make_config, make_model

SYN = {
    "dataset": "synthetic",
    "data": {"n_samples": 240, "n_modalities": 2},
    "epochs": 4,
    "batch_size": 60,
    "val_fraction": 0.0,
}


def torch_lrs(make_scheduler, epochs: int, lr: float = 0.5) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def our_lrs(epochs: int, lr: float = 0.5, **kw) -> list[float]:
    cfg = make_config(lr=lr, epochs=epochs, **kw)
    return [lr * schedules.lr_factor(e, cfg) for e in range(epochs)]


def test_step_schedule_equals_torch_steplr():
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.2), 10)
    assert our_lrs(10, lr_schedule="step", lr_step=3, lr_gamma=0.2) == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_equals_torch_cosine():
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=9, eta_min=0.01), 9)
    assert our_lrs(9, lr_schedule="cosine", lr_min=0.01) == pytest.approx(expected, rel=1e-9)


def test_warmup_equals_torch_linearlr_then_the_schedule_starts_from_zero():
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / 4, total_iters=3), 3)
    ours = our_lrs(8, lr_schedule="step", lr_step=2, lr_gamma=0.5, warmup_epochs=3)
    assert ours[:3] == pytest.approx(expected, rel=1e-12)
    assert ours[3:] == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.125])  # StepLR counted from the warm-up's end


def test_no_schedule_is_constant():
    assert our_lrs(5) == [0.5] * 5


@pytest.mark.parametrize("method", ["joint", "sam", "msam", "cggm"])
def test_adamw_is_the_base_optimizer_of_every_method(method):
    model = make_model(n_mod=2)
    m = build_method(model, make_config(method=method, optimizer="adamw"))
    assert all(isinstance(o, torch.optim.AdamW) for o in m.optimizers())
    if method in ("sam", "msam"):
        assert isinstance(m.sam.base_optimizer, torch.optim.AdamW)


def test_sam_with_rho_zero_wrapping_adamw_is_adamw():
    """ρ = 0: ε = 0, the second pass's gradient is the first's, so SAM(AdamW) must step as AdamW."""
    inputs, labels = make_batch(n_mod=2)
    a, b = make_model(n_mod=2), make_model(n_mod=2)
    joint = build_method(a, make_config(method="joint", optimizer="adamw", lr=0.01))
    sam = build_method(b, make_config(method="sam", optimizer="adamw", lr=0.01, rho=0.0))
    for _ in range(3):
        joint.train_step(inputs, labels)
        sam.train_step(inputs, labels)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(make_model(n_mod=2).parameters()))  # it moved


def _sgd_step_by_hand(model, inputs, labels, lr, max_norm):
    """θ − lr·clip(g): plain SGD (no momentum / decay) with the global norm clipped by hand."""
    model = copy.deepcopy(model)
    model.train()
    loss = F.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    return [p.detach() - lr * scale * g for p, g in zip(model.parameters(), grads)], float(norm)


def test_norm_clipping_equals_a_clip_by_hand():
    inputs, labels = make_batch(n_mod=2)
    model = make_model(n_mod=2)
    expected, norm = _sgd_step_by_hand(model, inputs, labels, lr=0.5, max_norm=0.05)
    assert norm > 0.05  # the clip is active in this case
    m = build_method(model, make_config(method="joint", lr=0.5, momentum=0.0, weight_decay=0.0, grad_clip=0.05))
    m.train_step(inputs, labels)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-7)


def test_agm_rule_clips_only_when_an_output_gradient_leaves_the_bound():
    model = make_model(n_mod=2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1)
    watched = optim.output_weights(model)
    assert len(watched) == 2  # summed heads: one output layer each
    before = [p.grad.clone() for p in model.parameters()]
    # every entry 0.1 <= 0.5 but the global norm is far above 0.5: AGM's rule leaves it alone
    assert not optim.clip_gradients(model.parameters(), 0.5, "agm", watched)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
    # the plain rule clips the same gradients
    assert optim.clip_gradients(model.parameters(), 0.5, "norm", watched)
    total = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert float(total) == pytest.approx(0.5, rel=1e-4)
    # one output entry beyond the bound: AGM's rule clips the whole model
    for p, b in zip(model.parameters(), before):
        p.grad = b.clone()
    watched[1].grad[0, 0] = -0.9
    assert optim.clip_gradients(model.parameters(), 0.5, "agm", watched)
    total = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert float(total) == pytest.approx(0.5, rel=1e-4)


def test_output_weights_are_the_logit_layers_for_every_fusion():
    for fusion in ("late_sum", "late_concat", "early"):
        model = make_model(n_mod=2, fusion=fusion)
        shapes = {tuple(w.shape) for w in optim.output_weights(model)}
        assert all(s[0] == 3 for s in shapes), (fusion, shapes)  # 3 classes in make_model


def test_epochs_table_has_the_scheduled_lr(tmp_path):
    run = msam_lab.train(
        {**SYN, "method": "joint", "lr": 0.4, "lr_schedule": "step", "lr_step": 1, "lr_gamma": 0.5, "warmup_epochs": 1},
        out=tmp_path / "r",
        quiet=True,
    )
    lrs = list(run.epochs["lr"])
    # row 0 (before training) shows epoch 1's lr; row k the lr epoch k trained with
    assert lrs == pytest.approx([0.2, 0.2, 0.4, 0.2, 0.1])


def test_reconboost_phase_optimizers_follow_the_schedule(tmp_path):
    run = msam_lab.train(
        {
            **SYN,
            "method": "reconboost",
            "lr": 0.4,
            "lr_schedule": "step",
            "lr_step": 1,
            "lr_gamma": 0.5,
            "recon_stage_epochs": 1,
            "recon_correct_epochs": 1,
        },
        out=tmp_path / "r",
        quiet=True,
    )
    point = torch.load(run.path / "checkpoints" / "resume.pt", weights_only=False)
    phase = point["method"]["phase_optimizer"]["param_groups"][0]
    assert phase["lr"] == pytest.approx(0.4 * 0.5**3)  # the last epoch's factor on the phase's lr


def test_a_schedule_survives_an_interruption(tmp_path):
    """Interrupt inside epoch 3 of a step schedule, resume: same lr column, same weights."""
    cfg = {**SYN, "method": "msam", "lr": 0.2, "lr_schedule": "step", "lr_step": 1, "lr_gamma": 0.5, "resume_every": 1}
    whole = msam_lab.train(cfg, out=tmp_path / "whole", quiet=True)

    def stop(row):
        if row["step"] == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(cfg, out=tmp_path / "cut", quiet=True, on_step=stop)
    resumed = msam_lab.train(resume=tmp_path / "cut", quiet=True)
    assert list(resumed.epochs["lr"]) == list(whole.epochs["lr"])
    a = load_run(whole.path).load_model(whole.epochs["epoch"].max())
    b = load_run(resumed.path).load_model(whole.epochs["epoch"].max())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
