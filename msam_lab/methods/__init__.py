"""Training methods, one interface: ``Method(model, config).step(inputs, labels) -> record``."""
from __future__ import annotations

from .agm import AGM
from .base import Method, Observation
from .cggm import CGGM
from .joint import Joint
from .msam import MSAM
from .ogm_ge import OGMGE
from .reconboost import ReconBoost
from .sam import SAMMethod
from .unimodal import Unimodal

METHODS: dict[str, type[Method]] = {
    "joint": Joint,
    "sam": SAMMethod,
    "msam": MSAM,
    "ogm_ge": OGMGE,
    "agm": AGM,
    "cggm": CGGM,
    "reconboost": ReconBoost,
    "unimodal": Unimodal,
}
METHOD_NAMES = tuple(METHODS)


def validate_method_config(config) -> None:
    """Let the chosen method check its own fields (raises ConfigError)."""
    METHODS[config.method].validate_config(config)


def build_method(model, config) -> Method:
    return METHODS[config.method](model, config)


__all__ = ["Method", "Observation", "METHODS", "METHOD_NAMES", "build_method", "validate_method_config"]
