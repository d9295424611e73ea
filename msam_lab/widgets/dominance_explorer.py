"""Dominance explorer: Shapley shares over steps with dominance bands and switch markers, and the
linked per-epoch accuracy below; controls for the run, the step range, smoothing, band rule and
which modalities to draw. Figures from ``viz.shares_over_steps``."""
from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go

from .. import viz
from ..viz.common import as_runs, modalities_of


class DominanceExplorer(W.VBox):
    """``DominanceExplorer(runs)``: ``runs`` is a Run, a list of runs/run folders or ``{label: run}``."""

    def __init__(self, runs, smooth: int = 1, split: str = "test", accuracy: bool = True, **kwargs):
        self.runs = as_runs(runs)
        self.split = split
        first = next(iter(self.runs))
        self.controls = {
            "run": W.Dropdown(options=list(self.runs), value=first, description="run"),
            "steps": W.IntRangeSlider(description="steps", continuous_update=False,
                                      layout=W.Layout(width="480px")),
            "smooth": W.IntSlider(value=smooth, min=1, max=50, description="smoothing",
                                  continuous_update=False, tooltip="centred rolling-mean window (steps)"),
            "bands": W.ToggleButtons(options=[("dominant per step", "raw"), ("argmax of smoothed", "smoothed"),
                                              ("no bands", None)], value="raw", description="bands",
                                     style={"button_width": "auto"}),
            "accuracy": W.Checkbox(value=accuracy, description="linked accuracy view"),
        }
        self.modality_box = W.HBox()
        self.figure = go.FigureWidget()
        self.status = W.HTML()
        self._set_run_controls()
        for key in ("steps", "smooth", "bands", "accuracy"):
            self.controls[key].observe(self._on_change, names="value")
        self.controls["run"].observe(self._on_run, names="value")
        c = self.controls
        super().__init__([W.HBox([c["run"], c["smooth"]]), c["steps"], W.HBox([c["bands"], c["accuracy"]]),
                          W.HBox([W.Label("modalities:"), self.modality_box]), self.figure, self.status], **kwargs)
        self.update()

    @property
    def run(self):
        return self.runs[self.controls["run"].value]

    def _set_run_controls(self) -> None:
        steps = self.run.steps["step"]
        slider = self.controls["steps"]
        lo, hi = int(steps.min()), int(steps.max())
        with slider.hold_trait_notifications():
            slider.min, slider.max = min(lo, slider.min), max(hi, slider.max)
            slider.value = (lo, hi)
            slider.min, slider.max = lo, hi
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
        self._set_run_controls()
        self.update()

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        """Redraw from the current control values."""
        c = self.controls
        fig = viz.shares_over_steps(self.run, smooth=c["smooth"].value, modalities=self.selected_modalities(),
                                    step_range=c["steps"].value, bands=c["bands"].value,
                                    accuracy=c["accuracy"].value, split=self.split)
        viz.refresh(self.figure, fig)
        lo, hi = c["steps"].value
        sw = viz.switch_points(self.run.steps[(self.run.steps["step"] >= lo) & (self.run.steps["step"] <= hi)])
        self.status.value = (f"steps {lo}–{hi}: <b>{len(sw)}</b> switches of the dominant modality "
                             f"(per-step, unsmoothed)")
