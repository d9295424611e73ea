"""msam_lab.registry.Registry on its own: built-ins, plug-ins that shadow them, validation, entry points.

Each test builds a fresh Registry of a made-up kind, so nothing here touches the datasets, encoders
or methods registries (tests/test_plugins.py checks those through the public functions).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from msam_lab import registry
from msam_lab.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def red():
    return "red"


def blue():
    return "blue"


def teal():
    return "teal"


def colors(**kwargs) -> Registry:
    return Registry("color", {"red": red, "blue": blue}, **kwargs)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_register_adds_a_name_after_the_builtins():
    reg = colors()
    assert reg.names() == ("red", "blue") and reg.plugin_names() == ()
    assert reg.register("teal", teal) is True
    assert reg.names() == ("red", "blue", "teal") and reg.builtins == ("red", "blue")
    assert reg.get("teal") is teal and reg.get("red") is red
    assert reg.is_plugin("teal") and not reg.is_plugin("red")
    assert "teal" in reg and "green" not in reg
    assert reg.register("teal", teal) is False  # the same entry again (an entry point loaded twice): a no-op
    assert reg.register("red", red) is False  # a built-in's own entry: a no-op too
    assert reg.names() == ("red", "blue", "teal") and reg.plugin_names() == ("teal",)


def test_a_taken_name_is_refused_unless_replace():
    reg = colors()
    reg.register("teal", teal)
    message = one_line_error(reg.register, "teal", blue)
    assert message == (
        f"color 'teal' is already registered to {__name__}.teal; choose another name "
        "or pass replace=True to override it"
    )
    assert "already registered to tests.test_registry.red" in one_line_error(reg.register, "red", teal)
    assert reg.get("teal") is teal and reg.get("red") is red  # a refused registration changes nothing
    assert reg.register("teal", blue, replace=True) is True
    assert reg.get("teal") is blue and reg.names() == ("red", "blue", "teal")


def test_shadowing_a_builtin_and_unregister_restores_it():
    reg = colors()
    assert reg.register("red", teal, replace=True) is True
    assert reg.get("red") is teal and reg.is_plugin("red")
    assert reg.names() == ("red", "blue")  # listed once, in the built-in's place
    reg.unregister("red")
    assert reg.get("red") is red and not reg.is_plugin("red") and reg.plugin_names() == ()
    reg.unregister("red")  # nothing registered under it: ignored,
    reg.unregister("never-there")  # as is an unknown name
    assert reg.get("red") is red and reg.names() == ("red", "blue")


def test_unknown_name_lists_the_choices_plugins_included():
    reg = colors()
    reg.register("teal", teal)
    assert one_line_error(reg.get, "green") == "unknown color 'green'; choose one of: red, blue, teal"
    reg.unregister("teal")
    assert one_line_error(reg.get, "teal") == "unknown color 'teal'; choose one of: red, blue"


def test_names_are_checked_before_anything_is_stored():
    reg = colors()
    for bad in ("", "Teal", "my color", "-x", "_x", 3, None, ("teal",)):
        assert "a color name must be a lower-case string" in one_line_error(reg.register, bad, teal)
    for good in ("teal", "t3", "my-color", "a.b_c", "0x"):
        assert reg.check_name(good) == good
    assert reg.plugin_names() == ()


def test_check_and_label_hooks():
    seen = []

    def only_functions(name, entry):
        seen.append(name)
        if not callable(entry):
            raise ValueError(f"color {name!r}: register a function, got {entry!r}")

    reg = Registry("color", {"red": "#f00"}, check=only_functions, label=lambda name, hexa: f"the built-in {hexa}")
    assert one_line_error(reg.register, "teal", "#088") == "color 'teal': register a function, got '#088'"
    assert "teal" not in reg and seen == ["teal"]
    assert one_line_error(reg.register, "Bad", teal).startswith("a color name") and seen == ["teal"]  # name first
    # the label describes the built-in in the message; the entry itself stays what get() returns
    assert "color 'red' is already registered to the built-in #f00;" in one_line_error(reg.register, "red", teal)
    assert reg.get("red") == "#f00"
    reg.register("red", teal, replace=True)
    assert reg.get("red") is teal


def test_entry_points_load_once_before_the_first_listing(monkeypatch):
    reg = colors()
    loads = []

    class EntryPoint:  # the part of importlib.metadata.EntryPoint used
        name, value = "palette", "palette_pkg:register"

        def load(self):
            loads.append(self.value)
            return lambda: reg.register("teal", teal)

    monkeypatch.setattr(registry, "_group", lambda: [EntryPoint(), EntryPoint()])  # found twice on sys.path
    monkeypatch.setattr(registry, "_state", {"started": False, "done": False})
    monkeypatch.setattr(registry, "_loaded", {})
    assert reg.plugin_names() == ()  # plugin_names() loads nothing
    assert reg.names() == ("red", "blue", "teal")  # the first listing loaded the entry point
    assert reg.get("teal") is teal and reg.names() == ("red", "blue", "teal")
    assert loads == ["palette_pkg:register"] and registry.load_plugins() == {"palette": "ok"}


def test_registry_imports_nothing_heavy():
    """The bottom layer: no torch, numpy or pandas, and of msam_lab only the package and msam_lab.errors."""
    heavy = ("torch", "numpy", "pandas")
    code = (
        "import sys, msam_lab.registry; print(*sorted({m.split('.')[0] if m.startswith(%r) else m "
        "for m in sys.modules if m.startswith(%r)}))" % (heavy, (*heavy, "msam_lab"))
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
    )
    assert set(done.stdout.split()) <= {"msam_lab", "msam_lab._compat", "msam_lab.errors", "msam_lab.registry"}
    assert "msam_lab.registry" in done.stdout.split()
