"""Every notebook runs headless, start to finish, in quick mode (MSAM_LAB_QUICK=1).

Each notebook is copied into a temporary folder and executed there with nbclient, so no outputs
are written back into notebooks/. Runs go to one temporary folder shared by the whole session
(``MSAM_LAB_RUNS``), so a run trained by one notebook is reused by the next, exactly as on a user's
machine; publication figures go to a temporary ``MSAM_LAB_FIGURES``. Each notebook has a hard
wall-clock limit (``NOTEBOOK_TIMEOUT``): on expiry its kernel is shut down and the test fails.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every notebook, executed headless

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOK_TIMEOUT = 150  # s per notebook (quick mode runs in ~10-30 s on 2 idle cores)
EXPECTED = [
    "00_quickstart",
    "01_dominance_over_time",
    "02_landscape_1d",
    "03_landscape_2d",
    "04_overfitting_gap",
    "05_method_comparison",
    "06_teaching_demo",
    "07_your_own_model",
    "08_rivals_and_ablations",
]


def test_all_notebooks_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts in the repository; first cell explains, a parameters cell follows."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: strip outputs before committing"
            assert cell.execution_count is None, f"{path.name}: strip execution counts"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    intro = nb.cells[0].source.split("\n", 1)[1].strip()
    sentences = len(re.findall(r"[.!?](?:\s|$)", intro))
    assert 2 <= sentences <= 5, f"{path.name}: the intro should be two or three sentences, found ~{sentences}"
    times = re.search(r"On 2 CPU cores: quick mode \(`MSAM_LAB_QUICK=1`\) ([^,]+), full mode ([^;]+);", intro)
    assert times, f"{path.name}: the intro must say up front how long quick and full mode take on 2 cores"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells.index(params[0]) == 1, "cell 2 must be the (tagged) parameters cell"
    assert "quick_mode()" in params[0].source


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    env = {
        "MSAM_LAB_QUICK": "1",
        "MSAM_LAB_RUNS": str(base / "runs"),
        "MSAM_LAB_FIGURES": str(base / "figures"),
        "MPLBACKEND": "agg",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    return base, env


async def _execute(nb, cwd: Path, timeout: float):
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, allow_errors=False
    )
    await asyncio.wait_for(client.async_execute(), timeout)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, notebook_env, monkeypatch):
    base, env = notebook_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # inherited by the kernel process
    work = base / path.stem
    work.mkdir()
    copy = work / path.name
    shutil.copy(path, copy)
    before = path.read_bytes()
    nb = nbformat.read(copy, as_version=4)
    started = time.perf_counter()
    try:
        asyncio.run(_execute(nb, work, NOTEBOOK_TIMEOUT))
    except asyncio.TimeoutError:
        pytest.fail(f"{path.name} did not finish within {NOTEBOOK_TIMEOUT} s in quick mode")
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{str(err)[-3000:]}")
    took = time.perf_counter() - started
    sys.stderr.write(f"\n{path.stem}: {took:.1f} s in quick mode\n")
    assert path.read_bytes() == before, "the notebook in the checkout must not be modified"
    assert not (work / "data").exists(), "the dataset cache must not land beside the notebook"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # every notebook shows at least one figure or widget
    shown = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result")
        and any(
            k in o.get("data", {})
            for k in ("application/vnd.plotly.v1+json", "image/png", "application/vnd.jupyter.widget-view+json")
        )
    ]
    assert shown, f"{path.name} displayed no figure"
    if path.stem == "05_method_comparison":
        written = sorted(p.name for p in Path(env["MSAM_LAB_FIGURES"]).iterdir())
        assert {"fig_method_comparison.pdf", "fig_method_comparison.png", "table_comparison.csv"} <= set(written)
    if path.stem == "08_rivals_and_ablations":
        written = set(p.name for p in Path(env["MSAM_LAB_FIGURES"]).iterdir())
        for name in ("rivals_comparison", "rho_sweep", "fixed_dominant", "sharpness_timeline"):
            assert {f"fig_{name}.pdf", f"fig_{name}.png"} <= written, f"fig_{name} not written"
        assert {"table_rivals.csv", "table_rho_sweep.csv", "table_fixed_dominant.csv"} <= written
