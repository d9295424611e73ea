"""Multimodal models: one encoder per modality, then a fusion module.

Following MultiBench's composition, a model is ``fusion([encoder_m(x_m) for m])``.
Keeping the two stages separate is what makes coalitions cheap (see
``coalitions.py``): an absent modality is zeroed at the input, and an encoder
fed zeros gives one constant feature vector, so only the fusion has to run
once per coalition.

Fusions:
- ``late_sum``: a head per modality, logits summed (unimodal logits are the
  heads' outputs);
- ``late_concat``: one head over the concatenated features;
- ``early``: a shared trunk does the work on the joined features; by default
  each modality gets only a thin linear stem (``encoders`` may name others).
  The trunk is ``mlp`` (two hidden layers of ``hidden_dim``) or ``maxout``
  (AGM's MaxOut-MLP: 2048 then 1024 units, BatchNorm and dropout 0.3), and a
  head follows it.

Every head is ``Linear(d, C)`` by default; ``head_hidden=[w1, ...]`` makes it an
MLP ``Linear(d, w1), ReLU, ..., Linear(wk, C)`` (AGM's AV-MNIST: late_concat with
[100], early maxout with [128]).
"""

from __future__ import annotations

import inspect
import math
import reprlib
import typing
from contextlib import contextmanager

import torch
from torch import nn

from msam_lab import config
from msam_lab.datasets import Batch
from msam_lab.models import paper_encoders
from msam_lab.registry import Registry, check_callable, describe, shown

FUSIONS = typing.get_args(config.Fusion)
ENCODERS = ("mlp", "cnn", "linear", "resnet18", "resnet18_audio", "resnet18_visual", "transformer")  # built-ins
FUSION_TRUNKS = typing.get_args(config.FusionTrunk)
MAXOUT_WIDTHS = (2048, 1024)  # AGM's MaxOut-MLP trunk: first and second hidden widths (DESIGN §8)
MAXOUT_DROPOUT = 0.3
# kind -> the encoder_options it takes (name -> rule, see encoders.check_options)
ENCODER_OPTIONS = {
    "mlp": {"hidden": "positive int"},
    "cnn": {"width": "positive int"},
    "linear": {},
    **paper_encoders.PAPER_OPTIONS,
}


class MLPEncoder(nn.Module):
    """Flatten, then two hidden layers."""

    def __init__(self, in_shape, out_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.ReLU()
        )

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

    def forward(self, x):
        return self.net(x.unsqueeze(1) if x.dim() == 3 else x)


class LinearStem(nn.Module):
    """Flatten and project: the per-modality part of an early-fusion model."""

    def __init__(self, in_shape, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), out_dim))

    def forward(self, x):
        return self.net(x)


