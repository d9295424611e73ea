"""Data-parallel training on the CPU with gloo (msam_lab/distributed.py, msam_lab/data_parallel.py).

Two ranks started by torchrun against one process on the same global batch: the same weights, step
losses, dominant modalities and epoch metrics for joint, SAM, M-SAM and AGM (SAM and M-SAM with
``sam_epsilon=global``; the default per-rank ε is checked against a brute-force per-shard SAM). A
rank that dies ends the run with a clear failure, and the run resumes. ``msam_lab.MSAM`` in a user's
own DDP loop matches a brute-force reference. Every launch has a timeout: nothing here can hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import msam_lab
from msam_lab import distributed, shapley
from msam_lab.config import ConfigError
from msam_lab.datasets import load_for_training
from msam_lab.models.multimodal import model_from_spec
from msam_lab.runs.reader import run_state
from msam_lab.training import ranks as data_parallel
from msam_lab.training.setup import resolve
from tests.ddp_child import MODALITIES, USER_OPTIONS, user_batches, user_model

pytestmark = pytest.mark.slow  # torchrun process groups

CHILD = Path(__file__).resolve().parents[1] / "ddp_child.py"
LAUNCH_TIMEOUT = 420  # seconds; a healthy launch takes 10-60 s here
EPOCHS = 2
# 144 train samples in global batches of 31: shards of 16 and 15 (weighted means), a last batch of 20
BASE = {
    "dataset": "synthetic",
    "data": {"n_samples": 192},
    "epochs": EPOCHS,
    "batch_size": 31,
    "val_fraction": 0.0,
    "device": "cpu",
    "checkpoint_every": 1,
    "train_eval_samples": 0,
    "eval_batch_size": 20,
    "dist_timeout_s": 60.0,
}
CASES = {
    "joint": {"method": "joint"},
    "sam": {"method": "sam", "sam_epsilon": "global"},
    "msam": {"method": "msam", "sam_epsilon": "global", "dist_debug": True},
    "msam-params": {"method": "msam", "msam_variant": "params", "sam_epsilon": "global"},
    "agm": {"method": "agm"},
    "sam-local": {"method": "sam"},
}
USER_STEPS = 4


def config_of(name: str) -> dict:
    return {**BASE, **CASES[name]}


def torchrun(args, timeout=LAUNCH_TIMEOUT, nproc=2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def launch_jobs(jobs: list[dict], tmp: Path) -> subprocess.CompletedProcess:
    spec = tmp / f"jobs-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(jobs))
    return torchrun([str(CHILD), str(spec)])


def final_weights(run: Path, epoch: int = EPOCHS) -> dict:
    return torch.load(run / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=False)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (2-rank run, 1-process run)} for every case, plus the user-loop results."""
    tmp = tmp_path_factory.mktemp("ddp")
    jobs = [{"kind": "train", "config": config_of(name), "out": str(tmp / f"{name}-2")} for name in CASES]
    jobs += [
        {"kind": "user_msam", "variant": v, "steps": USER_STEPS, "out": str(tmp / f"user-{v}.pt")}
        for v in ("default", "params")
    ]
    jobs.append({"kind": "disagree", "out": str(tmp / "disagree.txt")})
    done = launch_jobs(jobs, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.set_num_threads(1)
    for name in CASES:
        msam_lab.train(config_of(name), out=tmp / f"{name}-1", quiet=True)
    return {name: (tmp / f"{name}-2", tmp / f"{name}-1") for name in CASES} | {"tmp": tmp}


@pytest.mark.parametrize("name", ["joint", "sam", "msam", "msam-params", "agm"])
def test_two_ranks_equal_one_process(runs, name):
    two, one = runs[name]
    assert max_diff(final_weights(two), final_weights(one)) < 1e-5
    s2, s1 = pd.read_csv(two / "steps.csv"), pd.read_csv(one / "steps.csv")
    assert len(s2) == len(s1) == EPOCHS * 5  # 144 / 31: 5 steps an epoch
    np.testing.assert_allclose(s2["loss"], s1["loss"], rtol=0, atol=1e-5)
    assert list(s2["dominant"]) == list(s1["dominant"])  # the all-reduced Shapley counts
    for m in ("m0", "m1", "m2"):
        np.testing.assert_allclose(s2[f"share_{m}"], s1[f"share_{m}"], atol=1e-6)
    e2, e1 = pd.read_csv(two / "epochs.csv"), pd.read_csv(one / "epochs.csv")
    np.testing.assert_array_equal(e2["test_acc"], e1["test_acc"])  # sharded evaluation, reduced
    np.testing.assert_allclose(e2["test_loss"], e1["test_loss"], atol=1e-5)
    summary2, summary1 = (json.loads((r / "summary.json").read_text()) for r in (two, one))
    assert (summary2["world_size"], summary1["world_size"]) == (2, 1)
    assert summary2["global_batch"] == summary1["global_batch"] == 31


def test_ranks_other_than_zero_write_nothing(runs):
    tmp = runs["tmp"]
    made = sorted(p.name for p in tmp.iterdir())
    expected = {f"{n}-{k}" for n in CASES for k in (1, 2)} | {"user-default.pt", "user-params.pt", "disagree.txt"}
    assert set(made) - {p for p in made if p.startswith("jobs-")} == expected
    assert run_state(runs["msam"][0]) == "finished"


def test_dist_debug_names_the_ranks_that_disagree(runs):
    message = (runs["tmp"] / "disagree.txt").read_text()
    assert message.startswith("ranks disagree on the dominant modality (rank 0: m0, rank 1: m1)")


def sam_per_shard_reference(run_one: Path, config: dict, world: int = 2) -> dict:
    """Brute force: SAM whose ε is taken per rank's shard and whose update averages the shards' gradients."""
    cfg = resolve(config)
    splits = load_for_training(cfg.dataset, cfg.data, "cpu", "memory")
    spec = json.loads((run_one / "model.json").read_text())
    model = model_from_spec(spec)
    model.load_state_dict(final_weights(run_one, 0))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    params = list(model.parameters())
    for _ in range(cfg.epochs):
        for inputs, labels in splits.train.batches(cfg.batch_size, shuffle=True, generator=generator):
            total = [torch.zeros_like(p) for p in params]
            for part in torch.tensor_split(torch.arange(len(labels)), world):
                x, y = {m: v[part] for m, v in inputs.items()}, labels[part]
                g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
                norm = torch.norm(torch.stack([t.norm() for t in g]))
                eps = [cfg.rho * t / (norm + 1e-12) for t in g]
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        p.add_(e)
                h = torch.autograd.grad(F.cross_entropy(model(x), y), params)
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        p.sub_(e)
                total = [t + len(part) * hh for t, hh in zip(total, h)]
            for p, t in zip(params, total):
                p.grad = t / len(labels)
            opt.step()
    return model.state_dict()


def test_local_epsilon_is_sam_per_shard(runs):
    two, _ = runs["sam-local"]
    reference = sam_per_shard_reference(runs["sam"][1], config_of("sam-local"))
    assert max_diff(final_weights(two), reference) < 1e-5
    # and it is not one-process SAM: per-rank ε is a different update (m-sharpness with m = the shard)
    assert max_diff(final_weights(two), final_weights(runs["sam"][1])) > 1e-4


def user_reference(variant: str, world: int = 2) -> dict:
    """msam_lab.MSAM in a DDP loop, by hand: the Shapley observation of the global batch, ε per shard,
    g = mean over ranks of v_d·∇ℓ_r(θ+ε_r) + (1−v_d)·∇ℓ_r(θ), one SGD step."""
    net = user_model()
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=USER_OPTIONS["lr"], momentum=USER_OPTIONS["momentum"])
    rho, dominants = USER_OPTIONS["rho"], []
    for image, audio, labels in user_batches(USER_STEPS):
        rec = msam_lab.observe(lambda present: net(image, audio, present), labels, MODALITIES, model=net)
        d, v_d = rec.dominant, rec.shares[rec.dominant]
        dominants.append(d)
        only = set(net.enc[d].parameters()) if variant == "params" else set(params)
        total = [torch.zeros_like(p) for p in params]
        for part in torch.tensor_split(torch.arange(len(labels)), world):
            x_i, x_a, y = image[part], audio[part], labels[part]
            g = torch.autograd.grad(F.cross_entropy(net(x_i, x_a), y), params)
            norm = torch.norm(torch.stack([t.norm() for t, p in zip(g, params) if p in only]))
            eps = [rho * t / (norm + 1e-12) if p in only else torch.zeros_like(t) for t, p in zip(g, params)]
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.add_(e)
            h = torch.autograd.grad(v_d * F.cross_entropy(net(x_i, x_a), y), params)
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
            total = [t + hh + (1 - v_d) * gg for t, hh, gg in zip(total, h, g)]
        for p, t in zip(params, total):
            p.grad = t / world  # DDP's mean over ranks (shards of 8 and 7 weigh the same)
        opt.step()
    return {"model": net.state_dict(), "dominants": dominants}


