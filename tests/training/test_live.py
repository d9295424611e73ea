"""Following runs while they train (msam_lab.widgets.follow): the Follower's poll, figures that grow
in place while a real run trains, following that stops by itself, and the teaching lab's per-epoch
redraws. Runs are tiny synthetic ones; the trainer is paused at epoch ends (``on_epoch``) so each
poll sees a known state without sleeping."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("plotly")
pytest.importorskip("ipywidgets")

from msam_lab import notebook_utils as nbu  # noqa: E402
from msam_lab import viz  # noqa: E402
from msam_lab.config import Config  # noqa: E402
from msam_lab.runs.reader import load_run  # noqa: E402
from msam_lab.runs.writer import RunWriter  # noqa: E402
from msam_lab.training.loop import train  # noqa: E402
from msam_lab.widgets import DominanceExplorer, Follower, LiveCurves, LiveFigure  # noqa: E402

pytestmark = pytest.mark.slow  # runs followed while they train in other processes

DATA = {"dataset": "synthetic", "data": {"n_modalities": 2, "n_samples": 240}}
SPEC = {
    "input_shapes": {"m0": [4], "m1": [4]},
    "num_classes": 3,
    "fusion": "late_sum",
    "encoders": {},
    "feature_dim": 8,
    "hidden_dim": 16,
}


def step_row(step, epoch=1):
    share = 0.8 if step % 3 else 0.3
    return {
        "step": step,
        "epoch": epoch,
        "loss": 1.0 / (step + 1),
        "dominant": "m0" if share > 0.5 else "m1",
        "shapley_m0": share,
        "share_m0": share,
        "shapley_m1": 1 - share,
        "share_m1": 1 - share,
    }


def epoch_row(epoch):
    row = {"epoch": epoch, "test_dominant": "m0", "wall_time": float(epoch)}
    for split in ("train", "test"):
        row.update(
            {
                f"{split}_loss": 1.0 - 0.1 * epoch,
                f"{split}_acc": 0.3 + 0.1 * epoch,
                f"{split}_acc_m0": 0.3,
                f"{split}_acc_m1": 0.1,
                f"{split}_share_m0": 0.9,
                f"{split}_share_m1": 0.1,
            }
        )
    return row


@pytest.fixture
def writer(tmp_path):
    """A run being written by this process (it holds the lock), with epoch 0 and three steps."""
    w = RunWriter(tmp_path / "run", Config(dataset="synthetic", epochs=2).to_dict(), SPEC, flush_every=0)
    w.log_epoch(epoch_row(0))
    for s in range(3):
        w.log_step(step_row(s))
    yield w
    if w.lock.held:
        w.finish({"method": "msam"})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- the poll, unit level


def test_poll_reports_no_change_until_the_run_writes(writer):
    redraws = []
    f = Follower({"run": load_run(writer.out)}, redraws.append, interval=0.05)
    assert f.live == ["run"]
    assert f.poll() is False and f.poll() is False  # nothing new: no redraw
    assert redraws == []
    writer.write_status()  # a heartbeat alone is no change either
    assert f.poll() is False
    writer.log_step(step_row(3))
    assert f.poll() is True
    assert len(redraws) == 1 and len(redraws[0]["run"].steps) == 4
    assert f.poll() is False
    writer.finish({"method": "msam"})
    assert f.poll() is True  # the state changed: drawn once more
    assert f.live == [] and redraws[-1]["run"].state == "finished"
    assert f.poll() is False  # a finished run is not read again


def test_a_finished_run_is_not_followed(tmp_path):
    w = RunWriter(tmp_path / "done", Config(dataset="synthetic").to_dict(), SPEC, flush_every=0)
    w.log_epoch(epoch_row(0))
    w.log_step(step_row(0))
    w.finish({"method": "msam"})
    live = LiveFigure(viz.accuracy_curves, tmp_path / "done", interval=0.05)
    assert not live.following and live.follower.poll() is False
    assert len(live.figure.data) >= 1 and "finished" in live.status.value


def test_a_killed_trainer_ends_following(writer):
    redraws = []
    f = Follower({"run": load_run(writer.out)}, redraws.append, interval=0.05).start()
    assert f.following
    (writer.out / "lock").write_text(
        json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": time.time()})
    )
    assert f.wait(timeout=10), "following did not stop after the trainer died"
    assert redraws and redraws[-1]["run"].state == "interrupted"
    assert redraws[-1]["run"].status["stale_lock"]
    writer.lock.held = False  # the dead trainer's lock: not ours to remove


def test_stop_ends_following(writer):
    live = LiveCurves(writer.out, interval=0.05)
    assert live.following and "following" in live.status.value
    live.stop()
    assert not live.following and not live.follower._thread.is_alive()
    assert "following" not in live.status.value


def test_a_run_without_rows_shows_a_waiting_figure_then_its_curves(tmp_path):
    w = RunWriter(tmp_path / "new", Config(dataset="synthetic").to_dict(), SPEC, flush_every=0)
    try:
        live = LiveCurves(tmp_path / "new", follow=False)
        ex = DominanceExplorer(tmp_path / "new")
        fig = live.accuracy_figure
        assert "waiting" in fig.layout.annotations[0].text and not fig.data
        assert "waiting" in ex.figure.layout.annotations[0].text
        w.log_epoch(epoch_row(0))
        w.log_step(step_row(0))
        assert live.follower.poll() is True and ex.follower.poll() is True
        assert live.accuracy_figure is fig and len(fig.data) == 3  # fused, m0, m1
        assert not any("waiting" in (a.text or "") for a in fig.layout.annotations)
        assert [d for d in ex.figure.data if (d.meta or {}).get("kind") == "share"]
    finally:
        w.finish({"method": "msam"})


# ---------------------------------------------------------------- a real run, followed while it trains


def until(condition, timeout: float = 10.0) -> bool:
    """Wait for a following thread to catch up (a few of its polls), checking every 20 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def shares(explorer):
    return [d for d in explorer.figure.data if (d.meta or {}).get("kind") == "share"][0]


