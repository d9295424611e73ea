"""Precision and speed knobs on CPU: each equals fp32 / the plain model within a stated tolerance.

Tolerances: bf16 keeps 8 mantissa bits (relative error ~4e-3 per op), fp16 11 bits; a few steps of
a small model stay within 3e-2 of fp32 on the loss. channels-last and compile reorder float sums
only: 1e-5.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import msam_lab
from msam_lab.methods import build_method
from msam_lab.models.multimodal import build_model
from msam_lab.optim.precision import Precision
from msam_lab.optim.sam import SAM
from msam_lab.training import speed
from tests.conftest import make_batch, make_config, make_model

METHODS = ["joint", "sam", "msam", "agm", "ogm_ge", "cggm", "reconboost", "masam", "mie"]


def losses(method, precision, steps=4, **kw):
    inputs, labels = make_batch(n_mod=2, n=64)
    model = make_model(n_mod=2)
    m = build_method(model, make_config(method=method, precision=precision, ogm_noise=False, **kw))
    rows = [m.train_step(inputs, labels) for _ in range(steps)]
    return [r["loss"] for r in rows], model, rows


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_follows_fp32(method, precision):
    low, low_model, rows = losses(method, precision)
    # fp16: a step whose scaled gradients overflowed was skipped by the GradScaler (ReconBoost's
    # boosting weight 5 overflows at the initial scale 2^16): compare with fp32 after as many updates
    skipped = sum(r.get("overflow", 0) for r in rows)
    ref, ref_model, _ = losses(method, "fp32", steps=len(rows) - skipped)
    if not skipped:
        assert low == pytest.approx(ref, abs=3e-2)
    start = make_model(n_mod=2)
    delta_ref = torch.cat([(a - s).detach().flatten() for a, s in zip(ref_model.parameters(), start.parameters())])
    delta_low = torch.cat([(b - s).detach().flatten() for b, s in zip(low_model.parameters(), start.parameters())])
    assert all(p.dtype == torch.float32 for p in low_model.parameters())  # parameters stay fp32
    # the update direction and size agree to 5 % (measured: bf16 <= 3 %, fp16 <= 0.4 %)
    assert float((delta_low - delta_ref).norm() / delta_ref.norm()) < 0.05
    if precision == "fp16":
        assert all("overflow" in r for r in rows)


def test_bf16_really_runs_the_forward_in_bf16():
    model = make_model(n_mod=2)
    seen = []
    model.fusion.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    m = build_method(model, make_config(method="joint", precision="bf16"))
    m.train_step(*make_batch(n_mod=2))
    assert torch.bfloat16 in seen


def test_fp16_scales_the_loss_and_recovers_from_an_overflow():
    inputs, labels = make_batch(n_mod=2)
    model = make_model(n_mod=2)
    m = build_method(model, make_config(method="msam", precision="fp16"))
    scale = m.precision.scaler.get_scale()
    assert scale > 1  # gradients are computed scaled
    # a scale so large that the fp16 activation gradients overflow: the scaler must skip the
    # update and back off (to 2^10 here, where the next step fits)
    m.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, backoff_factor=2.0**-30)
    before = [p.detach().clone() for p in model.parameters()]
    row = m.train_step(inputs, labels)
    assert row["overflow"] == 1 and m.precision.scaler.get_scale() == 2.0**10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    row = m.train_step(inputs, labels)  # the next step trains again
    assert row["overflow"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_overflow_is_not_a_nan_stop(tmp_path):
    """The StepGuard must leave an fp16 overflow to the scaler, not fail the run."""
    from msam_lab.training.guards import StepGuard

    model = make_model(n_mod=2)
    m = build_method(model, make_config(method="joint", precision="fp16"))
    m.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    row = StepGuard("stop", model, m).step(*make_batch(n_mod=2))
    assert row["overflow"] == 1 and row["skipped"] == 0


def test_sam_epsilon_is_invariant_to_the_loss_scale():
    """fp16 perturbs with scaled gradients: ε = ρ·Sg/‖Sg‖ must equal ρ·g/‖g‖."""
    model = make_model(n_mod=2)
    inputs, labels = make_batch(n_mod=2)
    eps = []
    for scale in (1.0, 2.0**16):
        m = make_model(n_mod=2)
        m.load_state_dict(model.state_dict())
        sam = SAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
        loss = torch.nn.functional.cross_entropy(m(inputs), labels) * scale
        loss.backward()
        before = [p.detach().clone() for p in m.parameters()]
        sam.first_step()
        eps.append([p.detach() - b for p, b in zip(m.parameters(), before)])
    for a, b in zip(*eps):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)


def test_precision_state_round_trips():
    p = Precision("fp16")
    p.scale(torch.ones(()))  # the scaler's state exists once it has scaled a loss
    p.scaler.update(1024.0)
    q = Precision("fp16")
    q.load_state_dict(p.state_dict())
    assert q.scaler.get_scale() == 1024.0
    assert Precision("fp32").state_dict() == {}
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision("fp8")


def _cnn_model(seed=0):
    torch.manual_seed(seed)
    return build_model(
        {"img": (1, 12, 12), "spec": (1, 12, 12)},
        3,
        "late_concat",
        encoders={"img": "cnn", "spec": "cnn"},
        feature_dim=8,
    )


def _cnn_batch():
    g = torch.Generator().manual_seed(1)
    return {
        "img": torch.randn(16, 1, 12, 12, generator=g),
        "spec": torch.randn(16, 1, 12, 12, generator=g),
    }, torch.randint(0, 3, (16,), generator=g)


def assert_trains_alike(plain, fast, inputs, labels, method, steps, tol=1e-5):
    """``steps`` updates of ``method`` on both models: losses and weights within ``tol``."""
    a = build_method(plain, make_config(method=method))
    b = build_method(fast, make_config(method=method))
    for _ in range(steps):
        ra, rb = a.train_step(inputs, labels), b.train_step(inputs, labels)
        assert rb["loss"] == pytest.approx(ra["loss"], abs=tol)
    for pa, pb in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(pa, pb, atol=tol)


def test_channels_last_equals_contiguous():
    plain, fast = _cnn_model(), speed.use_channels_last(_cnn_model())
    conv = next(p for p in fast.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert_trains_alike(plain, fast, *_cnn_batch(), method="msam", steps=3)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="torch.compile's CPU backend needs a C compiler (none on PATH)",
)
@pytest.mark.slow
def test_compile_equals_eager_and_keeps_the_state_dict_keys():
    eager, compiled = make_model(n_mod=2), speed.compile_model(make_model(n_mod=2))
    assert list(eager.state_dict()) == list(compiled.state_dict())  # checkpoints stay loadable
    assert_trains_alike(eager, compiled, *make_batch(n_mod=2), method="joint", steps=2)


def test_an_fp16_channels_last_run_trains_and_keeps_its_scaler_state(tmp_path):
    cfg = {
        "dataset": "synthetic",
        "data": {"n_samples": 200, "n_modalities": 2},
        "epochs": 2,
        "batch_size": 50,
        "method": "msam",
        "precision": "fp16",
        "channels_last": True,
    }
    run = msam_lab.train(cfg, out=tmp_path / "r", quiet=True)
    assert run.finished and "overflow" in run.steps.columns
    point = torch.load(run.path / "checkpoints" / "resume.pt", weights_only=False)
    assert "scaler" in point["method"]["precision"]
