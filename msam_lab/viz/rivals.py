"""Figures of notebook 08 (``msam_lab.experiments.rivals``): accuracy over ρ, the fixed-dominant ablation's bars
and each encoder's sharpness over training.

    viz.rho_curve(rivals.rho_table(s), reference=rivals.rivals_table(s))
    viz.ablation_bars(rivals.ablation_table(s))
    viz.sharpness_timeline_figure(rivals.sharpness_timeline(s), metric="trace")

Like every ``viz`` function each returns a plotly ``go.Figure`` (``backend="plotly"``) or a matplotlib
``Figure`` (``backend="matplotlib"``). Accuracies are test numbers in %, mean ± one standard deviation
over seeds; ``at`` picks the epoch: ``"best"`` (best validation accuracy), ``"last"``, or None (best
where every row has it, else last), as in ``comparison_bars``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msam_lab.experiments.rivals import ARM_LABELS, arm_label  # noqa: F401  (ARM_LABELS: re-exported)
from msam_lab.viz import style
from msam_lab.viz.common import check_backend
from msam_lab.viz.compare import _SUFFIX, _at, grouped_bars, modalities_in, std_or_zero, summary_table
from msam_lab.viz.landscape import SHARPNESS_LABELS

_WHERE = {"best": "at the best-validation epoch", "last": "at the last epoch"}
ARM_COLOR = "#9A9A9A"
METRIC_TITLES = {"trace": "Hessian trace", "lambda_1": "Top Hessian eigenvalue λ₁", "eps_sharpness": "ε-sharpness"}


def _seeds_text(t: pd.DataFrame) -> str:
    n = sorted(set(int(v) for v in t["n_seeds"]))
    txt = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}"
    return f"mean ± std over {txt} seed{'s' if n[-1] > 1 else ''}"


def _part_keys(t: pd.DataFrame, parts, at: str) -> tuple[list[str], dict, dict]:
    mods = modalities_in(t)
    parts = ["fused", *mods] if parts is None else list(parts)
    sfx = _SUFFIX[at]
    key = {"fused": "acc" + sfx, **{m: f"acc_{m}{sfx}" for m in mods}}
    unknown = [p for p in parts if p not in key]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}; choose from {list(key)}")
    missing = [key[p] for p in parts if f"{key[p]}_mean" not in t]
    if missing:
        raise ValueError(
            f"the table has no {missing[0]}_mean column"
            + (" (no validation split: use at='last')" if at == "best" else "")
        )
    names = {p: ("fused model" if p == "fused" else f"{p} (Shapley-decomposed)") for p in parts}
    return parts, key, names


def _part_title(p: str, sep: str = " ") -> str:
    """A panel's title; ``sep="<br>"`` in plotly, where three one-line titles ran into each other."""
    return f"fused{sep}test accuracy" if p == "fused" else f"{p}: Shapley-decomposed{sep}test accuracy"


# ---------------------------------------------------------------- ρ


