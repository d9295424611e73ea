"""The paper protocol's model options (msam_lab/models.py): encoder_options, head_hidden,
fusion_trunk, early fusion with real encoders, and old run specs that still rebuild."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msam_lab import shapley
from msam_lab.methods import build_method
from msam_lab.models import coalitions
from msam_lab.models.multimodal import (
    ConcatFusion,
    EarlyFusion,
    LinearStem,
    build_model,
    model_from_spec,
    spec_encoders,
)
from msam_lab.models.paper_encoders import MaxOutMLP, ResNet18Encoder, TransformerEncoder, parameter_count
from msam_lab.runs import migrate
from msam_lab.training.setup import resolve

pytestmark = pytest.mark.slow  # the paper ResNet-18 encoders


# -- parameter counts by hand, from the layer sizes ------------------------------------
def conv(c_in, c_out, k):
    return c_in * c_out * k * k  # bias-free, as in ResNet


def bn(c):
    return 2 * c  # weight and bias (running stats are buffers)


def linear(a, b):
    return a * b + b


def resnet18_trunk(c_in):
    total = conv(c_in, 64, 7) + bn(64)  # stem
    c_prev = 64
    for width in (64, 128, 256, 512):
        for block in range(2):
            c_from = c_prev if block == 0 else width
            total += conv(c_from, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if c_from != width:  # 1x1 projection shortcut of stages 2-4
                total += conv(c_from, width, 1) + bn(width)
        c_prev = width
    return total


def test_hand_count_of_the_resnet18_trunk_matches_torchvisions():
    # torchvision's resnet18 is 11,689,512 parameters with its 512*1000+1000 fc; one input channel saves 2*64*49
    assert resnet18_trunk(3) == 11_689_512 - 513_000
    assert resnet18_trunk(1) == 11_170_240


AVMNIST = {"image": (1, 12, 12), "audio": (16, 16)}  # tiny stand-ins: the counts do not depend on H, W


def test_agm_avmnist_late_fusion():
    """Two 1-channel ResNet-18s, 512+512 concatenated -> Linear(1024,100) -> ReLU -> Linear(100,10)."""
    torch.manual_seed(0)
    model = build_model(
        AVMNIST, 10, "late_concat", {"image": "resnet18", "audio": "resnet18"}, feature_dim=512, head_hidden=[100]
    ).eval()
    head = model.fusion.head
    assert isinstance(model.fusion, ConcatFusion)
    assert [type(x) for x in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (1024, 100, 10)
    assert all(isinstance(model.encoders[m], ResNet18Encoder) for m in AVMNIST)
    expected = 2 * resnet18_trunk(1) + linear(1024, 100) + linear(100, 10)
    assert parameter_count(model) == expected == 22_443_990
    with torch.no_grad():
        out = model({m: torch.randn(3, *s) for m, s in AVMNIST.items()})
    assert out.shape == (3, 10)


def test_agm_avmnist_early_fusion_with_the_maxout_trunk():
    """The same ResNet-18s (not linear stems), concatenated -> MaxOut-MLP (1024 -> 2048 -> 1024,
    BatchNorm + dropout as AGM's MaxOut_MLP) -> Linear(1024,128) -> ReLU -> Linear(128,10)."""
    torch.manual_seed(0)
    model = build_model(
        AVMNIST,
        10,
        "early",
        {"image": "resnet18", "audio": "resnet18"},
        feature_dim=512,
        fusion_trunk="maxout",
        head_hidden=[128],
    ).eval()
    assert isinstance(model.fusion, EarlyFusion)
    assert all(isinstance(model.encoders[m], ResNet18Encoder) for m in AVMNIST)
    trunk = model.fusion.trunk
    assert isinstance(trunk[0], MaxOutMLP)
    assert [type(x) for x in trunk[1:]] == [nn.Linear, nn.ReLU, nn.Linear]
    maxout = (
        bn(1024)
        + linear(1024, 2048 * 2)
        + bn(2048)  # BN(in), MaxOut 1024->2048 (2 pieces), BN
        + linear(2048, 1024 * 2)
        + bn(1024)
    )  # MaxOut 2048->1024, BN
    expected = 2 * resnet18_trunk(1) + maxout + linear(1024, 128) + linear(128, 10)
    assert parameter_count(model) == expected == 30_875_914
    assert parameter_count(trunk[0]) == 8_402_944
    dropouts = [m.p for m in trunk[0].modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.3, 0.3]
    with torch.no_grad():
        out = model({m: torch.randn(3, *s) for m, s in AVMNIST.items()})
    assert out.shape == (3, 10)


def test_early_fusion_uses_the_encoders_it_is_given_and_linear_stems_otherwise():
    shapes = {"image": (1, 8, 8), "audio": (12,)}
    model = build_model(shapes, 3, "early", {"image": "cnn"}, feature_dim=8, hidden_dim=16)
    assert type(model.encoders["image"]).__name__ == "CNNEncoder"
    assert isinstance(model.encoders["audio"], LinearStem)
    assert isinstance(build_model(shapes, 3, "early").encoders["image"], LinearStem)


def test_spec_encoders_rule():
    defaults, cfg = {"image": "cnn", "audio": "mlp"}, {"audio": "resnet18"}
    assert spec_encoders("early", defaults, cfg) == {"audio": "resnet18"}
    assert spec_encoders("early", defaults, {}) == {}
    assert spec_encoders("late_sum", defaults, cfg) == {"image": "cnn", "audio": "resnet18"}
    assert spec_encoders("late_concat", None, None) == {}
    spec_encoders("late_sum", defaults, cfg)["image"] = "x"  # a fresh dict, inputs untouched
    assert defaults["image"] == "cnn"


# -- default builds: bit for bit what the code always built ---------------------------
def _reference_mlp(in_dim, out_dim, hidden):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.ReLU())


