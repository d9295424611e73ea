"""Training methods, one interface: ``Method(model, config).step(inputs, labels) -> record``."""

from __future__ import annotations

from msam_lab.methods.agm import AGM
from msam_lab.methods.base import Method, Observation
from msam_lab.methods.cggm import CGGM
from msam_lab.methods.joint import Joint
from msam_lab.methods.masam import MASAM
from msam_lab.methods.mie import MIE
from msam_lab.methods.msam import MSAM
from msam_lab.methods.ogm_ge import OGMGE
from msam_lab.methods.reconboost import ReconBoost
from msam_lab.methods.sam import SAMMethod
from msam_lab.methods.unimodal import Unimodal
from msam_lab.registry import Registry, shown

METHODS: dict[str, type[Method]] = {
    "joint": Joint,
    "sam": SAMMethod,
    "msam": MSAM,
    "ogm_ge": OGMGE,
    "agm": AGM,
    "cggm": CGGM,
    "masam": MASAM,
    "reconboost": ReconBoost,
    "mie": MIE,
    "unimodal": Unimodal,
}
METHOD_NAMES = tuple(METHODS)  # the built-ins; method_names() adds the registered plug-ins


def _check_method_class(name: str, cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(
            f"method {name!r}: register a subclass of msam_lab.methods.Method (e.g. of Joint), got {shown(cls)}"
        )


# name -> Method subclass; a built-in's entry is its class, so registering that class again is a no-op
METHOD_REGISTRY = Registry("method", METHODS, check=_check_method_class)


def method_names() -> tuple[str, ...]:
    """Every method name: the built-ins, then the registered plug-ins (installed ones loaded first)."""
    return METHOD_REGISTRY.names()


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; a one-line ValueError listing the choices otherwise."""
    return METHOD_REGISTRY.get(name)


def register_method(name: str, cls: type[Method], *, replace: bool = False) -> None:
    """Make ``cls`` (a subclass of :class:`Method`) the training method ``name`` (config ``method=name``)."""
    METHOD_REGISTRY.register(name, cls, replace=replace)


def unregister_method(name: str) -> None:
    """Forget the plug-in ``name`` (a built-in it replaced comes back); unknown names are ignored."""
    METHOD_REGISTRY.unregister(name)


def validate_method_config(config) -> None:
    """Let the chosen method check its own fields (raises ConfigError)."""
    method_class(config.method).validate_config(config)


def build_method(model, config) -> Method:
    return method_class(config.method)(model, config)


__all__ = [
    "Method",
    "Observation",
    "METHODS",
    "METHOD_NAMES",
    "build_method",
    "validate_method_config",
    "method_names",
    "method_class",
    "register_method",
    "unregister_method",
    "METHOD_REGISTRY",
]
