"""Every ``python`` block of docs/integrations.md runs as written, each in a fresh interpreter in an empty folder
(as tests/test_docs_api.py does for docs/api.md); the Accelerate recipe also on two CPU
processes. A block whose optional package is absent is skipped with the extra to install."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # Lightning and Accelerate start in seconds each: the full tier runs these

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "integrations.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
EXTRAS = {
    "lightning": "lightning",
    "accelerate": "accelerate",
    "torch.utils.tensorboard": "tensorboard",
    "wandb": "wandb",
}


def _title(i: int, code: str) -> str:
    heading = re.findall(r"^## (.+)$", PAGE.read_text().split(code)[0], flags=re.M)
    return f"{i}-{re.sub(r'[^a-z0-9]+', '-', heading[-1].lower()).strip('-')[:30]}" if heading else str(i)


def _skip_without_extras(code: str) -> None:
    for module, extra in EXTRAS.items():
        if re.search(rf"^\s*(import|from) {re.escape(module)}\b", code, flags=re.M):
            if importlib.util.find_spec(module.split(".")[0]) is None:
                pytest.skip(f"needs the optional extra: pip install -e '.[{extra}]'")


def _env(tmp_path):
    return {**os.environ, "MSAM_LAB_DATA": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), "MPLBACKEND": "agg"}


def test_the_page_has_a_recipe_per_integration():
    text = "\n".join(BLOCKS)
    for name in ("opt.step(closure)", "manual_step", "observe(self", "RunDirectory", "accelerator.prepare"):
        assert name in text, f"docs/integrations.md has no runnable example using {name}"


@pytest.mark.parametrize("code", BLOCKS, ids=[_title(i, c) for i, c in enumerate(BLOCKS)])
def test_example_runs(code, tmp_path):
    _skip_without_extras(code)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


def test_the_accelerate_recipe_runs_on_two_cpu_processes(tmp_path):
    """Under torchrun, which Accelerate reads (MULTI_CPU on gloo). ``accelerate launch --cpu --num_processes 2``
    starts several CPU processes only through mpirun, which this machine does not have (it runs one)."""
    pytest.importorskip("accelerate", reason="needs the optional extra: pip install -e '.[accelerate]'")
    code = next(c for c in BLOCKS if "accelerator.prepare" in c)
    script = tmp_path / "recipe.py"
    tail = (
        "\nwith open(f'rank{accelerator.process_index}.txt', 'w') as f:"
        "\n    f.write(f'{accelerator.num_processes} {rec.dominant}')\n"
    )
    script.write_text(code + tail)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
        cwd=tmp_path,
        env={**_env(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["2 image", "2 image"]
