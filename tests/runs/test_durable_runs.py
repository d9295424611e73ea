"""A run directory valid from its first step: status, streamed rows, atomic files, torn lines,
non-finite values (``nan_policy``), and progress output with and without a terminal."""

from __future__ import annotations

import copy
import io
import json
import os
import socket

import pytest
import torch

import msam_lab
from msam_lab.cli import commands as cli
from msam_lab.datasets import MultimodalData, load_dataset
from msam_lab.methods import build_method
from msam_lab.models.multimodal import model_from_spec
from msam_lab.runs import atomic
from msam_lab.runs.reader import load_run, read_table
from msam_lab.training.guards import StepGuard, all_finite, first_non_finite
from msam_lab.training.loop import TrainingError, _model_spec
from msam_lab.training.progress import Progress
from msam_lab.training.setup import resolve

pytestmark = pytest.mark.slow  # long kill/resume chains

SYN = {
    "dataset": "synthetic",
    "data": {"n_samples": 300, "n_modalities": 2},
    "batch_size": 32,
    "epochs": 2,
    "train_eval_samples": 100,
}
STEPS_PER_EPOCH = 7  # 202 train samples (224 less the validation hold-out) / 32


def test_the_run_is_readable_while_it_trains(tmp_path):
    seen = {}

    def on_step(row):
        if row["step"] == 9:  # inside epoch 2
            run = load_run(tmp_path / "r")
            seen.update(
                state=run.state,
                status=dict(run.status),
                steps=list(run.steps["step"]),
                epochs=list(run.epochs["epoch"]),
                summary=run.summary,
            )

    msam_lab.train({**SYN, "method": "msam", "flush_every": 0}, out=tmp_path / "r", quiet=True, on_step=on_step)
    assert seen["state"] == "running" and seen["summary"] == {}
    st = seen["status"]
    assert st["pid"] == os.getpid() and st["host"] == socket.gethostname()
    assert st["last_step"] == 9 and st["last_epoch"] == 1 and st["epochs"] == 2 and st["error"] is None
    assert st["started"] <= st["heartbeat"]
    assert seen["steps"] == list(range(10)) and seen["epochs"] == [0, 1]
    done = load_run(tmp_path / "r")
    assert done.state == "finished" and done.finished and not (tmp_path / "r" / "lock").exists()
    assert done.summary["skipped_batches"] == 0 and done.summary["resumed"] == 0


def test_flush_every_bounds_what_sits_in_memory(tmp_path):
    """flush_every=0: every step is on disk at its callback; a huge flush_every: only at epoch ends."""
    on_disk = {}

    def watcher(name):
        def on_step(row):
            on_disk.setdefault(name, []).append(len(read_table(tmp_path / name / "steps.csv")))

        return on_step

    msam_lab.train({**SYN, "method": "joint", "flush_every": 0}, out=tmp_path / "a", quiet=True, on_step=watcher("a"))
    msam_lab.train({**SYN, "method": "joint", "flush_every": 1e9}, out=tmp_path / "b", quiet=True, on_step=watcher("b"))
    assert on_disk["a"] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert on_disk["b"] == [0] * STEPS_PER_EPOCH + [STEPS_PER_EPOCH] * STEPS_PER_EPOCH
    assert list(read_table(tmp_path / "b" / "steps.csv")["step"]) == list(range(2 * STEPS_PER_EPOCH))


