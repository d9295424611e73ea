"""MASAM's rules (APS, MDPS, the split update), its modes, state and training.

Every rule is checked against numbers worked out by hand here or an independent autograd
computation on a copy of a tiny float64 model, never against numbers the code produced.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msam_lab
from msam_lab.config import ConfigError
from msam_lab.methods import build_method
from msam_lab.methods.masam import aps_scores, loss_decay, mdps_kappa, mdps_perturbation, projected_direction
from msam_lab.models.multimodal import MultimodalModel, SumFusion, build_model
from msam_lab.training import setup


# -- fixtures ----------------------------------------------------------------------
def tiny_model(n_mod=2, fusion="late_concat", seed=0):
    torch.manual_seed(seed)
    return build_model({f"m{m}": (6,) for m in range(n_mod)}, 3, fusion, feature_dim=5, hidden_dim=7).double()


def tiny_batch(n_mod=2, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    means = torch.randn(3, 6, generator=g, dtype=torch.float64)
    inputs = {
        f"m{m}": (2.0 - m) * means[labels] + torch.randn(n, 6, generator=g, dtype=torch.float64) for m in range(n_mod)
    }
    return inputs, labels


def config(**kw):
    """lr = momentum = weight decay = 0 unless given: a step leaves θ alone and the grads readable."""
    base = {
        "dataset": "synthetic",
        "data": {"n_modalities": 2},
        "method": "masam",
        "lr": 0.0,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "rho": 0.3,
    }
    return setup.resolve({**base, **kw})


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def flat(tensors):
    return torch.cat([x.reshape(-1) for x in tensors])


def manual(model, aux, inputs, labels):
    """Per encoder block (a_p = ∇L_mm, u_p = ∇L_m) and the clean ∇L of every parameter, by autograd."""
    feats = model.encode(inputs)
    l_mm = F.cross_entropy(model.fuse(feats), labels)
    l_m = [F.cross_entropy(h(f), labels) for h, f in zip(aux, feats)]
    blocks = [model.encoder_parameters(m) for m in model.modalities]
    a = [torch.autograd.grad(l_mm, b, retain_graph=True) for b in blocks]
    u = [torch.autograd.grad(l_m[m], b, retain_graph=True) for m, b in enumerate(blocks)]
    params = list(model.parameters()) + list(aux.parameters())
    total = torch.autograd.grad(l_mm + sum(l_m), params)
    return a, u, total, [float(x.detach()) for x in l_m]


def hand_epsilon(u, a, rho, kappa_from="block"):
    """ε of one block from the written rule: q per tensor, κ over the block (or its last tensor)."""
    q = []
    for up, ap in zip(u, a):
        dot = (up * ap).sum()
        q.append(ap.clone() if dot < 0 else dot / (ap * ap).sum() * ap)
    uu, aa = (flat(u), flat(a)) if kappa_from == "block" else (u[-1].reshape(-1), a[-1].reshape(-1))
    cos = float(uu @ aa / (uu.norm() * aa.norm()))
    kappa = cos if cos > 0 else 1.0
    n = flat(q).norm()
    return [rho * kappa * x / n for x in q], kappa


def cos_mean(u, a):
    return float(np.mean([float(flat([x]) @ flat([y]) / (x.norm() * y.norm())) for x, y in zip(u, a)]))


class Snapshots:
    """The weights the fusion sees at each forward; the last one is the perturbed pass's."""

    def __init__(self, method):
        self.method, self.seen = method, []
        method.model.fusion.register_forward_pre_hook(self)

    def __call__(self, module, args):
        named = list(self.method.model.named_parameters()) + [
            (f"aux.{n}", p) for n, p in self.method.aux.named_parameters()
        ]
        self.seen.append({n: p.detach().clone() for n, p in named})


def weights(method):
    return {
        **{n: p.detach().clone() for n, p in method.model.named_parameters()},
        **{f"aux.{n}": p.detach().clone() for n, p in method.aux.named_parameters()},
    }


