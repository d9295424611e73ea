"""Named plug-ins: one :class:`Registry` per kind (dataset, encoder, method), and the installed entry points.

Each layer owns one ``Registry`` of its names (``datasets.DATASET_REGISTRY``,
``models.multimodal.ENCODER_REGISTRY``, ``methods.METHOD_REGISTRY``): the built-ins, fixed when the
layer is imported, and the plug-ins registered at run time, which may shadow a built-in. A plug-in
package declares, in its own pyproject.toml,

    [project.entry-points."msam_lab.plugins"]
    mine = "my_package:register"      # called with no arguments; or "my_package" (importing registers)

and registers its datasets, encoders and methods through ``msam_lab.plugins``. Every registry calls
:func:`load_plugins` before a lookup or listing, so an installed plug-in is there for the CLI,
sweeps, config validation and notebooks alike.

This module imports nothing of msam_lab: every layer may import it.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
import warnings
from typing import Callable

GROUP = "msam_lab.plugins"
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # what a registered name may be (config values, folder names)

_lock = threading.RLock()
_state = {"started": False, "done": False}
_loaded: dict[str, str] = {}  # entry point name -> "ok" or the one-line error it failed with


def load_plugins() -> dict[str, str]:
    """Import (and call, if callable) every ``msam_lab.plugins`` entry point; only the first call works.

    Returns {entry point name: "ok" | error}. A plug-in that fails is skipped with one warning,
    so a broken package never breaks msam_lab.
    """
    if _state["done"]:
        return dict(_loaded)
    with _lock:
        # "started", not "done": a plug-in's register() may itself look a name up (which calls us
        # again in this thread); it then sees the registries as loaded so far instead of recursing
        if _state["started"]:
            return dict(_loaded)
        _state["started"] = True
        try:
            seen = set()
            for ep in _group():
                if (ep.name, ep.value) in seen:  # the same package found twice on sys.path
                    continue
                seen.add((ep.name, ep.value))
                key = ep.name if ep.name not in _loaded else f"{ep.name} ({ep.value})"
                _loaded[key] = _load_one(ep)
        finally:
            _state["done"] = True
    return dict(_loaded)


def _group():
    try:
        return list(importlib.metadata.entry_points(group=GROUP))
    except Exception as err:  # noqa: BLE001 - unreadable metadata of some unrelated package
        warnings.warn(
            f"msam_lab: cannot list the {GROUP} entry points ({type(err).__name__}: {err}); no plug-ins loaded",
            RuntimeWarning,
            stacklevel=3,
        )
        return []


def _load_one(ep) -> str:
    try:
        obj = ep.load()
        if callable(obj):
            obj()
    except Exception as err:  # noqa: BLE001 - any failure of third-party code: warn and go on
        first = (str(err).splitlines() or [""])[0][:300]
        message = f"{type(err).__name__}: {first}" if first else type(err).__name__
        warnings.warn(
            f"msam_lab plug-in {ep.name!r} ({ep.value}) failed to load and is skipped: {message} "
            f"(fix or uninstall the package that declares it)",
            RuntimeWarning,
            stacklevel=4,
        )
        return message
    return "ok"


# -- shared by the three registries ------------------------------------------------------------


def describe(obj) -> str:
    """``package.module.name`` of a function or class, a string as it is (for messages)."""
    if isinstance(obj, str):
        return obj
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{getattr(obj, '__module__', '?')}.{name}" if name else shown(obj)


def check_name(kind: str, name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"a {kind} name must be a lower-case string of letters, digits, '_', '.' or '-' "
            f"starting with a letter or digit (e.g. 'my-{kind}'), got {name!r}"
        )
    return name


def is_new(kind: str, name: str, entry, existing, replace: bool) -> bool:
    """Whether to store ``entry`` under ``name``: False when ``existing`` is the same (a second
    registration is a no-op), True when there is none or ``replace``; otherwise a ValueError."""
    if existing is None or replace:
        return existing is None or existing != entry
    if existing == entry:
        return False
    raise ValueError(
        f"{kind} {name!r} is already registered to {describe(existing)}; choose another name "
        f"or pass replace=True to override it"
    )


def shown(obj, width: int = 80) -> str:
    """``repr(obj)`` on one short line (a tensor's repr spans several)."""
    text = " ".join(repr(obj).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def check_callable(kind: str, name: str, what: str, obj) -> None:
    if not callable(obj):
        raise ValueError(
            f"{kind} {name!r}: the {what} must be callable (a function or class), got {type(obj).__name__} {shown(obj)}"
        )


# -- the registry ---------------------------------------------------------------------------------


class Registry:
    """The names of one ``kind`` of thing: ``builtins`` (name -> entry) and the plug-ins registered since.

    An entry is whatever the owning layer dispatches on (a module path, a class, a factory, the
    kind's own name); ``label(name, entry)`` says what a built-in is in the "already registered to"
    message (default: the entry itself, so re-registering a built-in class is a no-op), and
    ``check(name, entry)`` refuses a bad entry with a one-line ValueError before it is stored.
    Listing and lookups load the installed entry points first (:func:`load_plugins`, once per process).

        >>> colors = Registry("color", {"red": "#f00"})
        >>> colors.register("teal", "#088")
        True
        >>> colors.names(), colors.get("teal")
        (('red', 'teal'), '#088')
    """

    def __init__(self, kind: str, builtins: dict, *, label: Callable | None = None, check: Callable | None = None):
        self.kind = kind
        self._builtins = dict(builtins)
        self._plugins: dict = {}  # a name here shadows the built-in of that name
        self._label, self._check = label, check

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {len(self._builtins)} built-in, {len(self._plugins)} plug-in)"

    @property
    def builtins(self) -> tuple[str, ...]:
        """The built-in names, in their order."""
        return tuple(self._builtins)

    def names(self) -> tuple[str, ...]:
        """Every name: the built-ins, then the registered plug-ins (installed ones loaded first)."""
        load_plugins()
        return self.builtins + tuple(n for n in self._plugins if n not in self._builtins)

    def plugin_names(self) -> tuple[str, ...]:
        """The names registered at run time, in their order (a shadowed built-in among them); loads nothing."""
        return tuple(self._plugins)

    def __contains__(self, name) -> bool:
        load_plugins()
        return name in self._plugins or name in self._builtins

    def is_plugin(self, name: str) -> bool:
        """Whether ``name`` is a registered plug-in (not, or no longer, the built-in)."""
        load_plugins()
        return name in self._plugins

    def get(self, name: str):
        """The entry of ``name``: the plug-in if one is registered, else the built-in; a one-line
        ValueError listing the choices for an unknown name."""
        load_plugins()
        if name in self._plugins:
            return self._plugins[name]
        if name in self._builtins:
            return self._builtins[name]
        raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")

    def check_name(self, name) -> str:
        """``name`` if it may be registered (lower-case letters, digits, ``_ . -``), else a one-line ValueError."""
        return check_name(self.kind, name)

    def register(self, name: str, entry, *, replace: bool = False) -> bool:
        """Make ``entry`` the ``name``; whether it was stored. The same entry again is a no-op (an entry
        point loaded twice); another under a taken name, a built-in's included, needs ``replace=True``."""
        self.check_name(name)
        if self._check is not None:
            self._check(name, entry)
        if not is_new(self.kind, name, entry, self._existing(name), replace):
            return False
        self._plugins[name] = entry
        return True

    def unregister(self, name: str) -> None:
        """Forget the plug-in ``name`` (a built-in it replaced comes back); unknown names are ignored."""
        self._plugins.pop(name, None)

    def _existing(self, name: str):
        if name in self._plugins:
            return self._plugins[name]
        if name in self._builtins:
            entry = self._builtins[name]
            return entry if self._label is None else self._label(name, entry)
        return None


__all__ = ["GROUP", "NAME", "Registry", "load_plugins", "check_name", "check_callable", "describe", "is_new", "shown"]
