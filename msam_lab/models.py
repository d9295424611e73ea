"""Multimodal models: one encoder per modality, then a fusion module.

Following MultiBench's composition, a model is ``fusion([encoder_m(x_m) for m])``.
Keeping the two stages separate is what makes coalitions cheap (see
``coalitions.py``): an absent modality is zeroed at the input, and an encoder
fed zeros gives one constant feature vector, so only the fusion has to run
once per coalition.

Fusions:
- ``late_sum``: a linear head per modality, logits summed (unimodal logits are
  the heads' outputs);
- ``late_concat``: one linear head over the concatenated features;
- ``early``: each modality gets only a thin linear stem, and a shared MLP
  trunk does the work on the joined features.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from . import encoders as paper_encoders
from .datasets import Batch

FUSIONS = ("late_sum", "late_concat", "early")
ENCODERS = ("mlp", "cnn", "linear", "resnet18", "resnet18_audio", "resnet18_visual", "transformer")


class MLPEncoder(nn.Module):
    """Flatten, then two hidden layers."""

    def __init__(self, in_shape, out_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
            nn.Linear(hidden, out_dim), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class CNNEncoder(nn.Module):
    """Two 3x3 conv blocks, then average pooling to a coarse (8, 4) map; takes (N,H,W) or (N,C,H,W).

    The map is kept, not pooled to one vector: in a spectrogram *where* the
    energy is (which frequency) is the class, and global pooling would erase it.
    """

    def __init__(self, in_shape, out_dim: int, width: int = 16, pool=(8, 4)):
        super().__init__()
        channels = in_shape[0] if len(in_shape) == 3 else 1
        self.net = nn.Sequential(
            # pool before ReLU: the same function (ReLU is monotone), a quarter of the ReLU work
            nn.Conv2d(channels, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
            nn.Linear(2 * width * pool[0] * pool[1], out_dim), nn.ReLU())

    def forward(self, x):
        return self.net(x.unsqueeze(1) if x.dim() == 3 else x)


class LinearStem(nn.Module):
    """Flatten and project: the per-modality part of an early-fusion model."""

    def __init__(self, in_shape, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), out_dim))

    def forward(self, x):
        return self.net(x)


class SumFusion(nn.Module):
    def __init__(self, dims, num_classes):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)

    def forward(self, features):
        return sum(head(f) for head, f in zip(self.heads, features))


class ConcatFusion(nn.Module):
    def __init__(self, dims, num_classes):
        super().__init__()
        self.head = nn.Linear(sum(dims), num_classes)

    def forward(self, features):
        return self.head(torch.cat(features, dim=1))


class EarlyFusion(nn.Module):
    def __init__(self, dims, num_classes, hidden: int = 128):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.ReLU(), nn.Linear(sum(dims), hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, features):
        return self.trunk(torch.cat(features, dim=1))


class MultimodalModel(nn.Module):
    """``fusion([encoders[m](inputs[m]) for m in modalities])``."""

    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module,
                 input_shapes: dict[str, tuple]):
        super().__init__()
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.input_shapes = {m: tuple(s) for m, s in input_shapes.items()}
        # fixed at construction; the per-step coalition passes ask for it every step
        self.mode_invariant = is_mode_invariant(self)

    def encode(self, inputs: Batch) -> list[torch.Tensor]:
        return [self.encoders[m](inputs[m]) for m in self.modalities]

    def zero_features(self) -> list[torch.Tensor]:
        """Each encoder's output for an all-zero input, shape (1, d_m).

        In eval mode (or for a model without BatchNorm/dropout) this is the
        feature every sample gets when its modality is absent.
        """
        p = next(self.parameters())
        return [self.encoders[m](torch.zeros((1, *self.input_shapes[m]), device=p.device, dtype=p.dtype))
                for m in self.modalities]

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fusion(features)

    def fuse_coalitions(self, features: list[torch.Tensor], zero_features: list[torch.Tensor],
                        masks: list[int]) -> torch.Tensor:
        """Logits (K, B, C) of coalitions ``masks`` (bit m set: modality m present).

        An absent modality contributes its zero feature. All coalitions go
        through the fusion as one stacked batch; a summed-head fusion instead
        runs each head once on real and once on zero features and adds per
        coalition (its logits are additive over modalities).
        """
        n = features[0].shape[0]
        if isinstance(self.fusion, SumFusion):
            heads = self.fusion.heads
            real = torch.stack([h(f) for h, f in zip(heads, features)])                     # (M, B, C)
            zero = torch.stack([h(z) for h, z in zip(heads, zero_features)]).expand_as(real)
            present = torch.tensor([[k >> m & 1 for m in range(len(features))] for k in masks],
                                   dtype=real.dtype, device=real.device)                   # (K, M)
            return (torch.einsum("km,mbc->kbc", present, real)
                    + torch.einsum("km,mbc->kbc", 1 - present, zero))
        stacked = [torch.cat([f if k >> m & 1 else z.expand_as(f) for k in masks], dim=0)
                   for m, (f, z) in enumerate(zip(features, zero_features))]
        return self.fuse(stacked).view(len(masks), n, -1)

    def forward(self, inputs: Batch, present=None) -> torch.Tensor:
        """Fused logits; modalities not in ``present`` are zeroed at the input (the naive path)."""
        if present is not None:
            inputs = {m: x if m in present else torch.zeros_like(x) for m, x in inputs.items()}
        return self.fuse(self.encode(inputs))

    def encoder_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.encoders[modality].parameters())


@contextmanager
def eval_mode(model: nn.Module):
    """Run a block in eval mode, then give every submodule back its own mode.

    ``model.train(was_training)`` would flatten the modes: a submodule kept in
    eval mode on purpose (a frozen encoder) would come back in train mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def channels_last_on_cpu(model: nn.Module):
    """Run a block with a CPU model's convolution weights in channels-last layout, then back.

    Our small CNNs infer about 3x faster on CPU that way (docs/benchmarks.md). Only the memory
    layout changes: the values are copied, so the model (and its optimizer's parameters, the same
    objects) computes bit for bit as before once the block ends. A model already not in the
    default layout, or not on the CPU, is left alone.
    """
    convs = [p for p in model.parameters() if p.dim() == 4]
    convert = bool(convs) and all(p.device.type == "cpu" and p.is_contiguous() for p in convs)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