# -- APS -----------------------------------------------------------------------------
def test_loss_decay_updates_the_ema_before_comparing_with_the_previous_loss():
    d, state = loss_decay([1.0, 2.0], None, beta=0.8)
    assert list(d) == [0.0, 0.0] and state == {"ema": [1.0, 2.0], "last": [1.0, 2.0]}  # first: Ē = L
    d, state = loss_decay([0.5, 2.5], state, beta=0.8)
    # Ē = 0.8·1 + 0.2·0.5 = 0.9 -> D = 1 − 0.9 = 0.1 (D from Ē before the update would be 0,
    # and this batch's loss against Ē negative); Ē = 0.8·2 + 0.2·2.5 = 2.1 > 2 -> D = 0
    assert state["ema"] == pytest.approx([0.9, 2.1])
    assert list(d) == pytest.approx([0.1, 0.0])
    d, state = loss_decay([0.1, 1.0], state, beta=0.8)
    # Ē = 0.72 + 0.02 = 0.74 -> D = 0.5 − 0.74 < 0 -> 0; Ē = 1.68 + 0.2 = 1.88 -> D = 2.5 − 1.88
    assert list(d) == pytest.approx([0.0, 0.62])
    assert state["last"] == [0.1, 1.0]


def test_aps_alignment_is_the_mean_of_per_tensor_cosines_and_w_trades_it_against_decay():
    # modality 0: tensors with cos 1 and cos −0.6 (mean 0.2; the block cosine is not 0.2)
    u0 = [t(1.0, 0.0), t(-3.0, 4.0, 0.0)]
    a0 = [t(5.0, 0.0), t(1.0, 0.0, 0.0)]
    # modality 1: orthogonal (cos 0)
    u1, a1 = [t(0.0, 1.0)], [t(2.0, 0.0)]
    block_cos = float(flat(u0) @ flat(a0) / (flat(u0).norm() * flat(a0).norm()))
    assert abs(block_cos - 0.2) > 0.05
    _, state = aps_scores([u0, u1], [a0, a1], [1.0, 3.0], None)  # first step: D = 0
    # second step: Ē = [0.9·1 + 0.1·1, 0.9·3 + 0.1·1] = [1.0, 2.8]; D = [0, 3 − 2.8 = 0.2]
    scores, state = aps_scores([u0, u1], [a0, a1], [1.0, 1.0], state, beta=0.9, w=0.5)
    assert state["align"] == pytest.approx([0.2, 0.0])
    assert state["decay"] == pytest.approx([0.0, 0.2])
    assert list(scores) == pytest.approx([0.1, 0.1])
    for w, winner in [(0.9, 1), (0.2, 0)]:  # D favours m1, S favours m0: w decides
        scores, _ = aps_scores([u0, u1], [a0, a1], [1.0, 1.0], {"ema": [1.0, 3.0], "last": [1.0, 3.0]}, beta=0.9, w=w)
        assert list(scores) == pytest.approx([(1 - w) * 0.2, w * 0.2])
        assert int(np.argmax(scores)) == winner


# -- MDPS ----------------------------------------------------------------------------
def test_mdps_projects_u_on_a_when_they_agree_and_takes_a_when_they_conflict():
    assert torch.allclose(projected_direction(t(1.0, 1.0), t(2.0, 0.0)), t(1.0, 0.0))  # ⟨u,a⟩ = 2 ≥ 0
    assert torch.allclose(projected_direction(t(-1.0, 1.0), t(2.0, 0.0)), t(2.0, 0.0))  # ⟨u,a⟩ < 0: a
    assert torch.allclose(projected_direction(t(0.0, 1.0), t(2.0, 0.0)), t(0.0, 0.0))  # = 0: projection
    assert torch.equal(projected_direction(t(1.0, 1.0), t(0.0, 0.0)), t(0.0, 0.0))  # no NaN


def test_mdps_epsilon_has_norm_rho_kappa_with_the_block_cosine_as_kappa():
    u = [t(1.0, 1.0), t(-1.0, 2.0, 0.5)]
    a = [t(2.0, 0.0), t(1.0, 1.0, 1.0)]
    want, kappa = hand_epsilon(u, a, 0.3)
    got = mdps_perturbation(u, a, 0.3, "paper")
    assert 0 < kappa < 1 and mdps_kappa(u, a) == pytest.approx(kappa)
    for g, w in zip(got, want):
        assert torch.allclose(g, w)
    assert float(flat(got).norm()) == pytest.approx(0.3 * kappa)
    # block cosine ≤ 0: κ = 1, ‖ε‖ = ρ
    u_neg = [-x for x in u]
    assert mdps_kappa(u_neg, a) == 1.0
    assert float(flat(mdps_perturbation(u_neg, a, 0.3)).norm()) == pytest.approx(0.3)


