"""The one configuration object of a training run: its fields, their types and ranges, and overrides.

Flat on purpose (nanoGPT style): every shared knob is a field here; dataset knobs go in ``data`` and
are checked by the dataset's own ``OPTIONS``; a baseline's own knobs (``agm_alpha``, ``modality``, ...)
belong to its method (an ``OPTIONS`` dataclass, msam_lab/methods/options.py) and keep their flat keys:
any key that is not a field here is held in ``method_options``. A value from the command line
(``--set key=value``) is parsed as YAML and must fit the field's type. Choices are ``Literal[...]``, so
this module imports nothing of msam_lab but its errors and YAML reader: ``parse`` checks what a config
says on its own, and ``msam_lab.training.setup.resolve`` then checks it against the registries
(datasets, encoders, methods and their options). ``to_dict`` gives the flat keys again, as config.json
holds them with its ``format_version``; msam_lab.runs.migrate reads the older formats.

Numbers are read as people write them (``msam_lab.yaml_text``): ``1e-5``, ``1E-5``, ``.5``, ``5.``,
``1_000``, ``-2e3`` and ``+1.5`` are numbers in a YAML file, a ``--set`` value and a flag. A string
that reads as a number under the same rule is accepted for an int or float field from any route
(a Python dict ``{"lr": "1e-5"}``, a quoted YAML ``lr: '1e-5'``), so one text gives one number
everywhere; an int field takes only integers written as such (``1e3`` is refused there). Booleans,
words (``nan``, ``inf``) and numbers beyond the float range stay refused. YAML files and ``--set``
values are limited in size and in alias expansion (``yaml_text.MAX_BYTES``, ``MAX_VALUES``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from msam_lab import yaml_text
from msam_lab.errors import ConfigError

# The choices of the shared fields. Lower layers read them from here (typing.get_args), so each list
# is written once.
Fusion = typing.Literal["late_sum", "late_concat", "early"]
FusionTrunk = typing.Literal["mlp", "maxout"]
Optimizer = typing.Literal["sgd", "adamw"]
LRSchedule = typing.Literal["none", "step", "cosine"]
ClipRule = typing.Literal["norm", "agm"]
DataPath = typing.Literal["auto", "memory", "stream"]
Precision = typing.Literal["fp32", "bf16", "fp16"]
MSAMVariant = typing.Literal["default", "unimodal", "params"]
ShareRule = typing.Literal["clip", "shift", "softmax", "loss"]
TieRule = typing.Literal["lowest", "previous"]
BNPolicy = typing.Literal["restore", "update"]
ShapleyValue = typing.Literal["accuracy", "loss"]
CoalitionFeatures = typing.Literal["eval", "batch"]
NanPolicy = typing.Literal["stop", "skip"]
SAMEpsilon = typing.Literal["local", "global"]
LoggerName = typing.Literal["tensorboard", "wandb"]


# The knobs: one aligned, commented block (nanoGPT's way), which ruff format leaves as written.
# fmt: off
@dataclass
class Config:
    # data
    dataset: str = "av-digits"
    data: dict = field(default_factory=dict)        # dataset options, e.g. {"audio_snr_db": -8}
    # model
    fusion: Fusion = "late_sum"                        # late_sum | late_concat | early
    encoders: dict = field(default_factory=dict)    # modality -> models.encoder_names() kind; default: the dataset's
    feature_dim: int = 64
    hidden_dim: int = 128
    encoder_options: dict = field(default_factory=dict)  # modality -> encoder keywords, e.g. {"text": {"dim": 768}}
    fusion_trunk: FusionTrunk = "mlp"  # early fusion's shared trunk: mlp | maxout (AGM's MaxOut-MLP)
    head_hidden: list = field(default_factory=list)  # hidden widths of the classifier after fusion ([100]: 1024-100-10)
    # optimisation
    method: str = "msam"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"                            # auto (CUDA when present) | cpu | cuda | cuda:N
    optimizer: Optimizer = "sgd"                          # sgd (momentum, weight_decay) | adamw (weight_decay)
    lr_schedule: LRSchedule = "none"                       # none | step | cosine: lr per epoch (msam_lab/schedules.py)
    lr_step: int = 30                               # step: epochs between decays (AGM: 70)
    lr_gamma: float = 0.1                           # step: decay factor
    lr_min: float = 0.0                             # cosine: the final lr
    warmup_epochs: int = 0                          # linear warm-up epochs before the schedule
    grad_clip: float = 0.0                          # max global gradient norm before each update (0: off)
    grad_clip_rule: ClipRule = "norm"  # norm: always | agm: only when an output-layer grad leaves ±clip
    # model selection (docs/runs.md)
    val_fraction: float = 0.1  # seeded hold-out of train when the dataset has no val split (0: none)
    # data path and precision (docs/paper_protocol.md)
    data_path: DataPath = "auto"  # auto (by size) | memory (device tensors) | stream (DataLoader)
    stream_above_mb: float = 1024.0                 # auto: stream a dataset larger than this
    num_workers: int = 2                            # stream: DataLoader worker processes
    precision: Precision = "fp32"                         # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)
    channels_last: bool = False                     # channels-last memory format for convolutions
    compile: bool = False                           # torch.compile the encoders and fusion
    # SAM / M-SAM
    rho: float = 0.05
    adaptive: bool = False                          # ASAM: scale ε elementwise by |θ|
    msam_variant: MSAMVariant = "default"                   # default | unimodal | params (DESIGN §2)
    share_rule: ShareRule = "clip"  # Shapley -> shares: clip | shift | softmax | loss (shapley.shares)
    share_temperature: float = 1.0                  # softmax / loss rules: T in softmax(x / T) (ours; > 0)
    msam_dominant: str = "shapley"                  # perturbed modality: shapley | fixed:<m> | random | alternate
    tie_rule: TieRule = "lowest"                        # dominant-modality ties, see shapley.dominant
    bn_policy: BNPolicy = "restore"                      # restore | update: BN running stats in the perturbed pass
    shapley_value: ShapleyValue = "accuracy"                 # accuracy | loss (value of a coalition)
    shapley_exact_max: int = 10                     # exact Shapley up to this many modalities
    shapley_permutations: int = 64                  # permutations when sampling
    shapley_batch: int = 0                          # coalitions on the first N samples of each shuffled batch (0: all)
    coalition_features: CoalitionFeatures = "eval"  # BatchNorm models' coalitions: eval (one more no-grad eval-mode
                                                    # encoder pass) | batch (the clean pass's features, detached)
    # records (docs/runs.md)
    checkpoint_every: int = 5                       # epochs between analysis checkpoints (0: first, last) + the best
    eval_batch_size: int = 128                      # chunks of the evaluation passes (small: cache-friendly on CPU)
    eval_every: int = 1                             # epochs between evaluations (epoch 0 and the last always)
    train_eval_samples: int = 512                   # seeded train subset for the train-side metrics and τ (0: all)
    sharpness_every: int = 0                        # λ_max, tr H per encoder/fusion at epochs 0, K, 2K.., last (0: off)
    sharpness_samples: int = 256                    # seeded subset of the train split they are measured on (0: all)
    sharpness_probes: int = 16                      # Hutchinson probes per block (trace_se falls as 1/sqrt)
    loggers: list = field(default_factory=list)     # trackers fed as the run is written: tensorboard | wandb
    # durability (docs/runs.md)
    flush_every: float = 1.0                        # seconds between appends of step rows + heartbeat (0: every step)
    resume_every: int = 0                           # resume checkpoint at every epoch end; N > 0: also every N steps
    nan_policy: NanPolicy = "stop"                        # stop | skip: what a non-finite loss or gradient does
    max_skipped_fraction: float = 0.5               # skip: fail above this share of skipped batches, warn above a
                                                    # quarter of it (both from the 10th batch; docs/runs.md)
    deterministic: bool = False                     # torch.use_deterministic_algorithms (bitwise resume on CPU)
    # data parallel (docs/scale.md): torchrun --nproc-per-node N -m msam_lab train | msam-lab train --nproc N
    per_device_batch: int = 0  # > 0: each rank's batch (global: N × ranks); 0: batch_size is global
    sam_epsilon: SAMEpsilon = "local"  # local: each rank's ε from its shard (DDP no_sync) | global: from all
    sync_bn: bool = False  # BatchNorm statistics of the global batch (SyncBatchNorm, CUDA only)
    dist_timeout_s: float = 300.0                   # seconds a collective waits for a silent rank before the run fails
    dist_debug: bool = False                        # check every step that all ranks pick the same dominant modality
    # a method's own options (``OPTIONS`` of msam_lab/methods/<name>.py, e.g. agm_alpha), by their flat
    # keys: parse keeps any key that is not a field above here, training.setup.resolve checks them
    # against the chosen method and fills its defaults (docs/methods.md)
    method_options: dict = field(default_factory=dict)
    # fmt: on

    def to_dict(self) -> dict:
        """The flat dict a run writes to config.json: the shared fields, the method's options by their
        flat keys (``agm_alpha``, ...) and the ``format_version`` of that file (msam_lab.runs.migrate)."""
        values = dataclasses.asdict(self)
        options = values.pop(METHOD_OPTIONS)
        return {**values, **options, FORMAT_KEY: FORMAT_VERSION}


# config.json's format: 1 (no key) held every baseline's option as a Config field; 2 holds the shared
# fields and the chosen method's options only. msam_lab.runs.migrate reads every older format.
FORMAT_KEY = "format_version"
FORMAT_VERSION = 2
METHOD_OPTIONS = "method_options"

MSAM_VARIANTS = typing.get_args(MSAMVariant)
NAN_POLICIES = typing.get_args(NanPolicy)
OPTIMIZERS = typing.get_args(Optimizer)
_LITERALS = {name for name, value in dict(globals()).items() if typing.get_origin(value) is typing.Literal}
_POSITIVE = (
    "epochs",
    "batch_size",
    "feature_dim",
    "hidden_dim",
    "eval_batch_size",
    "shapley_exact_max",
    "shapley_permutations",
    "eval_every",
    "lr_step",
    "stream_above_mb",
    "share_temperature",
    "dist_timeout_s",
)
_NON_NEGATIVE = (
    "rho",
    "lr",
    "momentum",
    "weight_decay",
    "checkpoint_every",
    "train_eval_samples",
    "flush_every",
    "resume_every",
    "shapley_batch",
    "lr_gamma",
    "lr_min",
    "warmup_epochs",
    "grad_clip",
    "num_workers",
    "per_device_batch",
)


def field_names() -> tuple[str, ...]:
    """The shared fields, by the keys a config file, a dict and ``--set`` name them (not ``method_options``,
    whose entries are keys of their own)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.name != METHOD_OPTIONS)


