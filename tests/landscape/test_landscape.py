"""Loss landscapes: directions, surfaces, leave-no-trace, files/resume, workers, the CLI, and a
cross-check against the ``loss-landscapes`` package."""

from __future__ import annotations

import copy
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msam_lab
from msam_lab.cli import main as landscape_main
from msam_lab.config import ConfigError
from msam_lab.datasets import MultimodalData
from msam_lab.landscape import (
    Surface,
    WorkerPool,
    between,
    compute_surface,
    evaluate_points,
    generalization_gap,
    grid,
    list_landscapes,
    load_landscape,
    pca_directions,
    random_direction,
    random_directions,
    scope_parameters,
)
from msam_lab.landscape.state import preserved
from msam_lab.models.multimodal import MultimodalModel, SumFusion, build_model

SHAPES = {"a": (5,), "b": (7,)}


# ---------------------------------------------------------------- fixtures and helpers


def tiny_data(n=96, seed=0, n_classes=3) -> MultimodalData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    means = {m: torch.randn(n_classes, s[0], generator=g) for m, s in SHAPES.items()}
    inputs = {m: 1.5 * means[m][labels] + torch.randn(n, s[0], generator=g) for m, s in SHAPES.items()}
    return MultimodalData(inputs, labels, n_classes)


def tiny_model(seed=0, fusion="late_sum") -> MultimodalModel:
    torch.manual_seed(seed)
    return build_model(SHAPES, 3, fusion, feature_dim=6, hidden_dim=8)


def bn_model(seed=0) -> MultimodalModel:
    """Encoder a has BatchNorm (with non-trivial running stats) and dropout; b's zero feature is relu(bias)."""
    torch.manual_seed(seed)
    enc_a = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5))
    enc_b = nn.Sequential(nn.Linear(7, 6), nn.ReLU())
    model = MultimodalModel({"a": enc_a, "b": enc_b}, SumFusion([6, 6], 3), SHAPES)
    with torch.no_grad():
        enc_a[1].running_mean.normal_()
        enc_a[1].running_var.uniform_(0.5, 2.0)
        enc_a[1].weight.uniform_(0.5, 1.5)
    return model


def cnn_model(seed=0) -> MultimodalModel:
    torch.manual_seed(seed)
    return build_model({"img": (12, 8), "v": (4,)}, 3, "late_sum", encoders={"img": "cnn"}, feature_dim=6, hidden_dim=8)


def cnn_data(n=24, seed=0) -> MultimodalData:
    g = torch.Generator().manual_seed(seed)
    return MultimodalData(
        {"img": torch.randn(n, 12, 8, generator=g), "v": torch.randn(n, 4, generator=g)}, torch.arange(n) % 3, 3
    )


def record(model: nn.Module) -> dict:
    """Bit-level record of everything the engine promises to leave alone."""

    def bits(t):
        return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    out = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        out[("mode", mname)] = module.training
        for name, p in module._parameters.items():
            out[("param", mname, name)] = (
                id(p),
                bits(p),
                p.stride(),
                p.requires_grad,
                None if p.grad is None else (id(p.grad), bits(p.grad)),
            )
        for name, b in module._buffers.items():
            out[("buffer", mname, name)] = (id(b), bits(b), b.stride())
    return out


