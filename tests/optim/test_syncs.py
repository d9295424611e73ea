"""Device→host syncs per training step stay where issue 23 put them (bench/syncs.py counts them).

joint, SAM and M-SAM's default variant: none per step; M-SAM ``params`` (and ``unimodal``): one, to
learn which modality's parameters ε moves. The step rows cross in one copy per flush.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from syncs import METHODS, count_method, counting  # noqa: E402

from msam_lab import shapley  # noqa: E402
from msam_lab.runs.writer import rows_on_host  # noqa: E402

SMALL = {"n_samples": 200, "n_modalities": 3}


def test_the_counter_sees_every_kind_of_read():
    t = torch.arange(3.0)
    with counting() as c:
        float(t[0])
        t.tolist()
        t.numpy()
        np.asarray(t)
        t.cpu()
        bool(t[1] > 0)
        t + 1  # no read
    assert c.counts == {"scalar": 2, "tolist": 1, "numpy": 2, "cpu": 1}
    with counting() as after:
        t.tolist()
    assert after.total() == 1


@pytest.mark.parametrize(("name", "most"), [("joint", 0), ("sam", 0), ("msam", 0), ("msam-params", 1)])
def test_syncs_per_step(name, most):
    r = count_method("synthetic", METHODS[name], steps=2, data=SMALL)
    assert r["method"] <= most, r
    assert r["trainer"] <= most, r  # the nan_policy guard and the writer add none
    assert r["flush"] == 2, r  # per flush: the guard's finite flags, the rows: one copy each


def test_rows_on_host_reads_every_device_value_in_one_copy():
    loss = torch.tensor(0.25, dtype=torch.float32)
    share = torch.tensor([0.3, 0.7], dtype=torch.float64)
    rows = [
        {"step": 0, "loss": loss, "dominant": shapley.Pick(torch.tensor(1), ("a", "b")), "share_a": share[0]},
        {"step": 1, "loss": 0.5, "dominant": "a", "flag": torch.tensor(True), "n": torch.tensor(7)},
    ]
    with counting() as c:
        host = rows_on_host(rows)
    assert c.total() == 1
    assert host == [
        {"step": 0, "loss": 0.25, "dominant": "b", "share_a": 0.3},
        {"step": 1, "loss": 0.5, "dominant": "a", "flag": 1, "n": 7},
    ]
    assert type(host[1]["n"]) is int and type(host[0]["share_a"]) is float
    assert torch.is_tensor(rows[0]["loss"])  # the buffered rows are left as they were
