"""The two end-of-run figures a logger shows as images: dominance over steps, and the epoch curves.

They are the short forms of msam_lab.viz's ``shares_over_steps`` and ``accuracy_curves``, drawn here from
the run's tables because the run writer that calls the loggers sits below msam_lab.viz (ARCHITECTURE.md):
viz reads sweeps and experiments, which train through the writer. Plain ``matplotlib.figure.Figure``s
rendered with the Agg canvas: no pyplot, no global backend switched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msam_lab.runs.layout import EPOCHS, STEPS, read_table

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _rgb(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - matplotlib: at the end only

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _figure(height: float):
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib: at the end only

    return Figure(figsize=(7.0, height), dpi=100, layout="constrained")


def dominance_figure(steps, modalities):
    """Each modality's Shapley share over steps (rolling mean over ~1% of the run), the dominant
    modality as the coloured band under them; None without share columns."""
    mods = [m for m in modalities if f"share_{m}" in steps]
    if steps.empty or not mods:
        return None
    window = max(1, len(steps) // 100)
    fig = _figure(3.6)
    ax, band = fig.subplots(2, 1, sharex=True, height_ratios=[0.85, 0.15])
    for i, m in enumerate(mods):
        smooth = steps[f"share_{m}"].rolling(window, min_periods=1).mean()
        ax.plot(steps["step"], smooth, color=COLORS[i % len(COLORS)], lw=1.2, label=f"share of {m}")
    ax.set(ylabel="Shapley share", ylim=(0, 1.05), title=f"dominance over steps (rolling mean of {window})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=8)
    if "dominant" in steps:
        index = steps["dominant"].map({m: i for i, m in enumerate(mods)})
        known = index.notna().to_numpy()
        colors = [COLORS[int(i) % len(COLORS)] for i in index[known]]
        band.scatter(steps["step"][known], np.zeros(known.sum()), c=colors, marker="|", s=200, lw=1)
    band.set(yticks=[], ylabel="dominant", xlabel="step")
    return fig


def curves_figure(epochs, modalities):
    """Fused and per-modality accuracy by epoch (test, or val / train where a run has no test column),
    and the train / test loss; None without epoch rows."""
    if epochs.empty or "epoch" not in epochs:
        return None
    split = next((s for s in ("test", "val", "train") if f"{s}_acc" in epochs), None)
    fig = _figure(3.2)
    acc, loss = fig.subplots(1, 2)
    if split is not None:
        acc.plot(epochs["epoch"], epochs[f"{split}_acc"], color="black", marker=".", label="fused")
        for i, m in enumerate(modalities):
            if f"{split}_acc_{m}" in epochs:
                column = epochs[f"{split}_acc_{m}"]
                acc.plot(epochs["epoch"], column, color=COLORS[i % len(COLORS)], ls="--", marker=".", label=m)
        acc.legend(fontsize=8)
    acc.set(xlabel="epoch", ylabel=f"{split or ''} accuracy", title="accuracy")
    for i, name in enumerate(c for c in ("train_loss", "val_loss", "test_loss") if c in epochs):
        loss.plot(epochs["epoch"], epochs[name], color=COLORS[i], marker=".", label=name)
    if loss.lines:
        loss.legend(fontsize=8)
    loss.set(xlabel="epoch", title="loss")
    return fig


def run_images(run_dir, modalities) -> tuple[dict, int]:
    """``({"dominance": HxWx3 uint8, "curves": ...}, the last step)`` of a run folder (a figure whose
    table is empty is left out)."""
    run_dir = Path(run_dir)
    steps, epochs = read_table(run_dir / STEPS), read_table(run_dir / EPOCHS)
    figures = {"dominance": dominance_figure(steps, modalities), "curves": curves_figure(epochs, modalities)}
    last = int(steps["step"].max()) if not steps.empty and "step" in steps else 0
    return {name: _rgb(fig) for name, fig in figures.items() if fig is not None}, last