def manual_metrics(model, data, directions, point) -> dict:
    """Reference: a copy of the model moved to the point, every coalition through the naive path."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            for d, c in zip(directions, point):
                if name in d:
                    p.add_(c * d[name])
        out = {}
        mods = list(m.modalities)
        cases = {"": set(mods)}
        cases.update({f"_only_{x}": {x} for x in mods})
        cases.update({f"_without_{x}": set(mods) - {x} for x in mods})
        for suffix, present in cases.items():
            logits = m(data.inputs, present=present)
            out[f"loss{suffix}"] = float(F.cross_entropy(logits, data.labels))
            out[f"acc{suffix}"] = float((logits.argmax(1) == data.labels).float().mean())
    return out


SYN_RUN = {
    "dataset": "synthetic",
    "data": {"n_samples": 240, "n_modalities": 2, "n_features": 8},
    "epochs": 3,
    "batch_size": 60,
    "checkpoint_every": 1,
    "method": "joint",
    "feature_dim": 8,
    "hidden_dim": 16,
}


@pytest.fixture(scope="module")
def syn_run(tmp_path_factory):
    return msam_lab.train(SYN_RUN, out=tmp_path_factory.mktemp("land") / "run", quiet=True)


# ---------------------------------------------------------------- directions


class TwoLayers(nn.Module):
    def __init__(self, order):
        super().__init__()
        for name in order:
            setattr(self, name, nn.Linear(4, 3))


def test_random_direction_is_seeded_per_parameter_name_not_order():
    m1, m2 = TwoLayers(["x", "y"]), TwoLayers(["y", "x"])
    m2.load_state_dict(m1.state_dict())
    assert [n for n, _ in m1.named_parameters()] != [n for n, _ in m2.named_parameters()]
    d1, d2 = random_direction(m1, seed=3), random_direction(m2, seed=3)
    assert set(d1) == set(d2)
    for name in d1:
        assert torch.equal(d1[name], d2[name]), name
    other_seed, other_index = random_direction(m1, seed=4), random_direction(m1, seed=3, index=1)
    assert not torch.equal(d1["x.weight"], other_seed["x.weight"])
    assert not torch.equal(d1["x.weight"], other_index["x.weight"])


def test_raw_direction_is_standard_gaussian_not_uniform():
    model = nn.Sequential(nn.Linear(200, 100))
    d = random_direction(model, seed=0, normalization=None, include_1d=True)["0.weight"]
    assert abs(float(d.mean())) < 0.03
    assert abs(float(d.std()) - 1.0) < 0.03
    assert 0.45 < float((d < 0).float().mean()) < 0.55


def test_filter_normalisation_matches_each_filter_and_zeroes_1d():
    model = cnn_model()
    theta = dict(model.named_parameters())
    d = random_direction(model, seed=1)
    assert set(d) == set(theta)
    n_conv = 0
    for name, t in d.items():
        w = theta[name].detach()
        if w.dim() >= 2:
            n_conv += w.dim() == 4
            assert torch.allclose(t.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5), name
            cos = float((t * w).sum() / (t.norm() * w.norm()))
            assert abs(cos) < 0.9, f"{name}: direction is not random"
        else:
            assert not t.any(), f"1-D {name} should be zero by default"
    assert n_conv == 2
    d1d = random_direction(model, seed=1, include_1d=True)
    for name, w in theta.items():
        if w.dim() == 1:
            assert d1d[name].any()
            assert torch.allclose(d1d[name].norm(), w.detach().norm(), rtol=1e-5)


def test_orthogonalised_second_direction():
    model = tiny_model()
    d1, d2 = random_directions(model, 2, seed=0, orthogonal=True)
    dot = sum(float((d1[n] * d2[n]).sum()) for n in d1)
    n1 = sum(float(d1[n].pow(2).sum()) for n in d1) ** 0.5
    n2 = sum(float(d2[n].pow(2).sum()) for n in d2) ** 0.5
    assert abs(dot) < 1e-5 * n1 * n2
    raw = random_directions(model, 2, seed=0)[1]
    assert abs(n2 - sum(float(raw[n].pow(2).sum()) for n in raw) ** 0.5) < 1e-4 * n2


def test_scopes_restrict_the_parameters():
    model = tiny_model()
    assert all(n.startswith("encoders.a.") for n in scope_parameters(model, "a"))
    assert all(n.startswith("fusion.") for n in random_direction(model, scope="fusion"))
    assert len(scope_parameters(model, "model")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown scope"):
        scope_parameters(model, "nope")


def test_scope_b_surface_leaves_modality_a_alone_unchanged():
    # b's encoder is Linear+ReLU: with b zeroed its feature is relu(bias), and biases do not move,
    # so moving only b's weights cannot change the "a alone" metrics, but does change the fused ones.
    model, data = bn_model(), tiny_data()
    d = random_directions(model, 2, seed=5, scope="b")
    s = compute_surface(model, data, d, [grid(3, 1.0), grid(3, 1.0)], n_samples=None)
    assert np.ptp(s["loss_only_a"]) < 1e-6
    assert np.ptp(s["loss"]) > 1e-3


def test_between_direction_reaches_the_end_point():
    a, b, data = tiny_model(0), tiny_model(1), tiny_data()
    d = between(a, b)
    for name, p in a.named_parameters():
        assert torch.allclose(d[name], dict(b.named_parameters())[name] - p)
    s = compute_surface(a, data, [d], [np.array([0.0, 0.5, 1.0])], n_samples=None)
    end = manual_metrics(b, data, [], [])
    start = manual_metrics(a, data, [], [])
    for k in ("loss", "acc", "loss_only_a", "acc_without_b"):
        assert s[k][2] == pytest.approx(end[k], abs=1e-5)
        assert s[k][0] == pytest.approx(start[k], abs=1e-5)
    with pytest.raises(ValueError, match="architecture"):
        between(a, build_model(SHAPES, 3, "late_sum", feature_dim=5, hidden_dim=8))


def test_pca_directions_recover_a_planar_trajectory():
    model = tiny_model()
    final = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    g = torch.Generator().manual_seed(0)
    weight_names = [n for n in names if final[n].dim() > 1]
    size = sum(final[n].numel() for n in weight_names)
    u, v = torch.linalg.qr(torch.randn(size, 2, generator=g, dtype=torch.float64))[0].T
    alpha = [3.0, 2.0, 1.2, 0.5, 0.0]
    beta = [-1.0, 0.5, 0.8, 0.3, 0.0]
    states = {}
    for e, (al, be) in enumerate(zip(alpha, beta)):
        step = (al * u + be * v).float()
        st, start = dict(final), 0
        for n in weight_names:
            k = final[n].numel()
            st[n] = final[n] + step[start : start + k].reshape(final[n].shape)
            start += k
        states[e] = st
    pca = pca_directions(states, names, n_components=2)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-4)
    assert pca.epochs == [0, 1, 2, 3, 4]
    assert np.allclose(pca.projection[-1], 0.0)
    for d in pca.directions:
        assert all(not d[n].any() for n in names if final[n].dim() == 1)
    # each checkpoint is rebuilt from its projection on the two components
    for e in range(4):
        rebuilt = sum(
            c * torch.cat([d[n].reshape(-1).double() for n in weight_names])
            for c, d in zip(pca.projection[e], pca.directions)
        )
        truth = alpha[e] * u + beta[e] * v
        assert torch.allclose(rebuilt, truth, atol=1e-4)


# ---------------------------------------------------------------- surfaces


def test_grid_is_odd_and_contains_zero():
    c = grid(7, 0.3)
    assert len(c) == 7 and c[3] == 0.0 and c[0] == pytest.approx(-0.3) and c[-1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="odd"):
        grid(6)


def test_every_metric_at_every_point_matches_a_direct_evaluation():
    model, data = bn_model(), tiny_data()
    model.train()  # the engine must evaluate in eval mode anyway
    dirs = random_directions(model, 2, seed=2, include_1d=True)
    coords = [grid(3, 0.5), grid(5, 1.0)]  # not square: rows follow coords[0]
    s = compute_surface(model, data, dirs, coords, n_samples=None, batch_size=40)
    assert s.shape == (3, 5) and s.complete
    assert set(s.metrics) == {
        f"{k}{x}" for k in ("loss", "acc") for x in ("", "_only_a", "_only_b", "_without_a", "_without_b")
    }
    for i, a in enumerate(coords[0]):
        for j, b in enumerate(coords[1]):
            ref = manual_metrics(model, data, dirs, (a, b))
            for k, v in ref.items():
                assert s[k][i, j] == pytest.approx(v, abs=2e-5), (k, a, b)


def test_bf16_autocast_surface_is_close_to_float32():
    model, data = tiny_model(), tiny_data()
    dirs = random_directions(model, 1, seed=0)
    full = compute_surface(model, data, dirs, [grid(5)], n_samples=None)
    half = compute_surface(model, data, dirs, [grid(5)], n_samples=None, autocast_dtype=torch.bfloat16)
    assert half.meta["autocast_dtype"] == "torch.bfloat16"
    np.testing.assert_allclose(half["loss"], full["loss"], rtol=0.03)
    assert not np.array_equal(half["loss"], full["loss"])


def test_fixed_seeded_subset():
    model, data = tiny_model(), tiny_data(n=96)
    dirs = random_directions(model, 1, seed=0)
    s1 = compute_surface(model, data, dirs, [grid(3)], n_samples=32, subset_seed=7)
    s2 = compute_surface(model, data, dirs, [grid(3)], n_samples=32, subset_seed=7)
    s3 = compute_surface(model, data, dirs, [grid(3)], n_samples=32, subset_seed=8)
    assert len(s1.subset_index) == 32 and len(set(s1.subset_index.tolist())) == 32
    assert np.array_equal(s1.subset_index, s2.subset_index) and np.array_equal(s1["loss"], s2["loss"])
    assert not np.array_equal(s1.subset_index, s3.subset_index)
    sub = data.subset(torch.as_tensor(s1.subset_index))
    assert s1["loss"][1] == pytest.approx(manual_metrics(model, sub, [], [])["loss"], abs=1e-6)


def test_surface_leaves_the_model_bitwise_untouched():
    model, data = bn_model(), tiny_data()
    model.train()
    model.encoders["b"].eval()  # mixed modes must survive
    model.fusion.heads[0].bias.requires_grad_(False)
    model.encoders["a"][0].weight.grad = torch.randn(6, 5)
    before = record(model)
    dirs = random_directions(model, 2, seed=0, include_1d=True)
    compute_surface(model, data, dirs, [grid(3), grid(3)], n_samples=50)
    evaluate_points(model, data, dirs[:1], [[0.3]])
    assert record(model) == before


def test_channels_last_evaluation_of_a_cnn_leaves_no_trace():
    model, data = cnn_model(), cnn_data()
    before = record(model)
    dirs = random_directions(model, 1, seed=0)
    s = compute_surface(model, data, dirs, [grid(3, 0.5)], n_samples=None, batch_size=8)
    assert record(model) == before
    for i, a in enumerate(grid(3, 0.5)):
        assert s["loss"][i] == pytest.approx(manual_metrics(model, data, dirs, (a,))["loss"], abs=1e-5)


def test_preserved_restores_after_an_exception():
    model = bn_model()
    before = record(model)
    with pytest.raises(RuntimeError, match="boom"):
        with preserved(model):
            model.eval()
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(3.0)
                    p.requires_grad_(False)
            model.encoders["a"][1].running_mean.fill_(7.0)
            model.to(memory_format=torch.channels_last)
            raise RuntimeError("boom")
    assert record(model) == before


class FailAfter:
    """Wraps ``model.fuse_coalitions``: raises on call number ``n + 1``; counts calls."""

    def __init__(self, model, n=None):
        self.model, self.n, self.calls = model, n, 0
        self.fuse = model.fuse_coalitions

    def __call__(self, *args):
        self.calls += 1
        if self.n is not None and self.calls > self.n:
            raise RuntimeError("worker died")
        return self.fuse(*args)


def test_exception_mid_surface_restores_model_flushes_and_resumes(tmp_path):
    model, data = bn_model(), tiny_data()
    dirs = random_directions(model, 2, seed=1)
    coords = [grid(5, 1.0), grid(3, 1.0)]
    kw = dict(n_samples=None, batch_size=None, flush_every=2, path=tmp_path / "surf")
    reference = compute_surface(model, data, dirs, coords, n_samples=None, batch_size=None)
    before = record(model)
    failing = FailAfter(model, n=7)  # one fusion call per point: 7 points succeed
    model.fuse_coalitions = failing
    with pytest.raises(RuntimeError, match="worker died"):
        compute_surface(model, data, dirs, coords, **kw)
    del model.fuse_coalitions
    assert record(model) == before
    partial = Surface.load(tmp_path / "surf")
    assert partial.n_done == 7 and not partial.complete
    assert np.isnan(partial["loss"][~partial.done]).all()
    counter = FailAfter(model)
    model.fuse_coalitions = counter
    done = compute_surface(model, data, dirs, coords, **kw)
    del model.fuse_coalitions
    assert counter.calls == 15 - 7  # only the missing points
    assert done.complete and Surface.load(tmp_path / "surf").complete
    for k in reference.metrics:
        np.testing.assert_allclose(done[k], reference[k], rtol=0, atol=1e-12)


def test_resume_refuses_a_surface_with_other_settings(tmp_path):
    model, data = tiny_model(), tiny_data()
    dirs = random_directions(model, 1, seed=0)
    compute_surface(model, data, dirs, [grid(3)], path=tmp_path / "s")
    with pytest.raises(ConfigError, match="grid"):
        compute_surface(model, data, dirs, [grid(5)], path=tmp_path / "s")
    with pytest.raises(ConfigError, match="directions_sha1"):
        compute_surface(model, data, random_directions(model, 1, seed=1), [grid(3)], path=tmp_path / "s")
    s = compute_surface(model, data, dirs, [grid(5)], path=tmp_path / "s", overwrite=True)
    assert Surface.load(tmp_path / "s").shape == (5,) and s.complete


def test_save_load_round_trip(tmp_path):
    model, data = tiny_model(), tiny_data()
    dirs = random_directions(model, 2, seed=0)
    s = compute_surface(model, data, dirs, [grid(3), grid(5, 2.0)], n_samples=40, meta={"split": "test", "x": 1})
    s.save(tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["directions.npz", "meta.json", "surface.npz"]
    t = Surface.load(tmp_path / "x")
    assert t.shape == s.shape and t.metrics == s.metrics and t.meta["x"] == 1
    for k in s.metrics:
        assert np.array_equal(s[k], t[k])
    assert np.array_equal(s.subset_index, t.subset_index)
    for a, b in zip(s.directions, t.directions):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    for a, b in zip(s.coords, t.coords):
        assert np.array_equal(a, b)
    meta = json.loads((tmp_path / "x" / "meta.json").read_text())
    assert meta["n_samples"] == 40 and meta["complete"] is True


def test_saved_directions_evaluate_another_run_of_the_same_architecture():
    m1, m2, data = tiny_model(0), tiny_model(1), tiny_data()
    dirs = random_directions(m1, 1, seed=0)
    s2 = compute_surface(m2, data, dirs, [grid(3)], n_samples=None)
    assert s2["loss"][2] == pytest.approx(manual_metrics(m2, data, dirs, (1.0,))["loss"], abs=1e-5)


def test_generalisation_gap_surface():
    model = tiny_model()
    train, test = tiny_data(seed=0), tiny_data(seed=1)
    dirs = random_directions(model, 1, seed=0)
    s_tr = compute_surface(model, train, dirs, [grid(3)], n_samples=None, meta={"split": "train"})
    s_te = compute_surface(model, test, dirs, [grid(3)], n_samples=None, meta={"split": "test"})
    gap = generalization_gap(s_tr, s_te)
    assert gap[1] == pytest.approx(
        manual_metrics(model, test, [], [])["loss"] - manual_metrics(model, train, [], [])["loss"], abs=1e-5
    )
    other = compute_surface(model, test, dirs, [grid(5)], n_samples=None)
    with pytest.raises(ValueError):
        generalization_gap(s_tr, other)


@pytest.mark.slow
def test_two_worker_processes_give_the_serial_surface(tmp_path):
    model, data = tiny_model(), tiny_data()
    dirs = random_directions(model, 2, seed=0)
    coords = [grid(5), grid(3)]
    serial = compute_surface(model, data, dirs, coords, n_samples=None)
    before = record(model)
    sharded = compute_surface(model, data, dirs, coords, n_samples=None, workers=2, flush_every=4, path=tmp_path / "w")
    assert record(model) == before
    assert sharded.complete and Surface.load(tmp_path / "w").complete
    for k in serial.metrics:
        np.testing.assert_allclose(sharded[k], serial[k], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_persistent_worker_pool_serves_several_jobs():
    m1, m2, data = tiny_model(0), tiny_model(1), tiny_data()
    jobs = [
        (m1, random_directions(m1, 1, seed=0)),
        (m2, random_directions(m2, 1, seed=1)),
        (m1, random_directions(m1, 1, seed=2)),
    ]
    with WorkerPool(2) as pool:
        for model, dirs in jobs:
            pooled = compute_surface(model, data, dirs, [grid(9)], n_samples=None, pool=pool)
            serial = compute_surface(model, data, dirs, [grid(9)], n_samples=None)
            np.testing.assert_allclose(pooled["loss"], serial["loss"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(pooled["acc_only_b"], serial["acc_only_b"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- loss-landscapes cross-check


def test_reproduces_loss_landscapes_random_plane():
    ll = pytest.importorskip(
        "loss_landscapes",
        reason="the optional package loss-landscapes is not installed (pip install 'msam_lab[landscapes]')",
    )
    from loss_landscapes.main import random_plane
    from loss_landscapes.metrics.metric import Metric, MetricPipeline
    from loss_landscapes.metrics.sl_metrics import Loss
    from loss_landscapes.model_interface.model_parameters import ModelParameters, orthogonal_to, rand_u_like
    from loss_landscapes.model_interface.model_wrapper import GeneralModelWrapper

    del ll

    model, data = tiny_model(), tiny_data(n=60)
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    steps, seed = 6, 123

    # Its directions, built exactly as random_plane builds them (read from its source): uniform [0,1]
    # vectors from torch's global RNG, the second made orthogonal to the first, both filter-normalised
    # (1-D parameters element by element), then scaled to the step length ||θ|| / distance / steps.
    torch.manual_seed(seed)
    start = ModelParameters([p.detach().clone() for p in model.parameters()])
    d1 = rand_u_like(start)
    d2 = orthogonal_to(d1)
    steps_vec = []
    for d in (d1, d2):
        d.filter_normalize_(start)
        d.mul_(((start.model_norm() / 1) / steps) / d.model_norm())
        steps_vec.append({n: t.clone() for n, t in zip(names, d.parameters)})

    class AloneLoss(Metric):
        """Loss with only modality a present (naive path); records the parameters it sees."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def __call__(self, wrapper):
            self.seen.append(torch.cat([p.detach().reshape(-1).clone() for p in wrapper.model.parameters()]))
            with torch.no_grad():
                return float(F.cross_entropy(wrapper.model(data.inputs, present={"a"}), data.labels))

    ll_model = copy.deepcopy(model)
    wrapper = GeneralModelWrapper(ll_model, [ll_model], lambda m, x: m(x))
    alone = AloneLoss()
    torch.manual_seed(seed)
    theirs = random_plane(
        wrapper,
        MetricPipeline([Loss(F.cross_entropy, data.inputs, data.labels), alone]),
        distance=1,
        steps=steps,
        normalization="filter",
    )
    assert theirs.shape == (steps, steps, 2)

    # Its grid: column i sits at i - steps/2 steps along d1; even columns at j + 1 - steps/2 along d2,
    # odd columns at j - steps/2 (the one-step shift), odd columns evaluated in reverse order.
    flat = [torch.cat([d[n].reshape(-1) for n in names]) for d in steps_vec]
    k = 0
    for i in range(steps):
        order = range(steps) if i % 2 == 0 else reversed(range(steps))
        for j in order:
            b = j + 1 - steps / 2 if i % 2 == 0 else j - steps / 2
            expected = theta0 + (i - steps / 2) * flat[0] + b * flat[1]
            assert torch.allclose(alone.seen[k], expected, atol=1e-5), (i, j)
            k += 1

    # Our evaluator on the same directions, over the union of both column offsets.
    a_coords = np.arange(steps) - steps / 2
    b_coords = np.arange(steps + 1) - steps / 2
    ours = compute_surface(model, data, [steps_vec[0], steps_vec[1]], [a_coords, b_coords], n_samples=None)
    for i in range(steps):
        shift = 1 if i % 2 == 0 else 0
        np.testing.assert_allclose(theirs[i, :, 0], ours["loss"][i, shift : shift + steps], atol=1e-4, rtol=0)
        np.testing.assert_allclose(theirs[i, :, 1], ours["loss_only_a"][i, shift : shift + steps], atol=1e-4, rtol=0)