def test_mdps_code_mode_takes_kappa_from_the_last_tensor_only():
    u = [t(1.0, 0.2), t(1.0, 1.0)]
    a = [t(1.0, 0.0), t(1.0, -0.5)]  # last tensor cos ≈ 0.32, block cos ≈ 0.57
    last = float(u[-1] @ a[-1] / (u[-1].norm() * a[-1].norm()))
    assert abs(last - mdps_kappa(u, a, "paper")) > 0.2
    assert mdps_kappa(u, a, "code") == pytest.approx(last)
    assert float(flat(mdps_perturbation(u, a, 0.5, "code")).norm()) == pytest.approx(0.5 * last)
    # last tensor in conflict, block agreeing: code κ = 1, paper κ < 1
    u_big, a_conf = [t(3.0, 0.2), t(1.0, 1.0)], [t(3.0, 0.0), t(-1.0, -0.5)]
    assert mdps_kappa(u_big, a_conf, "code") == 1.0 and 0 < mdps_kappa(u_big, a_conf, "paper") < 1.0


# -- the step ------------------------------------------------------------------------
def test_step_perturbs_only_the_aps_encoder_and_splits_the_gradient():
    model = tiny_model()
    inputs, labels = tiny_batch()
    method = build_method(model, config())
    ref_model, ref_aux = copy.deepcopy(model), copy.deepcopy(method.aux)
    a, u, clean, _ = manual(ref_model, ref_aux, inputs, labels)
    align = [cos_mean(u[m], a[m]) for m in range(2)]
    d = int(np.argmax(align))  # first step: D = 0, S decides
    eps, kappa = hand_epsilon(u[d], a[d], 0.3)

    before = weights(method)
    snaps = Snapshots(method)
    row = method.step(inputs, labels)
    assert row["aps_dominant"] == f"m{d}" and row["kappa"] == pytest.approx(kappa)
    assert [row["align_m0"], row["align_m1"]] == pytest.approx(align)
    # the perturbed forward saw θ + ε with ε on encoder d only, ‖ε‖ = ρ·κ; θ came back exactly
    seen = snaps.seen[-1]
    moved = {n: seen[n] - before[n] for n in before if not torch.equal(seen[n], before[n])}
    assert moved and all(n.startswith(f"encoders.m{d}.") for n in moved)
    assert float(flat(list(moved.values())).norm()) == pytest.approx(0.3 * kappa)
    for n, e in zip([n for n, _ in model.named_parameters() if n.startswith(f"encoders.m{d}.")], eps):
        assert torch.allclose(seen[n] - before[n], e, atol=1e-12)
    assert all(torch.equal(p, before[n]) for n, p in weights(method).items())

    # encoders: ∇L(θ+ε) of the total loss; heads (fusion and aux): the clean ∇L(θ)
    pert_model, pert_aux = copy.deepcopy(ref_model), copy.deepcopy(ref_aux)
    with torch.no_grad():
        for p, e in zip(pert_model.encoder_parameters(f"m{d}"), eps):
            p.add_(e)
    _, _, perturbed, _ = manual(pert_model, pert_aux, inputs, labels)
    names = [n for n, _ in model.named_parameters()] + [f"aux.{n}" for n, _ in method.aux.named_parameters()]
    params = list(model.parameters()) + list(method.aux.parameters())
    for n, p, g_clean, g_pert in zip(names, params, clean, perturbed):
        want = g_pert if n.startswith("encoders.") else g_clean
        assert torch.allclose(p.grad, want, rtol=1e-9, atol=1e-12), n
    other = next(i for i, n in enumerate(names) if n.startswith(f"encoders.m{1 - d}."))
    assert not torch.allclose(clean[other], perturbed[other])  # the other encoder's grad is the perturbed one


def test_code_mode_perturbs_both_encoders_each_normalised_with_its_last_tensor_kappa():
    model = tiny_model(seed=1)
    inputs, labels = tiny_batch(seed=1)
    method = build_method(model, config(masam_mode="code"))
    a, u, _, _ = manual(copy.deepcopy(model), copy.deepcopy(method.aux), inputs, labels)
    before = weights(method)
    snaps = Snapshots(method)
    row = method.step(inputs, labels)
    seen = snaps.seen[-1]
    for m in range(2):
        eps, kappa = hand_epsilon(u[m], a[m], 0.3, kappa_from="last")
        moved = [seen[n] - before[n] for n in before if n.startswith(f"encoders.m{m}.")]
        assert float(flat(moved).norm()) == pytest.approx(0.3 * kappa)  # each block on its own
        for got, want in zip(moved, eps):
            assert torch.allclose(got, want, atol=1e-12)
        assert row[f"kappa_m{m}"] == pytest.approx(kappa)
    assert all(torch.equal(seen[n], before[n]) for n in before if not n.startswith("encoders."))
    # paper mode without APS: both encoders too, with the block κ
    paper = build_method(tiny_model(seed=1), config(masam_aps=False))
    paper.aux.load_state_dict(method.aux.state_dict())
    snaps = Snapshots(paper)
    paper.step(inputs, labels)
    for m in range(2):
        _, kappa = hand_epsilon(u[m], a[m], 0.3)
        moved = [snaps.seen[-1][n] - before[n] for n in before if n.startswith(f"encoders.m{m}.")]
        assert float(flat(moved).norm()) == pytest.approx(0.3 * kappa)