def test_figures_grow_in_place_while_a_real_run_trains(tmp_path):
    out = tmp_path / "live"
    reached = {1: threading.Event(), 2: threading.Event()}
    release = {1: threading.Event(), 2: threading.Event()}
    errors = []

    def pause(row):  # hold the trainer at the end of epochs 1 and 2
        if row["epoch"] in reached:
            reached[row["epoch"]].set()
            assert release[row["epoch"]].wait(60)

    def run():
        try:
            train(
                {**DATA, "method": "joint", "epochs": 3, "batch_size": 32, "flush_every": 0},
                out=out,
                quiet=True,
                on_epoch=pause,
            )
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    trainer = threading.Thread(target=run, daemon=True)
    trainer.start()
    try:
        assert reached[1].wait(120), errors
        per_epoch = len(load_run(out).steps)
        assert per_epoch > 0
        curves = LiveCurves(out, follow=False)  # polled by hand below
        explorer = DominanceExplorer(out, follow=True, interval=0.2)  # polled by its own thread
        assert explorer.following and not curves.following
        fig = curves.loss_figure
        raw = lambda: fig.data[0]  # noqa: E731 - per-step loss, raw
        uid, n1 = raw().uid, len(raw().x)
        assert n1 == per_epoch and len(curves.accuracy_figure.data[0].x) == 2  # epochs 0 and 1
        assert curves.follower.poll() is False  # paused: nothing new

        release[1].set()
        assert reached[2].wait(60), errors
        assert curves.follower.poll() is True
        assert curves.loss_figure is fig and raw().uid == uid  # the same widget and trace, updated
        assert len(raw().x) == 2 * per_epoch and list(raw().x) == list(range(2 * per_epoch))
        assert len(curves.accuracy_figure.data[0].x) == 3
        assert curves.follower.live  # still running
        # the explorer's own thread reaches the same state while the trainer is held here
        assert until(lambda: len(shares(explorer).x) == 2 * per_epoch), len(shares(explorer).x)
        assert explorer.following and explorer.controls["steps"].value == (0, 2 * per_epoch - 1)

        release[2].set()
        trainer.join(60)
        assert not trainer.is_alive() and not errors, errors
        assert curves.follower.poll() is True  # the last rows and the state
        assert len(raw().x) == 3 * per_epoch and raw().uid == uid
        assert curves.follower.live == [] and "finished" in curves.status.value
        assert curves.follower.poll() is False

        assert explorer.wait(timeout=10), "the explorer did not stop following the finished run"
        assert len(shares(explorer).x) == 3 * per_epoch  # the full range: the slider grew with it
        assert explorer.controls["steps"].value == (0, 3 * per_epoch - 1)
        assert explorer.follower.redraws >= 2  # epochs 2 and 3 arrived while it followed
    finally:
        for e in release.values():
            e.set()
        trainer.join(60)