def test_loss_landscapes_defects_we_work_around():
    ll = pytest.importorskip("loss_landscapes", reason="the optional package loss-landscapes is not installed")
    from importlib.metadata import version

    if version("loss-landscapes") != "3.0.6":
        pytest.skip("the documented defects were measured on loss-landscapes 3.0.6")
    from loss_landscapes.main import random_plane
    from loss_landscapes.metrics.sl_metrics import Loss
    from loss_landscapes.model_interface.model_parameters import ModelParameters, rand_u_like

    del ll
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    theta0 = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(20, 5), torch.arange(20) % 3
    assert all(bool((t >= 0).all()) for t in rand_u_like(ModelParameters(theta0)))  # uniform [0,1]
    random_plane(model, Loss(F.cross_entropy, x, y), distance=1, steps=4)
    assert any(not torch.equal(p, t) for p, t in zip(model.parameters(), theta0))  # weights left moved
    assert not any(p.requires_grad for p in model.parameters())  # grads switched off


# ---------------------------------------------------------------- the run-level API and the CLI


def test_cli_landscape_writes_lists_and_resumes(syn_run, capsys):
    argv = [
        "landscape",
        str(syn_run.path),
        "--dim",
        "1",
        "--grid",
        "5",
        "--n-samples",
        "40",
        "--quiet",
        "--name",
        "line",
    ]
    assert landscape_main(argv) == 0
    assert "line" in list_landscapes(syn_run.path)
    s = load_landscape(syn_run.path, "line")
    assert s.complete and s.shape == (5,) and s.meta["split"] == "test" and s.meta["epoch"] == 3
    assert {"loss_only_m0", "acc_without_m1"} <= set(s.metrics)
    stamp = (syn_run.path / "landscapes" / "line" / "surface.npz").stat().st_mtime_ns
    assert landscape_main(argv) == 0  # complete: nothing recomputed
    assert np.array_equal(load_landscape(syn_run.path, "line")["loss"], s["loss"])
    assert (syn_run.path / "landscapes" / "line" / "surface.npz").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="line"):
        load_landscape(syn_run.path, "nope")


