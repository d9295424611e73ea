"""The paper protocol's encoders: ResNet-18 (images, spectrograms, frame sequences),
a Transformer for feature sequences, and the MaxOut-MLP trunk of AGM's early fusion.

Written from the architectures' descriptions (He et al. 2016; Vaswani et al. 2017;
Goodfellow et al. 2013) as AGM / OGM-GE use them; no torchvision, whose wheel does not
load against the pinned torch (DESIGN §8).

Encoder kinds (``models.build_encoder``; per-sample input shapes, no batch dimension):

- ``resnet18``: picks by the input's rank. ``(H, W)`` (one channel) or ``(C, H, W)`` ->
  :class:`ResNet18Encoder` on one image; ``(T, C, H, W)`` -> :class:`ResNet18FrameEncoder`.
- ``resnet18_audio``: :class:`ResNet18Encoder` that insists on one channel, ``(H, W)`` or
  ``(1, H, W)``: AGM's / OGM-GE's audio ResNet-18 on a spectrogram (conv1 takes 1 channel).
- ``resnet18_visual``: :class:`ResNet18FrameEncoder`: ``(T, C, H, W)`` frames, or our
  loaders' stacked ``(3*T, H, W)`` layout (crema-d, ave: ``n_frames`` RGB frames along the
  channel axis), read as ``T`` RGB frames. The 2-D trunk runs on every frame and the maps
  are averaged over time and space (AGM's CREMA-D visual branch).
- ``transformer``: :class:`TransformerEncoder` on ``(T, F)`` sequences.

Keyword options per kind (``encoder_options`` in the config, checked by ``check_options``
against ``PAPER_OPTIONS``): ``transformer`` takes ``dim``, ``heads``, ``layers``, ``ff``,
``dropout``, ``mask_padding`` (AGM's UR-Funny: dim 768, heads 4, layers 8);
``resnet18_visual`` takes ``channels``; ``resnet18`` and ``resnet18_audio`` take none.

Every ResNet gives the 512-d globally pooled features; when ``out_dim`` is not 512 a
final ``Linear(512, out_dim)`` projects them (so the default ``feature_dim=64`` works;
the paper protocol is ``feature_dim=512``, where no projection is added).
"""

from __future__ import annotations

import torch
from torch import nn

RESNET18_FEATURES = 512
STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity (or 1x1 conv+BN) shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to (not including) the global pool: (N, C, H, W) -> (N, 512, H/32, W/32).

    Stem: 7x7/2 conv + BN + ReLU + 3x3/2 max-pool; then four stages of two BasicBlocks,
    64/128/256/512 channels, the first block of stages 2-4 with stride 2. Any input of at
    least 1x1 works (the maps just shrink to 1x1). Initialised like the reference: He-normal
    convs (fan-out), BN weight 1 and bias 0.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STAGE_WIDTHS[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(STAGE_WIDTHS[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, c_in = [], STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width)))
            c_in = width
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.stages(self.stem(x))


def _projection(out_dim: int) -> nn.Module:
    if out_dim < 1:
        raise ValueError(f"out_dim must be >= 1, got {out_dim}")
    return nn.Identity() if out_dim == RESNET18_FEATURES else nn.Linear(RESNET18_FEATURES, out_dim)


class ResNet18Encoder(nn.Module):
    """ResNet-18 on one image or spectrogram: (N, H, W) or (N, C, H, W) -> (N, out_dim).

    ``in_shape`` is the per-sample shape, ``(H, W)`` (one channel: the audio variant) or
    ``(C, H, W)``. Features are the 512 globally averaged channels, then a Linear to
    ``out_dim`` unless ``out_dim == 512``.
    """

    def __init__(self, in_shape, out_dim: int = RESNET18_FEATURES):
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) not in (2, 3):
            raise ValueError(f"a resnet18 encoder needs (H,W) or (C,H,W) inputs, got shape {in_shape}")
        self.in_channels = in_shape[0] if len(in_shape) == 3 else 1
        self.trunk = ResNet18Trunk(self.in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = _projection(out_dim)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.proj(self.pool(self.trunk(x)).flatten(1))


class ResNet18FrameEncoder(nn.Module):
    """ResNet-18 on every frame of a clip, averaged over time and space -> (N, out_dim).

    ``in_shape`` is ``(T, C, H, W)``, or ``(C*T, H, W)`` with ``C = channels`` (RGB by
    default) frames stacked along the channel axis, as the crema-d/ave loaders store them.
    The frames go through one 2-D trunk as a batch of N*T images; the (N, T, 512, h, w)
    maps are averaged over T, h and w (AGM's 3-D adaptive pooling of its visual ResNet).
    """

    def __init__(self, in_shape, out_dim: int = RESNET18_FEATURES, channels: int = 3):
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) == 4:
            self.frames, self.channels = in_shape[0], in_shape[1]
        elif len(in_shape) == 3 and in_shape[0] % channels == 0:
            self.frames, self.channels = in_shape[0] // channels, channels
        else:
            raise ValueError(
                f"a resnet18_visual encoder needs (T,C,H,W) frames or ({channels}*T,H,W) "
                f"stacked frames, got shape {in_shape}"
            )
        self.trunk = ResNet18Trunk(self.channels)
        self.proj = _projection(out_dim)

    def forward(self, x):
        n = x.shape[0]
        frames = x.reshape(n * self.frames, self.channels, *x.shape[-2:])
        maps = self.trunk(frames)  # (N*T, 512, h, w)
        maps = maps.view(n, self.frames, *maps.shape[1:])  # (N, T, 512, h, w)
        return self.proj(maps.mean(dim=(1, 3, 4)))


