"""Method comparison from a sweep: mean ± std over seeds as a table and as bar charts with error bars.

Input: the summary ``msam_lab.sweep.run_sweep`` returns (or ``sweep_summary.csv``: ``method``,
``rho``, ``n_seeds``, ``<metric>_mean``, ``<metric>_std``), or the per-run table (``sweep.csv``:
one row per seed), which is summarised here with ``msam_lab.sweep.summarise``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import style
from .common import check_backend


def summary_table(table) -> pd.DataFrame:
    """The mean ± std summary from a summary table, a per-run table or a path to either CSV."""
    if isinstance(table, (str, Path)):
        table = pd.read_csv(table)
    if any(c.endswith("_mean") for c in table.columns):
        return table.reset_index(drop=True)
    if "seed" in table.columns:
        from ..sweep import summarise
        return summarise(table)
    raise ValueError("expected a sweep summary (<metric>_mean/_std columns) or a per-run sweep table (seed column)")


def _row_labels(table: pd.DataFrame) -> list[str]:
    rhos_per_method = table.groupby("method")["rho"].nunique(dropna=True)
    labels = []
    for method, rho in zip(table["method"], table["rho"] if "rho" in table else [np.nan] * len(table)):
        label = style.method_label(method)
        if not pd.isna(rho) and rhos_per_method.get(method, 0) > 1:
            label += f" ρ={rho:g}"
        labels.append(label)
    return labels


def modalities_in(table: pd.DataFrame) -> list[str]:
    """Modalities with a Shapley-decomposed accuracy column (``acc_<m>_mean``)."""
    return [c[len("acc_"):-len("_mean")] for c in table.columns
            if c.startswith("acc_") and c.endswith("_mean") and not c.startswith("acc_only_")
            and c != "acc_mean"]


def comparison_table(table, digits: int = 1) -> pd.DataFrame:
    """One row per method (and ρ): accuracies in % and τ as ``mean ± std`` strings, plus the seed count."""
    t = summary_table(table)
    out = pd.DataFrame({"method": _row_labels(t), "seeds": t["n_seeds"].astype(int)})
    cols = [("acc", "fused acc (%)", 100)] + [(f"acc_{m}", f"{m} acc in model (%)", 100) for m in modalities_in(t)]
    cols += [(f"acc_only_{m}", f"{m} alone (%)", 100) for m in modalities_in(t) if f"acc_only_{m}_mean" in t]
    cols += [("tau", "τ (acc form, ×100)", 100)]
    for key, name, scale in cols:
        if f"{key}_mean" not in t:
            continue
        mean, std = scale * t[f"{key}_mean"], scale * t[f"{key}_std"]
        out[name] = [f"{m:.{digits}f} ± {s:.{digits}f}" if not pd.isna(s) else f"{m:.{digits}f}"
                     for m, s in zip(mean, std)]
    return out


@style.styled
def comparison_bars(table, parts=None, include_tau: bool = True, backend: str = "plotly"):
    """Bars of test accuracy per method — fused and each modality's Shapley-decomposed accuracy — with
    error bars of one standard deviation over seeds; a second panel with τ when ``include_tau``."""
    backend = check_backend(backend)
    t = summary_table(table)
    mods = modalities_in(t)
    parts = ["fused", *mods] if parts is None else list(parts)
    key = {"fused": "acc", **{m: f"acc_{m}" for m in mods}}
    labels = _row_labels(t)
    n_seeds = sorted(set(int(n) for n in t["n_seeds"]))
    seeds_txt = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    title = f"Method comparison: mean ± std over {seeds_txt} seed{'s' if n_seeds[-1] > 1 else ''}"
    colors = {p: (style.FUSED_COLOR if p == "fused" else style.modality_color(p, mods)) for p in parts}
    names = {p: ("fused model" if p == "fused" else f"{p} (Shapley-decomposed)") for p in parts}

    def std(col):
        s = t[f"{col}_std"].to_numpy(dtype=float)
        return np.where(np.isnan(s), 0.0, s)

    if backend == "plotly":
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        cols = 2 if include_tau else 1
        fig = make_subplots(rows=1, cols=cols, column_widths=[0.72, 0.28] if cols == 2 else None,
                            subplot_titles=("test accuracy", "overfitting gap τ") if cols == 2 else None)
        for p in parts:
            fig.add_trace(go.Bar(x=labels, y=100 * t[f"{key[p]}_mean"], name=names[p], marker_color=colors[p],
                                 error_y=dict(type="data", array=100 * std(key[p]), visible=True),
                                 customdata=t["n_seeds"], meta={"part": p},
                                 hovertemplate="%{x}<br>%{y:.1f} ± %{error_y.array:.1f} % (n=%{customdata})"
                                               "<extra>" + names[p] + "</extra>"), 1, 1)
        fig.update_yaxes(title_text="test accuracy (%)", range=[0, 105], row=1, col=1)
        fig.update_xaxes(title_text="method", row=1, col=1)
        if include_tau:
            fig.add_trace(go.Bar(x=labels, y=t["tau_mean"], name="τ (accuracy form)", meta={"part": "tau"},
                                 marker_color=[style.method_color(m, i) for i, m in enumerate(t["method"])],
                                 error_y=dict(type="data", array=std("tau"), visible=True), showlegend=False),
                          1, 2)
            fig.update_yaxes(title_text=style.TAU_LABELS["acc"], row=1, col=2)
            fig.update_xaxes(title_text="method", row=1, col=2)
        fig.update_layout(barmode="group")
        return style.style_plotly(fig, title, height=440)
    fig = style.mpl_figure(7.0 if include_tau else 5.0, 3.3)
    if include_tau:
        ax, ax2 = fig.subplots(1, 2, width_ratios=[0.72, 0.28])
    else:
        ax, ax2 = fig.subplots(), None
    xs = np.arange(len(labels))
    width = 0.8 / len(parts)
    for i, p in enumerate(parts):
        ax.bar(xs + (i - (len(parts) - 1) / 2) * width, 100 * t[f"{key[p]}_mean"], width,
               yerr=100 * std(key[p]), capsize=2, color=colors[p], label=names[p], error_kw=dict(lw=0.8))
    ax.set_xticks(xs, labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 105), title="test accuracy", xlabel="method")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=len(parts))
    if ax2 is not None:
        ax2.bar(xs, t["tau_mean"], 0.6, yerr=std("tau"), capsize=2,
                color=[style.method_color(m, i) for i, m in enumerate(t["method"])], error_kw=dict(lw=0.8))
        ax2.set_xticks(xs, labels, rotation=30 if len(labels) > 2 else 0, ha="right" if len(labels) > 2 else "center")
        ax2.set(ylabel="τ, accuracy form (fraction)", title="τ = (Acc_train − Acc_test) / Acc_train",
                xlabel="method")
    fig.suptitle(title)
    return fig
