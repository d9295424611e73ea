"""Training methods, one interface: ``Method(model, config).step(inputs, labels) -> record``."""
from __future__ import annotations

from msam_lab.registry import check_name, is_new, load_plugins, shown
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
METHOD_NAMES = tuple(METHODS)     # the built-ins; method_names() adds the registered plug-ins

_PLUGINS: dict[str, type[Method]] = {}      # registered plug-ins; a name here shadows a built-in


def method_names() -> tuple[str, ...]:
    """Every method name: the built-ins, then the registered plug-ins (installed ones loaded first)."""
    load_plugins()
    return METHOD_NAMES + tuple(n for n in _PLUGINS if n not in METHODS)


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; a one-line ValueError listing the choices otherwise."""
    load_plugins()
    cls = _PLUGINS.get(name) or METHODS.get(name)
    if cls is None:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return cls


def register_method(name: str, cls: type[Method], *, replace: bool = False) -> None:
    """Make ``cls`` (a subclass of :class:`Method`) the training method ``name`` (config ``method=name``)."""
    check_name("method", name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"method {name!r}: register a subclass of msam_lab.methods.Method (e.g. of Joint), "
                         f"got {shown(cls)}")
    existing = _PLUGINS.get(name) or METHODS.get(name)
    if is_new("method", name, cls, existing, replace):
        _PLUGINS[name] = cls


def unregister_method(name: str) -> None:
    """Forget the plug-in ``name`` (a built-in it replaced comes back); unknown names are ignored."""
    _PLUGINS.pop(name, None)


def validate_method_config(config) -> None:
    """Let the chosen method check its own fields (raises ConfigError)."""
    method_class(config.method).validate_config(config)


def build_method(model, config) -> Method:
    return method_class(config.method)(model, config)


__all__ = ["Method", "Observation", "METHODS", "METHOD_NAMES", "build_method", "validate_method_config",
           "method_names", "method_class", "register_method", "unregister_method"]
