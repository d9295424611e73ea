"""A fast CLI: ``msam-lab --help`` and every ``msam-lab <cmd> --help`` import neither torch nor pandas;
``msam-lab status`` and ``msam-lab data info`` answer without torch (issue 19, item 5).

Each command runs in a fresh interpreter, which then reports what ``sys.modules`` holds. No timings here:
bench/cli_startup.py measures the CPU time.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msam_lab.cli.commands import build_parser

ROOT = Path(__file__).resolve().parents[2]

# runs the CLI as `msam-lab` does, then prints one JSON line: its exit code and the heavy modules loaded
CHILD = """
import json, sys
from msam_lab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "torch": "torch" in sys.modules, "pandas": "pandas" in sys.modules}))
"""


def run_cli(*args: str, cwd: Path) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)  # as outside torchrun
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    *output, last = proc.stdout.rstrip("\n").split("\n")
    return json.loads(last), "\n".join(output) + proc.stderr


def commands(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    """Every subcommand path of ``parser`` (("train",), ("data", "info"), ...), nested ones included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += commands(sub, (*prefix, name))
    return found


ALL = commands(build_parser())


def test_the_command_list_is_complete():
    """The discovery the tests below rely on finds the commands msam-lab has."""
    expected = {
        ("train",),
        ("compare",),
        ("demo",),
        ("status",),
        ("data",),
        ("data", "check"),
        ("data", "info"),
        ("data", "build-avmnist"),
        ("sweep",),
        ("landscape",),
        ("sharpness",),
        ("plot",),
    }
    assert expected <= set(ALL)


@pytest.mark.parametrize("command", [(), *ALL], ids=lambda c: " ".join(c) or "msam-lab")
def test_help_imports_neither_torch_nor_pandas(command, tmp_path):
    loaded, output = run_cli(*command, "--help", cwd=tmp_path)
    assert loaded["code"] == 0 and "usage: msam-lab" in output
    assert not loaded["torch"], f"msam-lab {' '.join(command)} --help imported torch"
    assert not loaded["pandas"], f"msam-lab {' '.join(command)} --help imported pandas"


def _bench_module():
    spec = importlib.util.spec_from_file_location("cli_startup", ROOT / "bench" / "cli_startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the benchmark's two run folders (a finished run, and one that says running but has no lock, so it reads as
# interrupted): one builder for the timed commands and the tested ones
fake_runs = _bench_module().fake_runs


def test_status_answers_without_torch(tmp_path):
    fake_runs(tmp_path / "runs")
    loaded, output = run_cli("status", str(tmp_path / "runs"), cwd=tmp_path)
    assert loaded["code"] == 0 and not loaded["torch"]
    lines = output.splitlines()
    done = next(line for line in lines if line.startswith("done"))
    killed = next(line for line in lines if line.startswith("killed"))
    assert done.split()[:4] == ["done", "msam", "finished", "2/2"] and "0.750" in done and "image 0.80" in done
    assert killed.split()[:2] == ["killed", "sam"] and "interrupted (no lock)" in killed


def test_data_info_answers_without_torch(tmp_path):
    loaded, output = run_cli("data", "info", cwd=tmp_path)
    assert loaded["code"] == 0 and not loaded["torch"]
    from msam_lab.datasets import DATASETS

    assert [line.split(":")[0] for line in output.splitlines() if line and not line.startswith(" ")] == list(DATASETS)


def test_catalog_facts_match_the_loaders():
    """The catalogue's copies of the loaders' constants (it does without torch) equal the loaders' own."""
    from msam_lab.datasets.catalog import LOADER_FACTS

    for module_name, facts in LOADER_FACTS.items():
        module = importlib.import_module(module_name)
        for name, value in facts.items():
            if name == "OPTIONS":
                assert value == {k: module.OPTIONS[k] for k in value}, module_name
            else:
                assert getattr(module, name) == value, f"{module_name}.{name}"


def test_moved_names_keep_their_old_homes():
    """runs.layout holds what status needs; the old import paths give the very same objects."""
    from msam_lab.runs import checkpoint_io, layout, reader

    for name in (
        "STATUS",
        "EPOCHS",
        "is_run",
        "is_run_dir",
        "read_status",
        "run_state",
        "find_runs",
        "read_table",
        "complete_lines",
        "read_json",
        "RunFileError",
        "JSON_LIMIT",
    ):
        assert getattr(reader, name) is getattr(layout, name), name
    for name in ("read_regular", "read_json", "RunFileError", "JSON_LIMIT"):
        assert getattr(checkpoint_io, name) is getattr(layout, name), name
    import msam_lab.runs

    assert msam_lab.runs.Run is reader.Run and msam_lab.runs.read_table is layout.read_table
