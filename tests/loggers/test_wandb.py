"""The Weights & Biases backend, offline: a second backend in one short module writes its run files."""

from __future__ import annotations

import pytest

pytest.importorskip("wandb", reason="the [wandb] extra is not installed: pip install 'msam-lab[wandb]'")

import msam_lab  # noqa: E402

pytestmark = pytest.mark.slow  # wandb starts a service process: ~30 s on a loaded machine


def test_wandb_offline_writes_its_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    with msam_lab.RunLogger(
        out, modalities=("a", "b"), config={"lr": 0.1, "rho_probe": 0.07}, loggers=["wandb"]
    ) as log:
        log.log_epoch(0, test_acc=0.5)
        for _ in range(3):
            log.log_step(loss=1.0, dominant="b", share_a=0.25, share_b=0.75)
        log.log_epoch(1, test_acc=0.75, test_acc_a=0.5, test_acc_b=0.7)
    (run,) = (out / "wandb").glob("offline-run-*")  # what `wandb sync` uploads
    (data,) = run.glob("run-*.wandb")
    records = data.read_bytes()
    for key in (b"steps/share_b", b"steps/dominant_index", b"epochs/test_acc_b", b"rho_probe"):
        assert key in records, key
    figures = sorted(p.name.split("_")[0] for p in (run / "files" / "media" / "images" / "figures").glob("*.png"))
    assert figures == ["curves", "dominance"]
    assert msam_lab.load_run(out).state == "finished"
