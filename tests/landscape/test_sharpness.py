"""Sharpness: Hessian eigenvalues (power iteration + deflation), Hutchinson trace and ε-sharpness,
checked against a quadratic with a known Hessian and against explicit Hessians of tiny networks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import msam_lab
from msam_lab.cli import main as landscape_main
from msam_lab.datasets import MultimodalData
from msam_lab.landscape import epsilon_sharpness, hutchinson_trace, sharpness, top_eigenvalues
from msam_lab.landscape.sharpness import HessianOperator
from msam_lab.models.multimodal import MultimodalModel, SumFusion, build_model

# ---------------------------------------------------------------- a quadratic with a known Hessian


class Quadratic(nn.Module):
    """loss(θ) = ½ θᵀAθ: gradient Aθ, Hessian A."""

    def __init__(self, A: np.ndarray, theta: np.ndarray):
        super().__init__()
        self.register_buffer("A", torch.tensor(A))
        self.theta = nn.Parameter(torch.tensor(theta))

    def loss(self):
        return 0.5 * self.theta @ self.A @ self.theta


def known_matrix(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T, q


EIGS = [5.0, -3.0, 2.0, 1.0, 0.5, 0.25]


def test_hessian_vector_product_of_the_quadratic_is_A_v():
    A, _ = known_matrix(EIGS)
    q = Quadratic(A, np.random.default_rng(1).standard_normal(6))
    H = HessianOperator(q.loss, [q.theta])
    v = np.random.default_rng(2).standard_normal(6)
    np.testing.assert_allclose(H([torch.tensor(v)])[0].numpy(), A @ v, atol=1e-12)


def test_top_eigenvalues_of_the_quadratic_by_magnitude_with_deflation():
    A, Q = known_matrix(EIGS)
    q = Quadratic(A, np.ones(6))
    H = HessianOperator(q.loss, [q.theta])
    vals, vecs, _ = top_eigenvalues(H, [q.theta], k=3, max_iter=3000, tol=1e-13, seed=0)
    np.testing.assert_allclose(vals, [5.0, -3.0, 2.0], atol=1e-6)
    for vec, col in zip(vecs, Q.T[:3]):
        assert abs(abs(float(vec[0].numpy() @ col)) - 1.0) < 1e-5


def test_hutchinson_trace_is_exact_for_a_diagonal_hessian():
    A = np.diag([4.0, -1.0, 2.5, 0.5])
    q = Quadratic(A, np.ones(4))
    est, _, samples = hutchinson_trace(HessianOperator(q.loss, [q.theta]), [q.theta], probes=3, seed=5)
    assert est == pytest.approx(6.0, abs=1e-12)
    assert np.allclose(samples, 6.0)


def test_hutchinson_trace_of_a_general_hessian_within_its_standard_error():
    A, _ = known_matrix(EIGS, seed=3)
    q = Quadratic(A, np.ones(6))
    probes = 4000
    est, se, _ = hutchinson_trace(HessianOperator(q.loss, [q.theta]), [q.theta], probes=probes, seed=1)
    # Rademacher probes: Var(zᵀAz) = 2 Σ_{i≠j} A_ij²
    sigma = math.sqrt(2 * (np.sum(A**2) - np.sum(np.diag(A) ** 2)))
    assert abs(est - sum(EIGS)) < 4 * sigma / math.sqrt(probes)
    assert se == pytest.approx(sigma / math.sqrt(probes), rel=0.15)
    again, _, _ = hutchinson_trace(HessianOperator(q.loss, [q.theta]), [q.theta], probes=probes, seed=1)
    assert again == est


def test_epsilon_sharpness_of_the_quadratic_in_closed_form():
    A, _ = known_matrix(EIGS, seed=4)
    theta = np.random.default_rng(5).standard_normal(6)
    q = Quadratic(A, theta)
    rho = 0.1
    g = A @ theta
    gh = g / np.linalg.norm(g)
    expected = rho * np.linalg.norm(g) + 0.5 * rho**2 * gh @ A @ gh
    out = epsilon_sharpness(q.loss, [q.theta], rho)
    assert out["eps_sharpness"] == pytest.approx(expected, rel=1e-10)
    assert out["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-12)
    assert torch.equal(q.theta.detach(), torch.tensor(theta))  # put back bit for bit
    assert epsilon_sharpness(q.loss, [q.theta], 0.0)["eps_sharpness"] == 0.0


# ---------------------------------------------------------------- explicit Hessians of tiny networks


def explicit_hessian(model, loss_of_model, names):
    """The Hessian of loss w.r.t. the named parameters, built by torch.autograd.functional.hessian."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat):
        chunks = torch.split(flat, sizes)
        override = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return loss_of_model(lambda inputs: functional_call(model, {**params, **override}, (inputs,)))

    return torch.autograd.functional.hessian(f, flat0).numpy()


def by_magnitude(eigs, k):
    return sorted(eigs, key=lambda v: -abs(v))[:k]