def is_mode_invariant(model: nn.Module) -> bool:
    """True when train and eval mode compute the same function (no BatchNorm, no dropout)."""
    mode_dependent = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                      nn.modules.instancenorm._InstanceNorm)
    return not any(isinstance(m, mode_dependent) for m in model.modules())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_encoder(kind: str, in_shape, out_dim: int, hidden: int) -> nn.Module:
    if kind == "mlp":
        return MLPEncoder(in_shape, out_dim, hidden)
    if kind == "cnn":
        if len(in_shape) not in (2, 3):
            raise ValueError(f"a cnn encoder needs (H,W) or (C,H,W) inputs, got shape {tuple(in_shape)}; "
                             "use encoder=mlp for this modality")
        if min(in_shape[-2:]) < 4:     # two 2x2 max-pools: a smaller map pools to nothing
            raise ValueError(f"a cnn encoder needs inputs of at least 4x4, got shape {tuple(in_shape)}; "
                             "use encoder=mlp for this modality or larger inputs")
        return CNNEncoder(in_shape, out_dim)
    if kind == "linear":
        return LinearStem(in_shape, out_dim)
    if kind in paper_encoders.KINDS:     # the paper protocol's networks (encoders.py documents the kinds)
        return paper_encoders.build_paper_encoder(kind, in_shape, out_dim)
    raise ValueError(f"unknown encoder {kind!r}; choose one of: {', '.join(ENCODERS)}")


def build_model(input_shapes: dict[str, tuple], num_classes: int, fusion: str = "late_sum",
                encoders: dict[str, str] | None = None, feature_dim: int = 64,
                hidden_dim: int = 128) -> MultimodalModel:
    """Build a model for modalities with per-sample ``input_shapes``.

    ``encoders`` maps modality -> encoder kind (``ENCODERS``: mlp, cnn, resnet18*, transformer; see
    msam_lab/encoders.py); missing ones get mlp.
    Early fusion replaces every encoder by a thin linear stem.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of: {', '.join(FUSIONS)}")
    encoders = dict(encoders or {})
    if fusion == "early":
        kinds = {m: "linear" for m in input_shapes}
    else:
        kinds = {m: encoders.get(m, "mlp") for m in input_shapes}
    modules = {m: build_encoder(kinds[m], shape, feature_dim, hidden_dim)
               for m, shape in input_shapes.items()}
    dims = [feature_dim] * len(modules)
    if fusion == "late_sum":
        head = SumFusion(dims, num_classes)
    elif fusion == "late_concat":
        head = ConcatFusion(dims, num_classes)
    else:
        head = EarlyFusion(dims, num_classes, hidden_dim)
    return MultimodalModel(modules, head, input_shapes)


class running_stats_kept:
    """Context manager: BatchNorm running statistics are put back as they were on exit.

    SAM's perturbed pass must not update them a second time in one step.
    With ``enabled=False`` it does nothing (the ``update`` BN policy).
    """

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.norms = [m for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []

    def __enter__(self):
        self.saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in self.norms]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, buffers in zip(self.norms, self.saved):
                for k, v in m.named_buffers(recurse=False):
                    v.copy_(buffers[k])
        return False


def model_from_spec(spec: dict) -> MultimodalModel:
    """A fresh model from a run's ``model.json`` (what ``build_model`` needs, JSON-friendly)."""
    return build_model({m: tuple(s) for m, s in spec["input_shapes"].items()}, spec["num_classes"],
                       spec["fusion"], spec["encoders"], spec["feature_dim"], spec["hidden_dim"])
