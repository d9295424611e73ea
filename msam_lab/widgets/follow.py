"""Following a run while it trains: figures that re-read it every few seconds and grow in place.

    from msam_lab.widgets import DominanceExplorer, LiveCurves, LiveFigure
    LiveCurves(run)                              # loss (viz.training_curves) + accuracy (viz.accuracy_curves)
    LiveFigure(viz.tau_curves, run, form="acc")  # any viz function of runs, followed
    DominanceExplorer(run, follow=True)          # the dominance explorer, following

``run`` is a Run, a run folder, a list of them or ``{label: run}``; ``interval`` (seconds, default
2) sets how often the folders are looked at. Each view stops following by itself once none of its
runs is running any more (after drawing the final rows); ``.stop()`` stops it sooner, ``.wait()``
blocks until it has stopped. A run that is not running (finished, failed, interrupted) is drawn
once and not followed.

The mechanism, shared by every followed figure, is ``Follower(runs, redraw, interval)``:

- ``poll()`` checks each running run's files (size and mtime of status.json, steps.csv,
  epochs.csv, summary.json); when they changed it reads the run again, and when its rows or its
  state changed it calls ``redraw(runs)`` and returns True. A trainer killed without a word shows
  only in its lock, so an unchanged running run also has its state re-checked (``read_status``).
- ``start()`` calls ``poll()`` on a daemon thread every ``interval`` seconds. ipywidgets sends
  comm messages from any thread, so in JupyterLab (and Voilà) the figures update while the kernel
  is busy with other cells. The thread ends when no run is running or on ``stop()``.

Redraws go through ``viz.refresh``: the existing ``go.FigureWidget``'s traces are updated in place
inside one ``batch_update()`` (the widget is never replaced). Tests call ``poll()`` directly.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go

from msam_lab import viz
from msam_lab.runs.reader import EPOCHS, STATUS, STEPS, SUMMARY, load_run, read_status
from msam_lab.runs.status import format_age
from msam_lab.viz.common import as_runs

DEFAULT_INTERVAL = 2.0
MAX_ERRORS = 3  # consecutive failed polls (a file caught mid-replace, a vanished folder) before giving up
FILES = (STATUS, STEPS, EPOCHS, SUMMARY)


def _signature(path: Path) -> tuple:
    """Size and mtime of the files a trainer writes: changes whenever it writes anything."""
    sig = []
    for name in FILES:
        try:
            st = (Path(path) / name).stat()
            sig.append((st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


def _content(run) -> tuple:
    """What a redraw depends on: the number of step and epoch rows, and the state."""
    return len(run.steps), len(run.epochs), getattr(run, "state", None)


def is_running(run) -> bool:
    return getattr(run, "state", None) == "running"


def ready(run) -> bool:
    """True once a run has step and epoch rows to draw (epoch 0 is written before the first step)."""
    return len(run.steps) > 0 and "step" in run.steps and len(run.epochs) > 0 and "epoch" in run.epochs


class Follower:
    """``Follower({label: run}, redraw, interval)``: re-reads the running runs and calls ``redraw(runs)``
    when they grew. ``poll()`` once (returns whether anything changed), or ``start()`` a thread that
    polls every ``interval`` seconds until no run is running or ``stop()`` is called."""

    def __init__(self, runs: dict, redraw, interval: float = DEFAULT_INTERVAL, on_stop=None):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.runs = dict(runs)
        self.redraw = redraw
        self.on_stop = on_stop  # called (on the thread) when following ends by itself or by stop()
        self.interval = float(interval)
        self.polls = 0  # polls done
        self.redraws = 0  # polls that found a change (and redrew)
        self.updated: float | None = None  # time.time() of the last redraw
        self.error: BaseException | None = None
        self._signatures: dict = {}  # empty: the first poll reads every running run again
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._active = False

    # -- state -----------------------------------------------------------------------------
    @property
    def live(self) -> list[str]:
        """Labels of the runs still running (as last read)."""
        return [label for label, run in self.runs.items() if is_running(run)]

    @property
    def following(self) -> bool:
        """True while the polling thread polls."""
        return self._active and self._thread is not None and self._thread.is_alive()

    # -- one poll ----------------------------------------------------------------------------
    def poll(self) -> bool:
        """Read every running run whose files changed; redraw and return True if rows or a state changed."""
        with self._poll_lock:  # the thread and a direct call never interleave
            self.polls += 1
            changed = False
            for label, run in list(self.runs.items()):
                if not is_running(run):
                    continue
                path = Path(run.path)
                sig = _signature(path)  # taken before reading: a write in between shows next time
                if sig == self._signatures.get(label) and read_status(path).get("state") == "running":
                    continue
                new = load_run(path)
                self._signatures[label] = sig
                if _content(new) != _content(run):
                    changed = True
                self.runs[label] = new
            if changed:
                self.redraw(dict(self.runs))
                self.redraws += 1
                self.updated = time.time()
            return changed

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> "Follower":
        """Poll every ``interval`` seconds on a daemon thread (no-op when already following or nothing runs)."""
        if self.following or not self.live:
            return self
        self._stop.clear()
        self._active = True
        self._thread = threading.Thread(target=self._loop, name="msam-lab-follow", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        errors = 0
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.poll()
                    errors = 0
                except Exception as err:  # noqa: BLE001 - reported on .error; a torn read is retried
                    self.error = err
                    errors += 1
                    if errors >= MAX_ERRORS:
                        break
                if not self.live:
                    break
        finally:
            self._active = False
            if self.on_stop is not None:
                try:
                    self.on_stop()
                except Exception as err:  # noqa: BLE001
                    self.error = err

    def stop(self) -> None:
        """Stop following (the figures keep what they show)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10 * self.interval + 5)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until following has stopped (or ``timeout`` seconds); True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.following