def test_cli_reuse_puts_another_split_on_the_same_directions(syn_run):
    base = ["landscape", str(syn_run.path), "--dim", "1", "--grid", "3", "--n-samples", "40", "--quiet"]
    assert landscape_main(base + ["--name", "r-test", "--seed", "4"]) == 0
    src = syn_run.path / "landscapes" / "r-test"
    assert landscape_main(base + ["--split", "train", "--reuse", str(src), "--name", "r-train"]) == 0
    test, train = load_landscape(syn_run.path, "r-test"), load_landscape(syn_run.path, "r-train")
    assert train.meta["directions_sha1"] == test.meta["directions_sha1"] and train.meta["split"] == "train"
    gap = generalization_gap(train, test)
    assert gap[1] == pytest.approx(test["loss"][1] - train["loss"][1])


def test_cli_between_epochs_matches_the_recorded_losses(syn_run):
    # from the last checkpoint (a=0) to epoch 0 (a=1), on the whole test split
    assert (
        landscape_main(
            [
                "landscape",
                str(syn_run.path),
                "--directions",
                "between",
                "--to",
                str(syn_run.path),
                "--to-epoch",
                "0",
                "--dim",
                "1",
                "--grid",
                "3",
                "--span",
                "1",
                "--n-samples",
                "100000",
                "--include-1d",
                "--quiet",
                "--name",
                "interp",
            ]
        )
        == 0
    )
    s = load_landscape(syn_run.path, "interp")
    rec = syn_run.epochs.set_index("epoch")
    assert s["loss"][1] == pytest.approx(rec.loc[3, "test_loss"], abs=1e-5)
    assert s["loss"][2] == pytest.approx(rec.loc[0, "test_loss"], abs=1e-5)
    assert s["acc"][2] == pytest.approx(rec.loc[0, "test_acc"], abs=1e-9)
    assert s["acc_only_m1"][1] == pytest.approx(rec.loc[3, "test_acc_only_m1"], abs=1e-9)