@style.styled
def rho_curve(table, parts=None, at: str | None = None, reference=None, log_x: bool = True, backend: str = "plotly"):
    """Test accuracy against ρ, one line per method (mean, band of ± one std over seeds), one panel
    per part: ``"fused"`` and each modality's Shapley-decomposed accuracy (``parts`` picks).

    ``table``: a ρ sweep summary (``rivals.rho_table``, or ``run_sweep(..., rhos=...)``); rows without
    a ρ are skipped. ``reference``: a summary table whose methods without ρ (joint, MIE, …) are drawn
    as dashed horizontal lines (their mean), for scale. ``log_x``: ρ on a log axis.
    """
    backend = check_backend(backend)
    t = summary_table(table)
    t = t[t["rho"].notna()].sort_values(["method", "rho"], kind="stable")
    if t.empty:
        raise ValueError("the table has no row with a ρ (sweep SAM-type methods with rhos=[...])")
    at = _at(t, at)
    parts, key, _ = _part_keys(t, parts, at)
    methods = list(
        dict.fromkeys(table["method"] if isinstance(table, pd.DataFrame) and "method" in table else t["method"])
    )
    methods = [m for m in methods if m in set(t["method"])]
    refs = []
    if reference is not None:
        r = summary_table(reference)
        r = r[r["rho"].isna()] if "rho" in r else r
        r_at = _at(r, at) if not r.empty else at
        if r_at == at:
            refs = [(m, r[r["method"] == m].iloc[0]) for m in dict.fromkeys(r["method"])]
    rhos = sorted(set(float(r) for r in t["rho"]))
    title = f"Accuracy over ρ {_WHERE[at]}: {_seeds_text(t)}"
    xlabel = "SAM radius ρ" + (" (log scale)" if log_x else "")
    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(
            rows=1, cols=len(parts), subplot_titles=[_part_title(p, "<br>") for p in parts], shared_yaxes=True
        )
        for j, p in enumerate(parts):
            for i, m in enumerate(methods):
                sub = t[t["method"] == m]
                color = style.method_color(m, i)
                mean, sd = 100 * sub[f"{key[p]}_mean"].to_numpy(), 100 * std_or_zero(sub, key[p])
                x = sub["rho"].to_numpy(dtype=float)
                if (sd > 0).any():
                    fig.add_trace(
                        go.Scatter(
                            x=np.r_[x, x[::-1]],
                            y=np.r_[mean + sd, (mean - sd)[::-1]],
                            fill="toself",
                            fillcolor=style.with_alpha(color, 0.15),
                            line=dict(width=0),
                            hoverinfo="skip",
                            showlegend=False,
                            legendgroup=m,
                        ),
                        1,
                        j + 1,
                    )
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=mean,
                        mode="lines+markers",
                        name=style.method_label(m),
                        line=dict(color=color),
                        legendgroup=m,
                        showlegend=j == 0,
                        customdata=np.c_[sd, sub["n_seeds"]],
                        meta={"method": m, "part": p},
                        hovertemplate="ρ = %{x:g}<br>%{y:.1f} ± %{customdata[0]:.1f} % "
                        "(n=%{customdata[1]})<extra>" + style.method_label(m) + "</extra>",
                    ),
                    1,
                    j + 1,
                )
            for i, (m, row) in enumerate(refs):
                if f"{key[p]}_mean" in row and not pd.isna(row[f"{key[p]}_mean"]):
                    fig.add_hline(
                        y=100 * row[f"{key[p]}_mean"],
                        line=dict(color=style.method_color(m, i), dash="dash", width=1.5),
                        row=1,
                        col=j + 1,
                    )
                    if j == 0:
                        fig.add_trace(
                            go.Scatter(
                                x=[None],
                                y=[None],
                                mode="lines",
                                name=f"{style.method_label(m)} (no ρ)",
                                line=dict(color=style.method_color(m, i), dash="dash"),
                                legendgroup=f"ref-{m}",
                            ),
                            1,
                            1,
                        )
            fig.update_xaxes(
                title_text=xlabel,
                type="log" if log_x else "linear",
                tickvals=rhos,
                ticktext=[f"{r:g}" for r in rhos],
                row=1,
                col=j + 1,
            )
        fig.update_yaxes(title_text=style.acc_label("test"), row=1, col=1)
        style.style_plotly(fig, title, height=440)
        return fig.update_layout(margin=dict(t=105))  # room for the two-line panel titles under the title
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    fig = style.mpl_figure(3.1 * len(parts) + 0.6, 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(parts), squeeze=False, sharey=True)).ravel()
    for ax, p in zip(axes, parts):
        for i, m in enumerate(methods):
            sub = t[t["method"] == m]
            color = style.method_color(m, i)
            mean, sd = 100 * sub[f"{key[p]}_mean"].to_numpy(), 100 * std_or_zero(sub, key[p])
            x = sub["rho"].to_numpy(dtype=float)
            ax.plot(x, mean, marker="o", ms=3, color=color, label=style.method_label(m))
            if (sd > 0).any():
                ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.15, lw=0)
        for i, (m, row) in enumerate(refs):
            if f"{key[p]}_mean" in row and not pd.isna(row[f"{key[p]}_mean"]):
                ax.axhline(
                    100 * row[f"{key[p]}_mean"],
                    color=style.method_color(m, i),
                    ls="--",
                    lw=1,
                    label=f"{style.method_label(m)} (no ρ)",
                )
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(rhos, [f"{r:g}" for r in rhos])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(title=_part_title(p), xlabel=xlabel)
    axes[0].set_ylabel(style.acc_label("test"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5))
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- ablation


def _arm_labels(t: pd.DataFrame) -> list[str]:
    if "arm_label" in t:
        return [str(v) for v in t["arm_label"]]
    if "arm" in t:
        return [arm_label(v) for v in t["arm"]]
    raise ValueError("expected an ablation table with an 'arm' column (msam_lab.experiments.rivals.ablation_table)")