@pytest.mark.parametrize("variant", ["default", "params"])
def test_msam_optimizer_in_a_user_ddp_loop(runs, variant):
    got = torch.load(runs["tmp"] / f"user-{variant}.pt", weights_only=False)
    want = user_reference(variant)
    assert [r["dominant"] for r in got["records"]] == want["dominants"]
    assert max_diff(got["model"], want["model"]) < 1e-5
    assert max_diff(got["model"], user_model().state_dict()) > 1e-3  # it trained


def test_a_dead_rank_fails_the_run_and_it_resumes(runs):
    tmp = runs["tmp"]
    out = tmp / "dies"
    config = {**config_of("joint"), "resume_every": 2, "dist_timeout_s": 30.0}
    started = time.monotonic()
    done = launch_jobs([{"kind": "train", "config": config, "out": str(out), "die_at": 6}], tmp)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert elapsed < 200, f"a dead rank took {elapsed:.0f} s to end the run"
    assert "exitcode" in done.stderr or "Error" in done.stderr  # torchrun names the failed rank
    assert run_state(out) in ("interrupted", "failed")
    resumed = launch_jobs([{"kind": "resume", "run": str(out)}], tmp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_state(out) == "finished"
    # the resumed 2-rank run ends where the uninterrupted 1-process run does
    assert max_diff(final_weights(out), final_weights(runs["joint"][1])) < 1e-5
    steps = pd.read_csv(out / "steps.csv")
    assert list(steps["step"]) == list(range(EPOCHS * 5))


def test_cli_nproc_trains_on_two_ranks(runs, tmp_path):
    """``msam-lab train --nproc 2`` (torchrun underneath), on the streaming data path."""
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "msam_lab",
        "train",
        "--nproc",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--method",
        "joint",
        "--epochs",
        str(EPOCHS),
        "--device",
        "cpu",
        *[f"--set={k}={json.dumps(v)}" for k, v in BASE.items() if k not in ("epochs", "device")],
        "--set",
        "data_path=stream",
        "--set",
        "num_workers=0",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run written to") == 1  # rank 0 prints, rank 1 does not
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert max_diff(final_weights(out), final_weights(runs["joint"][1])) < 1e-5


# -- the pieces, without a process group ---------------------------------------------------------
@pytest.mark.parametrize("n,world", [(31, 2), (20, 2), (7, 3), (1, 2), (64, 8)])
def test_shards_partition_a_batch_as_tensor_split_does(monkeypatch, n, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    parts = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(list(range(n))[distributed.shard_of(n)])
    assert parts == [t.tolist() for t in torch.tensor_split(torch.arange(n), world)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_the_last_batch_is_dropped_exactly_when_a_shard_would_be_too_small(monkeypatch, world, batchnorm):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    least = 2 if batchnorm else 1
    for n in range(40, 72):
        cfg = resolve({"batch_size": 16})
        if 16 // world < least:
            with pytest.raises(ConfigError, match="raise batch_size"):
                data_parallel.check_batch(cfg, n, batchnorm)
            continue
        last = n % 16
        sizes = [len(t) for t in torch.tensor_split(torch.arange(last), world)] if last else []
        assert data_parallel.check_batch(cfg, n, batchnorm) == (last > 0 and min(sizes) < least)


def test_per_device_batch_sets_the_global_batch(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    assert data_parallel.global_batch(resolve({"batch_size": 64})) == 64
    assert data_parallel.global_batch(resolve({"batch_size": 64, "per_device_batch": 16})) == 64
    assert data_parallel.global_batch(resolve({"per_device_batch": 10})) == 40


def test_sync_bn_on_the_cpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        data_parallel.prepare_model(torch.nn.BatchNorm1d(3), resolve({"sync_bn": True}), torch.device("cpu"))


def test_one_process_reductions_are_the_identity():
    values = np.array([[0.25, 0.5], [1.0, 2.0]])
    assert np.array_equal(distributed.mean_over_ranks(values, 7), values)
    assert np.array_equal(distributed.sum_over_ranks(values), values)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    distributed.average_gradients([p], 5)
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert shapley.dominant(np.array([0.2, 0.8])) == 1


def test_a_resume_with_another_global_batch_is_refused(monkeypatch, tmp_path):
    """per_device_batch=16 saved on 1 rank (global 16) cannot resume on 2 ranks (global 32): positions count batches."""
    out = tmp_path / "run"

    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    config = {**BASE, "method": "joint", "per_device_batch": 16, "resume_every": 2}
    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(config, out=out, quiet=True, on_step=stop)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(
        ConfigError, match="saved with a global batch of 16 and would resume with 32.*resume it on 1 rank$"
    ):
        msam_lab.train(resume=out, quiet=True)
    monkeypatch.undo()
    msam_lab.train(resume=out, quiet=True)  # the same global batch resumes
    assert run_state(out) == "finished"


def test_cli_nproc_refuses_a_batch_too_small_to_shard_before_starting_any_rank(tmp_path):
    """One line, exit 2, nothing written: the check runs in the msam-lab process, not once per rank."""
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "msam_lab",
            "train",
            "--nproc",
            "3",
            "--device",
            "cpu",
            "--set",
            "batch_size=2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "msam-lab: error: the global batch (2) leaves some of the 3 ranks no sample; "
        "raise batch_size to at least 3 or set per_device_batch"
    ]
    assert not out.exists()