def _reference_cnn(channels, out_dim, width=16, pool=(8, 4)):
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(2 * width * pool[0] * pool[1], out_dim),
        nn.ReLU(),
    )


def _reference_state(fusion, seed, d=8, h=16, c=3):
    """The pre-paper-options models, written out from nn primitives in creation order."""
    torch.manual_seed(seed)
    state = {}

    def add(prefix, module):
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})

    if fusion == "early":  # thin linear stems, whatever the encoders
        add("encoders.image.net", nn.Sequential(nn.Flatten(), nn.Linear(64, d)))
        add("encoders.audio.net", nn.Sequential(nn.Flatten(), nn.Linear(12, d)))
        add(
            "fusion.trunk",
            nn.Sequential(nn.ReLU(), nn.Linear(2 * d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, c)),
        )
        return state
    add("encoders.image.net", _reference_cnn(1, d))
    add("encoders.audio.net", _reference_mlp(12, d, h))
    if fusion == "late_sum":
        add("fusion.heads.0", nn.Linear(d, c))
        add("fusion.heads.1", nn.Linear(d, c))
    else:
        add("fusion.head", nn.Linear(2 * d, c))
    return state


OLD_SHAPES = {"image": [1, 8, 8], "audio": [12]}


@pytest.mark.parametrize("fusion", ["late_sum", "late_concat", "early"])
def test_default_builds_are_bit_identical_to_the_reference(fusion):
    ref = _reference_state(fusion, seed=3)
    torch.manual_seed(3)
    encoders = spec_encoders(fusion, {"image": "cnn"}, {})
    model = build_model({m: tuple(s) for m, s in OLD_SHAPES.items()}, 3, fusion, encoders, 8, 16)
    got = model.state_dict()
    assert list(got) == list(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    # the same through a new-style spec with the default options written out
    spec = {
        "input_shapes": OLD_SHAPES,
        "num_classes": 3,
        "fusion": fusion,
        "encoders": encoders,
        "feature_dim": 8,
        "hidden_dim": 16,
        "encoder_options": {},
        "fusion_trunk": "mlp",
        "head_hidden": [],
    }
    torch.manual_seed(3)
    again = model_from_spec(spec).state_dict()
    assert list(again) == list(ref) and all(torch.equal(again[k], ref[k]) for k in ref)


@pytest.mark.parametrize("fusion", ["late_sum", "late_concat", "early"])
def test_old_run_specs_rebuild_exactly_as_before(fusion):
    """model.json written before the paper options: no encoder_options/fusion_trunk/head_hidden keys,
    and (the trainer's old rule) encoders = dataset defaults + config even under early fusion."""
    old_spec = {
        "input_shapes": OLD_SHAPES,
        "num_classes": 3,
        "fusion": fusion,
        "encoders": {"image": "cnn"},
        "feature_dim": 8,
        "hidden_dim": 16,
    }
    ref = _reference_state(fusion, seed=5)
    torch.manual_seed(5)
    got = model_from_spec(migrate.model_spec(old_spec)).state_dict()
    assert list(got) == list(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    if fusion == "early":  # a new spec with the same encoders does use the cnn
        new_spec = {**old_spec, "encoder_options": {}, "fusion_trunk": "mlp", "head_hidden": []}
        assert type(model_from_spec(new_spec).encoders["image"]).__name__ == "CNNEncoder"


def test_head_hidden_on_every_fusion():
    shapes = {"a": (6,), "b": (5,)}
    torch.manual_seed(0)
    late_sum = build_model(shapes, 4, "late_sum", feature_dim=8, hidden_dim=16, head_hidden=[7, 5])
    for head in late_sum.fusion.heads:
        assert [type(x) for x in head] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
        assert [x.out_features for x in head if isinstance(x, nn.Linear)] == [7, 5, 4]
    x = {"a": torch.randn(3, 6), "b": torch.randn(3, 5)}
    feats = late_sum.encode(x)
    # the heads still sum: each modality's logits are its own head's output
    torch.testing.assert_close(late_sum.fuse(feats), sum(h(f) for h, f in zip(late_sum.fusion.heads, feats)))
    early = build_model(shapes, 4, "early", feature_dim=8, hidden_dim=16, head_hidden=[6])
    linears = [m for m in early.fusion.trunk if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 16), (16, 6), (6, 4)]
    assert early(x).shape == (3, 4)


# -- encoder_options -------------------------------------------------------------------
def test_encoder_options_reach_the_transformer():
    shapes = {"text": (5, 7), "audio": (4,)}
    model = build_model(
        shapes,
        2,
        "late_sum",
        {"text": "transformer"},
        feature_dim=8,
        encoder_options={"text": {"dim": 32, "heads": 4, "layers": 3, "ff": 48, "dropout": 0.0}},
    )
    enc = model.encoders["text"]
    assert isinstance(enc, TransformerEncoder)
    assert enc.embed.out_features == 32 and len(enc.layers.layers) == 3
    layer = enc.layers.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 48 and layer.dropout.p == 0.0
    assert model({"text": torch.randn(2, 5, 7), "audio": torch.randn(2, 4)}).shape == (2, 2)
    # mlp takes its hidden width, cnn its channel width
    other = build_model(
        {"v": (6,), "img": (1, 8, 8)},
        2,
        "late_sum",
        {"img": "cnn"},
        feature_dim=8,
        encoder_options={"v": {"hidden": 11}, "img": {"width": 4}},
    )
    assert other.encoders["v"].net[1].out_features == 11
    assert other.encoders["img"].net[0].out_channels == 4


def test_ur_funny_transformer_size():
    """AGM's UR-Funny encoder: dim 768, 4 heads, 8 layers (built on the meta device: no memory)."""
    t, f, dim, layers, out = 20, 81, 768, 8, 768
    with torch.device("meta"):
        model = build_model(
            {"audio": (t, f)},
            2,
            "late_concat",
            {"audio": "transformer"},
            feature_dim=out,
            encoder_options={"audio": {"dim": dim, "heads": 4, "layers": layers}},
        )
    enc = model.encoders["audio"]
    assert len(enc.layers.layers) == layers and enc.layers.layers[0].self_attn.num_heads == 4
    per_layer = (
        linear(dim, 3 * dim)
        + linear(dim, dim)  # attention in-projection (q, k, v) and out
        + linear(dim, 4 * dim)
        + linear(4 * dim, dim)  # feed-forward, 4*dim wide
        + 2 * 2 * dim
    )  # two LayerNorms
    expected = linear(f, dim) + t * dim + layers * per_layer + linear(dim, out)
    assert parameter_count(enc) == expected


@pytest.mark.parametrize(
    "encoders, options, match",
    [
        ({"text": "transformer"}, {"text": {"depth": 3}}, "dim, heads, layers, ff, dropout, mask_padding"),
        ({"text": "transformer"}, {"text": {"dim": "768"}}, "dim must be a positive int"),
        ({"text": "transformer"}, {"text": {"dropout": 1.5}}, "dropout must be a number in"),
        ({"text": "transformer"}, {"text": {"dim": 30, "heads": 4}}, "divisible by heads"),
        ({"img": "resnet18"}, {"img": {"dim": 64}}, "the resnet18 encoder takes no options"),
        (
            {},
            {"img": {"width": 4}},
            "encoder_options.img .encoder mlp.: unknown option 'width'; the mlp encoder takes hidden",
        ),
        ({"text": "transformer"}, {"video": {"dim": 64}}, "modality 'video'"),
    ],
)
def test_bad_encoder_options_are_one_line_errors(encoders, options, match):
    shapes = {"text": (5, 7), "img": (1, 8, 8)}
    with pytest.raises(ValueError, match=match) as err:
        build_model(shapes, 2, "late_sum", encoders, feature_dim=8, encoder_options=options)
    assert "\n" not in str(err.value)


def test_early_fusion_options_for_a_linear_stem_say_so():
    with pytest.raises(ValueError, match=r"encoder_options.text \(encoder linear\).*linear encoder takes no options"):
        build_model({"text": (5, 7), "v": (3,)}, 2, "early", {}, encoder_options={"text": {"dim": 32}})


def test_bad_trunks_and_heads():
    shapes = {"a": (6,), "b": (5,)}
    with pytest.raises(ValueError, match="early fusion only"):
        build_model(shapes, 2, "late_concat", fusion_trunk="maxout")
    with pytest.raises(ValueError, match="fusion_trunk"):
        build_model(shapes, 2, "early", fusion_trunk="gru")
    with pytest.raises(ValueError, match="head_hidden"):
        build_model(shapes, 2, "late_sum", head_hidden=[0])


# -- coalitions: the fast path equals zeroed inputs through the whole network ---------
COMBOS = [
    ("late_sum", "mlp", []),
    ("late_sum", "mlp", [7, 5]),
    ("late_concat", "mlp", []),
    ("late_concat", "mlp", [7]),
    ("early", "mlp", []),
    ("early", "mlp", [6]),
    ("early", "maxout", []),
    ("early", "maxout", [6]),
]


@pytest.mark.parametrize("fusion, trunk, head_hidden", COMBOS)
def test_coalition_fast_path_equals_naive_with_batchnorm_encoders(fusion, trunk, head_hidden):
    torch.manual_seed(0)
    shapes = {"image": (1, 8, 8), "audio": (6, 6), "vec": (5,)}
    model = build_model(
        shapes,
        4,
        fusion,
        {"image": "resnet18", "audio": "resnet18", "vec": "mlp"},
        feature_dim=16,
        hidden_dim=12,
        fusion_trunk=trunk,
        head_hidden=head_hidden,
    ).double()
    assert not model.mode_invariant
    inputs = {m: torch.randn(6, *s, dtype=torch.float64) + 0.5 for m, s in shapes.items()}
    model.train()
    with torch.no_grad():
        model(inputs)  # move the BatchNorm running statistics off their init
    model.eval()
    masks = shapley.all_masks(3)
    with torch.no_grad():
        fast = coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), masks)
        naive = coalitions.coalition_logits_naive(model, inputs, masks)
        stats = coalitions.batch_coalition_stats(model, inputs, torch.zeros(6, dtype=torch.long))
    assert fast.shape == (8, 6, 4)
    torch.testing.assert_close(fast, naive)
    assert stats.accuracy.shape == (8,)