def test_start_run_trains_in_the_background_and_joins(tmp_path):
    cfg = {**DATA, "method": "joint", "epochs": 2, "batch_size": 32}
    job = nbu.start_run("bg", cfg, root=tmp_path)
    assert job.path == nbu.run_path("bg", cfg, tmp_path) and (job.path / "status.json").is_file()
    run = job.join(timeout=120)
    assert run.finished and not job.running
    again = nbu.start_run("bg", cfg, root=tmp_path)  # finished: reused, no thread
    assert again.thread is None and again.join().path == run.path
    with pytest.raises(Exception, match="unknown|method"):
        nbu.start_run("bad", {**cfg, "method": "no-such-method"}, root=tmp_path)


# ---------------------------------------------------------------- the teaching lab


def test_teaching_lab_redraws_after_every_epoch_while_it_trains(tmp_path):
    from msam_lab.widgets import TeachingLab, synthetic_knobs

    lab = TeachingLab({**DATA, "batch_size": 32}, knobs=synthetic_knobs(), epochs=2, root=tmp_path)
    seen = {"accuracy": [], "dominance": []}

    def watch(name, fig):
        def record(change):  # points of the first line: fused accuracy / the first modality's share
            lines = [d for d in fig.data if (d.meta or {}).get("kind", "share") == "share" and d.x is not None]
            seen[name].append(len(lines[0].x) if lines else 0)

        fig.observe(record, names=[t for t in fig.trait_names() if t.startswith("_py2js_")])

    watch("accuracy", lab.accuracy_figure)
    watch("dominance", lab.dominance_figure)
    run = lab.retrain()
    assert run.finished and lab.live_redraws == 3 and lab.live_error is None  # epochs 0, 1, 2
    growth = list(dict.fromkeys(seen["accuracy"]))
    assert growth == [1, 2, 3], f"accuracy figure points seen while training: {seen['accuracy']}"
    steps = list(dict.fromkeys(n for n in seen["dominance"] if n))
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == len(run.steps)
    assert "done in" in lab.status.value and "trained" in lab.status.value
    lab.retrain()  # tried before: reloaded, no per-epoch redraws
    assert lab.live_redraws == 0 and "reloaded" in lab.status.value


def test_refresh_keeps_the_widget_and_its_traces():
    import plotly.graph_objects as go

    w = go.FigureWidget(go.Figure(go.Scatter(x=[0], y=[1.0], name="a")))
    trace, uid = w.data[0], w.data[0].uid
    viz.refresh(w, go.Figure(go.Scatter(x=[0, 1], y=[1.0, 0.5], name="a")))
    assert w.data[0] is trace and trace.uid == uid and list(trace.x) == [0, 1]  # updated, not replaced


def test_refresh_keeps_the_synced_state_current_for_views_made_later():
    """Voilà builds its views after the notebook ran, a reloaded page rebuilds them: both start from the
    widget's synced state, which must hold the figure as it is now, not as it was first displayed."""
    import plotly.graph_objects as go

    w = go.FigureWidget()
    w._repr_mimebundle_()  # displayed while still empty
    viz.refresh(w, go.Figure(go.Scatter(x=[0], y=[1.0], name="a")))
    viz.refresh(w, go.Figure(go.Scatter(x=[0, 1, 2], y=[1.0, 0.5, 0.2], name="a")))
    if hasattr(w, "_widget_data"):  # plotly >= 6
        assert [list(t["x"]) for t in w._widget_data] == [[0, 1, 2]]
