"""Landscape explorer: pick a run (or all side by side), a checkpoint epoch, a modality, 1-D or 2-D,
and whether runs share one colour scale. Surfaces come from ``msam_lab.landscape.landscape_for_run``
(computed on first use, saved under ``<run>/landscapes/``, reused afterwards); figures from
``viz.curves_1d``, ``viz.surface_figure`` and ``viz.contour_grid``."""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go

from msam_lab import viz
from msam_lab.notebook_utils import ensure_landscape
from msam_lab.viz.common import as_runs, modalities_of

ALL = "all runs (side by side)"


class LandscapeExplorer(W.VBox):
    """``LandscapeExplorer(runs, grid=11, n_samples=256)``.

    ``directions``: ``"random"`` (filter-normalised, the same seed for every run and epoch) or
    ``"pca"`` (of each run's trajectory up to the epoch; the trajectory is drawn on 2-D views; needs
    at least 3 checkpoints up to that epoch). ``grid``: points per axis of the 2-D surfaces
    (``grid_1d`` for the 1-D ones). ``span``: coordinate range (±span; for PCA, times the trajectory's
    extent). Other keywords go to ``landscape_for_run``.
    """

    def __init__(
        self,
        runs,
        grid: int = 11,
        grid_1d: int = 21,
        n_samples: int = 256,
        span: float = 1.0,
        directions: str = "random",
        seed: int = 0,
        what: str = "loss",
        log: bool = True,
        landscape_kwargs=None,
        **kwargs,
    ):
        self.runs = as_runs(runs)
        self.settings = dict(
            grid=grid,
            grid_1d=grid_1d,
            n_samples=n_samples,
            span=span,
            directions=directions,
            seed=seed,
            **(landscape_kwargs or {}),
        )
        self._cache: dict = {}
        epochs = self.available_epochs()
        if not epochs:
            raise ValueError(
                "the runs share no checkpoint epoch usable for these directions "
                "(PCA needs >= 3 checkpoints up to the epoch; train with checkpoint_every=1)"
            )
        mods = modalities_of(next(iter(self.runs.values())))
        auto = {"button_width": "auto"}
        metric_options = [("fused model", "fused")] + [(f"{m} alone (others zeroed)", m) for m in mods]
        self.controls = {
            "run": W.Dropdown(options=[*self.runs, ALL], value=next(iter(self.runs)), description="run"),
            "epoch": W.SelectionSlider(options=epochs, value=epochs[-1], description="epoch", continuous_update=False),
            "modality": W.ToggleButtons(options=metric_options, value="fused", description="modality", style=auto),
            "what": W.ToggleButtons(
                options=[("loss", "loss"), ("accuracy", "acc")], value=what, description="metric", style=auto
            ),
            "dim": W.ToggleButtons(options=[("1-D", 1), ("2-D", 2)], value=2, description="view", style=auto),
            "shared": W.Checkbox(
                value=True, description="shared colour scale across runs", indent=False, layout=W.Layout(width="auto")
            ),
            "log": W.Checkbox(value=log, description="log10 scale", indent=False, layout=W.Layout(width="auto")),
        }
        self.figure = go.FigureWidget()
        self.progress = W.IntProgress(
            min=0, max=1, value=0, description="computing", bar_style="info", layout=W.Layout(visibility="hidden")
        )
        self.status = W.HTML()
        for c in self.controls.values():
            c.observe(self._on_change, names="value")
        c = self.controls
        super().__init__(
            [
                W.HBox([c["run"], c["epoch"]]),
                c["modality"],
                W.HBox([c["what"], c["dim"]]),
                W.HBox([c["shared"], c["log"]]),
                self.progress,
                self.figure,
                self.status,
            ],
            **kwargs,
        )
        self.update()

    # ------------------------------------------------------------ surfaces
    def available_epochs(self) -> list[int]:
        common = None
        for run in self.runs.values():
            eps = set(run.checkpoints)
            if self.settings["directions"] == "pca":
                ordered = sorted(run.checkpoints)
                eps = {e for i, e in enumerate(ordered) if i >= 2}
            common = eps if common is None else common & eps
        return sorted(common or [])

    def surface(self, label: str, epoch: int, dim: int):
        """The surface of run ``label`` at ``epoch`` (computed once, then read from the run folder)."""
        key = (label, epoch, dim)
        if key not in self._cache:
            s = dict(self.settings)
            grid_1d, grid_2d = s.pop("grid_1d"), s.pop("grid")
            self.progress.layout.visibility = "visible"
            self.progress.description = f"{label} e{epoch}"

            def progress(done, total):
                self.progress.max, self.progress.value = total, done

            try:
                self._cache[key] = ensure_landscape(
                    self.runs[label],
                    dim=dim,
                    grid=grid_1d if dim == 1 else grid_2d,
                    epoch=epoch,
                    progress=progress,
                    **s,
                )
            finally:
                self.progress.layout.visibility = "hidden"
        return self._cache[key]

    def precompute(self, dims=(1, 2)) -> None:
        """Compute every (run, epoch, dim) surface now (so the sliders respond instantly)."""
        for label in self.runs:
            for epoch in self.controls["epoch"].options:
                for dim in dims:
                    self.surface(label, epoch, dim)

    # ------------------------------------------------------------ drawing
    def metric(self) -> str:
        c = self.controls
        return viz.metric_key(c["modality"].value, c["what"].value)

    def build_figure(self):
        """The plotly figure for the current control values (also used by ``update``)."""
        c = self.controls
        epoch, dim, metric, log = c["epoch"].value, c["dim"].value, self.metric(), c["log"].value
        labels = list(self.runs) if c["run"].value == ALL else [c["run"].value]
        shown = {f"{label}, epoch {epoch}": self.surface(label, epoch, dim) for label in labels}
        if c["shared"].value:  # the range over every run at this epoch, shown or not
            every = [self.surface(label, epoch, dim) for label in self.runs]
            lo, hi = viz.shared_z(every, metric, log=log)
            scope = f"shared across {', '.join(self.runs)}"
        else:
            lo, hi = viz.shared_z(shown.values(), metric, log=log)
            scope = "this view only"
        self.status.value = (
            f"{'log10 ' if log else ''}{viz.metric_title(metric)} — colour/value range "
            f"[{lo:.3g}, {hi:.3g}] ({scope}); "
            f"{self.settings['directions']} directions, {self.settings['n_samples']} test samples"
        )
        if dim == 1:
            pad = 0.03 * (hi - lo)
            return viz.curves_1d(shown, metrics=[metric], what=c["what"].value, ymin=lo - pad, ymax=hi + pad, log=log)
        if len(shown) == 1:
            return viz.surface_figure(next(iter(shown.values())), metric, zmin=lo, zmax=hi, log=log)
        return viz.contour_grid(shown, metric, zmin=lo, zmax=hi, log=log)

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        viz.refresh(self.figure, self.build_figure())