def shown(v) -> str:
    """A bounded repr: an error stays one short line even for a 400-digit int, a huge list or a
    YAML alias bomb (whose full repr grows exponentially)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63:
        return f"an integer of {v.bit_length()} bits"
    return reprlib.repr(v)


def closest(word, known: typing.Iterable[str]) -> str | None:
    """The known name closest to a mistyped ``word`` (difflib; a name that differs only in case), else None."""
    if not isinstance(word, str):
        return None
    known = [k for k in known if isinstance(k, str)]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return close[0] if close else next((k for k in known if k.lower() == word.lower()), None)


def did_you_mean(word, known: typing.Iterable[str]) -> str:
    """``did you mean 'rho'?`` for the known name closest to ``word``, else ``""`` (messages stay one line)."""
    match = closest(word, known)
    return f"did you mean {match!r}?" if match is not None else ""


def choices(name: str) -> tuple:
    """The allowed values of a ``Literal`` field of Config, () for any other field."""
    hint = _hints().get(name)
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


_HINTS: dict = {}


def _hints() -> dict:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Config))
    return _HINTS


def _annotation_text(hint) -> str:
    """A resolved type hint (``float``, ``float | None``, ``Literal[...]``) as ``_check_type`` reads it."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return hint
    if type(None) in args and len(args) == 2:
        return f"{_annotation_text(next(a for a in args if a is not type(None)))} | None"
    return hint.__name__


