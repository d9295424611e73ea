"""A config a run can train: ``config.parse``, then every check that needs the registries.

``msam_lab.config`` checks what a config says on its own (types, choices, ranges); this module adds what
only the layers above it know: the dataset, encoder and method names (registered and installed plug-ins
included), the dataset's options, the classifier head, and the chosen method's options (its ``OPTIONS``
dataclass: flat keys such as ``agm_alpha`` checked by type, defaults filled) and own checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import reprlib
import typing

from msam_lab import config as config_mod
from msam_lab.config import Config
from msam_lab.datasets import dataset_names, dataset_options, resolve_options
from msam_lab.errors import ConfigError
from msam_lab.methods import method_class, method_names, validate_method_config
from msam_lab.methods import options as method_options
from msam_lab.models.multimodal import check_head_hidden, encoder_names


def check_registries(cfg: Config) -> Config:
    """Check ``cfg`` against the live registries and resolve its dataset options. Raises ConfigError."""
    datasets, methods, encoders = dataset_names(), method_names(), encoder_names()
    if cfg.dataset not in datasets:
        raise ConfigError(
            f"unknown dataset {cfg.dataset!r}; {_hint(cfg.dataset, datasets)}choose one of: {', '.join(datasets)}"
        )
    if cfg.method not in methods:
        raise ConfigError(
            f"unknown method {cfg.method!r}; {_hint(cfg.method, methods)}choose one of: {', '.join(methods)}"
        )
    for modality, kind in cfg.encoders.items():
        if not isinstance(kind, str) or kind not in encoders:
            raise ConfigError(
                f"encoders.{modality} must be one of {', '.join(encoders)}, got "
                f"{reprlib.repr(kind)}; {_hint(kind, encoders)}(set it with --set encoders.MODALITY=KIND)"
            )
    try:
        check_head_hidden(cfg.head_hidden)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    options = dataset_options(cfg.dataset)
    for key in sorted((k for k in cfg.data if k not in options), key=str)[:1]:
        if _hint(key, options):  # else resolve_options says it, without a guess
            raise ConfigError(
                f"dataset {cfg.dataset!r} has no option {key!r}; {_hint(key, options)}its options are: "
                f"{', '.join(options)} (set them with --set data.NAME=VALUE)"
            )
    try:
        cfg.data = resolve_options(cfg.dataset, cfg.data)
    except ValueError as err:
        raise ConfigError(f"{err} (set them with --set data.NAME=VALUE)") from None
    cfg.method_options = resolve_method_options(cfg.method, cfg.method_options)
    validate_method_config(cfg)
    return cfg


def _hint(word, known) -> str:
    """``did you mean 'x'? `` (with its trailing space) for a mistyped name, else ``""``."""
    hint = config_mod.did_you_mean(word, known)
    return f"{hint} " if hint else ""


def resolve_method_options(method: str, values: dict) -> dict:
    """The complete options of ``method`` from flat ``values``: each checked against the method's
    ``OPTIONS`` dataclass, defaults filled; another method's options dropped; any other key a ConfigError."""
    others = [
        name
        for other in method_names()
        if other != method
        for name in _option_names(method_options.options_class(method_class(other)))
    ]
    return method_options.resolve(
        method, method_options.options_class(method_class(method)), values, others, config_mod.field_names()
    )


def _option_names(options_cls) -> tuple[str, ...]:
    return () if options_cls is None else options_cls.names()


def resolve(config=None, overrides: typing.Iterable[str] = ()) -> Config:
    """Config from a Config, a dict, a YAML path, or None (defaults); then ``key=value`` overrides; then
    every check. Raises ConfigError with a message that names the fix."""
    return check_registries(config_mod.parse(config, overrides))


def config_hash(config) -> str:
    """8 hex digits identifying a resolved config (a Config, dict, YAML path or None): the notebooks and the
    rivals study name a run folder by it, so a changed setting trains a new run.

    Only the values that differ from their defaults are hashed (shared fields, the chosen method's options,
    dataset options): a field or dataset option added later, at its default, renames no folder."""
    cfg = resolve(config)
    hashed = {k: v for k, v in _defaults_removed(cfg).items()}
    blob = json.dumps(hashed, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _defaults_removed(cfg: Config) -> dict:
    shared = Config().to_dict()
    values = {k: v for k, v in cfg.to_dict().items() if k not in shared or v != shared[k]}
    values.pop(config_mod.FORMAT_KEY, None)
    options_cls = method_options.options_class(method_class(cfg.method))
    if options_cls is not None:
        defaults = dataclasses.asdict(options_cls())
        values = {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}
    data_defaults = dataset_options(cfg.dataset)
    data = {k: v for k, v in cfg.data.items() if k not in data_defaults or v != data_defaults[k]}
    if data:
        values["data"] = data
    else:
        values.pop("data", None)
    return values
