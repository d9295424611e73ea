"""Plotting functions for runs, surfaces and sweeps. Each RETURNS a figure: a plotly ``go.Figure``
(``backend="plotly"``, the default, interactive) or a matplotlib ``Figure`` (``backend="matplotlib"``,
publication; save with ``save_mpl(fig, "figures/name")`` for PDF + PNG).

    from msam_lab import viz
    viz.training_curves(run)                        # loss per step and per epoch
    viz.accuracy_curves([joint, msam])              # fused + per-modality accuracy
    viz.shares_over_steps(run, smooth=10, accuracy=True)   # dominance bands, switches, linked accuracy
    viz.tau_curves(runs, form="acc")                # τ per epoch (axis says which τ)
    viz.curves_1d(surfaces_1d)                      # 1-D landscapes per modality, shared y
    viz.surface_figure(surface, "loss")             # 3-D + contour with the PCA trajectory
    viz.contour_grid({"Joint": s1, "M-SAM": s2})    # shared colour scale
    viz.sharpness_figure({"Joint": t1, "M-SAM": t2})
    viz.comparison_bars(sweep_table)                # mean ± std over seeds
    viz.rho_curve(rho_table)                        # accuracy over ρ (notebook 08, msam_lab.experiments.rivals)
    viz.ablation_bars(ablation_table)               # which modality M-SAM perturbs
    viz.sharpness_timeline_figure(timeline)         # each encoder's Hessian trace over epochs

Modules: ``style`` (colours, labels, saving), ``curves``, ``dominance``, ``landscape``, ``compare``, ``rivals``.
Following a run while it trains (figures that grow in place): ``msam_lab.widgets.LiveCurves(run)``,
``msam_lab.widgets.LiveFigure(viz.<function>, run)``, ``DominanceExplorer(run, follow=True)``.
Quick mode for notebooks and tests: ``quick_mode()`` (``MSAM_LAB_QUICK=1``).
"""

from msam_lab.paths import quick_mode
from msam_lab.viz.common import as_runs, refresh
from msam_lab.viz.compare import comparison_bars, comparison_table, summary_table
from msam_lab.viz.curves import accuracy_curves, modality_gap_table, tau_curves, train_test_curves, training_curves
from msam_lab.viz.dominance import (
    dominance_segments,
    dominance_summary,
    epoch_shares,
    shares_over_steps,
    smoothed_dominant,
    smoothed_shares,
    switch_points,
)
from msam_lab.viz.landscape import (
    contour_grid,
    curves_1d,
    direction_title,
    metric_key,
    metric_title,
    shared_z,
    sharpness_figure,
    surface_figure,
    trajectory,
)
from msam_lab.viz.rivals import ablation_bars, arm_label, rho_curve, sharpness_timeline_figure, timeline_stats
from msam_lab.viz.style import (
    find_chromium,
    method_color,
    modality_color,
    mpl_style,
    save_mpl,
    shared_range,
    write_html,
    write_plotly_png,
)

__all__ = [
    "quick_mode",
    "as_runs",
    "refresh",
    "comparison_bars",
    "comparison_table",
    "summary_table",
    "accuracy_curves",
    "modality_gap_table",
    "tau_curves",
    "train_test_curves",
    "training_curves",
    "dominance_segments",
    "dominance_summary",
    "epoch_shares",
    "shares_over_steps",
    "smoothed_dominant",
    "smoothed_shares",
    "switch_points",
    "contour_grid",
    "curves_1d",
    "direction_title",
    "metric_key",
    "metric_title",
    "shared_z",
    "sharpness_figure",
    "surface_figure",
    "trajectory",
    "ablation_bars",
    "arm_label",
    "rho_curve",
    "sharpness_timeline_figure",
    "timeline_stats",
    "find_chromium",
    "method_color",
    "modality_color",
    "mpl_style",
    "save_mpl",
    "shared_range",
    "write_html",
    "write_plotly_png",
]