class TransformerEncoder(nn.Module):
    """A Transformer over a feature sequence: (N, T, F) -> (N, out_dim).

    Linear F -> ``dim``, plus a learned positional embedding (``T`` positions), then
    ``layers`` ``nn.TransformerEncoderLayer`` s (``heads`` heads, feed-forward ``ff``,
    default 4*dim), mean over time, Linear to ``out_dim``. AGM's UR-Funny setting is
    dim 768, 4 heads, 8 layers; the defaults here are small (64, 4, 2).

    With ``mask_padding`` (default) the leading all-zero rows of a sequence are left
    padding (UR-Funny's layout): they are masked out of attention and of the mean, and
    positions count from the first real row, so extra left padding changes nothing. A
    sequence that is all zeros (an absent modality) is read as unpadded, which gives one
    fixed feature vector.
    """

    def __init__(
        self,
        in_shape,
        out_dim: int,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff: int | None = None,
        dropout: float = 0.1,
        mask_padding: bool = True,
    ):
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) != 2:
            raise ValueError(f"a transformer encoder needs (T,F) sequence inputs, got shape {in_shape}")
        if dim % heads:
            raise ValueError(f"transformer dim ({dim}) must be divisible by heads ({heads})")
        self.length, features = in_shape
        self.mask_padding = mask_padding
        self.embed = nn.Linear(features, dim)
        self.position = nn.Embedding(self.length, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ff or 4 * dim, dropout, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x):
        n, t, _ = x.shape
        steps = torch.arange(t, device=x.device)
        if self.mask_padding:
            zero_row = (x == 0).all(dim=-1)  # (N, T)
            n_pad = zero_row.int().cumprod(dim=1).sum(dim=1)  # leading zero rows
            n_pad = torch.where(n_pad == t, torch.zeros_like(n_pad), n_pad)
            pad = steps[None, :] < n_pad[:, None]  # (N, T) True: padding
            positions = (steps[None, :] - n_pad[:, None]).clamp(min=0)
        else:
            pad = torch.zeros(n, t, dtype=torch.bool, device=x.device)
            positions = steps.expand(n, t)
        h = self.embed(x) + self.position(positions)
        h = self.layers(h, src_key_padding_mask=pad if self.mask_padding else None)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.out((h * keep).sum(1) / keep.sum(1))


class MaxOut(nn.Module):
    """Linear to ``out_dim * pieces`` units, then the max over each group of ``pieces``."""

    def __init__(self, in_dim: int, out_dim: int, pieces: int = 2):
        super().__init__()
        self.out_dim, self.pieces = out_dim, pieces
        self.linear = nn.Linear(in_dim, out_dim * pieces)

    def forward(self, x):
        return self.linear(x).view(*x.shape[:-1], self.out_dim, self.pieces).amax(dim=-1)