def check_type(name: str, value, hint):
    """``value`` of the option ``name`` checked against its type hint (a resolved hint, as
    ``typing.get_type_hints`` gives it: str, int, float, bool, dict, list, ``X | None``, ``Literal[...]``);
    numbers written as text become numbers, ints become floats for a float. Raises ConfigError.

    The method options (msam_lab/methods/options.py) are checked by it, with the shared fields' rules."""
    return _check_type(name, value, _annotation_text(hint))


def _check_type(name: str, value, annotation):
    """``annotation`` is the field's type as written: str, int, float, bool, dict, list, 'X | None',
    the name of one of the Literal choices above, or a Literal itself."""
    if typing.get_origin(annotation) is typing.Literal:
        allowed = typing.get_args(annotation)
    else:
        allowed = typing.get_args(globals()[annotation]) if annotation in _LITERALS else ()
    if allowed:
        if value not in allowed or not isinstance(value, str):
            hint = did_you_mean(value, allowed)
            hint = f"; {hint}" if hint else ""
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}{hint}")
        return value
    base, _, optional = annotation.partition(" | ")
    if optional == "None" and value is None:
        return value
    kind = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}[base]
    annotation = base
    if kind in (int, float) and isinstance(value, str):
        # "1e-5" from a dict or a quoted YAML value: the number the same text is in YAML or --set
        number = yaml_text.read_number(value)
        if isinstance(number, int) or kind is float and isinstance(number, float):
            if kind is float and isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"config field {name!r} must be a finite float, got {shown(value)}")
            value = number
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an int beyond float range would escape as a traceback
            raise ConfigError(f"config field {name!r} must be a finite float, got {shown(value)}") from None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"config field {name!r} must be {annotation}, got {shown(value)}")
    if kind is float and not math.isfinite(value):
        # NaN passes every `< 0` / `<= 0` range check below and inf is no usable setting
        # (lr, rho, clip ...): reject both here, once, for every float field.
        raise ConfigError(f"config field {name!r} must be a finite float, got {value!r}")
    if kind is int and not -(2**63) <= value < 2**63:
        # ints reach torch / numpy (sizes, counts), which overflow past int64
        raise ConfigError(f"config field {name!r} must fit in 64 bits, got {shown(value)}")
    if kind in (dict, list):
        _check_expansion(value, f"config field {name!r}")
        # The run writes config.json and resume/compare read it back: plain JSON data only.
        # A YAML set, date or self-referencing list (&a [*a]) passed and crashed the run writer.
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError) as err:
            raise ConfigError(
                f"config field {name!r} must hold plain values (numbers, strings, lists, mappings): {str(err)[:200]}"
            ) from None
    return value