def head_layers(in_dim: int, num_classes: int, hidden=()) -> list[nn.Module]:
    """``[Linear(in_dim, C)]``, or with ``hidden`` widths ``Linear, ReLU, ..., Linear(w_k, C)``."""
    widths = [in_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return layers + [nn.Linear(widths[-1], num_classes)]


def make_head(in_dim: int, num_classes: int, hidden=()) -> nn.Module:
    """A classifier head: ``nn.Linear`` when ``hidden`` is empty, else an ``nn.Sequential`` MLP."""
    layers = head_layers(in_dim, num_classes, hidden)
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class SumFusion(nn.Module):
    """One head per modality (``make_head``), logits summed."""

    def __init__(self, dims, num_classes, head_hidden=()):
        super().__init__()
        self.heads = nn.ModuleList(make_head(d, num_classes, head_hidden) for d in dims)

    def forward(self, features):
        return sum(head(f) for head, f in zip(self.heads, features))


class ConcatFusion(nn.Module):
    """One head (``make_head``) over the concatenated features."""

    def __init__(self, dims, num_classes, head_hidden=()):
        super().__init__()
        self.head = make_head(sum(dims), num_classes, head_hidden)

    def forward(self, features):
        return self.head(torch.cat(features, dim=1))


class EarlyFusion(nn.Module):
    """A shared trunk on the concatenated features, then a head; all in one ``trunk`` Sequential.

    ``trunk="mlp"``: ReLU, Linear(sum(dims), hidden), ReLU, Linear(hidden, hidden), ReLU, then
    the head from ``hidden`` (with no ``head_hidden``: exactly the original six-layer trunk).
    ``trunk="maxout"``: AGM's MaxOut-MLP (``encoders.MaxOutMLP`` with BatchNorm, 2048 and 1024
    units, dropout 0.3), then the head from 1024.
    """

    def __init__(self, dims, num_classes, hidden: int = 128, trunk: str = "mlp", head_hidden=()):
        super().__init__()
        if trunk == "mlp":
            body = [nn.ReLU(), nn.Linear(sum(dims), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()]
            width = hidden
        elif trunk == "maxout":
            body = [paper_encoders.MaxOutMLP(sum(dims), *MAXOUT_WIDTHS, dropout=MAXOUT_DROPOUT, batchnorm=True)]
            width = MAXOUT_WIDTHS[1]
        else:
            raise ValueError(f"unknown fusion_trunk {trunk!r}; choose one of: {', '.join(FUSION_TRUNKS)}")
        self.trunk = nn.Sequential(*body, *head_layers(width, num_classes, head_hidden))

    def forward(self, features):
        return self.trunk(torch.cat(features, dim=1))


class MultimodalModel(nn.Module):
    """``fusion([encoders[m](inputs[m]) for m in modalities])``."""

    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module, input_shapes: dict[str, tuple]):
        super().__init__()
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.input_shapes = {m: tuple(s) for m, s in input_shapes.items()}
        # fixed at construction; the per-step coalition passes ask for it every step
        self.mode_invariant = is_mode_invariant(self)
        self.fusion_mode_invariant = is_mode_invariant(fusion)
        # where the zero samples go, in its dtype: the first parameter, looked up by its owner and name each time
        # (a load_state_dict(assign=True) replaces the object); in a tuple, or the module would register twice
        path, _, attr = next(name for name, _ in self.named_parameters()).rpartition(".")
        self._reference = (self.get_submodule(path), attr)
        self._zero_inputs: dict = {}  # (device, dtype) -> each modality's all-zero sample (zero_features)
        self._present: dict = {}  # (masks, device) -> per modality, (K, 1, 1) bool: present in coalition k

    def encode(self, inputs: Batch) -> list[torch.Tensor]:
        return [self.encoders[m](inputs[m]) for m in self.modalities]

    def zero_features(self) -> list[torch.Tensor]:
        """Each encoder's output for an all-zero input, shape (1, d_m).

        In eval mode (or for a model without BatchNorm/dropout) this is the
        feature every sample gets when its modality is absent.
        """
        p = getattr(*self._reference)  # next(self.parameters()) would cost ~20 µs a step
        key = (p.device, p.dtype)
        if key not in self._zero_inputs:  # made once: a per-step observation would allocate M of them
            self._zero_inputs[key] = [
                torch.zeros((1, *self.input_shapes[m]), device=p.device, dtype=p.dtype) for m in self.modalities
            ]
        return [self.encoders[m](x) for m, x in zip(self.modalities, self._zero_inputs[key])]

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fusion(features)

    def fuse_coalitions(
        self, features: list[torch.Tensor], zero_features: list[torch.Tensor], masks: list[int]
    ) -> torch.Tensor:
        """Logits (K, B, C) of coalitions ``masks`` (bit m set: modality m present).

        An absent modality contributes its zero feature. All coalitions go
        through the fusion as one stacked batch; a summed-head fusion instead
        runs each head (linear or MLP) once on real and once on zero features
        and adds per coalition (its logits are additive over modalities). A
        fusion with BatchNorm or dropout (the maxout trunk) in train mode runs
        once per coalition instead, so that its batch statistics are each
        coalition's own, as in the naive path, not those of the stacked batch.
        """
        n = features[0].shape[0]
        if isinstance(self.fusion, SumFusion):
            # coalition k's logits: each modality's head on its real or its zero feature, added (no grad: in
            # modality order, in 2M - 1 whole-tensor ops; on a small model the observation costs their count)
            heads = self.fusion.heads
            if torch.is_grad_enabled():
                # with grad (AGM, the unimodal variant): as a matmul, whose backward sums the coalitions in
                # the order every recorded run of theirs was trained with
                real = torch.stack([h(f) for h, f in zip(heads, features)])  # (M, B, C)
                zero = torch.stack([h(z) for h, z in zip(heads, zero_features)]).expand_as(real)
                present = torch.stack(self._present_columns(masks, len(features), real.device), 1).to(real.dtype)
                present = present.view(len(masks), len(features))  # (K, M)
                return torch.einsum("km,mbc->kbc", present, real) + torch.einsum("km,mbc->kbc", 1 - present, zero)
            present = self._present_columns(masks, len(features), features[0].device)
            logits = None
            for head, f, z, here in zip(heads, features, zero_features, present):
                term = torch.where(here, head(f), head(z))  # (K, B, C)
                logits = term if logits is None else logits + term
            return logits
        if self.fusion.training and not getattr(self, "fusion_mode_invariant", True):
            return torch.stack(
                [
                    self.fuse(
                        [f if k >> m & 1 else z.expand_as(f) for m, (f, z) in enumerate(zip(features, zero_features))]
                    )
                    for k in masks
                ]
            )
        stacked = [
            torch.cat([f if k >> m & 1 else z.expand_as(f) for k in masks], dim=0)
            for m, (f, z) in enumerate(zip(features, zero_features))
        ]
        return self.fuse(stacked).view(len(masks), n, -1)

    def _present_columns(self, masks: list[int], n_modalities: int, device) -> list[torch.Tensor]:
        """Per modality m, (K, 1, 1) bool: bit m of mask k. Made once per mask list and device (a step asks
        for the same one)."""
        key = (tuple(masks), device)
        if key not in self._present:
            if len(self._present) >= 32:  # a permutation estimator's plans: keep the cache small
                self._present.clear()
            bits = torch.tensor([[k >> m & 1 for k in masks] for m in range(n_modalities)], dtype=torch.bool)
            self._present[key] = [column.to(device).view(-1, 1, 1) for column in bits]
        return self._present[key]

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
    mode_dependent = (
        nn.modules.batchnorm._BatchNorm,
        nn.modules.dropout._DropoutNd,
        nn.modules.instancenorm._InstanceNorm,
    )
    return not any(isinstance(m, mode_dependent) for m in model.modules())


def absent_features(model) -> list[torch.Tensor]:
    """The features an absent modality gets in a forward WITH gradient (AGM's and M-SAM-unimodal's
    coalitions): ``model.zero_features()``, computed in eval mode when the model is training and has
    BatchNorm/dropout: one all-zero sample has no batch statistics to normalise with (train-mode
    BatchNorm raises on it), and eval mode is what an absent modality means at test time."""
    if is_mode_invariant(model) or not model.training:
        return model.zero_features()
    with eval_mode(model):  # every submodule gets its own mode back (a frozen encoder stays frozen)
        return model.zero_features()


def last_linear(module: nn.Module) -> nn.Linear | None:
    """The last ``nn.Linear`` inside ``module`` (a head's output layer), or None."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# -- encoder plug-ins: name -> factory(in_shape, out_dim, hidden, **options) -> nn.Module ----------

# a built-in's entry is its kind (build_encoder dispatches on it); a plug-in's, its factory
ENCODER_REGISTRY = Registry(
    "encoder",
    {kind: kind for kind in ENCODERS},
    label=lambda name, kind: f"the built-in {name} encoder",
    check=lambda name, factory: check_callable("encoder", name, "factory", factory),
)


def encoder_names() -> tuple[str, ...]:
    """Every encoder kind: the built-ins, then the registered plug-ins (installed ones loaded first)."""
    return ENCODER_REGISTRY.names()


def register_encoder(name: str, factory, *, replace: bool = False) -> None:
    """Make ``factory(in_shape, out_dim, hidden, **options)`` the encoder kind ``name``.

    It must return an ``nn.Module`` mapping (B, *in_shape) to (B, out_dim); ``hidden`` is the
    config's hidden_dim and ``options`` the modality's ``encoder_options`` (the factory's keyword
    parameters beyond the first three; any name when it takes ``**options``).
    """
    ENCODER_REGISTRY.register(name, factory, replace=replace)


def unregister_encoder(name: str) -> None:
    """Forget the plug-in ``name`` (a built-in it replaced comes back); unknown names are ignored."""
    ENCODER_REGISTRY.unregister(name)


def _plugin_options(name: str, factory) -> dict[str, str] | None:
    """The option names a factory takes (rule "any": the factory checks values), None for ``**options``."""
    try:
        params = list(inspect.signature(factory).parameters.values())[3:]
    except (TypeError, ValueError):  # a builtin without a signature: let it check its own options
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name: "any" for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _build_plugin_encoder(kind: str, in_shape, out_dim: int, hidden: int, options: dict) -> nn.Module:
    factory = ENCODER_REGISTRY.get(kind)
    module = factory(tuple(in_shape), out_dim, hidden, **options)
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"encoder plug-in {kind!r} ({describe(factory)}) returned {type(module).__name__}, "
            "not a torch.nn.Module; return the encoder module"
        )
    # one tiny forward now, so a wrong feature size is this one line, not a shape error mid-training;
    # eval mode and a forked RNG: the model and the run's random stream are left as they were
    with torch.no_grad(), eval_mode(module), torch.random.fork_rng(devices=[]):
        out = module(torch.zeros((2, *in_shape)))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, out_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"encoder plug-in {kind!r} maps a batch of shape {(2, *in_shape)} to {got}; it must "
            f"give (batch, out_dim) = {(2, out_dim)} features (out_dim is feature_dim)"
        )
    return module


def check_encoder_options(kind: str, options, where: str | None = None) -> dict:
    """``options`` for an encoder of ``kind``, checked against ``ENCODER_OPTIONS[kind]``.

    A one-line ValueError names the valid options (or says the kind takes none). A plug-in's
    options are the keyword parameters of its factory (values are the factory's to check).
    """
    entry = ENCODER_REGISTRY.get(kind)  # an unknown kind: one line listing the choices
    if ENCODER_REGISTRY.is_plugin(kind):
        valid = _plugin_options(kind, entry)
        if valid is None:
            if not isinstance(options, (dict, type(None))):
                raise ValueError(f"{where or f'{kind} encoder options'} must be a mapping, got {shown(options)}")
            return dict(options or {})
        return paper_encoders.check_options(kind, options, valid, where)
    return paper_encoders.check_options(kind, options, ENCODER_OPTIONS[kind], where)


def build_encoder(kind: str, in_shape, out_dim: int, hidden: int, options=None) -> nn.Module:
    """One modality's encoder; ``options``: the kind's keyword options (``ENCODER_OPTIONS``).

    mlp takes ``hidden`` (default: the ``hidden`` argument, i.e. hidden_dim), cnn ``width``,
    resnet18_visual ``channels``, transformer ``dim``, ``heads``, ``layers``, ``ff``, ``dropout``,
    ``mask_padding``; linear and the other resnet kinds take none.
    """
    options = check_encoder_options(kind, options)
    if ENCODER_REGISTRY.is_plugin(kind):
        return _build_plugin_encoder(kind, in_shape, out_dim, hidden, options)
    if kind == "mlp":
        return MLPEncoder(in_shape, out_dim, options.get("hidden", hidden))
    if kind == "cnn":
        if len(in_shape) not in (2, 3):
            raise ValueError(
                f"a cnn encoder needs (H,W) or (C,H,W) inputs, got shape {tuple(in_shape)}; "
                "use encoder=mlp for this modality"
            )
        if min(in_shape[-2:]) < 4:  # two 2x2 max-pools: a smaller map pools to nothing
            raise ValueError(
                f"a cnn encoder needs inputs of at least 4x4, got shape {tuple(in_shape)}; "
                "use encoder=mlp for this modality or larger inputs"
            )
        return CNNEncoder(in_shape, out_dim, **options)
    if kind == "linear":
        return LinearStem(in_shape, out_dim)
    # the paper protocol's networks (encoders.py documents the kinds)
    return paper_encoders.build_paper_encoder(kind, in_shape, out_dim, options)


def spec_encoders(fusion: str, dataset_defaults: dict | None, config_encoders: dict | None) -> dict:
    """The ``encoders`` entry of a model spec: which kinds the config and data set ask for.

    Early fusion uses only the config's explicit ``encoders`` (a data set's defaults are
    written for late fusion; modalities not named get the thin ``linear`` stem). Late fusion
    uses the data set's defaults overridden by the config (modalities named by neither get mlp).
    """
    if fusion == "early":
        return dict(config_encoders or {})
    return {**(dataset_defaults or {}), **(config_encoders or {})}


def check_head_hidden(widths) -> list[int]:
    """``head_hidden`` as a list of positive widths; ValueError naming the fix otherwise."""
    widths = list(widths)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"head_hidden must be a list of positive widths, e.g. [100], got {reprlib.repr(widths)}")
    return widths


def build_model(
    input_shapes: dict[str, tuple],
    num_classes: int,
    fusion: str = "late_sum",
    encoders: dict[str, str] | None = None,
    feature_dim: int = 64,
    hidden_dim: int = 128,
    encoder_options: dict[str, dict] | None = None,
    fusion_trunk: str = "mlp",
    head_hidden=(),
) -> MultimodalModel:
    """Build a model for modalities with per-sample ``input_shapes``.

    ``encoders`` maps modality -> encoder kind (``ENCODERS``: mlp, cnn, linear, resnet18*,
    transformer; see msam_lab/encoders.py). Modalities not named get ``mlp`` under late fusion
    and the thin ``linear`` stem under early fusion. Kinds named for modalities the data does not
    have are ignored.

    ``encoder_options`` maps modality -> that encoder's keyword options (``ENCODER_OPTIONS``,
    e.g. ``{"text": {"dim": 768, "heads": 4, "layers": 8}}``); an unknown modality or option name
    is a one-line ValueError.

    ``fusion_trunk`` (early fusion only): ``mlp`` (two hidden layers of ``hidden_dim``) or
    ``maxout`` (AGM's MaxOut-MLP, 2048 and 1024 units). ``head_hidden``: hidden widths of the
    classifier head(s) after fusion; empty gives linear heads. With the defaults the model (its
    parameters, their creation order and names) is the one this function always built.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of: {', '.join(FUSIONS)}")
    if fusion_trunk not in FUSION_TRUNKS:
        raise ValueError(f"unknown fusion_trunk {fusion_trunk!r}; choose one of: {', '.join(FUSION_TRUNKS)}")
    if fusion_trunk != "mlp" and fusion != "early":
        raise ValueError(
            f"fusion_trunk={fusion_trunk} applies to early fusion only; this model is {fusion} "
            f"(set fusion=early or fusion_trunk=mlp)"
        )
    head_hidden = check_head_hidden(head_hidden or ())
    encoders = dict(encoders or {})
    encoder_options = dict(encoder_options or {})
    unknown = [m for m in encoder_options if m not in input_shapes]
    if unknown:
        raise ValueError(
            f"encoder_options names modality {unknown[0]!r}, which the data does not have "
            f"(modalities: {', '.join(input_shapes)})"
        )
    default = "linear" if fusion == "early" else "mlp"
    kinds = {m: encoders.get(m, default) for m in input_shapes}
    options = {
        m: check_encoder_options(kinds[m], encoder_options.get(m), f"encoder_options.{m} (encoder {kinds[m]})")
        for m in input_shapes
    }
    modules = {
        m: build_encoder(kinds[m], shape, feature_dim, hidden_dim, options[m]) for m, shape in input_shapes.items()
    }
    dims = [feature_dim] * len(modules)
    if fusion == "late_sum":
        head = SumFusion(dims, num_classes, head_hidden)
    elif fusion == "late_concat":
        head = ConcatFusion(dims, num_classes, head_hidden)
    else:
        head = EarlyFusion(dims, num_classes, hidden_dim, fusion_trunk, head_hidden)
    return MultimodalModel(modules, head, input_shapes)


class running_stats_kept:
    """Context manager: BatchNorm running statistics are put back as they were on exit.

    SAM's perturbed pass must not update them a second time in one step.
    With ``enabled=False`` it does nothing (the ``update`` BN policy).
    """

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []

    def __enter__(self):
        self.saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in self.norms]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, buffers in zip(self.norms, self.saved):
                for k, v in m.named_buffers(recurse=False):
                    v.copy_(buffers[k])
        return False


