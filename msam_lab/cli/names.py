"""The names the command line offers (methods, datasets), without torch: for ``--help`` and its hints.

``msam_lab.methods`` imports torch, so the built-in method names are copied here
(tests/cli/test_cli_help.py checks the copy against ``methods.METHOD_NAMES``). The dataset registry is
torch-free (its built-ins are names). Installed plug-ins are loaded (their entry points); one that
registers a method has imported ``msam_lab.methods`` itself, whose registry then lists it.
"""

from __future__ import annotations

import sys

from msam_lab.datasets import dataset_names as _dataset_names
from msam_lab.registry import load_plugins

BUILTIN_METHODS = ("joint", "sam", "msam", "ogm_ge", "agm", "cggm", "masam", "reconboost", "mie", "unimodal")


def method_names() -> tuple[str, ...]:
    """Every method: the built-ins, then the installed and registered plug-ins."""
    load_plugins()
    methods = sys.modules.get("msam_lab.methods")  # loaded only if a plug-in (or a run) imported it
    return tuple(methods.method_names()) if methods is not None else BUILTIN_METHODS


def dataset_names() -> tuple[str, ...]:
    """Every dataset: the built-ins, then the installed and registered plug-ins."""
    return tuple(_dataset_names())
