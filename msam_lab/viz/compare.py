"""Method comparison from a sweep: mean ± std over seeds as a table and as bar charts with error bars.

Input: the summary ``msam_lab.experiments.sweep.run_sweep`` returns (or ``sweep_summary.csv``: ``method``,
``rho``, ``n_seeds``, ``<metric>_mean``, ``<metric>_std``), or the per-run table (``sweep.csv``:
one row per seed), which is summarised here with ``msam_lab.experiments.sweep.summarise``.

Test numbers come at two epochs, each labelled: the epoch of best validation accuracy
(``<metric>_at_best_mean``, "best val") and the last epoch (``<metric>_last_mean``, "last"); see
docs/runs.md, "Model selection". Tables from before model selection (``acc_mean``, ``acc``) are
read as last-epoch numbers; their "best val" cells are blank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from msam_lab.experiments.sweep import summarise, upgrade_summary
from msam_lab.viz import style
from msam_lab.viz.common import check_backend


def summary_table(table) -> pd.DataFrame:
    """The mean ± std summary from a summary table, a per-run table or a path to either CSV
    (old, unlabelled tables upgraded: their numbers are last-epoch ones)."""

    if isinstance(table, (str, Path)):
        table = pd.read_csv(table)
    if any(c.endswith("_mean") for c in table.columns):
        return upgrade_summary(table).reset_index(drop=True)
    if "seed" in table.columns:
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


_SUFFIX = {"best": "_at_best", "last": "_last"}
_LABEL = {"best": "best val", "last": "last"}


def modalities_in(table: pd.DataFrame) -> list[str]:
    """Modalities with a Shapley-decomposed accuracy column (``acc_<m>_last_mean`` or ``acc_<m>_at_best_mean``)."""
    mods = []
    for c in table.columns:
        for suffix in _SUFFIX.values():
            if c.endswith(suffix + "_mean"):
                key = c[: -len(suffix + "_mean")]
                if key.startswith("acc_") and not key.startswith("acc_only_") and key[4:] not in mods:
                    mods.append(key[4:])
    return mods


def has_best(table) -> bool:
    """True when every row of the summary has a fused accuracy at the best-validation epoch."""
    t = summary_table(table)
    return "acc_at_best_mean" in t and bool(t["acc_at_best_mean"].notna().all()) and len(t) > 0


def _at(table: pd.DataFrame, at: str | None) -> str:
    if at is None:
        return "best" if has_best(table) else "last"
    if at not in _SUFFIX:
        raise ValueError(
            f"at must be 'best' (the best-validation epoch), 'last' or None (best where every row has it), got {at!r}"
        )
    return at


def comparison_table(table, digits: int = 1) -> pd.DataFrame:
    """One row per method (and ρ): accuracies in % and τ as ``mean ± std`` strings, plus the seed count.

    Each metric has two columns, labelled ``(…, best val)`` (at the epoch of best validation accuracy)
    and ``(…, last)`` (at the last epoch); a "best val" cell is blank for runs without validation.
    ``best epoch`` is the mean ± std of the selected epoch (blank without validation).
    """
    t = summary_table(table)
    out = pd.DataFrame({"method": _row_labels(t), "seeds": t["n_seeds"].astype(int)})

    def cells(mean, std, digits):
        return [
            "" if pd.isna(m) else f"{m:.{digits}f} ± {s:.{digits}f}" if not pd.isna(s) else f"{m:.{digits}f}"
            for m, s in zip(mean, std)
        ]

    if "best_epoch_mean" in t:
        out["best epoch"] = cells(t["best_epoch_mean"], t["best_epoch_std"], 1)
    mods = modalities_in(t)
    cols = [("acc", "fused acc", "%", 100)] + [(f"acc_{m}", f"{m} acc in model", "%", 100) for m in mods]
    cols += [
        (f"acc_only_{m}", f"{m} alone", "%", 100)
        for m in mods
        if f"acc_only_{m}_last_mean" in t or f"acc_only_{m}_at_best_mean" in t
    ]
    cols += [("tau", "τ, acc form", "×100", 100)]
    for key, name, unit, scale in cols:
        if not any(f"{key}{sfx}_mean" in t for sfx in _SUFFIX.values()):
            continue
        for at, sfx in _SUFFIX.items():
            header = f"{name} ({unit}, {_LABEL[at]})"
            if f"{key}{sfx}_mean" in t:
                out[header] = cells(scale * t[f"{key}{sfx}_mean"], scale * t[f"{key}{sfx}_std"], digits)
            else:
                out[header] = ""
    return out


@style.styled
def comparison_bars(table, parts=None, include_tau: bool = True, backend: str = "plotly", at: str | None = None):
    """Bars of test accuracy per method — fused and each modality's Shapley-decomposed accuracy — with
    error bars of one standard deviation over seeds; a second panel with τ when ``include_tau``.

    ``at``: ``"best"`` (the epoch of best validation accuracy), ``"last"`` (the last epoch) or None:
    best where every row has it, else last. The title says which.
    """
    backend = check_backend(backend)
    t = summary_table(table)
    at = _at(t, at)
    mods = modalities_in(t)
    parts = ["fused", *mods] if parts is None else list(parts)
    sfx = _SUFFIX[at]
    key = {"fused": "acc" + sfx, **{m: f"acc_{m}{sfx}" for m in mods}}
    tau_key = "tau" + sfx
    missing = [
        k for k in [*(key[p] for p in parts if p in key), *([tau_key] if include_tau else [])] if f"{k}_mean" not in t
    ]
    if missing:
        raise ValueError(
            f"the table has no {missing[0]}_mean column"
            + (" (no validation split: use at='last')" if at == "best" else "")
        )
    labels = _row_labels(t)
    n_seeds = sorted(set(int(n) for n in t["n_seeds"]))
    seeds_txt = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"
    where = "at the best-validation epoch" if at == "best" else "at the last epoch"
    title = f"Method comparison {where}: mean ± std over {seeds_txt} seed{'s' if n_seeds[-1] > 1 else ''}"
    colors = {p: (style.FUSED_COLOR if p == "fused" else style.modality_color(p, mods)) for p in parts}
    names = {p: ("fused model" if p == "fused" else f"{p} (Shapley-decomposed)") for p in parts}

    tau_colors = [style.method_color(m, i) for i, m in enumerate(t["method"])]
    return grouped_bars(
        t,
        labels,
        parts,
        key,
        names,
        colors,
        tau_key,
        tau_colors,
        "method",
        title,
        include_tau,
        backend,
        height=440,
        size=(7.0, 5.0, 3.3),
        rotate_all=False,
    )


def std_or_zero(t, col: str) -> np.ndarray:
    """The ``<col>_std`` column with NaN (a single seed) as 0, for error bars."""
    s = t[f"{col}_std"].to_numpy(dtype=float)
    return np.where(np.isnan(s), 0.0, s)


def grouped_bars(
    t,
    labels,
    parts,
    key,
    names,
    colors,
    tau_key,
    tau_colors,
    xlabel,
    title,
    include_tau,
    backend,
    height,
    size,
    rotate_all,
):
    """Accuracy bars per row of ``t`` (one bar per part, grouped) and, with ``include_tau``, a τ panel:
    the figure ``comparison_bars`` and ``rivals.ablation_bars`` share. ``size``: (width with τ,
    width without, height) of the matplotlib figure; ``rotate_all``: always slant the tick labels."""

    def std(col):
        return std_or_zero(t, col)

    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        cols = 2 if include_tau else 1
        fig = make_subplots(
            rows=1,
            cols=cols,
            column_widths=[0.72, 0.28] if cols == 2 else None,
            subplot_titles=("test accuracy", "overfitting gap τ") if cols == 2 else None,
        )
        for p in parts:
            fig.add_trace(
                go.Bar(
                    x=labels,
                    y=100 * t[f"{key[p]}_mean"],
                    name=names[p],
                    marker_color=colors[p],
                    error_y=dict(type="data", array=100 * std(key[p]), visible=True),
                    customdata=t["n_seeds"],
                    meta={"part": p},
                    hovertemplate="%{x}<br>%{y:.1f} ± %{error_y.array:.1f} % (n=%{customdata})"
                    "<extra>" + names[p] + "</extra>",
                ),
                1,
                1,
            )
        fig.update_yaxes(title_text=style.acc_label("test"), range=[0, 105], row=1, col=1)
        fig.update_xaxes(title_text=xlabel, row=1, col=1)
        if include_tau:
            fig.add_trace(
                go.Bar(
                    x=labels,
                    y=t[f"{tau_key}_mean"],
                    name="τ (accuracy form)",
                    meta={"part": "tau"},
                    marker_color=tau_colors,
                    error_y=dict(type="data", array=std(tau_key), visible=True),
                    showlegend=False,
                ),
                1,
                2,
            )
            fig.update_yaxes(title_text=style.TAU_LABELS["acc"], row=1, col=2)
            fig.update_xaxes(title_text=xlabel, row=1, col=2)
        fig.update_layout(barmode="group")
        return style.style_plotly(fig, title, height=height)
    fig = style.mpl_figure(size[0] if include_tau else size[1], size[2])
    if include_tau:
        ax, ax2 = fig.subplots(1, 2, width_ratios=[0.72, 0.28])
    else:
        ax, ax2 = fig.subplots(), None
    xs = np.arange(len(labels))
    width = 0.8 / len(parts)
    for i, p in enumerate(parts):
        ax.bar(
            xs + (i - (len(parts) - 1) / 2) * width,
            100 * t[f"{key[p]}_mean"],
            width,
            yerr=100 * std(key[p]),
            capsize=2,
            color=colors[p],
            label=names[p],
            error_kw=dict(lw=0.8),
        )
    slant = rotate_all or len(labels) > 4
    ax.set_xticks(xs, labels, rotation=30 if slant else 0, ha="right" if slant else "center")
    ax.set(ylabel=style.acc_label("test"), ylim=(0, 105), title="test accuracy", xlabel=xlabel)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=len(parts))
    if ax2 is not None:
        ax2.bar(xs, t[f"{tau_key}_mean"], 0.6, yerr=std(tau_key), capsize=2, color=tau_colors, error_kw=dict(lw=0.8))
        slant = rotate_all or len(labels) > 2
        ax2.set_xticks(xs, labels, rotation=30 if slant else 0, ha="right" if slant else "center")
        ax2.set(ylabel="τ, accuracy form (fraction)", title="τ = (Acc_train − Acc_test) / Acc_train", xlabel=xlabel)
    fig.suptitle(title)
    return fig