SPEC_KEYS = (
    "input_shapes",
    "num_classes",
    "fusion",
    "encoders",
    "feature_dim",
    "hidden_dim",
    "encoder_options",
    "fusion_trunk",
    "head_hidden",
)


def model_from_spec(spec: dict) -> MultimodalModel:
    """A fresh model from a run's ``model.json`` (what ``build_model`` needs, JSON-friendly).

    The spec contract (a JSON object; the trainer writes every key):

    - ``input_shapes``: {modality: [per-sample shape ints]}, in the model's modality order;
    - ``num_classes``: int;
    - ``fusion``: "late_sum" | "late_concat" | "early";
    - ``encoders``: {modality: kind}, as ``spec_encoders(fusion, dataset_defaults,
      config.encoders)`` gives it: under early fusion only the config's explicit ``encoders``
      (others get the linear stem), under late fusion the data set's defaults then the config's
      (others get mlp);
    - ``feature_dim``, ``hidden_dim``: ints (config);
    - ``encoder_options``: {modality: {option: value}} (config.encoder_options; {} for none);
    - ``fusion_trunk``: "mlp" | "maxout" (config.fusion_trunk);
    - ``head_hidden``: [width, ...] (config.head_hidden; [] for linear heads).

    An old run's spec (before the last three keys existed) is brought to this form first by
    ``msam_lab.runs.migrate.model_spec``; here a missing key of the three takes its default.
    """
    return build_model(
        {m: tuple(s) for m, s in spec["input_shapes"].items()},
        spec["num_classes"],
        spec["fusion"],
        spec["encoders"],
        spec["feature_dim"],
        spec["hidden_dim"],
        encoder_options=spec.get("encoder_options") or {},
        fusion_trunk=spec.get("fusion_trunk", "mlp"),
        head_hidden=spec.get("head_hidden") or (),
    )