@style.styled
def ablation_bars(table, parts=None, include_tau: bool = True, at: str | None = None, backend: str = "plotly"):
    """Bars of test accuracy per ablation arm (which modality M-SAM perturbs): fused and each modality's
    Shapley-decomposed accuracy, error bars of one std over seeds; a second panel with τ when ``include_tau``.

    ``table``: ``rivals.ablation_table`` (a sweep summary with ``arm`` and optionally ``arm_label``).
    """
    backend = check_backend(backend)
    labels = _arm_labels(table)
    t = summary_table(table)
    at = _at(t, at)
    parts, key, names = _part_keys(t, parts, at)
    mods = modalities_in(t)
    tau_key = "tau" + _SUFFIX[at]
    if include_tau and f"{tau_key}_mean" not in t:
        raise ValueError(f"the table has no {tau_key}_mean column")
    colors = {p: (style.FUSED_COLOR if p == "fused" else style.modality_color(p, mods)) for p in parts}
    # τ bars: M-SAM's colour for the Shapley arm (the method itself), grey for the ablation arms
    arm_colors = [
        style.method_color("msam") if str(a) == "shapley" else ARM_COLOR for a in (t["arm"] if "arm" in t else labels)
    ]
    title = f"Which modality M-SAM perturbs {_WHERE[at]}: {_seeds_text(t)}"
    xlabel = "perturbed modality (msam_dominant)"
    return grouped_bars(
        t,
        labels,
        parts,
        key,
        names,
        colors,
        tau_key,
        arm_colors,
        xlabel,
        title,
        include_tau,
        backend,
        height=460,
        size=(7.2, 5.2, 3.5),
        rotate_all=True,
    )


# ---------------------------------------------------------------- sharpness over training


def _scope_name(scope: str) -> str:
    return "fusion" if scope == "fusion" else "whole model" if scope == "model" else f"{scope} encoder"


def timeline_stats(df: pd.DataFrame, metric: str = "trace") -> pd.DataFrame:
    """Per (method, scope, epoch): ``mean`` and ``std`` of ``metric`` over seeds, ``n`` seeds, and
    ``se`` (the Hutchinson standard error of a single seed's trace; NaN otherwise)."""
    if metric not in df:
        raise ValueError(
            f"the timeline has no column {metric!r}; choose from {[c for c in SHARPNESS_LABELS if c in df]}"
        )
    g = df.groupby(["method", "scope", "epoch"], sort=False)
    out = g[metric].agg(mean="mean", std="std", n="count").reset_index()
    se = g["trace_se"].first().to_numpy() if metric == "trace" and "trace_se" in df else np.nan
    out["se"] = np.where(out["n"] == 1, se, np.nan)
    return out


