"""ipywidgets dashboards built on ``msam_lab.viz`` (the widgets hold controls and state only; every
figure comes from a ``viz`` function and is moved into a live ``plotly.graph_objects.FigureWidget``
with ``viz.refresh``, so a slider updates the figure in place).

    from msam_lab.widgets import DominanceExplorer, LandscapeExplorer, LiveCurves, LiveFigure, TeachingLab
    DominanceExplorer({"Joint": joint, "M-SAM": msam})          # step range, smoothing, modality toggles
    DominanceExplorer(run, follow=True)                        # ... following a run while it trains
    LiveCurves(run)                                            # loss and accuracy curves, growing as it trains
    LiveFigure(viz.tau_curves, run)                            # any viz function of runs, following them
    LandscapeExplorer({"Joint": joint, "M-SAM": msam}, grid=11)  # run, epoch, modality, 1-D/2-D, shared scale
    TeachingLab()                                              # noise and ρ sliders, retrain button

Each dashboard is itself a ``VBox``: put it last in a cell to show it. Their controls are in
``.controls`` (a dict of widgets), so code and tests can drive them. Following (``follow.py``):
a ``Follower`` re-reads running runs every ``interval`` seconds on a thread and redraws in place;
it stops by itself when the runs end, or on ``.stop()``.
"""

from msam_lab.widgets.dominance_explorer import DominanceExplorer
from msam_lab.widgets.follow import Follower, LiveCurves, LiveFigure
from msam_lab.widgets.landscape_explorer import LandscapeExplorer
from msam_lab.widgets.teaching_lab import (
    AV_DIGITS_KNOBS,
    AV_DIGITS_PRESETS,
    TeachingLab,
    lab_methods,
    synthetic_knobs,
)

__all__ = [
    "DominanceExplorer",
    "Follower",
    "LandscapeExplorer",
    "LiveCurves",
    "LiveFigure",
    "TeachingLab",
    "AV_DIGITS_KNOBS",
    "AV_DIGITS_PRESETS",
    "lab_methods",
    "synthetic_knobs",
]
