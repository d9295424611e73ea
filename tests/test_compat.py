"""Old module paths (before the layered layout) still import, as the same module, with one warning."""

import importlib
import json
import subprocess
import sys

import pytest

from msam_lab import _compat


def test_every_old_path_is_the_new_module_and_warns_once():
    # a fresh interpreter: the warning is given when an old name is first imported
    code = (
        "import importlib, json, warnings\n"
        "from msam_lab import _compat\n"
        "warnings.simplefilter('always')\n"
        "result = {}\n"
        "for old, new in _compat.MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        a = importlib.import_module(old)\n"
        "        b = importlib.import_module(old)\n"
        "    moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)\n"
        "             and 'moved to' in str(w.message)]\n"
        "    result[old] = [a is b is importlib.import_module(new), moved]\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == set(_compat.MOVED)
    for old, (same, warnings) in result.items():
        assert same, f"{old} is not {_compat.MOVED[old]}"
        assert len(warnings) == 1 and _compat.MOVED[old] in warnings[0], (old, warnings)


def test_a_name_that_never_existed_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("msam_lab.no_such_module")


def test_old_names_cover_every_module_the_old_tree_had_at_top_level():
    # the modules of msam_lab/ before the restructure that are gone from the top level now
    old_top = {
        "atomic",
        "checkpoint_io",
        "coalitions",
        "compare",
        "data_parallel",
        "encoders",
        "entry_points",
        "forward_eval",
        "hessian",
        "interrupts",
        "launch",
        "metrics",
        "msam_optimizer",
        "nonfinite",
        "precision",
        "progress",
        "resume",
        "rivals",
        "run_lock",
        "run_logger",
        "run_writer",
        "sam",
        "schedules",
        "selection",
        "sharpness_timeline",
        "speed",
        "status",
        "sweep",
        "trainer",
    }
    assert {f"msam_lab.{name}" for name in old_top} <= set(_compat.MOVED)
