"""The paper protocol's encoders (msam_lab/encoders.py): shapes, parameter counts, coalitions, training."""

from __future__ import annotations

import pytest
import torch

import msam_lab
from msam_lab import shapley
from msam_lab.config import ConfigError
from msam_lab.models import coalitions
from msam_lab.models.multimodal import ConcatFusion, SumFusion, build_encoder, build_model
from msam_lab.models.paper_encoders import (
    MaxOutMLP,
    ResNet18Encoder,
    ResNet18FrameEncoder,
    ResNet18Trunk,
    TransformerEncoder,
    parameter_count,
)
from msam_lab.training.setup import resolve

# torchvision's resnet18: 11,689,512 parameters, of which its fc (512*1000 + 1000) is 513,000
RESNET18_TRUNK_RGB = 11_689_512 - 513_000  # 11,176,512
RESNET18_TRUNK_MONO = RESNET18_TRUNK_RGB - 2 * 64 * 7 * 7  # 11,170,240: conv1 takes 1 channel, not 3


@pytest.mark.parametrize(
    "kind, in_shape, out_dim",
    [
        ("resnet18", (32, 32), 512),  # (H,W): one channel, the audio layout
        ("resnet18", (1, 32, 32), 64),
        ("resnet18", (3, 32, 32), 512),
        ("resnet18", (3, 24, 40), 10),  # non-square
        ("resnet18", (1, 8, 8), 64),  # av-digits' images: the maps shrink to 1x1
        ("resnet18", (3, 3, 32, 32), 512),  # (T,C,H,W) frames -> the frame encoder
        ("resnet18_audio", (32, 20), 64),
        ("resnet18_audio", (1, 32, 20), 512),
        ("resnet18_visual", (3, 3, 32, 32), 64),
        ("resnet18_visual", (9, 32, 32), 512),  # crema-d/ave: 3 RGB frames stacked on channels
        ("transformer", (5, 7), 16),
    ],
)
def test_output_shapes(kind, in_shape, out_dim):
    enc = build_encoder(kind, in_shape, out_dim, hidden=128).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, *in_shape))
    assert out.shape == (2, out_dim)
    assert torch.isfinite(out).all()


def test_frame_encoder_pools_the_per_frame_trunk_over_time():
    enc = ResNet18FrameEncoder((3, 3, 16, 16), out_dim=512).eval()
    frames = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        per_frame = torch.stack([enc.trunk(frames[:, t]).mean(dim=(2, 3)) for t in range(3)], 1).mean(1)
        torch.testing.assert_close(enc(frames), per_frame)
        # the loaders' stacked layout (3*T, H, W) is read as the same T RGB frames
        stacked = ResNet18FrameEncoder((9, 16, 16)).eval()
        stacked.load_state_dict(enc.state_dict())
        torch.testing.assert_close(stacked(frames.reshape(2, 9, 16, 16)), per_frame)


@pytest.mark.parametrize(
    "kind, in_shape",
    [
        ("resnet18", (5,)),
        ("resnet18", (2, 3, 4, 5, 6)),
        ("resnet18_audio", (3, 32, 32)),
        ("resnet18_visual", (4, 32, 32)),
        ("resnet18_visual", (32, 32)),
        ("transformer", (32, 32, 3)),
    ],
)
def test_wrong_input_shapes_are_one_line_errors(kind, in_shape):
    with pytest.raises(ValueError, match=kind):
        build_encoder(kind, in_shape, 64, 128)


def test_resnet18_trunk_has_the_imagenet_parameter_count():
    assert parameter_count(ResNet18Trunk(3)) == RESNET18_TRUNK_RGB == 11_176_512
    assert parameter_count(ResNet18Trunk(1)) == RESNET18_TRUNK_MONO == 11_170_240
    # the 512-d encoders add nothing to the trunk; another out_dim adds one Linear
    assert parameter_count(ResNet18Encoder((3, 32, 32), 512)) == RESNET18_TRUNK_RGB
    assert parameter_count(ResNet18Encoder((32, 32), 512)) == RESNET18_TRUNK_MONO
    assert parameter_count(ResNet18Encoder((32, 32), 64)) == RESNET18_TRUNK_MONO + 512 * 64 + 64
    assert parameter_count(ResNet18FrameEncoder((2, 3, 32, 32))) == RESNET18_TRUNK_RGB


def test_maxout_mlp_sizes():
    trunk = MaxOutMLP(1024)  # DESIGN §8: 1024 in, hidden 2048, second 1024, two pieces
    assert trunk(torch.randn(3, 1024)).shape == (3, 1024)
    assert parameter_count(trunk) == (1024 * 4096 + 4096) + (2048 * 2048 + 2048)
    assert MaxOutMLP(20, hidden=8, second=6, pieces=3, out_dim=4, dropout=0.3)(torch.randn(5, 20)).shape == (5, 4)


def test_maxout_takes_the_max_over_pieces():
    trunk = MaxOutMLP(4, hidden=3, second=2, pieces=2)
    x = torch.randn(5, 4)
    first = trunk.net[0]
    z = first.linear(x).view(5, 3, 2)
    torch.testing.assert_close(first(x), torch.maximum(z[..., 0], z[..., 1]))