def test_maxout_trunk_in_train_mode_runs_each_coalition_through_its_own_batchnorm():
    torch.manual_seed(0)
    shapes = {"a": (6,), "b": (5,)}
    model = build_model(
        shapes,
        3,
        "early",
        {"a": "mlp", "b": "mlp"},
        feature_dim=8,
        hidden_dim=16,
        fusion_trunk="maxout",
        head_hidden=[6],
    ).double()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # deterministic, so the two paths can be compared
    model.train()
    x = {m: torch.randn(10, *s, dtype=torch.float64) for m, s in shapes.items()}
    feats, zeros = model.encode(x), model.zero_features()
    masks = shapley.all_masks(2)
    got = model.fuse_coalitions(feats, zeros, masks)
    per_coalition = torch.stack(
        [model.fuse([f if k >> i & 1 else z.expand_as(f) for i, (f, z) in enumerate(zip(feats, zeros))]) for k in masks]
    )
    torch.testing.assert_close(got, per_coalition)
    assert got.requires_grad


@pytest.mark.parametrize("method", ["agm", "msam"])
def test_coalition_methods_step_on_the_maxout_trunk(method):
    torch.manual_seed(0)
    shapes = {"a": (6,), "b": (5,)}
    model = build_model(shapes, 3, "early", feature_dim=8, hidden_dim=16, fusion_trunk="maxout", head_hidden=[6])
    cfg = resolve({"dataset": "synthetic", "method": method, "lr": 0.01})
    step = build_method(model, cfg)
    x = {m: torch.randn(16, *s) for m, s in shapes.items()}
    before = [p.detach().clone() for p in model.parameters()]
    step.step(x, torch.randint(0, 3, (16,)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def small_batchnorm_model():
    torch.manual_seed(0)
    return build_model(
        {"image": (1, 8, 8), "audio": (1, 12, 12)},
        3,
        "late_concat",
        {"image": "resnet18", "audio": "resnet18"},
        feature_dim=512,
        head_hidden=[16],
    )


def test_absent_features_of_a_training_batchnorm_model_are_eval_mode_zero_features_with_grad():
    """A single all-zero sample cannot go through train-mode BatchNorm (it raises); the features an
    absent modality gets are the eval-mode ones, with gradient, and the model stays in train mode."""
    from msam_lab.models.multimodal import absent_features

    model = small_batchnorm_model().train()
    stats = [b.running_mean.clone() for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model.zero_features()
    got = absent_features(model)
    assert model.training and all(z.requires_grad for z in got)
    with torch.no_grad():
        want = model.eval().zero_features()
    model.train()
    assert all(torch.equal(a.detach(), b) for a, b in zip(got, want))
    after = [b.running_mean for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))  # eval mode: no statistics moved


@pytest.mark.parametrize("method,extra", [("msam", ["msam_variant=unimodal"]), ("agm", [])])
def test_coalition_methods_with_gradient_train_a_batchnorm_model(method, extra):
    """M-SAM's unimodal variant and AGM run every coalition with gradient: on ResNet-18 encoders (the
    paper's AV-MNIST model) a step trains, and moves both encoders."""
    model = small_batchnorm_model()
    m = build_method(model, resolve(None, [f"method={method}", "device=cpu", *extra]))
    g = torch.Generator().manual_seed(1)
    inputs = {"image": torch.randn(6, 1, 8, 8, generator=g), "audio": torch.randn(6, 1, 12, 12, generator=g)}
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = m.train_step(inputs, labels)
    assert torch.isfinite(torch.tensor(row["loss"]))
    for name in ("image", "audio"):
        moved = [
            k
            for k in before
            if k.startswith(f"encoders.{name}.")
            and k.endswith("weight")
            and not torch.equal(before[k], model.state_dict()[k])
        ]
        assert moved, f"the {name} encoder did not move"