# ---------------------------------------------------------------- status line


def describe(label: str, run) -> str:
    """One line about a run's progress: state, epoch of epochs, last step, last heartbeat."""
    st = getattr(run, "status", {}) or {}
    state = getattr(run, "state", "finished")
    epochs = st.get("epochs") or getattr(getattr(run, "config", None), "epochs", None)
    parts = [f"<b>{label}</b>: {state}"]
    if state == "interrupted" and st.get("stale_lock"):
        parts[0] += f" ({st['stale_lock']})"
    if len(run.epochs) and "epoch" in run.epochs:
        parts.append(f"epoch {int(run.epochs['epoch'].max())}/{epochs}")
    if len(run.steps) and "step" in run.steps:
        parts.append(f"step {int(run.steps['step'].max())}")
    if state == "running" and st.get("heartbeat_unix"):
        parts.append(f"heartbeat {format_age(time.time() - float(st['heartbeat_unix']))} ago")
    return ", ".join(parts)


def follow_status(follower: Follower | None, runs: dict) -> str:
    """HTML for a view's status line: each run's progress and whether it is followed."""
    lines = [describe(label, run) for label, run in runs.items()]
    if follower is not None:
        if follower.following:
            lines.append(
                f"following every {follower.interval:g} s"
                + (f"; updated {datetime.fromtimestamp(follower.updated):%H:%M:%S}" if follower.updated else "")
            )
        elif follower.error is not None:
            lines.append(
                f"<span style='color:#b00'>stopped following: {type(follower.error).__name__}: {follower.error}</span>"
            )
    return "<br>".join(lines)


def waiting_figure(runs: dict) -> go.Figure:
    """An empty figure saying which runs have no rows yet."""
    names = ", ".join(label for label, run in runs.items() if not ready(run)) or "the run"
    fig = go.Figure()
    fig.add_annotation(
        text=f"waiting for the first rows of {names} …",
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font=dict(size=14, color="#666"),
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return viz.style.style_plotly(fig, None, height=200)


# ---------------------------------------------------------------- live figures


class LiveFigure(W.VBox):
    """``LiveFigure(plot, runs, interval=2.0, follow=True, **kwargs)``: the ``FigureWidget`` of
    ``plot(runs, **kwargs)`` (any plotly ``viz`` function of runs), redrawn in place while the runs train.

    ``plots`` instead of ``plot``: a dict ``{name: callable(runs) -> go.Figure}`` gives one figure
    each, stacked, in ``.figures[name]``. ``.figure`` is the first, ``.status`` the progress line,
    ``.follower`` the ``Follower``; ``.stop()`` / ``.wait()``.
    """

    def __init__(
        self,
        plot=None,
        runs=None,
        interval: float = DEFAULT_INTERVAL,
        follow: bool = True,
        *,
        plots: dict | None = None,
        **kwargs,
    ):
        if (plot is None) == (plots is None):
            raise ValueError("pass one of plot (a viz function) or plots ({name: callable(runs)})")
        if plots is None:
            name = getattr(plot, "__name__", "figure")
            plots = {name: lambda runs, _plot=plot, _kw=kwargs: _plot(runs, **_kw)}
            kwargs = {}
        self.plots = dict(plots)
        self.runs = as_runs(runs)
        self.figures = {name: go.FigureWidget() for name in self.plots}
        self.status = W.HTML()
        self._lock = threading.RLock()
        self.follower = Follower(self.runs, self._on_grow, interval, on_stop=self.update_status)
        super().__init__([*self.figures.values(), self.status], **kwargs)
        self.update()
        if follow:
            self.follower.start()
            self.update_status()

    @property
    def figure(self) -> go.FigureWidget:
        return next(iter(self.figures.values()))

    @property
    def following(self) -> bool:
        return self.follower.following

    def _on_grow(self, runs: dict) -> None:
        with self._lock:
            self.runs = runs
        self.update()

    def update(self) -> None:
        """Redraw every figure from the runs as last read."""
        with self._lock:
            drawable = {label: run for label, run in self.runs.items() if ready(run)}
            for name, make in self.plots.items():
                viz.refresh(self.figures[name], make(drawable) if drawable else waiting_figure(self.runs))
            self.update_status()

    def update_status(self) -> None:
        self.status.value = follow_status(self.follower, self.runs)

    def stop(self) -> None:
        """Stop following; the figures keep what they show."""
        self.follower.stop()
        self.update_status()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until following has stopped (the runs ended) or ``timeout``; True if it has."""
        done = self.follower.wait(timeout)
        self.update_status()
        return done


class LiveCurves(LiveFigure):
    """``LiveCurves(runs, interval=2.0, smooth=10, split="test", per_modality="decomposed")``: the
    training-loss curves (``viz.training_curves``, per step and per epoch) and the fused and
    per-modality accuracy (``viz.accuracy_curves``) of runs, extended in place as they train.
    Figures: ``.loss_figure``, ``.accuracy_figure`` (also ``.figures["training"/"accuracy"]``)."""

    def __init__(
        self,
        runs,
        interval: float = DEFAULT_INTERVAL,
        smooth: int = 10,
        split: str = "test",
        per_modality: str | None = "decomposed",
        follow: bool = True,
        **kwargs,
    ):
        plots = {
            "training": lambda r: viz.training_curves(r, smooth=smooth),
            "accuracy": lambda r: viz.accuracy_curves(r, split=split, per_modality=per_modality),
        }
        super().__init__(runs=runs, interval=interval, follow=follow, plots=plots, **kwargs)

    @property
    def loss_figure(self) -> go.FigureWidget:
        return self.figures["training"]

    @property
    def accuracy_figure(self) -> go.FigureWidget:
        return self.figures["accuracy"]
