"""Installed plug-ins: import every entry point of the ``msam_lab.plugins`` group, once per process.

A plug-in package declares, in its own pyproject.toml,

    [project.entry-points."msam_lab.plugins"]
    mine = "my_package:register"      # called with no arguments; or "my_package" (importing registers)

and registers its datasets, encoders and methods through ``msam_lab.plugins``. The registries
(datasets, models, methods) call :func:`load_plugins` before every lookup or listing, so an
installed plug-in is there for the CLI, sweeps, config validation and notebooks alike.

This module imports nothing of msam_lab: every layer may import it.
"""
from __future__ import annotations

import importlib.metadata
import re
import threading
import warnings

GROUP = "msam_lab.plugins"
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")    # what a registered name may be (config values, folder names)

_lock = threading.RLock()
_state = {"started": False, "done": False}
_loaded: dict[str, str] = {}     # entry point name -> "ok" or the one-line error it failed with


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
                if (ep.name, ep.value) in seen:      # the same package found twice on sys.path
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
        warnings.warn(f"msam_lab: cannot list the {GROUP} entry points ({type(err).__name__}: {err}); "
                      "no plug-ins loaded", RuntimeWarning, stacklevel=3)
        return []


def _load_one(ep) -> str:
    try:
        obj = ep.load()
        if callable(obj):
            obj()
    except Exception as err:  # noqa: BLE001 - any failure of third-party code: warn and go on
        first = (str(err).splitlines() or [""])[0][:300]
        message = f"{type(err).__name__}: {first}" if first else type(err).__name__
        warnings.warn(f"msam_lab plug-in {ep.name!r} ({ep.value}) failed to load and is skipped: {message} "
                      f"(fix or uninstall the package that declares it)", RuntimeWarning, stacklevel=4)
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
        raise ValueError(f"a {kind} name must be a lower-case string of letters, digits, '_', '.' or '-' "
                         f"starting with a letter or digit (e.g. 'my-{kind}'), got {name!r}")
    return name


def is_new(kind: str, name: str, entry, existing, replace: bool) -> bool:
    """Whether to store ``entry`` under ``name``: False when ``existing`` is the same (a second
    registration is a no-op), True when there is none or ``replace``; otherwise a ValueError."""
    if existing is None or replace:
        return existing is None or existing != entry
    if existing == entry:
        return False
    raise ValueError(f"{kind} {name!r} is already registered to {describe(existing)}; choose another name "
                     f"or pass replace=True to override it")


def shown(obj, width: int = 80) -> str:
    """``repr(obj)`` on one short line (a tensor's repr spans several)."""
    text = " ".join(repr(obj).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def check_callable(kind: str, name: str, what: str, obj) -> None:
    if not callable(obj):
        raise ValueError(f"{kind} {name!r}: the {what} must be callable (a function or class), "
                         f"got {type(obj).__name__} {shown(obj)}")


__all__ = ["GROUP", "NAME", "load_plugins", "check_name", "check_callable", "describe", "is_new", "shown"]
