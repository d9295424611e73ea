"""Dominance explorer: Shapley shares over steps with dominance bands and switch markers, and the
linked per-epoch accuracy below; controls for the run, the step range, smoothing, band rule and
which modalities to draw. Figures from ``viz.shares_over_steps``.

``DominanceExplorer(run, follow=True)`` follows runs that are still training (``widgets.follow``):
every ``interval`` seconds it reads them again and extends the figure in place; a step range that
reaches the last step grows with the run. It stops by itself when the runs end (``.stop()``)."""

from __future__ import annotations

import threading

import ipywidgets as W
import plotly.graph_objects as go

from msam_lab import viz
from msam_lab.viz.common import as_runs, modalities_of
from msam_lab.widgets.follow import DEFAULT_INTERVAL, Follower, follow_status, ready, waiting_figure


class DominanceExplorer(W.VBox):
    """``DominanceExplorer(runs)``: ``runs`` is a Run, a list of runs/run folders or ``{label: run}``.

    ``follow=True``: runs still training are re-read every ``interval`` seconds and the figure grows
    in place (``.follower``, ``.following``, ``.stop()``, ``.wait()``)."""

    def __init__(
        self,
        runs,
        smooth: int = 1,
        split: str = "test",
        accuracy: bool = True,
        follow: bool = False,
        interval: float = DEFAULT_INTERVAL,
        **kwargs,
    ):
        self.runs = as_runs(runs)
        self.split = split
        self._lock = threading.RLock()
        self._holding = False  # True while the controls are moved by code (no redraw per change)
        self._switches = None  # (first step, last step, switches) shown in the status line
        self.follower = Follower(self.runs, self._on_grow, interval, on_stop=self._show_status)
        first = next(iter(self.runs))
        self.controls = {
            "run": W.Dropdown(options=list(self.runs), value=first, description="run"),
            "steps": W.IntRangeSlider(description="steps", continuous_update=False, layout=W.Layout(width="480px")),
            "smooth": W.IntSlider(
                value=smooth,
                min=1,
                max=50,
                description="smoothing",
                continuous_update=False,
                tooltip="centred rolling-mean window (steps)",
            ),
            "bands": W.ToggleButtons(
                options=[("dominant per step", "raw"), ("argmax of smoothed", "smoothed"), ("no bands", None)],
                value="raw",
                description="bands",
                style={"button_width": "auto"},
            ),
            "accuracy": W.Checkbox(value=accuracy, description="linked accuracy view"),
            # clustered switches (often all in the first steps) spread out on a log step axis
            "log_steps": W.Checkbox(value=False, description="log step axis"),
        }
        self.modality_box = W.HBox()
        self.figure = go.FigureWidget()
        self.status = W.HTML()
        self._set_run_controls()
        for key in ("steps", "smooth", "bands", "accuracy", "log_steps"):
            self.controls[key].observe(self._on_change, names="value")
        self.controls["run"].observe(self._on_run, names="value")
        c = self.controls
        super().__init__(
            [
                W.HBox([c["run"], c["smooth"]]),
                c["steps"],
                W.HBox([c["bands"], c["accuracy"], c["log_steps"]]),
                W.HBox([W.Label("modalities:"), self.modality_box]),
                self.figure,
                self.status,
            ],
            **kwargs,
        )
        self.update()
        if follow:
            self.follower.start()
            self._show_status()

    @property
    def following(self) -> bool:
        return self.follower.following

    def stop(self) -> None:
        """Stop following; the figure keeps what it shows."""
        self.follower.stop()
        self._show_status()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until following has stopped (the runs ended) or ``timeout``; True if it has."""
        done = self.follower.wait(timeout)
        self._show_status()
        return done

    def _on_grow(self, runs: dict) -> None:
        """The follower read the runs again: extend the step range if it reached the end, redraw."""
        with self._lock:
            slider = self.controls["steps"]
            at_end = slider.value[1] >= slider.max
            self.runs.update(runs)
            self._holding = True
            try:
                steps = self.run.steps
                if len(steps) and "step" in steps:
                    lo, hi = int(steps["step"].min()), int(steps["step"].max())
                    with slider.hold_trait_notifications():
                        slider.max = max(hi, slider.max)
                        slider.min = min(lo, slider.min)
                        if at_end:
                            slider.value = (slider.value[0], hi)
            finally:
                self._holding = False
            self.update()

    @property
    def run(self):
        return self.runs[self.controls["run"].value]

    def _set_run_controls(self) -> None:
        steps = self.run.steps
        slider = self.controls["steps"]
        lo, hi = (int(steps["step"].min()), int(steps["step"].max())) if ready(self.run) else (0, 0)
        with slider.hold_trait_notifications():
            slider.min, slider.max = min(lo, slider.min), max(hi, slider.max)
            slider.value = (lo, hi)
            slider.min, slider.max = lo, hi
        self._set_modality_toggles()

    def _set_modality_toggles(self) -> None:
        toggles = []
        for m in modalities_of(self.run):
            t = W.ToggleButton(value=True, description=m, layout=W.Layout(width="auto"))
            t.observe(self._on_change, names="value")
            toggles.append(t)
        self.modality_box.children = toggles
        self.controls["modalities"] = {t.description: t for t in toggles}

    def selected_modalities(self) -> list[str]:
        return [m for m, t in self.controls["modalities"].items() if t.value]

    def _on_run(self, change) -> None:
        with self._lock:
            self._holding = True
            try:
                self._set_run_controls()
            finally:
                self._holding = False
            self.update()

    def _on_change(self, change) -> None:
        if not self._holding:
            self.update()

    def update(self) -> None:
        """Redraw from the current control values."""
        with self._lock:
            c = self.controls
            if not ready(self.run):
                viz.refresh(self.figure, waiting_figure({c["run"].value: self.run}))
                self._switches = None
            else:
                fig = viz.shares_over_steps(
                    self.run,
                    smooth=c["smooth"].value,
                    modalities=self.selected_modalities(),
                    step_range=c["steps"].value,
                    bands=c["bands"].value,
                    accuracy=c["accuracy"].value,
                    split=self.split,
                    log_steps=c["log_steps"].value,
                )
                viz.refresh(self.figure, fig)
                lo, hi = c["steps"].value
                steps = self.run.steps
                sw = viz.switch_points(steps[(steps["step"] >= lo) & (steps["step"] <= hi)])
                when = (int(sw["step"].min()), int(sw["step"].max())) if len(sw) else (None, None)
                self._switches = (lo, hi, len(sw), *when)
            self._show_status()

    def _show_status(self) -> None:
        if self._switches is None:
            text = "no steps recorded yet"
        else:
            lo, hi, n, first, last = self._switches
            noun = "switch" if n == 1 else "switches"
            text = f"steps {lo}–{hi}: <b>{n}</b> {noun} of the dominant modality (per-step, unsmoothed)"
            if n:  # when, not only how many
                text += f", the first at step {first}, the last at step {last}"
        live = [label for label, run in self.runs.items() if getattr(run, "state", "finished") != "finished"]
        if live or self.follower.following:
            text += "<br>" + follow_status(self.follower, {label: self.runs[label] for label in live})
        self.status.value = text