@style.styled
def sharpness_timeline_figure(
    df, metric: str = "trace", by: str = "method", scopes=None, log_y: bool = False, backend: str = "plotly"
):
    """Sharpness of each encoder over training, from ``rivals.sharpness_timeline`` (or any long table
    with ``method``, ``seed``, ``epoch``, ``scope`` and ``metric`` columns): one line per method and
    encoder, over epochs. Several seeds: mean with a band of ± one std; one seed and ``trace``:
    error bars of the Hutchinson standard error.

    ``by="method"``: one panel per method, one line per encoder (modality colours), a shared y axis:
    are the weak modality's encoders sharper? ``by="scope"``: one panel per encoder, one line per method.
    ``scopes``: which blocks (default: the encoders; add ``"fusion"`` for the fusion block).
    ``metric``: ``"trace"``, ``"lambda_1"`` or ``"eps_sharpness"``. ``log_y``: log y axis (positive values).
    """
    backend = check_backend(backend)
    if by not in ("method", "scope"):
        raise ValueError(f"by must be 'method' or 'scope', got {by!r}")
    if metric not in SHARPNESS_LABELS:
        raise ValueError(f"metric must be one of {list(SHARPNESS_LABELS)}, got {metric!r}")
    df = pd.DataFrame(df)
    if df.empty:
        raise ValueError("the sharpness timeline is empty (no run measured with sharpness_every)")
    all_scopes = list(dict.fromkeys(df["scope"]))
    scopes = [s for s in all_scopes if s not in ("fusion", "model")] if scopes is None else list(scopes)
    unknown = [s for s in scopes if s not in all_scopes]
    if unknown:
        raise ValueError(f"no rows for scope {unknown[0]!r}; the timeline has {all_scopes}")
    stats = timeline_stats(df[df["scope"].isin(scopes)], metric)
    methods = list(dict.fromkeys(df["method"]))
    encoders = [s for s in all_scopes if s not in ("fusion", "model")]
    panels = methods if by == "method" else scopes
    lines = scopes if by == "method" else methods

    def color(line, i):
        if by == "scope":
            return style.method_color(line, i)
        return "#555555" if line in ("fusion", "model") else style.modality_color(line, encoders)

    def name(line):
        return _scope_name(line) if by == "method" else style.method_label(line)

    def title_of(panel):
        return style.method_label(panel) if by == "method" else _scope_name(panel)

    def sub(panel, line):
        m, s = (panel, line) if by == "method" else (line, panel)
        return stats[(stats["method"] == m) & (stats["scope"] == s)].sort_values("epoch")

    n_seeds = int(df.groupby("method")["seed"].nunique().max()) if "seed" in df else 1
    over = (
        f"mean ± std over {n_seeds} seeds"
        if n_seeds > 1
        else ("1 seed, bars: Hutchinson standard error" if metric == "trace" else "1 seed")
    )
    bits = [over]
    if "n_samples" in df:
        bits.append(f"train loss on {int(df['n_samples'].iloc[0])} samples")
    if metric == "trace" and "probes" in df:
        bits.append(f"{int(df['probes'].iloc[0])} probes")
    subtitle = "; ".join(bits)
    note = ""  # a negative trace is never shown without a word
    if metric == "trace" and (stats["mean"] < 0).any():
        note = "below 0: negative curvature (not a minimum) and a noisy estimate with few probes; see the bars"
    title = (
        f"{METRIC_TITLES[metric]} per {'block' if any(x in scopes for x in ('fusion', 'model')) else 'encoder'}"
        " over training"
    )
    ylabel = SHARPNESS_LABELS[metric]
    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title_of(p) for p in panels], shared_yaxes=True)
        for j, panel in enumerate(panels):
            for i, line in enumerate(lines):
                d = sub(panel, line)
                if d.empty:
                    continue
                c = color(line, i)
                x, y, sd = d["epoch"].to_numpy(), d["mean"].to_numpy(), d["std"].to_numpy()
                if n_seeds > 1 and np.isfinite(sd).any():
                    sd = np.nan_to_num(sd)
                    fig.add_trace(
                        go.Scatter(
                            x=np.r_[x, x[::-1]],
                            y=np.r_[y + sd, (y - sd)[::-1]],
                            fill="toself",
                            fillcolor=style.with_alpha(c, 0.15),
                            line=dict(width=0),
                            hoverinfo="skip",
                            showlegend=False,
                            legendgroup=str(line),
                        ),
                        1,
                        j + 1,
                    )
                se = d["se"].to_numpy()
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="lines+markers",
                        name=name(line),
                        legendgroup=str(line),
                        showlegend=j == 0,
                        line=dict(color=c, dash="dot" if line == "fusion" else None),
                        meta={"panel": panel, "line": line},
                        error_y=dict(type="data", array=se) if np.isfinite(se).any() else None,
                        hovertemplate="epoch %{x}<br>%{y:.3g}<extra>" + name(line) + "</extra>",
                    ),
                    1,
                    j + 1,
                )
            fig.update_xaxes(
                title_text=style.EPOCH_LABEL, dtick=style.epoch_dtick(stats["epoch"].max()), row=1, col=j + 1
            )
        fig.update_yaxes(title_text=ylabel, row=1, col=1)
        if log_y:
            fig.update_yaxes(type="log")
        style.style_plotly(fig, title, height=460 if note else 420, subtitle=subtitle + (f"<br>{note}" if note else ""))
        return fig.update_layout(margin=dict(t=140)) if note else fig  # the two-line subtitle above the panel titles
    fig = style.mpl_figure(2.8 * len(panels) + 0.6, 2.9)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False, sharey=True)).ravel()
    for ax, panel in zip(axes, panels):
        for i, line in enumerate(lines):
            d = sub(panel, line)
            if d.empty:
                continue
            c = color(line, i)
            x, y, sd, se = d["epoch"].to_numpy(), d["mean"].to_numpy(), d["std"].to_numpy(), d["se"].to_numpy()
            ax.errorbar(
                x,
                y,
                yerr=se if np.isfinite(se).any() else None,
                marker=".",
                capsize=2,
                color=c,
                ls=":" if line == "fusion" else "-",
                label=name(line),
            )
            if n_seeds > 1 and np.isfinite(sd).any():
                sd = np.nan_to_num(sd)
                ax.fill_between(x, y - sd, y + sd, color=c, alpha=0.15, lw=0)
        ax.set(title=title_of(panel), xlabel=style.EPOCH_LABEL)
        if log_y:
            ax.set_yscale("log")
        style.integer_ticks(ax)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5))
    fig.suptitle(f"{title} ({subtitle})" + (f"\n{note}" if note else ""))
    return fig
