"""A real browser drives a dashboard: JupyterLab on 127.0.0.1, Debian's Chromium through Playwright.

Opens notebooks/01_dominance_over_time.ipynb (a copy, in quick mode), runs all cells, drags the
explorer's smoothing slider and checks that the plotly figure's data in the page changed. The
screenshots are kept in test-artifacts/ (git-ignored). Skipped, with the reason, when
/usr/bin/chromium or the playwright package is missing (CI: ``apt-get install -y chromium``;
never ``playwright install``).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = "01_dominance_over_time.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) to run the "
                "browser test", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                     "(pip install playwright; the browser is Debian's chromium, never "
                                     "`playwright install`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(folder: Path) -> None:
    """Lab settings for a quiet, deterministic page: no news/update pop-ups, every cell rendered."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                       "autoStartDefaultKernel": True},
    }
    for rel, value in settings.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s")


def stop_server(proc: subprocess.Popen, base: str, token: str) -> None:
    """Ask the server to shut down (kernels included), then stop it by its own pid if it lingers."""
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=5).close()
        except OSError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


PLOT_DATA_JS = """gd => JSON.stringify((gd.data || []).map(t => [t.name || '', Array.from(t.y || [])]))"""


def test_dashboard_slider_updates_the_figure_in_a_real_browser(tmp_path):
    started = time.perf_counter()
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    write_settings(tmp_path / "lab-settings")
    env = {**os.environ, "MSAM_LAB_QUICK": "1", "MSAM_LAB_RUNS": str(tmp_path / "runs"),
           "MSAM_LAB_FIGURES": str(tmp_path / "figures"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jconfig"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jruntime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "MPLBACKEND": "agg"}
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "jupyter.log", "wb")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.extension_manager=readonly", "--LabApp.news_url=None"]     # nothing fetched from the net
    if hasattr(os, "geteuid") and os.geteuid() == 0:       # CI containers run as root
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        wait_for_server(f"{base}/api/status?token={token}", proc)
        with playwright_api.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1000})
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(60_000)
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}&reset")
                page.locator(".jp-Notebook").first.wait_for()
                page.wait_for_timeout(1500)
                dialog = page.locator(".jp-Dialog .jp-mod-accept")      # "Select Kernel", if Lab still asks
                if dialog.count():
                    dialog.first.click()
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=90_000)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

                explorer = page.locator(".jp-Cell").last               # the cell that shows the explorer
                plot = explorer.locator(".js-plotly-plot").first
                plot.wait_for(timeout=120_000)
                page.wait_for_function("gd => gd.data && gd.data.length > 0", arg=plot.element_handle())
                plot.scroll_into_view_if_needed()
                before = plot.evaluate(PLOT_DATA_JS)
                page.screenshot(path=str(ARTIFACTS / "browser_dominance_explorer_before.png"))

                slider = explorer.locator(".widget-slider", has_text="smoothing").first
                if not slider.count():
                    slider = explorer.locator(".widget-hslider").nth(1)
                handle = slider.locator(".noUi-handle").first
                box = handle.bounding_box()
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.mouse.down()
                page.mouse.move(box["x"] + 80, box["y"] + box["height"] / 2, steps=8)
                page.mouse.up()

                deadline = time.monotonic() + 30
                after = before
                while time.monotonic() < deadline and after == before:
                    page.wait_for_timeout(250)
                    after = plot.evaluate(PLOT_DATA_JS)
                page.screenshot(path=str(ARTIFACTS / "browser_dominance_explorer_after.png"))
                readout = slider.locator(".widget-readout").first.inner_text()
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "browser_failure.png"), full_page=True)
                raise
            finally:
                ctx.close()
        assert after != before, "moving the smoothing slider did not change the figure in the page"
        shares_before = {n: y for n, y in json.loads(before) if n.startswith("share of")}
        shares_after = {n: y for n, y in json.loads(after) if n.startswith("share of")}
        assert shares_before and shares_before.keys() == shares_after.keys()
        assert any(shares_before[k] != shares_after[k] for k in shares_before)   # the share lines were re-smoothed
        assert int(readout) > 3, f"the slider should have moved past its start value, reads {readout}"
    finally:
        stop_server(proc, base, token)
        log.close()
        shutil.copy(tmp_path / "jupyter.log", ARTIFACTS / "browser_jupyter.log")
    sys.stderr.write(f"\nbrowser test: {time.perf_counter() - started:.1f} s\n")