def test_cli_pca_stores_the_trajectory(syn_run):
    assert (
        landscape_main(
            [
                "landscape",
                str(syn_run.path),
                "--directions",
                "pca",
                "--grid",
                "3",
                "--n-samples",
                "30",
                "--fused-only",
                "--quiet",
                "--name",
                "pca",
            ]
        )
        == 0
    )
    s = load_landscape(syn_run.path, "pca")
    assert s.metrics == ["loss", "acc"]
    traj = np.array(s.meta["trajectory"])
    assert traj.shape == (4, 2) and np.allclose(traj[-1], 0)
    assert 0.99 < sum(s.meta["explained_variance_ratio"]) <= 1.0 + 1e-9
    # span 1 = the trajectory's extent plus a margin: its farthest point lies inside the grid
    assert s.coords[0][-1] == pytest.approx(1.2 * np.abs(traj[:, 0]).max()) and s.meta["margin"] == 1.2


@pytest.mark.parametrize(
    "case, says",
    [
        ("not_a_run", "error: RUN "),
        ("even_grid", "--grid must be an odd integer >= 3"),
        ("workers", "--workers must be >= 1"),
        ("between_without_to", "--to is needed with --directions between"),
        ("architecture", "--directions between needs two runs of the same model"),
        ("epoch", "pass --epoch one of"),
        ("scope", "--scope: "),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(syn_run, tmp_path, capsys, case, says):
    run = tmp_path / "copy"
    shutil.copytree(syn_run.path, run, ignore=shutil.ignore_patterns("landscapes", "sharpness.csv"))
    argv = ["landscape", str(run), "--grid", "3", "--quiet"]
    if case == "not_a_run":
        argv[1] = str(tmp_path)
    elif case == "even_grid":
        argv[3] = "4"
    elif case == "workers":
        argv += ["--workers", "0"]
    elif case == "between_without_to":
        argv += ["--directions", "between"]
    elif case == "architecture":
        other = tmp_path / "other"
        shutil.copytree(syn_run.path, other)
        spec = json.loads((other / "model.json").read_text())
        spec["hidden_dim"] = 4
        (other / "model.json").write_text(json.dumps(spec))
        argv += ["--directions", "between", "--to", str(other)]
    elif case == "epoch":
        argv += ["--epoch", "9"]
    elif case == "scope":
        argv += ["--scope", "m7"]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert landscape_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("msam-lab: error:") and "\n" not in err
    assert says in err, err  # the library's argument, said as the flag that sets it
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------- options objects


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"dim": 3}, "dim must be 1 or 2, got 3"),
        ({"grid": 4}, "grid must be an odd integer >= 3"),
        ({"grid": 21.0}, "grid must be an integer"),
        ({"span": 0}, "span must be > 0, got 0"),
        ({"span": float("nan")}, "span must be > 0"),
        ({"workers": 0}, "workers must be >= 1, got 0"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"n_samples": 0}, "n_samples must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"flush_every": 0}, "flush_every must be >= 1"),
        ({"directions": "pcb"}, "directions must be one of random, pca, between, got 'pcb'"),
        ({"split": "val"}, "split must be train or test, got 'val'"),
        ({"epoch": -1}, "epoch must be >= 0"),
        ({"name": ".hidden"}, "name '.hidden' must be a plain folder name"),
        ({"name": "a/b"}, "name 'a/b'"),
        ({"bf16": "yes"}, "bf16 must be True or False"),
        ({"directions": "between"}, "to= is needed with directions='between'"),
    ],
)
def test_landscape_options_name_the_argument_not_a_flag(bad, says):
    from msam_lab.landscape import LandscapeOptions, OptionError

    with pytest.raises(OptionError) as err:
        LandscapeOptions(**bad)
    msg = str(err.value)
    assert msg.startswith(says) and "--" not in msg and "\n" not in msg
    assert isinstance(err.value, ConfigError) and err.value.argument in {*bad, "to"}
    assert pickle.loads(pickle.dumps(err.value)).argument == err.value.argument