def test_mlp_eigenvalues_trace_and_hvp_match_the_explicit_hessian():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.arange(20) % 2
    names = [n for n, _ in mlp.named_parameters()]
    H = explicit_hessian(mlp, lambda fwd: F.cross_entropy(fwd(x), y), names)
    eigs = np.linalg.eigvalsh(H)
    params = list(mlp.parameters())
    op = HessianOperator(lambda: F.cross_entropy(mlp(x), y), params)
    v = [torch.randn_like(p) for p in params]
    hv = torch.cat([t.reshape(-1) for t in op(v)]).numpy()
    np.testing.assert_allclose(hv, H @ torch.cat([t.reshape(-1) for t in v]).numpy(), atol=1e-10)
    vals, _, _ = top_eigenvalues(op, params, k=2, max_iter=20000, tol=1e-14, seed=0)
    np.testing.assert_allclose(vals, by_magnitude(eigs, 2), rtol=1e-5)
    probes = 400
    est, _, _ = hutchinson_trace(op, params, probes=probes, seed=0)
    sigma = math.sqrt(2 * (np.sum(H**2) - np.sum(np.diag(H) ** 2)))
    assert abs(est - np.trace(H)) < 4 * sigma / math.sqrt(probes)


SHAPES = {"a": (4,), "b": (3,)}


def tiny_multimodal(seed=0):
    torch.manual_seed(seed)
    return build_model(SHAPES, 3, "late_sum", feature_dim=4, hidden_dim=5).double()


def tiny_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    inputs = {
        m: torch.randn(n, s[0], generator=g, dtype=torch.float64) + labels[:, None] * 0.7 for m, s in SHAPES.items()
    }
    return MultimodalData(inputs, labels, 3)


@pytest.mark.parametrize("scope", ["model", "a"])
def test_scoped_sharpness_matches_the_explicit_hessian_block(scope):
    model, data = tiny_multimodal(), tiny_data()
    prefix = "" if scope == "model" else f"encoders.{scope}."
    names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    H = explicit_hessian(model, lambda fwd: F.cross_entropy(fwd(data.inputs), data.labels), names)
    eigs = np.linalg.eigvalsh(H)
    probes = 300
    row = sharpness(model, data, scope, rho=0.05, topk=2, probes=probes, seed=0, max_iter=20000, tol=1e-13)
    assert row["n_parameters"] == len(H)
    np.testing.assert_allclose([row["lambda_1"], row["lambda_2"]], by_magnitude(eigs, 2), rtol=1e-4)
    sigma = math.sqrt(2 * (np.sum(H**2) - np.sum(np.diag(H) ** 2)))
    assert abs(row["trace"] - np.trace(H)) < 4 * sigma / math.sqrt(probes)
    # ε-sharpness by hand: move only the scope's parameters along their gradient
    ref = tiny_multimodal()
    ps = [p for n, p in ref.named_parameters() if n.startswith(prefix)]
    loss = F.cross_entropy(ref(data.inputs), data.labels)
    grads = torch.autograd.grad(loss, ps)
    gn = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ps, grads):
            p.add_(0.05 * g / gn)
        moved = F.cross_entropy(ref(data.inputs), data.labels)
    assert row["eps_sharpness"] == pytest.approx((moved - loss).item(), rel=1e-9)
    assert row["loss"] == pytest.approx(loss.item(), rel=1e-12)


def test_sharpness_leaves_the_model_bitwise_untouched():
    torch.manual_seed(0)
    enc_a = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.3))
    enc_b = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
    model = MultimodalModel({"a": enc_a, "b": enc_b}, SumFusion([5, 5], 3), SHAPES).double()
    data = tiny_data()
    model.train()
    model.encoders["b"].eval()
    model.fusion.heads[1].weight.requires_grad_(False)
    model.encoders["a"][0].bias.grad = torch.ones(5, dtype=torch.float64)

    def bits(t):
        return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    def record():
        return (
            [(id(p), bits(p), p.requires_grad, None if p.grad is None else bits(p.grad)) for p in model.parameters()],
            [(id(b), bits(b)) for b in model.buffers()],
            [m.training for m in model.modules()],
        )

    before = record()
    for scope in ("model", "a", "fusion"):
        sharpness(model, data, scope, topk=2, probes=4, max_iter=10)
    assert record() == before


# ---------------------------------------------------------------- the run-level API and the CLI


@pytest.fixture(scope="module")
def syn_run(tmp_path_factory):
    cfg = {
        "dataset": "synthetic",
        "data": {"n_samples": 200, "n_modalities": 2, "n_features": 6},
        "epochs": 2,
        "batch_size": 50,
        "checkpoint_every": 1,
        "method": "joint",
        "feature_dim": 6,
        "hidden_dim": 8,
    }
    return msam_lab.train(cfg, out=tmp_path_factory.mktemp("sharp") / "run", quiet=True)