def _check_expansion(value, what: str) -> None:
    """Shared lists / dicts (YAML aliases, or a Python value built so) count once per reference, as
    json.dumps writes them: a 600-byte alias bomb expanded to gigabytes there."""
    if yaml_text.expanded_size(value) > yaml_text.MAX_VALUES:
        raise ConfigError(
            f"{what} holds more than {yaml_text.MAX_VALUES:,} values once its shared parts are "
            "written out (a YAML alias bomb?); write the values out"
        )


def check_fields(cfg: Config) -> Config:
    """Check every field on its own terms: type, choices, range. Raises ConfigError.

    The registries (dataset, encoder and method names, dataset options, a method's own checks) are
    checked a layer up, by ``msam_lab.training.setup.resolve``."""
    for f in dataclasses.fields(Config):
        setattr(cfg, f.name, _check_type(f.name, getattr(cfg, f.name), f.type))
    bad = [k for k in cfg.method_options if not isinstance(k, str) or k in field_names() or k == FORMAT_KEY]
    if bad:  # a shared field here would be written twice to config.json
        raise ConfigError(f"method_options holds a method's own options by name, not {shown(bad[0])}")
    for name in _POSITIVE:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    # fullmatch, not startswith("cuda"): "cudax" or "cuda:abc" passed and then made torch.device
    # raise a RuntimeError traceback at train time on a CUDA machine
    if not (cfg.device in ("auto", "cpu") or re.fullmatch(r"cuda(:[0-9]+)?", cfg.device)):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if not 0 <= cfg.seed < 2**32:  # numpy's seed range: np.random.seed raises ValueError in train()
        raise ConfigError(f"seed must be in 0..{2**32 - 1}, got {cfg.seed}")
    # Option names must be strings: mixed key types made resolve_options' sorted() raise
    # TypeError, and a non-str encoder kind failed only when the model was built.
    for head in ("data", "encoders"):
        bad = [k for k in getattr(cfg, head) if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{head} keys must be names (strings), got {reprlib.repr(bad[0])}")
    if not 0 <= cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if not 0 <= cfg.max_skipped_fraction <= 1:
        raise ConfigError(
            f"max_skipped_fraction must be in [0, 1] (a share of the batches), got {cfg.max_skipped_fraction}"
        )
    # sharpness over training (msam_lab/sharpness_timeline.py), measured at evaluated epoch ends
    for name, low in (("sharpness_every", 0), ("sharpness_samples", 0), ("sharpness_probes", 1)):
        if getattr(cfg, name) < low:
            raise ConfigError(f"{name} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.sharpness_every and cfg.sharpness_every % cfg.eval_every:
        raise ConfigError(
            f"sharpness_every ({cfg.sharpness_every}) must be a multiple of eval_every "
            f"({cfg.eval_every}): sharpness is measured at evaluated epochs"
        )
    if cfg.sharpness_every and cfg.compile:
        raise ConfigError(
            "sharpness_every needs compile=false (a compiled model has no double backward); "
            "or measure after training: msam-lab sharpness RUN --timeline"
        )
    check_loggers(cfg.loggers)
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs}) must be below epochs ({cfg.epochs})")
    for modality, options in cfg.encoder_options.items():
        if not isinstance(modality, str) or not isinstance(options, dict):
            raise ConfigError(
                f"encoder_options maps a modality to its encoder's keywords, e.g. "
                f"{{text: {{dim: 768, heads: 4, layers: 8}}}}; got {shown({modality: options})}"
            )
    return cfg


