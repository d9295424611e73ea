"""Curves over training: loss, fused and per-modality accuracy, τ, train-vs-test gaps.

Every function takes one run, a list of runs/run folders, or ``{label: run}``, and returns a
plotly ``go.Figure`` (``backend="plotly"``, interactive) or a matplotlib ``Figure``
(``backend="matplotlib"``, publication). Per-modality accuracy has two definitions, chosen by
``per_modality``: ``"decomposed"`` (``acc_<m>``, the modality's Shapley-decomposed logits inside
the fused model) or ``"only"`` (``acc_only_<m>``, every other modality zeroed).

A run still training is drawn as far as it has got. To watch it grow, follow it:
``msam_lab.widgets.LiveCurves(run)`` (``training_curves`` + ``accuracy_curves``, re-read every few
seconds and extended in place) or ``msam_lab.widgets.LiveFigure(viz.tau_curves, run)`` for any of these.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msam_lab.viz import style
from msam_lab.viz.common import as_runs, check_backend, method_of, modalities_of

PER_MODALITY = {
    "decomposed": ("acc_{m}", "{m} (Shapley-decomposed)"),
    "only": ("acc_only_{m}", "{m} alone (others zeroed)"),
}


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return -(-n // cols), cols


def _rolling(y: pd.Series, window: int) -> pd.Series:
    """Centred rolling mean (window in steps; 1 or None = raw): it stays on the data, unlike a trailing one."""
    return y.rolling(int(window), min_periods=1, center=True).mean() if window and window > 1 else y


# ---------------------------------------------------------------- loss


@style.styled
def training_curves(runs, smooth: int = 10, backend: str = "plotly"):
    """Left: per-step training loss (faint raw, bold rolling mean over ``smooth`` steps).
    Right: per-epoch train (dashed) and test (solid) loss. One colour per run."""
    backend = check_backend(backend)
    runs = as_runs(runs)
    series = []
    for i, (label, run) in enumerate(runs.items()):
        color = style.method_color(method_of(run), i) if len(runs) > 1 else style.FUSED_COLOR
        series.append((label, run, color))
    title = f"Training loss (centred rolling mean over {smooth} steps)" if smooth and smooth > 1 else "Training loss"
    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(rows=1, cols=2, subplot_titles=("per step (training batches)", "per epoch"))
        for label, run, color in series:
            s = run.steps
            fig.add_trace(
                go.Scatter(
                    x=s["step"],
                    y=s["loss"],
                    mode="lines",
                    name=f"{label} raw",
                    line=dict(color=color, width=1),
                    opacity=0.25,
                    legendgroup=label,
                    showlegend=False,
                    hovertemplate="step %{x}<br>loss %{y:.3f}",
                ),
                1,
                1,
            )
            fig.add_trace(
                go.Scatter(
                    x=s["step"],
                    y=_rolling(s["loss"], smooth),
                    mode="lines",
                    name=f"{label}",
                    line=dict(color=color, width=2),
                    legendgroup=label,
                    hovertemplate="step %{x}<br>smoothed loss %{y:.3f}",
                ),
                1,
                1,
            )
            e = run.epochs
            fig.add_trace(
                go.Scatter(
                    x=e["epoch"],
                    y=e["train_loss"],
                    mode="lines+markers",
                    name=f"{label} train",
                    line=dict(color=color, dash="dash"),
                    legendgroup=label,
                ),
                1,
                2,
            )
            fig.add_trace(
                go.Scatter(
                    x=e["epoch"],
                    y=e["test_loss"],
                    mode="lines+markers",
                    name=f"{label} test",
                    line=dict(color=color),
                    legendgroup=label,
                ),
                1,
                2,
            )
        fig.update_xaxes(title_text=style.STEP_LABEL, row=1, col=1)
        fig.update_xaxes(
            title_text=f"{style.EPOCH_LABEL} (0 = before training)",
            row=1,
            col=2,
            dtick=style.epoch_dtick(max(r.epochs["epoch"].max() for _, r, _ in series)),
        )
        fig.update_yaxes(title_text=style.LOSS_LABEL, row=1, col=1)
        fig.update_yaxes(title_text=style.LOSS_LABEL, row=1, col=2)
        return style.style_plotly(fig, title, height=420)
    fig = style.mpl_figure(7.0, 2.8)
    ax1, ax2 = fig.subplots(1, 2)
    for label, run, color in series:
        s, e = run.steps, run.epochs
        ax1.plot(s["step"], s["loss"], color=color, alpha=0.25, lw=0.8)
        ax1.plot(s["step"], _rolling(s["loss"], smooth), color=color, label=label)
        ax2.plot(e["epoch"], e["train_loss"], color=color, ls="--", marker=".", label=f"{label} train")
        ax2.plot(e["epoch"], e["test_loss"], color=color, marker=".", label=f"{label} test")
    ax1.set(xlabel=style.STEP_LABEL, ylabel=style.LOSS_LABEL, title="per step (training batches)")
    ax2.set(xlabel=f"{style.EPOCH_LABEL} (0 = before training)", ylabel=style.LOSS_LABEL, title="per epoch")
    style.integer_ticks(ax2)
    ax1.legend()
    ax2.legend()
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- accuracy


@style.styled
def accuracy_curves(
    runs,
    split: str = "test",
    per_modality: str | None = "decomposed",
    modalities=None,
    title: str | None = None,
    backend: str = "plotly",
):
    """One panel per run: fused accuracy (black) and each modality's accuracy (its colour) over epochs,
    on a shared 0–100 % axis. ``per_modality``: ``"decomposed"``, ``"only"`` or None (fused only).
    ``title`` replaces the default title (the definition used is then given as a subtitle)."""
    backend = check_backend(backend)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if per_modality not in (None, *PER_MODALITY):
        raise ValueError(f"per_modality must be one of {list(PER_MODALITY)} or None, got {per_modality!r}")
    runs = as_runs(runs)
    rows, cols = _grid(len(runs))
    definition = {
        "decomposed": "per-modality = Shapley-decomposed logits",
        "only": "per-modality = that modality alone, others zeroed",
        None: "",
    }[per_modality]
    subtitle = None
    if title is None:
        title = f"Fused and per-modality {split} accuracy" + (f" ({definition})" if definition else "")
    else:
        subtitle = definition or None

    def lines(run):
        e = run.epochs
        out = [("fused", 100 * e[f"{split}_acc"], style.FUSED_COLOR, "solid")]
        if per_modality:
            col, name = PER_MODALITY[per_modality]
            mods = modalities_of(run) if modalities is None else modalities
            for m in mods:
                key = f"{split}_{col.format(m=m)}"
                if key in e:
                    out.append((name.format(m=m), 100 * e[key], style.modality_color(m, modalities_of(run)), "dash"))
        return e["epoch"], out

    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(runs), shared_yaxes=True)
        seen = set()
        for i, (label, run) in enumerate(runs.items()):
            r, c = divmod(i, cols)
            x, ls = lines(run)
            for name, y, color, dash in ls:
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=name not in seen,
                        line=dict(color=color, dash=dash),
                        hovertemplate=f"{label}<br>{name}<br>epoch %{{x}}: %{{y:.1f}} %",
                    ),
                    r + 1,
                    c + 1,
                )
                seen.add(name)
            fig.update_xaxes(
                title_text=f"{style.EPOCH_LABEL} (0 = before training)",
                row=r + 1,
                col=c + 1,
                dtick=style.epoch_dtick(run.epochs["epoch"].max()),
            )
            if c == 0:
                fig.update_yaxes(title_text=style.acc_label(split), row=r + 1, col=c + 1)
        fig.update_yaxes(range=[0, 101])
        return style.style_plotly(fig, title, height=380 * rows, subtitle=subtitle)
    fig = style.mpl_figure(3.0 * cols + 0.6, 2.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for ax, (label, run) in zip(axes, runs.items()):
        x, ls = lines(run)
        for name, y, color, dash in ls:
            ax.plot(x, y, color=color, ls="--" if dash == "dash" else "-", marker=".", label=name)
        ax.set(title=label, xlabel=f"{style.EPOCH_LABEL} (0 = before training)", ylim=(0, 101))
        style.integer_ticks(ax)
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    for r in range(rows):
        axes[r * cols].set_ylabel(style.acc_label(split))
    axes[0].legend(loc="lower right")
    fig.suptitle(title + (f"\n({subtitle})" if subtitle else ""))
    return fig


@style.styled
def train_test_curves(runs, metric: str = "acc", backend: str = "plotly"):
    """Train (dashed) and test (solid) ``metric`` (``acc`` or ``loss``) per epoch, one colour per run:
    the gap between the two is what τ normalises."""
    backend = check_backend(backend)
    if metric not in ("acc", "loss"):
        raise ValueError(f"metric must be 'acc' or 'loss', got {metric!r}")
    runs = as_runs(runs)
    scale = 100 if metric == "acc" else 1
    ylabel = "accuracy (%)" if metric == "acc" else style.LOSS_LABEL
    title = f"Train vs test {'accuracy' if metric == 'acc' else 'loss'} per epoch"
    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = go.Figure()
        for i, (label, run) in enumerate(runs.items()):
            color = style.method_color(method_of(run), i)
            e = run.epochs
            for split, dash in (("train", "dash"), ("test", "solid")):
                fig.add_trace(
                    go.Scatter(
                        x=e["epoch"],
                        y=scale * e[f"{split}_{metric}"],
                        mode="lines+markers",
                        name=f"{label} {split}",
                        line=dict(color=color, dash=dash),
                        legendgroup=label,
                    )
                )
        fig.update_xaxes(
            title_text=f"{style.EPOCH_LABEL} (0 = before training)",
            dtick=style.epoch_dtick(max(r.epochs["epoch"].max() for r in runs.values())),
        )
        fig.update_yaxes(title_text=ylabel)
        return style.style_plotly(fig, title, height=400)
    fig = style.mpl_figure(4.5, 3.0)
    ax = fig.subplots()
    for i, (label, run) in enumerate(runs.items()):
        color = style.method_color(method_of(run), i)
        e = run.epochs
        ax.plot(e["epoch"], scale * e[f"train_{metric}"], color=color, ls="--", marker=".", label=f"{label} train")
        ax.plot(e["epoch"], scale * e[f"test_{metric}"], color=color, marker=".", label=f"{label} test")
    ax.set(xlabel=f"{style.EPOCH_LABEL} (0 = before training)", ylabel=ylabel, title=title)
    style.integer_ticks(ax)
    ax.legend()
    return fig


# ---------------------------------------------------------------- τ


@style.styled
def tau_curves(runs, form: str = "acc", skip_epoch0: bool = True, backend: str = "plotly"):
    """τ per epoch for each run. ``form="acc"``: τ = (Acc_train − Acc_test)/Acc_train (the default τ);
    ``form="loss"``: τ_loss = (L_test − L_train)/L_train. The axis title states which one is shown.
    Epoch 0 (untrained, accuracy at chance) is left out unless ``skip_epoch0=False``."""
    backend = check_backend(backend)
    if form not in style.TAU_LABELS:
        raise ValueError(f"form must be 'acc' or 'loss', got {form!r}")
    runs = as_runs(runs)
    col = "tau" if form == "acc" else "tau_loss"
    title = "Normalised overfitting gap τ (" + ("accuracy form" if form == "acc" else "loss form") + ")"

    def data(run):
        e = run.epochs[run.epochs["epoch"] > 0] if skip_epoch0 else run.epochs
        return e["epoch"], e[col]

    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = go.Figure()
        for i, (label, run) in enumerate(runs.items()):
            x, y = data(run)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=label,
                    line=dict(color=style.method_color(method_of(run), i)),
                    hovertemplate=f"{label}<br>epoch %{{x}}<br>{col} %{{y:.4f}}",
                )
            )
        fig.add_hline(y=0, line=dict(color="#999", width=1))
        fig.update_xaxes(
            title_text=style.EPOCH_LABEL, dtick=style.epoch_dtick(max(r.epochs["epoch"].max() for r in runs.values()))
        )
        fig.update_yaxes(title_text=style.TAU_LABELS[form])
        return style.style_plotly(fig, title, height=400)
    fig = style.mpl_figure(4.5, 3.0)
    ax = fig.subplots()
    for i, (label, run) in enumerate(runs.items()):
        x, y = data(run)
        ax.plot(x, y, marker=".", color=style.method_color(method_of(run), i), label=label)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set(xlabel=style.EPOCH_LABEL, ylabel=style.TAU_LABELS[form], title=title)
    style.integer_ticks(ax)
    ax.legend()
    return fig


def modality_gap_table(runs) -> pd.DataFrame:
    """Final-epoch train, test and gap (train − test, percentage points) of fused and per-modality accuracy."""
    rows = []
    for label, run in as_runs(runs).items():
        e = run.epochs.iloc[-1]
        for name, key in [("fused", "acc")] + [(m, f"acc_{m}") for m in modalities_of(run)]:
            rows.append(
                {
                    "run": label,
                    "part": name,
                    "train_acc_%": 100 * e[f"train_{key}"],
                    "test_acc_%": 100 * e[f"test_{key}"],
                    "gap_pp": 100 * (e[f"train_{key}"] - e[f"test_{key}"]),
                }
            )
    return pd.DataFrame(rows)
