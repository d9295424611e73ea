"""ipywidgets dashboards built on ``msam_lab.viz`` (the widgets hold controls and state only; every
figure comes from a ``viz`` function and is moved into a live ``plotly.graph_objects.FigureWidget``
with ``viz.refresh``, so a slider updates the figure in place).

    from msam_lab.widgets import DominanceExplorer, LandscapeExplorer, TeachingLab
    DominanceExplorer({"Joint": joint, "M-SAM": msam})          # step range, smoothing, modality toggles
    LandscapeExplorer({"Joint": joint, "M-SAM": msam}, grid=11)  # run, epoch, modality, 1-D/2-D, shared scale
    TeachingLab()                                              # noise and ρ sliders, retrain button

Each dashboard is itself a ``VBox``: put it last in a cell to show it. Their controls are in
``.controls`` (a dict of widgets), so code and tests can drive them.
"""
from .dominance_explorer import DominanceExplorer
from .landscape_explorer import LandscapeExplorer
from .teaching_lab import AV_DIGITS_KNOBS, TeachingLab, synthetic_knobs

__all__ = ["DominanceExplorer", "LandscapeExplorer", "TeachingLab", "AV_DIGITS_KNOBS", "synthetic_knobs"]
