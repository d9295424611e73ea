"""A config a run can train: ``config.parse``, then every check that needs the registries.

``msam_lab.config`` checks what a config says on its own (types, choices, ranges); this module adds what
only the layers above it know: the dataset, encoder and method names (registered and installed plug-ins
included), the dataset's options, the classifier head, and the chosen method's options (its ``OPTIONS``
dataclass: flat keys such as ``agm_alpha`` checked by type, defaults filled) and own checks.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
import typing

from msam_lab import config as config_mod
from msam_lab.config import Config
from msam_lab.datasets import dataset_names, resolve_options
from msam_lab.errors import ConfigError
from msam_lab.methods import method_class, method_names, validate_method_config
from msam_lab.methods import options as method_options
from msam_lab.models.multimodal import check_head_hidden, encoder_names
from msam_lab.runs import migrate


def check_registries(cfg: Config) -> Config:
    """Check ``cfg`` against the live registries and resolve its dataset options. Raises ConfigError."""
    datasets, methods, encoders = dataset_names(), method_names(), encoder_names()
    if cfg.dataset not in datasets:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(datasets)}")
    if cfg.method not in methods:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of: {', '.join(methods)}")
    for modality, kind in cfg.encoders.items():
        if not isinstance(kind, str) or kind not in encoders:
            raise ConfigError(
                f"encoders.{modality} must be one of {', '.join(encoders)}, got "
                f"{reprlib.repr(kind)} (set it with --set encoders.MODALITY=KIND)"
            )
    try:
        check_head_hidden(cfg.head_hidden)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        cfg.data = resolve_options(cfg.dataset, cfg.data)
    except ValueError as err:
        raise ConfigError(f"{err} (set them with --set data.NAME=VALUE)") from None
    cfg.method_options = resolve_method_options(cfg.method, cfg.method_options)
    validate_method_config(cfg)
    return cfg


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
    """8 hex digits identifying a resolved config (a Config, dict, YAML path or None): the notebooks and
    the rivals study name a run folder by it, so a changed setting trains a new run. Hashed in config.json's
    first format (every baseline option, no format_version), so folders named before keep their names."""
    blob = json.dumps(migrate.as_format_1(resolve(config).to_dict()), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]
