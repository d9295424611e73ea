"""Every ``python`` block of docs/api.md runs as written, each in a fresh interpreter in an empty
folder (the page promises its examples are runnable; this is what keeps them so)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)


def _title(i: int, code: str) -> str:
    heading = [h for h in re.findall(r"^## (.+)$", PAGE.read_text().split(code)[0], flags=re.M)]
    return f"{i}-{re.sub(r'[^a-z0-9]+', '-', heading[-1].lower()).strip('-')[:30]}" if heading else str(i)


def test_the_page_has_an_example_per_entry_point():
    text = "\n".join(BLOCKS)
    for name in (
        "msam_lab.train",
        "msam_lab.MSAM",
        "msam_lab.observe",
        "msam_lab.RunLogger",
        "msam_lab.evaluate_forward",
        "msam_lab.epoch_row",
        "landscape_for_run",
        "sharpness_for_run",
        "compare_runs",
        "msam_lab.register_dataset",
        "msam_lab.register_encoder",
        "msam_lab.register_method",
        "msam_lab.ConfigError",
    ):
        assert name in text, f"docs/api.md has no runnable example using {name}"


@pytest.mark.parametrize("code", BLOCKS, ids=[_title(i, c) for i, c in enumerate(BLOCKS)])
def test_example_runs(code, tmp_path):
    env = {**os.environ, "MSAM_LAB_DATA": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), "MPLBACKEND": "agg"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