def test_surface_and_sharpness_options_are_checked_once_and_overridden_by_keywords():
    from msam_lab.landscape import LandscapeOptions, OptionError, SharpnessOptions, SurfaceOptions, TimelineOptions

    o = LandscapeOptions(dim=1, grid=5)
    assert LandscapeOptions.build(o) is o and LandscapeOptions.build(None, dim=1, grid=5) == o
    assert LandscapeOptions.build(o, seed=3) == LandscapeOptions(dim=1, grid=5, seed=3) and o.seed == 0
    with pytest.raises(OptionError, match="grid must be an odd"):
        LandscapeOptions.build(o, grid=6)  # an override is checked too
    with pytest.raises(TypeError, match="LandscapeOptions"):
        LandscapeOptions.build(SurfaceOptions())
    with pytest.raises(TypeError):
        LandscapeOptions(dims=2)  # a misspelt keyword is not swallowed
    assert SurfaceOptions(devices=["cuda:0", "cuda:1"]).devices == ("cuda:0", "cuda:1")
    assert SurfaceOptions(devices=[]).devices is None
    for bad, says in [
        ({"channels_last": "yes"}, "channels_last must be"),
        ({"devices": 3}, "devices must be"),
        ({"per_modality": 1}, "per_modality must be True or False"),
    ]:
        with pytest.raises(OptionError, match=says):
            SurfaceOptions(**bad)
    assert SharpnessOptions(epochs=[0, 2], scopes="m0") == SharpnessOptions(epochs=(0, 2), scopes=("m0",))
    for bad, says in [
        ({"rho": -0.1}, "rho must be >= 0, got -0.1"),
        ({"topk": -1}, "topk must be >= 0"),
        ({"probes": -1}, "probes must be >= 0"),
        ({"max_iter": 0}, "max_iter must be >= 1"),
        ({"tol": 0}, "tol must be > 0"),
        ({"epochs": "last"}, "epochs must be None"),
        ({"epochs": [1, -2]}, "epochs must be None"),
        ({"scopes": [""]}, "scopes must be"),
        ({"split": "valid"}, "split must be train or test"),
    ]:
        with pytest.raises(OptionError, match=says) as err:
            SharpnessOptions(**bad)
        assert "--" not in str(err.value)
        if set(bad) <= set(TimelineOptions.__dataclass_fields__):
            with pytest.raises(OptionError, match=says):  # the timeline checks what it is given alike
                TimelineOptions(**bad)
    assert TimelineOptions(rho=None, probes=None).epochs == "all"