def test_cli_sharpness_writes_one_row_per_epoch_and_scope(syn_run, capsys):
    argv = [
        "sharpness",
        str(syn_run.path),
        "--epoch",
        "all",
        "--topk",
        "2",
        "--probes",
        "3",
        "--n-samples",
        "50",
        "--max-iter",
        "4",
        "--quiet",
    ]
    assert landscape_main(argv) == 0
    table = pd.read_csv(syn_run.path / "sharpness.csv")
    assert len(table) == 3 * 3  # epochs 0..2 x (model, m0, m1)
    assert set(table["scope"]) == {"model", "m0", "m1"} and set(table["epoch"]) == {0, 1, 2}
    for col in ("lambda_1", "lambda_2", "trace", "trace_se", "eps_sharpness", "rho", "loss"):
        assert table[col].notna().all(), col
    assert (
        table["n_parameters"][table["scope"] == "model"] > table["n_parameters"][table["scope"] == "m0"].max()
    ).all()
    assert landscape_main(argv) == 0  # same settings: rows replaced, not duplicated
    assert len(pd.read_csv(syn_run.path / "sharpness.csv")) == 9
    assert (
        landscape_main(argv[:2] + ["--rho", "0.1", "--topk", "1", "--probes", "2", "--max-iter", "4", "--quiet"]) == 0
    )
    assert len(pd.read_csv(syn_run.path / "sharpness.csv")) == 12


def test_cli_sharpness_bad_input_exits_2(syn_run, tmp_path, capsys):
    assert landscape_main(["sharpness", str(tmp_path)]) == 2
    assert landscape_main(["sharpness", str(syn_run.path), "--epoch", "7"]) == 2
    assert landscape_main(["sharpness", str(syn_run.path), "--scope", "nope"]) == 2
    assert landscape_main(["sharpness", str(syn_run.path), "--rho", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("msam-lab: error:") for e in err)
    # the library names its arguments (epochs=, scopes, rho); the command line says the flags
    assert err[0].startswith(f"msam-lab: error: RUN {tmp_path} is not a finished run directory")
    assert "pass --epoch one of 0, 1, 2" in err[1] and err[2].startswith("msam-lab: error: --scope: ")
    assert err[3] == "msam-lab: error: --rho must be >= 0, got -1.0"
    assert not (tmp_path / "sharpness.csv").exists()


def test_sharpness_for_run_errors_name_arguments_and_options_equal_keywords(syn_run):
    from msam_lab.landscape import OptionError, SharpnessOptions, sharpness_for_run

    with pytest.raises(OptionError, match=r"^epochs 7: .*pass epochs= one of 0, 1, 2$"):
        sharpness_for_run(syn_run.path, epochs=[1, 7], write=False)
    with pytest.raises(OptionError, match=r"^scopes: .*'nope'"):
        sharpness_for_run(syn_run.path, scopes=["model", "nope"], write=False)
    kw = dict(epochs=[1], probes=3, topk=2, n_samples=40, max_iter=4, seed=3, subset_seed=1, scopes=["m1"])
    by_kw = sharpness_for_run(syn_run.path, write=False, **kw)
    by_opts = sharpness_for_run(syn_run.path, SharpnessOptions(**{**kw, "seed": 0}), write=False, seed=3)
    assert by_kw.drop(columns="seconds", errors="ignore").equals(by_opts.drop(columns="seconds", errors="ignore"))
    assert list(by_kw["scope"]) == ["m1"] and list(by_kw["seed"]) == [3] and by_kw["n_samples"].iloc[0] == 40


def test_sharpness_of_a_model_with_torch_attention():
    """nn.MultiheadAttention's fused kernels have no double backward: sharpness runs attention
    through the math kernel, and its λ_max is the top eigenvalue of the explicit Hessian."""
    from msam_lab.analysis.hessian import HessianOperator, block_sharpness

    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"attn": torch.nn.MultiheadAttention(4, 2, batch_first=True), "head": torch.nn.Linear(4, 3)}
    ).eval()
    x, y = torch.randn(10, 3, 4), torch.randint(0, 3, (10,))

    def loss(params=None):
        attn = (lambda *a, **k: functional_call(model["attn"], params, a, k)) if params else model["attn"]
        out, _ = attn(x, x, x, need_weights=False)  # the fused attention kernel's path
        return F.cross_entropy(model["head"](out.mean(1)), y)

    block = dict(model["attn"].named_parameters())
    with pytest.raises(RuntimeError, match="derivative"):  # what the fix is for
        HessianOperator(loss, list(block.values()))([torch.ones_like(p) for p in block.values()])
    row = block_sharpness(model, loss, list(block.values()), topk=1, probes=0, max_iter=1000, tol=1e-9)
    names, sizes = list(block), [p.numel() for p in block.values()]
    flat = torch.cat([p.detach().flatten() for p in block.values()])

    def as_loss(v):
        parts = dict(zip(names, (t.view_as(block[n]) for n, t in zip(names, torch.split(v, sizes)))))
        return loss(parts)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(as_loss, flat)
    top = torch.linalg.eigvalsh(hessian.double())
    assert row["lambda_1"] == pytest.approx(float(top[top.abs().argmax()]), rel=1e-3)
