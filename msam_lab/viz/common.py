"""Input handling shared by the plotting functions: runs by object, path, list or ``{label: run}``;
and ``refresh``, which moves a freshly built plotly figure into a live ``FigureWidget``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

from msam_lab.runs.reader import load_run
from msam_lab.viz.style import method_label

BACKENDS = ("plotly", "matplotlib")


def check_backend(backend: str) -> str:
    if backend == "mpl":
        backend = "matplotlib"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'plotly' or 'matplotlib', got {backend!r}")
    return backend


def as_run(run):
    """A Run from a Run (or anything with ``.steps``/``.epochs``) or a run directory."""
    if hasattr(run, "epochs") and hasattr(run, "steps"):
        return run

    return load_run(Path(run))


def run_label(run) -> str:

    method = getattr(getattr(run, "config", None), "method", None)
    return method_label(method) if method else getattr(run, "name", "run")


def as_runs(runs) -> dict:
    """``{label: Run}`` from one run, a list of runs/paths, or a mapping label -> run/path.

    Labels default to the method's display name, made unique with the run's folder name.
    """
    if isinstance(runs, Mapping):
        return {str(k): as_run(v) for k, v in runs.items()}
    if not isinstance(runs, (list, tuple)):
        runs = [runs]
    loaded = [as_run(r) for r in runs]
    labels = [run_label(r) for r in loaded]
    out = {}
    for label, run in zip(labels, loaded):
        if labels.count(label) > 1:
            label = f"{label} ({getattr(run, 'name', len(out))})"
        out[label] = run
    return out


def modalities_of(run) -> tuple[str, ...]:
    """The run's modalities (from its model spec, else from the ``share_<m>`` columns of its steps)."""
    try:
        return tuple(run.modalities)
    except (AttributeError, KeyError, TypeError):
        return tuple(c[len("share_") :] for c in run.steps.columns if c.startswith("share_"))


def method_of(run) -> str:
    return getattr(getattr(run, "config", None), "method", "") or ""


def refresh(widget, fig) -> None:
    """Make the ``FigureWidget`` ``widget`` show ``fig`` (a ``go.Figure``), updating it in place.

    Traces are updated one by one when the new figure has the same trace types in the same order
    (the browser keeps its zoom state and redraws only what changed); otherwise they are replaced.
    Either way the widget stays the same object (a followed run's figure grows in it).
    """
    # the widget gives each trace a ``uid``; a fresh figure has none: it is no property of the picture
    new = [{k: v for k, v in t.to_plotly_json().items() if k != "uid"} for t in fig.data]
    old = [{k: v for k, v in t.to_plotly_json().items() if k != "uid"} for t in widget.data]
    # in place only when every trace keeps its type and its set of properties (none would go stale)
    same = len(new) == len(old) and all(a.get("type") == b.get("type") and set(a) == set(b) for a, b in zip(old, new))
    # assigning a layout reaches the browser as a relayout, which MERGES: a top-level key the new figure
    # lacks (a "waiting for …" annotation, a second axis) would stay drawn there. Null them after.
    gone = sorted(set(widget.layout.to_plotly_json()) - set(fig.layout.to_plotly_json()) - {"template"})
    with widget.batch_update():
        if same:
            for trace, props in zip(widget.data, new):
                trace.update(props, overwrite=True)
        else:
            widget.data = []
            widget.add_traces(list(fig.data))
        widget.layout = fig.layout
    if gone:  # Plotly.relayout({key: null}) deletes it; the Python side no longer has it
        widget._send_relayout_msg({k: None for k in gone})
    _sync_state(widget)


def _sync_state(widget) -> None:
    """Copy the figure into the widget's synced state (plotly ≥ 6: ``_widget_data``/``_widget_layout``).

    The updates above reach the views that exist now as messages; a view made later starts from the
    synced state instead, which plotly sets only when the widget is displayed. Without this, Voilà
    (which builds its views after the notebook has run), a reloaded JupyterLab page or the same
    widget shown again would show the figure as it was when first displayed."""
    if hasattr(widget, "_widget_data") and hasattr(widget, "_layout_obj"):
        widget._widget_data = copy.deepcopy(widget._data)
        widget._widget_layout = copy.deepcopy(widget._layout_obj._props)