def _trained_bn(model, inputs):
    """Move the BatchNorm running statistics away from their init, then eval mode."""
    model.train()
    with torch.no_grad():
        model(inputs)
    return model.eval()


@pytest.mark.parametrize("fusion, head", [("late_concat", ConcatFusion), ("late_sum", SumFusion)])
@pytest.mark.parametrize("feature_dim", [512, 16])
def test_coalition_fast_path_equals_naive_with_resnet18(fusion, head, feature_dim):
    torch.manual_seed(0)
    shapes = {"image": (3, 16, 16), "audio": (20, 12)}
    model = build_model(shapes, 5, fusion, {"image": "resnet18", "audio": "resnet18"}, feature_dim=feature_dim).double()
    assert isinstance(model.fusion, head) and not model.mode_invariant
    inputs = {m: torch.randn(6, *s, dtype=torch.float64) + 0.5 for m, s in shapes.items()}
    _trained_bn(model, inputs)
    masks = shapley.all_masks(2)
    with torch.no_grad():
        fast = coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), masks)
        naive = coalitions.coalition_logits_naive(model, inputs, masks)
    assert fast.shape == (4, 6, 5) and fast.dtype == torch.float64
    torch.testing.assert_close(fast, naive)


@pytest.mark.parametrize("fusion", ["late_concat", "late_sum"])
def test_coalition_fast_path_equals_naive_with_frames_and_transformer(fusion):
    torch.manual_seed(0)
    shapes = {"visual": (2, 3, 16, 16), "text": (5, 7)}
    model = build_model(
        shapes, 3, fusion, {"visual": "resnet18_visual", "text": "transformer"}, feature_dim=512
    ).double()
    inputs = {m: torch.randn(4, *s, dtype=torch.float64) for m, s in shapes.items()}
    inputs["text"][:2, :2] = 0  # left padding on two samples
    _trained_bn(model, inputs)
    masks = shapley.all_masks(2)
    with torch.no_grad():
        fast = coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), masks)
        naive = coalitions.coalition_logits_naive(model, inputs, masks)
    torch.testing.assert_close(fast, naive)


def test_transformer_ignores_left_zero_padding():
    torch.manual_seed(0)
    enc = TransformerEncoder((8, 7), out_dim=10).double().eval()
    content = torch.randn(1, 3, 7, dtype=torch.float64)

    def padded(k):
        return torch.cat([torch.zeros(1, k, 7, dtype=torch.float64), content], dim=1)

    with torch.no_grad():
        ref = enc(content)  # positions count from the first real row
        for k in (1, 2, 5):
            torch.testing.assert_close(enc(padded(k)), ref)
        batch = torch.cat([padded(5), torch.randn(1, 8, 7, dtype=torch.float64)])
        torch.testing.assert_close(enc(batch)[:1], ref)  # padding is per sample
        # interior zero rows are real rows, not padding
        gap = padded(5).clone()
        gap[0, 6] = 0
        assert not torch.allclose(enc(gap), ref)
        # an all-zero sequence (an absent modality) gives one finite, fixed vector
        zero = enc(torch.zeros(2, 8, 7, dtype=torch.float64))
    assert torch.isfinite(zero).all()
    torch.testing.assert_close(zero[0], zero[1])


def test_encoder_kinds_pass_config_validation():
    cfg = resolve(None, ["encoders.audio=resnet18", "encoders.image=transformer"])
    assert cfg.encoders == {"audio": "resnet18", "image": "transformer"}
    with pytest.raises(ConfigError):
        resolve(None, ["encoders.audio=resnet34"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["joint", "msam"])
def test_training_smoke_with_resnet18(tmp_path, monkeypatch, method):
    """One epoch on av-digits (180 train digits) with a ResNet-18 on the 8x8 images."""
    monkeypatch.setenv("MSAM_LAB_DATA", str(tmp_path / "data"))
    run = msam_lab.train(
        {
            "dataset": "av-digits",
            "method": method,
            "epochs": 1,
            "batch_size": 32,
            "fusion": "late_concat",
            "encoders": {"image": "resnet18"},
            "data": {"test_fraction": 0.9},
            "train_eval_samples": 64,
        },
        out=tmp_path / "run",
        quiet=True,
    )
    assert run.finished and run.state == "finished"
    assert run.config.encoders["image"] == "resnet18"


@pytest.mark.slow
def test_a_last_batch_of_one_is_dropped_only_for_batchnorm_models(tmp_path, monkeypatch):
    """161 train digits (179 less the 18 of the validation hold-out) in batches of 80 leave one
    sample: BatchNorm cannot train on it."""
    monkeypatch.setenv("MSAM_LAB_DATA", str(tmp_path / "data"))
    base = {
        "dataset": "av-digits",
        "method": "joint",
        "epochs": 1,
        "batch_size": 80,
        "data": {"test_fraction": 0.9},
        "train_eval_samples": 64,
    }
    bn = msam_lab.train({**base, "encoders": {"image": "resnet18"}}, out=tmp_path / "bn", quiet=True)
    plain = msam_lab.train(base, out=tmp_path / "plain", quiet=True)
    assert bn.finished and list(bn.steps["step"]) == [0, 1]
    assert list(plain.steps["step"]) == [0, 1, 2]