def test_options_objects_and_keywords_give_the_same_bits(syn_run, tmp_path):
    from msam_lab.landscape import LandscapeOptions, SurfaceOptions, landscape_for_run

    run = tmp_path / "copy"
    shutil.copytree(syn_run.path, run, ignore=shutil.ignore_patterns("landscapes", "sharpness.csv"))
    kw = dict(dim=2, grid=3, span=0.5, n_samples=30, subset_seed=2, seed=5, batch_size=7, orthogonal=True)
    by_kw = landscape_for_run(run, name="kw", **kw)
    opts = LandscapeOptions(**{**kw, "seed": 0})
    by_opts = landscape_for_run(run, opts, name="opts", seed=5)  # keywords override the object
    for k in by_kw.metrics:
        assert np.array_equal(by_kw[k], by_opts[k], equal_nan=False), k
    assert {k: v for k, v in by_kw.meta.items() if k not in ("name", "created", "seconds")} == {
        k: v for k, v in by_opts.meta.items() if k not in ("name", "created", "seconds")
    }
    model, data = tiny_model(), tiny_data()
    d = random_directions(model, 1, seed=1)
    a = compute_surface(model, data, d, [grid(5)], n_samples=40, subset_seed=3, batch_size=9)
    b = compute_surface(model, data, d, [grid(5)], SurfaceOptions(n_samples=40, subset_seed=3, batch_size=9))
    assert np.array_equal(a["loss"], b["loss"]) and np.array_equal(a.subset_index, b.subset_index)
    assert b.meta["subset_seed"] == 3 and b.meta["batch_size"] == 9 and b.meta["n_samples"] == 40  # applied
    c = compute_surface(model, data, d, [grid(5)], SurfaceOptions(n_samples=40, subset_seed=3), subset_seed=4)
    assert c.meta["subset_seed"] == 4 and not np.array_equal(c.subset_index, b.subset_index)