class MaxOutMLP(nn.Module):
    """AGM's early-fusion trunk: MaxOut(in_dim -> hidden), dropout, MaxOut(hidden -> second).

    (N, in_dim) -> (N, second), or (N, out_dim) through a final Linear when ``out_dim`` is
    given. The AV-MNIST protocol (DESIGN §8): in_dim 1024 (concatenated 512+512), hidden
    2048, second 1024, then an MLP head 1024 -> 128 -> 10 (not part of this module).

    With ``batchnorm`` the layout is AGM's own ``MaxOut_MLP`` (as in MultiBench):
    BatchNorm1d(in_dim, eps 1e-4), MaxOut, BatchNorm1d(hidden), Dropout, MaxOut,
    BatchNorm1d(second), Dropout (``models.build_model``'s ``fusion_trunk="maxout"`` uses it
    with dropout 0.3). Without it: MaxOut, Dropout (if any), MaxOut.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 2048,
        second: int = 1024,
        pieces: int = 2,
        out_dim: int | None = None,
        dropout: float = 0.0,
        batchnorm: bool = False,
    ):
        super().__init__()
        if batchnorm:
            self.net = nn.Sequential(
                nn.BatchNorm1d(in_dim, eps=1e-4),
                MaxOut(in_dim, hidden, pieces),
                nn.BatchNorm1d(hidden),
                nn.Dropout(dropout),
                MaxOut(hidden, second, pieces),
                nn.BatchNorm1d(second),
                nn.Dropout(dropout),
            )
        else:
            self.net = nn.Sequential(
                MaxOut(in_dim, hidden, pieces),
                nn.Dropout(dropout) if dropout else nn.Identity(),
                MaxOut(hidden, second, pieces),
            )
        self.out_features = out_dim if out_dim is not None else second
        self.out = nn.Linear(second, out_dim) if out_dim is not None else nn.Identity()

    def forward(self, x):
        return self.out(self.net(x))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


# kind -> option name -> (check, what a valid value is): the ``encoder_options`` each kind takes
OPTION_CHECKS = {
    "positive int": _positive_int,
    "number in [0, 1)": _probability,
    "true or false": lambda v: isinstance(v, bool),
    "any": lambda v: True,  # a plug-in encoder's option: its factory checks the value
}
PAPER_OPTIONS = {
    "resnet18": {},
    "resnet18_audio": {},
    "resnet18_visual": {"channels": "positive int"},
    "transformer": {
        "dim": "positive int",
        "heads": "positive int",
        "layers": "positive int",
        "ff": "positive int",
        "dropout": "number in [0, 1)",
        "mask_padding": "true or false",
    },
}


def check_options(kind: str, options, valid: dict[str, str], where: str | None = None) -> dict:
    """``options`` as a dict, after checking its names and values against ``valid`` (name -> rule).

    Raises a one-line ValueError naming the valid options (``where``: how the message names
    the options, default ``"<kind> encoder options"``).
    """
    where = where or f"{kind} encoder options"
    options = dict(options or {})
    unknown = [k for k in options if k not in valid]
    if unknown:
        takes = f"takes {', '.join(valid)}" if valid else "takes no options"
        raise ValueError(f"{where}: unknown option {unknown[0]!r}; the {kind} encoder {takes}")
    for name, value in options.items():
        rule = valid[name]
        if not OPTION_CHECKS[rule](value):
            raise ValueError(f"{where}: {name} must be a {rule}, got {value!r}")
    return options


def build_paper_encoder(kind: str, in_shape, out_dim: int, options=None) -> nn.Module:
    """The encoder for one of this module's kinds (see the module docstring).

    ``options``: the kind's keyword options (``PAPER_OPTIONS``; e.g. transformer ``dim``,
    ``heads``, ``layers``, ``ff``, ``dropout``, ``mask_padding``); unknown names are a ValueError.
    """
    in_shape = tuple(in_shape)
    if kind not in PAPER_OPTIONS:
        raise ValueError(f"unknown encoder {kind!r}")
    options = check_options(kind, options, PAPER_OPTIONS[kind])
    if kind == "resnet18":
        if len(in_shape) == 4:
            return ResNet18FrameEncoder(in_shape, out_dim)
        return ResNet18Encoder(in_shape, out_dim)
    if kind == "resnet18_audio":
        if not (len(in_shape) == 2 or (len(in_shape) == 3 and in_shape[0] == 1)):
            raise ValueError(
                f"a resnet18_audio encoder needs one-channel (H,W) or (1,H,W) inputs, got shape {in_shape}"
            )
        return ResNet18Encoder(in_shape, out_dim)
    if kind == "resnet18_visual":
        return ResNet18FrameEncoder(in_shape, out_dim, **options)
    return TransformerEncoder(in_shape, out_dim, **options)


KINDS = ("resnet18", "resnet18_audio", "resnet18_visual", "transformer")


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BasicBlock",
    "ResNet18Trunk",
    "ResNet18Encoder",
    "ResNet18FrameEncoder",
    "TransformerEncoder",
    "MaxOut",
    "MaxOutMLP",
    "build_paper_encoder",
    "check_options",
    "KINDS",
    "PAPER_OPTIONS",
    "parameter_count",
]