def test_perturbed_pass_leaves_batchnorm_statistics_alone():
    def bn_model():
        torch.manual_seed(3)
        enc = {m: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()) for m in ("m0", "m1")}
        return MultimodalModel(enc, SumFusion([8, 8], 3), {"m0": (6,), "m1": (6,)}).double()

    def buffers(model):
        return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}

    inputs, labels = tiny_batch()
    reference = bn_model().train()
    with torch.no_grad():
        reference.encode(inputs)  # exactly one train-mode pass at θ
    model = bn_model()
    build_method(model, config(rho=0.5, masam_aps=False)).step(inputs, labels)
    ref, got = buffers(reference), buffers(model)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


def test_state_dict_round_trip_continues_identically():
    inputs, labels = tiny_batch()
    cfg = config(lr=0.1, momentum=0.9)
    method = build_method(tiny_model(), cfg)
    method.step(inputs, labels)
    saved_model, saved_state = copy.deepcopy(method.model.state_dict()), copy.deepcopy(method.state_dict())
    other_model = tiny_model(seed=5)
    other = build_method(other_model, cfg)
    assert not all(torch.equal(p, q) for p, q in zip(method.aux.parameters(), other.aux.parameters()))
    other_model.load_state_dict(saved_model)
    other.load_state_dict(saved_state)
    assert other.aps_state["ema"] == method.aps_state["ema"]
    for _ in range(2):
        row, row_other = method.step(inputs, labels), other.step(inputs, labels)
        assert row == row_other
    for (n, p), q in zip(weights(method).items(), weights(other).values()):
        assert torch.equal(p, q), n


def test_three_modalities_in_paper_mode_step():
    model = tiny_model(n_mod=3)
    inputs, labels = tiny_batch(n_mod=3)
    row = build_method(model, config(data={"n_modalities": 3}, lr=0.05)).step(inputs, labels)
    assert row["aps_dominant"] in ("m0", "m1", "m2")
    assert all(np.isfinite(row[f"{k}_m{m}"]) for k in ("aps", "aux_loss", "kappa") for m in range(3))


def test_bf16_autocast_step_is_finite():
    torch.manual_seed(0)
    model = build_model({"m0": (6,), "m1": (6,)}, 3, "late_concat", feature_dim=5, hidden_dim=7)
    inputs, labels = tiny_batch()
    inputs = {m: x.float() for m, x in inputs.items()}
    method = build_method(model, config(lr=0.05, precision="bf16"))
    before = weights(method)
    row = method.train_step(inputs, labels)
    assert np.isfinite(row["loss"]) and np.isfinite(row["kappa"])
    assert any(not torch.equal(p, before[n]) for n, p in weights(method).items())


# -- configuration -------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, match",
    [
        ({"masam_mode": "released"}, "masam_mode must be one of paper, code"),
        ({"masam_beta": 1.0}, "masam_beta"),
        ({"masam_w": 1.5}, "masam_w"),
        ({"adaptive": True}, "adaptive=false"),
        ({"masam_aps": "yes"}, "masam_aps"),
    ],
)
def test_bad_config_is_a_one_line_error(fields, match):
    with pytest.raises(ConfigError, match=match) as err:
        config(**fields)
    assert "\n" not in str(err.value)


def test_code_mode_needs_two_modalities():
    cfg = config(masam_mode="code", data={"n_modalities": 3})
    with pytest.raises(ConfigError, match="two modalities.*masam_mode=paper") as err:
        build_method(tiny_model(n_mod=3), cfg)
    assert "\n" not in str(err.value)


def test_training_smoke_run(tmp_path):
    run = msam_lab.train(
        {
            "method": "masam",
            "dataset": "synthetic",
            "data": {"n_samples": 200},
            "epochs": 1,
            "batch_size": 50,
            "checkpoint_every": 0,
            "rho": 0.3,
        },
        out=tmp_path / "masam",
        quiet=True,
    )
    for col in ["loss", "dominant", "aps_dominant", "kappa", "aps_m2", "aux_loss_m0", "loss_total"]:
        assert col in run.steps.columns, col
    assert np.isfinite(run.steps["loss_total"]).all()
    assert run.summary["test_acc"] > 0.25