def test_a_torn_last_line_is_dropped_on_read(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,loss\n0,1.5\n1,1.25\n2,1.")
    table = read_table(path)
    assert list(table["step"]) == [0, 1] and list(table["loss"]) == [1.5, 1.25]


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    atomic.write_json(target, {"v": 1})

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temporary left behind


def test_checkpoints_are_written_through_the_atomic_path(tmp_path, monkeypatch):
    written = []
    real = atomic.write_bytes

    def spy(path, data):
        written.append(os.path.basename(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", spy)
    msam_lab.train({**SYN, "method": "joint", "epochs": 1}, out=tmp_path / "r", quiet=True)
    assert {
        "epoch_0000.pt",
        "epoch_0001.pt",
        "resume.pt",
        "status.json",
        "summary.json",
        "config.json",
        "model.json",
    } <= set(written)


# -- non-finite values -----------------------------------------------------------------------


def _poison_batch(monkeypatch, at: int):
    """Make the ``at``-th training batch drawn carry an inf input (a corrupt sample)."""
    real = MultimodalData.batches
    count = {"n": 0}

    def batches(self, batch_size, shuffle=False, **kw):
        for inputs, labels in real(self, batch_size, shuffle=shuffle, **kw):
            if shuffle:
                if count["n"] == at:
                    inputs = {m: x.clone() for m, x in inputs.items()}
                    first = next(iter(inputs))
                    inputs[first][0].fill_(float("inf"))
                count["n"] += 1
            yield inputs, labels

    monkeypatch.setattr(MultimodalData, "batches", batches)


def test_nan_policy_stop_names_step_epoch_what_and_checkpoint(tmp_path, monkeypatch):
    _poison_batch(monkeypatch, at=9)
    with pytest.raises(TrainingError) as info:
        msam_lab.train({**SYN, "method": "msam"}, out=tmp_path / "r", quiet=True)
    msg = str(info.value)
    assert "non-finite" in msg and "at step 9 (epoch 2)" in msg
    assert "resume.pt (epoch 1, step 7)" in msg
    run = load_run(tmp_path / "r")
    assert run.state == "failed" and run.status["error"] == msg
    assert list(run.steps["step"]) == list(range(9))  # the bad step is not recorded as done


def test_nan_policy_stop_from_the_cli_is_one_line_and_non_zero(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--dataset",
            "synthetic",
            "--method",
            "joint",
            "--lr",
            "1e12",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "non-finite" in err and "last good checkpoint" in err
    assert load_run(tmp_path / "r").state == "failed"


def test_nan_policy_skip_counts_skipped_batches(tmp_path, monkeypatch):
    _poison_batch(monkeypatch, at=3)
    run = msam_lab.train({**SYN, "method": "sam", "nan_policy": "skip"}, out=tmp_path / "r", quiet=True)
    assert run.finished and run.summary["skipped_batches"] == 1
    assert list(run.steps.loc[run.steps["skipped"] == 1, "step"]) == [3]
    assert run.epochs["test_acc"].iloc[-1] > 0.5  # training went on unharmed


def _built(method: str):
    cfg = resolve({**SYN, "method": method, "recon_stage_steps": 2, "recon_correct_steps": 1})
    splits = load_dataset(cfg.dataset, **cfg.data)
    torch.manual_seed(0)
    model = model_from_spec(_model_spec(splits, cfg))  # the trainer's own spec
    return model, build_method(model, cfg), splits


@pytest.mark.parametrize("method", ["joint", "sam", "msam", "ogm_ge", "agm", "cggm", "reconboost", "masam", "mie"])
def test_a_skipped_batch_changes_no_parameter_and_no_method_state(method):
    model, m, splits = _built(method)
    guard = StepGuard("skip", model, m)
    batches = splits.train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # build up momentum, histories, phases
        inputs, labels = next(batches)
        assert guard.step(inputs, labels)["skipped"] == 0
    before = copy.deepcopy({"model": model.state_dict(), "method": m.state_dict()})
    inputs, labels = next(batches)
    bad = {k: v.clone() for k, v in inputs.items()}
    bad[next(iter(bad))][:] = float("nan")
    assert guard.step(bad, labels)["skipped"] == 1
    after = {"model": model.state_dict(), "method": m.state_dict()}
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k]), k
    assert repr(before["method"]) == repr(after["method"])  # every tensor and history, printed in full
    assert first_non_finite(guard.step(inputs, labels)["loss"], model) is None


def test_guard_names_a_non_finite_gradient():
    model, _, _ = _built("joint")
    p = next(model.parameters())
    p.grad = torch.full_like(p, float("inf"))
    name = next(n for n, q in model.named_parameters() if q is p)
    assert first_non_finite(0.5, model) == f"gradient of {name}"
    p.grad = None
    with torch.no_grad():
        p[0] = float("nan")
    assert first_non_finite(0.5, model) == f"parameter {name}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_agrees_with_elementwise_isfinite(dtype):
    """The min/max check against the brute-force one, with one NaN, +inf or -inf anywhere, huge finite
    values, 0-d and empty tensors."""
    g = torch.Generator().manual_seed(0)
    shapes = [(), (0,), (3,), (4, 5), (2, 3, 4)]
    for trial in range(60):
        tensors = [torch.randn(s, generator=g).to(dtype) for s in shapes]
        which = trial % len(shapes)
        bad = [float("nan"), float("inf"), -float("inf"), torch.finfo(dtype).max, None][trial % 5]
        if bad is not None and tensors[which].numel():
            flat = tensors[which].view(-1)
            flat[int(torch.randint(flat.numel(), (1,), generator=g))] = bad
        expected = all(bool(torch.isfinite(t).all()) for t in tensors)
        assert bool(all_finite(tensors)) == expected, (trial, bad, which)
    assert bool(all_finite([])) and bool(all_finite([torch.empty(0)]))


# -- progress --------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_without_a_terminal_is_one_line_per_epoch():
    stream = io.StringIO()
    p = Progress(20, 2, "msam on x", stream=stream)
    for step in range(10):
        p.step({"loss": 1.0, "dominant": "a"})
    p.epoch({"epoch": 1, "train_loss": 0.5, "test_acc": 0.9, "test_dominant": "a", "wall_time": 1.0})
    p.close()
    text = stream.getvalue()
    assert "\r" not in text and text.splitlines() == [
        "msam on x: epoch 1/2  train loss 0.5000  test acc 0.9000  dominant a  1.0 s"
    ]


def test_progress_on_a_terminal_draws_a_bar_and_no_epoch_lines():
    stream = FakeTTY()
    p = Progress(20, 2, "msam on x", stream=stream)
    p.step({"loss": 1.0, "dominant": "a"})
    p.epoch({"epoch": 1, "train_loss": 0.5, "test_acc": 0.9, "wall_time": 1.0})
    p.close()
    assert "\r" in stream.getvalue() and "epoch 1/2" not in stream.getvalue()


# -- evaluation cost -----------------------------------------------------------------------


def test_train_eval_subset_is_seeded_sized_and_leaves_the_training_rng_alone():
    from msam_lab.analysis.metrics import train_eval_subset

    data = load_dataset("synthetic", n_samples=300, n_modalities=2).train
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = train_eval_subset(data, 50, seed=4)
    assert torch.equal(torch.rand(1), expected_next)
    b, c = train_eval_subset(data, 50, seed=4), train_eval_subset(data, 50, seed=5)
    assert len(a) == 50 and torch.equal(a.labels, b.labels) and torch.equal(a.inputs["m0"], b.inputs["m0"])
    assert not torch.equal(a.inputs["m0"], c.inputs["m0"])
    assert train_eval_subset(data, 0, seed=4) is data and train_eval_subset(data, 10**6, seed=4) is data


def test_eval_every_evaluates_epoch_zero_every_nth_and_the_last(tmp_path):
    run = msam_lab.train({**SYN, "method": "joint", "epochs": 5, "eval_every": 2}, out=tmp_path / "r", quiet=True)
    assert list(run.epochs["epoch"]) == [0, 2, 4, 5]
    assert run.summary["test_acc"] == run.epochs["test_acc"].iloc[-1]


def test_channels_last_evaluation_gives_the_same_numbers_and_restores_the_model(monkeypatch):
    import contextlib

    from msam_lab.analysis import metrics
    from msam_lab.models.multimodal import channels_last_on_cpu

    splits = load_dataset("av-digits")
    torch.manual_seed(0)
    model = model_from_spec(_model_spec(splits, resolve(None))).double()  # the default CNN + MLP model
    part = splits.test.subset(range(100))
    data = MultimodalData({m: x.double() for m, x in part.inputs.items()}, part.labels, part.num_classes)
    assert any(p.dim() == 4 for p in model.parameters())
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}

    with channels_last_on_cpu(model):
        assert any(not p.is_contiguous() for p in model.parameters() if p.dim() == 4)
    after = model.state_dict()
    for k, (v, stride) in before.items():  # values and layout exactly as before
        assert torch.equal(after[k], v) and after[k].stride() == stride, k

    fast = metrics.evaluate(model, data, batch_size=32)  # converts inside
    monkeypatch.setattr(metrics, "channels_last_on_cpu", lambda m: contextlib.nullcontext(m))
    slow = metrics.evaluate(model, data, batch_size=32)  # the default layout throughout
    assert fast.keys() == slow.keys()
    for key, value in fast.items():
        if isinstance(value, float):
            assert abs(value - slow[key]) < 1e-9, key
        else:
            assert value == slow[key], key