def check_loggers(names) -> list[str]:
    """``loggers``: distinct tracker names (``LoggerName``); a ConfigError that suggests the closest name."""
    allowed = typing.get_args(LoggerName)
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"loggers must be a list of names, e.g. [tensorboard]; got {shown(names)}")
    for name in names:
        if not isinstance(name, str) or name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown logger {shown(name)}; {hint}loggers are {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"loggers names a logger twice: {shown(list(names))}")
    return list(names)


def parse_value(text: str, what: str = "a --set value"):
    """A command-line value as YAML: 0.1, 1e-5 -> float, true -> bool, [1, 2] -> list, abc -> str.

    ConfigError above the size and alias limits (``yaml_text``)."""
    try:
        return yaml_text.load(text, what)
    except yaml_text.TooLarge as err:
        raise ConfigError(str(err)) from None
    # ValueError: YAML-valid scalars a constructor rejects (2001-13-01, !!int x);
    # RecursionError: deeply nested [[[[...; both read as a plain string like bad YAML.
    except (yaml.YAMLError, ValueError, RecursionError):
        return text


def apply_overrides(cfg: Config, assignments: typing.Iterable[str]) -> Config:
    """Apply ``key=value`` strings; ``data.key=value`` sets a dataset option; a key that is no shared
    field is a method option (``agm_alpha=2``), checked against the method by ``training.setup.resolve``."""
    names = field_names()
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        value = parse_value(text, f"the --set value of {key}")
        head, dot, sub = key.partition(".")
        if dot and head in ("data", "encoders"):
            if not isinstance(getattr(cfg, head), dict):  # e.g. data: 5 in the config file
                raise ConfigError(
                    f"cannot set {key!r}: config field {head!r} must be a mapping, "
                    f"got {type(getattr(cfg, head)).__name__}"
                )
            getattr(cfg, head)[sub] = value
        elif key in names and not dot:
            setattr(cfg, key, value)
        elif _OPTION_KEY.fullmatch(key):
            if not isinstance(cfg.method_options, dict):
                raise ConfigError(
                    f"cannot set {key!r}: method_options must be a mapping, got {type(cfg.method_options).__name__}"
                )
            cfg.method_options[key] = value
        else:
            raise ConfigError(_unknown_key(key, names))
    return cfg


_OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a method option's name, as its dataclass field


def _unknown_key(key, names) -> str:
    """One line for a key that is no config field: the closest field first (when one is close), then them all."""
    head, dot, sub = key.partition(".") if isinstance(key, str) else (key, "", "")
    parent = closest(head, ("data", "encoders")) if dot else None  # dat.root -> data.root
    hint = f"did you mean '{parent}.{sub}'?" if parent else did_you_mean(key, names)
    return (
        f"unknown config key {shown(key)}; {hint + ' ' if hint else ''}known keys: {', '.join(names)} "
        "(dataset options as data.NAME, a method's options by their names)"
    )


def from_dict(values: dict) -> Config:
    """A Config from flat keys (a config file, a dict, config.json): the shared fields, and every other
    name as a method option (``training.setup.resolve`` checks them against the method)."""
    names = set(field_names())
    values = dict(values)
    version = values.pop(FORMAT_KEY, FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{FORMAT_KEY} {shown(version)} is not this msam_lab's config format ({FORMAT_VERSION}); "
            "a stored run's config.json is read by msam_lab.runs.migrate.stored_config"
        )
    shared = {k: v for k, v in values.items() if k in names}
    options = {k: v for k, v in values.items() if k not in names}
    bad = sorted((k for k in options if not (isinstance(k, str) and _OPTION_KEY.fullmatch(k))), key=str)
    if bad:  # key=str: YAML keys may be ints, dates, None
        raise ConfigError(_unknown_key(bad[0], sorted(names)))
    if METHOD_OPTIONS in options:  # nested form, as dataclasses.asdict(Config) writes it
        nested = options.pop(METHOD_OPTIONS)
        if not isinstance(nested, dict):
            raise ConfigError(f"method_options must be a mapping of option names, got {shown(nested)}")
        options = {**nested, **options}
    return Config(**shared, method_options=options)


def load_config_file(path) -> Config:
    """A YAML (or JSON) file of config fields."""
    path = Path(path)
    try:
        # bytes, not read_text(): yaml detects the encoding and reports undecodable
        # input as a YAMLError, where read_text() raised UnicodeDecodeError (a traceback).
        # One byte over the limit is enough to refuse, whatever the file's size (/dev/zero).
        with open(path, "rb") as f:
            data = f.read(yaml_text.MAX_BYTES + 1)
        values = yaml_text.load(data, f"config file {path}")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except yaml_text.TooLarge as err:
        raise ConfigError(str(err)) from None
    # ValueError: a scalar a YAML constructor rejects (a: 2001-13-01); RecursionError: [[[[...
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config fields, got {type(values).__name__}")
    return from_dict(values)


def parse(config=None, overrides: typing.Iterable[str] = ()) -> Config:
    """Config from a Config, a dict, a YAML path, or None (defaults); then overrides; each field checked
    on its own (``check_fields``). ``msam_lab.training.setup.resolve`` adds the registry checks."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = dataclasses.replace(
            config, data=dict(config.data), encoders=dict(config.encoders), method_options=dict(config.method_options)
        )
    elif isinstance(config, dict):
        _check_expansion(config, "a config dict")
        try:  # a deep copy that also proves the values are plain JSON
            plain = json.loads(json.dumps(config))
        except (TypeError, ValueError, RecursionError) as err:
            raise ConfigError(
                f"a config dict must hold plain values (numbers, strings, lists, dicts): "
                f"{str(err).splitlines()[0][:200]}"
            ) from None
        cfg = from_dict(plain)
    else:
        cfg = load_config_file(config)
    return check_fields(apply_overrides(cfg, overrides))