def test_a_saved_surface_with_other_settings_names_the_name_in_python_and_the_flag_on_the_cli(
    syn_run, tmp_path, capsys
):
    from msam_lab.landscape import OptionError, landscape_for_run

    run = tmp_path / "copy"
    shutil.copytree(syn_run.path, run, ignore=shutil.ignore_patterns("landscapes", "sharpness.csv"))
    landscape_for_run(run, dim=1, grid=3, n_samples=20, name="same")
    with pytest.raises(
        OptionError,
        match=r"name 'same': .*\(grid differ\); choose another name= or pass "
        r"overwrite=True",
    ) as err:
        landscape_for_run(run, dim=1, grid=5, n_samples=20, name="same")
    assert err.value.argument == "name"
    with pytest.raises(OptionError, match=r"choose another path= or pass overwrite=True") as err:
        model = tiny_model()
        d = random_directions(model, 1)
        compute_surface(model, tiny_data(), d, [grid(3)], path=tmp_path / "s")
        compute_surface(model, tiny_data(), d, [grid(5)], path=tmp_path / "s")
    assert err.value.argument == "path"
    argv = ["landscape", str(run), "--dim", "1", "--grid", "5", "--n-samples", "20", "--name", "same", "--quiet"]
    assert landscape_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("msam-lab: error: --name 'same': ") and err.endswith(
        "choose another --name or pass --overwrite"
    )


def test_cli_says_library_arguments_as_its_flags():
    from msam_lab.cli.landscape import flag_message
    from msam_lab.landscape import OptionError

    dests = {"run", "dim", "directions", "to", "to_epoch", "epoch", "n_samples", "overwrite", "scope"}
    cases = [
        (OptionError("dim", "dim must be 1 or 2, got 3"), "--dim must be 1 or 2, got 3"),
        (OptionError("n_samples", "n_samples must be >= 1, got 0"), "--n-samples must be >= 1, got 0"),
        (
            OptionError("directions", "directions='pca' with dim=2 needs 3 checkpoints; train with checkpoint_every=1"),
            "--directions pca with --dim 2 needs 3 checkpoints; train with checkpoint_every=1",
        ),
        (
            OptionError("to", "to= is needed with directions='between' (the run)"),
            "--to is needed with --directions between (the run)",
        ),
        (
            OptionError("to_epoch", "to_epoch 4: no checkpoint; pass to_epoch= one of 0, 1"),
            "--to-epoch 4: no checkpoint; pass --to-epoch one of 0, 1",
        ),
        (OptionError("run", "run runs/dim=2 is not a finished run"), "RUN runs/dim=2 is not a finished run"),
        (OptionError("epochs", "epochs 7: none; pass epochs= one of 1"), "--epoch 7: none; pass --epoch one of 1"),
        (OptionError("scopes", "scopes: unknown scope 'x'"), "--scope: unknown scope 'x'"),
        (
            OptionError("path", "path p differ; choose another path= or pass overwrite=True"),
            "path p differ; choose another path= or pass --overwrite",
        ),
        (
            ConfigError("model_factory= is for runs logged from your own model"),
            "model_factory= is for runs logged from your own model",
        ),
        (OptionError("seed", "seed must be an integer"), "seed must be an integer"),
    ]  # no such flag here
    for err, said in cases:
        assert flag_message(err, dests) == said


def test_landscape_for_run_is_a_config_error_for_a_missing_run(tmp_path):
    from msam_lab.landscape import landscape_for_run

    with pytest.raises(ConfigError, match="not a finished run"):
        landscape_for_run(tmp_path / "missing")
