"""A method's own options: a dataclass beside the method, as a dataset's ``OPTIONS`` sit beside its loader.

A method class names its options with ``OPTIONS = AGMOptions`` (a subclass of :class:`MethodOptions`).
Their fields keep the flat names configs have always used (``agm_alpha``, ``modality``...), so
``--set agm_alpha=2``, ``{"method": "agm", "agm_alpha": 2}``, the paper YAML files and the config.json
of old runs read unchanged. ``msam_lab.config`` keeps those keys in ``Config.method_options`` without
knowing them; ``msam_lab.training.setup.resolve`` checks them here against the chosen method
(:func:`resolve`) and stores its complete options; the method reads them as ``self.options``.
"""

from __future__ import annotations

import dataclasses
import typing

from msam_lab.config import Config, ConfigError, check_type, did_you_mean


@dataclasses.dataclass
class MethodOptions:
    """Base of a method's options dataclass: fields with defaults, types as ``Config``'s fields have."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict:
        return dataclasses.asdict(cls())

    @classmethod
    def of(cls, config: Config):
        """This method's options in ``config`` (a resolved config holds them all; defaults for any missing)."""
        values = config.method_options
        return cls(**{name: values[name] for name in cls.names() if name in values})


def options_class(method_cls) -> type[MethodOptions] | None:
    """The options dataclass of a method class, None for a method without options (joint, sam, msam)."""
    return method_cls.OPTIONS


def resolve(
    method: str,
    options_cls: type[MethodOptions] | None,
    values: dict,
    others: typing.Iterable[str],
    shared: typing.Iterable[str],
) -> dict:
    """``values`` (flat keys) checked against ``options_cls``: type and choices per field, defaults filled.

    Keys of ``others`` (the options of the other methods) are dropped: a base config may set every
    rival's options, as one Config held them all before; any other key is a ConfigError naming the
    known keys (a typo). A method's ranges are its ``validate_config``'s."""
    own = options_cls.names() if options_cls is not None else ()
    others = set(others)
    unknown = sorted((k for k in values if k not in own and k not in others), key=str)
    if unknown:
        mine = f"; {method}'s options: {', '.join(own)}" if own else f" ({method} has no options of its own)"
        hint = did_you_mean(unknown[0], [*shared, *own])  # --set rh0=0.1 reads as a method option
        hint = f"{hint} " if hint else ""
        raise ConfigError(f"unknown config key {unknown[0]!r}; {hint}known keys: {', '.join(shared)}{mine}")
    if options_cls is None:
        return {}
    hints = typing.get_type_hints(options_cls)
    checked = {k: check_type(k, values[k], hints[k]) for k in own if k in values}
    return {**options_cls.defaults(), **checked}
