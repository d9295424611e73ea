"""M-SAM in PyTorch Lightning (issue 21 item 2): manual and automatic optimization take the plain loop's steps
(fp32; bf16-mixed close to the plain loop under the same autocast), '16-mixed' is a one-line error naming the
fix, RunDirectory writes a run folder load_run reads, and a 2-process DDP fit on gloo takes the steps of one
process on the same global batch (each rank's ε from its own shard, as under no_sync), every rank with the same
dominant modality."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="the Lightning integration needs the extra: pip install -e '.[lightning]'")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import msam_lab  # noqa: E402
from msam_lab.integrations.lightning import RunDirectory  # noqa: E402
from tests.integrations.lightning_model import MODALITIES, Module, Pairs, loader, make_msam, trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def plain_loop(batch_size=16, n=64, precision=None):
    """The reference: msam_lab.MSAM.step(forward, labels) in a plain loop over the same batches."""
    module = Module()  # the same seed: the same initial weights
    net = module.net
    opt = make_msam(net.parameters(), net)
    dominants = []
    for x, y, _ in loader(batch_size, n):
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision else torch.enable_grad():
            dominants.append(opt.step(lambda present: net(x, present), y).dominant)
    return net, dominants


def assert_weights_close(a, b, atol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("automatic", [False, True])
def test_lightning_fp32_takes_the_plain_loops_steps(automatic):
    module = Module(automatic=automatic)
    trainer().fit(module, loader())
    ref, dominants = plain_loop()
    assert_weights_close(module.net, ref, atol=1e-6)
    if not automatic:
        assert module.dominants == dominants
    assert not all(torch.equal(p, q) for p, q in zip(module.net.parameters(), Module().net.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("automatic", [False, True])
def test_lightning_bf16_mixed_is_the_plain_loop_under_bf16_autocast(automatic):
    module = Module(automatic=automatic)
    trainer(precision="bf16-mixed").fit(module, loader())
    ref, _ = plain_loop(precision="bf16")
    fp32, _ = plain_loop()
    assert_weights_close(module.net, ref, atol=2e-3)
    # bf16 really ran: the weights are not the fp32 run's
    assert any((p - q).abs().max() > 1e-6 for p, q in zip(module.net.parameters(), fp32.parameters()))


@pytest.mark.parametrize("automatic", [False, True])
def test_lightning_16_mixed_is_a_one_line_error_naming_the_fix(automatic):
    """fp16 AMP with a GradScaler (on CPU Lightning turns precision='16-mixed' into bf16, so the plugin is
    built by hand, as a GPU Trainer would build it)."""
    from lightning.pytorch.plugins import MixedPrecision

    module = Module(automatic=automatic)
    t = trainer(plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))])
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match=r"bf16-mixed' or '32-true'") as err:
        t.fit(module, loader())
    assert "\n" not in str(err.value)
    assert all(torch.equal(p, q) for p, q in zip(before, module.parameters()))  # nothing half-done


def test_manual_step_under_automatic_optimization_says_how_to_switch():
    class Wrong(Module):
        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            from msam_lab.integrations.lightning import manual_step

            manual_step(self, lambda present: self(x, present), y)

    with pytest.raises(ValueError, match="automatic_optimization = False"):
        trainer().fit(Wrong(automatic=True), loader())


def test_run_directory_writes_a_run_load_run_reads(tmp_path):
    module = Module()
    trainer(max_epochs=2, callbacks=[RunDirectory(tmp_path / "run", config={"lr": 0.1})]).fit(module, loader())
    run = msam_lab.load_run(tmp_path / "run")
    assert run.state == "finished"
    assert len(run.steps) == 8 and list(run.epochs["epoch"]) == [1, 2]
    assert list(run.steps["dominant"]) == module.dominants
    shares = run.steps[[f"share_{m}" for m in MODALITIES]].to_numpy()
    assert abs(shares.sum(1) - 1).max() < 1e-6
    first = run.steps["loss"].iloc[:4].mean()
    assert run.epochs["train_loss"].iloc[0] == pytest.approx(first)


def test_the_record_reaches_the_loggers_on_their_steps(tmp_path):
    """msam/* go to the trainer's loggers on the steps they write (log_every_n_steps=3 of 8), with the values of
    those steps' records (RunDirectory keeps every step); no logger: nothing is logged, the record is still kept."""
    module = Module()
    csv = CSVLogger(tmp_path, name="csv", version=0)
    callbacks = [RunDirectory(tmp_path / "run")]
    trainer(max_epochs=2, logger=csv, log_every_n_steps=3, callbacks=callbacks).fit(module, loader())
    logged = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    run = msam_lab.load_run(tmp_path / "run")
    assert list(logged["step"]) == [2, 5]  # Lightning's 0-based steps 2 and 5 of 0..7
    for _, row in logged.iterrows():
        step = run.steps.iloc[int(row["step"])]
        assert row["msam/dominant"] == MODALITIES.index(step["dominant"])
        for m in MODALITIES:
            assert row[f"msam/share_{m}"] == pytest.approx(step[f"share_{m}"], abs=1e-6)
        assert row["msam/loss"] == pytest.approx(step["loss"], rel=1e-6)
    bare = Module()
    trainer().fit(bare, loader())
    assert not bare.trainer.logged_metrics and bare.msam_record is not None


def shard_reference(seen_by_rank):
    """One process, the global batch of each step: the shares of the whole batch (as the all-reduced
    observation), then each rank's shard's M-SAM gradient (its own ε: the first pass under no_sync), averaged,
    and one base step. Built from MSAM's pieces; test_closure_contract checks those against autograd."""
    data = Pairs(64)
    net = Module().net
    opt = make_msam(net.parameters(), net)
    dominants = []
    for step in range(len(seen_by_rank[0])):
        shards = [torch.tensor(seen[step]) for seen in seen_by_rank]
        every = torch.cat(shards)
        x, y = {m: v[every] for m, v in data.x.items()}, data.y[every]
        rec = opt.observe(lambda present: net(x, present), y)
        dominants.append(rec.dominant)
        split = opt.split
        total = [torch.zeros_like(p) for p in net.parameters()]
        for idx in shards:
            xs, ys = {m: v[idx] for m, v in data.x.items()}, data.y[idx]
            opt.split = split
            opt.zero_grad(set_to_none=True)
            opt.backward(F.cross_entropy(net(xs), ys))
            opt.first_step(zero_grad=True)
            opt.dominant_loss(net(xs), ys).backward()
            opt.restore()
            for t, p in zip(total, net.parameters()):
                t += p.grad / len(shards)
        for p, t in zip(net.parameters(), total):
            p.grad = t
        opt.base_optimizer.step()
        opt.split = None
    return net, dominants


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["manual", "automatic"])
def test_lightning_ddp_on_two_processes_takes_the_one_process_steps(tmp_path, mode):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/integrations/lightning_ddp_child.py"), str(tmp_path), mode],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["seen"]) == 4  # 64 samples, 8 per rank per step
    assert not set(sum(ranks[0]["seen"], [])) & set(sum(ranks[1]["seen"], []))  # two real shards
    assert ranks[0]["dominants"] == ranks[1]["dominants"]  # the observation was reduced over ranks
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(v, ranks[1]["weights"][k]), k  # DDP kept the replicas identical
    ref, dominants = shard_reference([r["seen"] for r in ranks])
    assert ranks[0]["dominants"] == dominants
    for (k, v), p in zip(ranks[0]["weights"].items(), ref.parameters()):
        torch.testing.assert_close(v, p.detach(), rtol=0, atol=1e-5, msg=k)
    # and it differs from what ε of the global batch would give: the first pass really ran under no_sync
    glob = copy.deepcopy(Module().net)
    opt = make_msam(glob.parameters(), glob)
    data = Pairs(64)
    for step in range(4):
        every = torch.tensor(ranks[0]["seen"][step] + ranks[1]["seen"][step])
        opt.step(lambda present: glob({m: v[every] for m, v in data.x.items()}, present), data.y[every])
    assert any((v - p).abs().max() > 1e-5 for v, p in zip(ranks[0]["weights"].values(), glob.parameters()))
