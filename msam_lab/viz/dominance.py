"""Which modality dominates, and when: Shapley shares over steps with dominant-modality bands and
switch markers, optional rolling smoothing, and a linked per-epoch accuracy panel.

The tables behind the figures are public too (``dominance_segments``, ``switch_points``,
``smoothed_shares``), so a test or a reader can check a band against the ``dominant`` column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msam_lab.viz import style
from msam_lab.viz.common import as_run, as_runs, check_backend, modalities_of, run_label

BANDS = ("raw", "smoothed", None)


# ---------------------------------------------------------------- tables


def smoothed_shares(steps: pd.DataFrame, modalities, window: int = 1) -> pd.DataFrame:
    """``share_<m>`` columns, centred rolling mean over ``window`` steps (1 = raw)."""
    shares = steps[[f"share_{m}" for m in modalities]].astype(float)
    if window and window > 1:
        shares = shares.rolling(int(window), min_periods=1, center=True).mean()
    return shares


def smoothed_dominant(steps: pd.DataFrame, modalities, window: int = 1) -> pd.Series:
    """argmax of the smoothed shares per step (ties to the lowest modality index, as in training)."""
    shares = smoothed_shares(steps, modalities, window).to_numpy()
    return pd.Series(np.asarray(modalities, dtype=object)[shares.argmax(1)], index=steps.index, name="dominant")


def dominance_segments(steps: pd.DataFrame, dominant: pd.Series | None = None) -> pd.DataFrame:
    """Maximal runs of consecutive steps with the same dominant modality.

    Columns ``start``, ``end`` (first and last step, inclusive), ``dominant``, ``n_steps``.
    ``dominant``: a per-row series to use instead of the ``dominant`` column.
    """
    dom = (steps["dominant"] if dominant is None else dominant).astype(str).to_numpy()
    step = steps["step"].to_numpy()
    if not len(step):
        return pd.DataFrame(columns=["start", "end", "dominant", "n_steps"])
    cut = np.flatnonzero(dom[1:] != dom[:-1]) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, len(dom)] - 1
    return pd.DataFrame(
        {"start": step[starts], "end": step[ends], "dominant": dom[starts], "n_steps": ends - starts + 1}
    )


def switch_points(steps: pd.DataFrame, dominant: pd.Series | None = None) -> pd.DataFrame:
    """The steps where the dominant modality changes: ``step``, ``from``, ``to``."""
    seg = dominance_segments(steps, dominant)
    return pd.DataFrame(
        {
            "step": seg["start"].to_numpy()[1:],
            "from": seg["dominant"].to_numpy()[:-1],
            "to": seg["dominant"].to_numpy()[1:],
        }
    )


def switches_per_epoch(steps: pd.DataFrame, dominant: pd.Series | None = None) -> pd.DataFrame:
    """When dominance switches: per epoch, ``switches`` and the ``first``/``last`` step of one (NaN: none).

    Epochs with no switch are kept (a count of 0), so the table reads as a timeline."""
    sw = switch_points(steps, dominant)
    epoch_of = dict(zip(steps["step"], steps["epoch"]))
    sw = sw.assign(epoch=[epoch_of[s] for s in sw["step"]])
    rows = []
    for epoch in sorted(steps["epoch"].unique()):
        here = sw[sw["epoch"] == epoch]["step"]
        rows.append(
            {
                "epoch": int(epoch),
                "switches": len(here),
                "first": int(here.min()) if len(here) else np.nan,
                "last": int(here.max()) if len(here) else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["epoch", "switches", "first", "last"])


def switch_clusters(switch_steps, lo: int, hi: int, bins: int = 60) -> bool:
    """True when markers at ``switch_steps`` would stack: two or more fall in one of ``bins`` equal
    slices of the step range [lo, hi] (about one marker's width in a notebook-wide figure)."""
    steps = np.asarray(switch_steps, dtype=float)
    if len(steps) < 2:
        return False
    counts, _ = np.histogram(steps, bins=bins, range=(lo - 0.5, hi + 0.5))
    return bool(counts.max() >= 2)


def epoch_end_steps(steps: pd.DataFrame) -> dict[int, int]:
    """epoch -> number of steps done when it ended (epoch 0, before training, -> 0)."""
    ends = steps.groupby("epoch")["step"].max() + 1
    return {0: 0, **{int(e): int(s) for e, s in ends.items()}}


# ---------------------------------------------------------------- figure


@style.styled
def shares_over_steps(
    run,
    smooth: int = 1,
    modalities=None,
    step_range=None,
    bands: str | None = "raw",
    switches: bool = True,
    accuracy: bool = False,
    split: str = "test",
    epoch_lines: bool = True,
    log_steps: bool = False,
    density: bool | None = None,
    backend: str = "plotly",
):
    """Shapley share of each modality per training step (line), on bands coloured by the dominant
    modality, with a marker at each switch of dominance.

    When switches cluster (markers would stack into one blob) the figure still shows them:
    ``log_steps=True`` puts the step axis on a log scale (x = step + 1), which spreads the first steps
    where most switches happen; ``density`` adds a strip below (plotly) counting switches per slice of
    the step range (None: only when two switches would share a marker's width).

    ``smooth``: rolling window (steps) for the share lines. ``bands``: ``"raw"`` (the logged
    per-step ``dominant``), ``"smoothed"`` (argmax of the smoothed shares) or None.
    ``modalities``: those to draw (default all). ``step_range``: ``(first, last)`` steps shown.
    ``accuracy=True`` adds a linked panel below (shared x axis): ``split`` accuracy, fused and
    per-modality (Shapley-decomposed), at the step where each epoch ended.
    """
    backend = check_backend(backend)
    if bands not in BANDS:
        raise ValueError(f"bands must be one of {BANDS}, got {bands!r}")
    run = as_run(run)
    all_mods = modalities_of(run)
    mods = list(all_mods) if modalities is None else [m for m in all_mods if m in modalities]
    steps = run.steps
    shares = smoothed_shares(steps, all_mods, smooth)
    dom = None if bands != "smoothed" else smoothed_dominant(steps, all_mods, smooth)
    lo, hi = (int(steps["step"].min()), int(steps["step"].max())) if step_range is None else map(int, step_range)
    keep = (steps["step"] >= lo) & (steps["step"] <= hi)
    st, sh = steps[keep], shares[keep]
    segs = dominance_segments(st, None if dom is None else dom[keep]) if bands else None
    sw = switch_points(st, None if dom is None else dom[keep]) if switches else None
    ends = {e: s for e, s in epoch_end_steps(steps).items() if lo <= s <= hi + 1}
    label = run_label(run)
    smooth_txt = f", centred rolling mean over {smooth} steps" if smooth and smooth > 1 else ""
    band_txt = {"raw": "bands: dominant modality per step", "smoothed": "bands: argmax of smoothed shares", None: ""}[
        bands
    ]
    title = f"{label}: which modality dominates, step by step"
    subtitle = (
        f"Shapley shares of batch accuracy{smooth_txt}"
        + (f"; {band_txt}" if band_txt else "")
        + ("; ▼ = dominance switch" if switches else "")
    )
    acc = None
    if accuracy:
        e = run.epochs
        x = e["epoch"].map(epoch_end_steps(steps)) - 0.5  # on the epoch boundary (the dotted line)
        acc = [("fused", x, 100 * e[f"{split}_acc"], style.FUSED_COLOR, e["epoch"])]
        acc += [
            (f"{m} (Shapley-decomposed)", x, 100 * e[f"{split}_acc_{m}"], style.modality_color(m, all_mods), e["epoch"])
            for m in mods
            if f"{split}_acc_{m}" in e
        ]
        inside = (x >= lo - 0.5) & (x <= hi + 0.5)
        acc = [(n, xx[inside], yy[inside], c, ep[inside]) for n, xx, yy, c, ep in acc]
    if density is None:
        density = sw is not None and switch_clusters(sw["step"], lo, hi)
    if log_steps:  # a log axis needs x > 0: everything moves one step right, the axis says so
        st = st.assign(step=st["step"] + 1)
        segs = None if segs is None else segs.assign(start=segs["start"] + 1, end=segs["end"] + 1)
        sw = None if sw is None else sw.assign(step=sw["step"] + 1)
        ends = {e: s + 1 for e, s in ends.items()}
        acc = None if acc is None else [(n, xx + 1, yy, c, ep) for n, xx, yy, c, ep in acc]
        lo, hi = lo + 1, hi + 1
    if backend == "plotly":
        fig = _plotly(st, sh, segs, sw, mods, all_mods, ends, acc, lo, hi, title, subtitle, split, epoch_lines, density)
        if log_steps:
            lo_x = np.log10(max(lo - 0.5, 0.5))
            fig.update_xaxes(type="log", range=[lo_x, np.log10(hi + 0.5)])
            bottom = [k for k in fig.layout if k.startswith("xaxis") and fig.layout[k].title.text]
            for k in bottom:
                fig.layout[k].title.text = fig.layout[k].title.text.replace(
                    style.STEP_LABEL, style.STEP_LABEL + " + 1 (log scale)"
                )
        return fig
    mfig = _mpl(
        st,
        sh,
        segs,
        sw,
        mods,
        all_mods,
        ends,
        acc,
        lo,
        hi,
        f"{title}\n{subtitle.replace('; ', chr(10), 1)}",
        split,
        epoch_lines,
    )
    if log_steps:
        for ax in mfig.axes:
            ax.set_xscale("log")
            ax.set_xlim(max(lo - 0.5, 0.5), hi + 0.5)
        mfig.axes[-1].set_xlabel(mfig.axes[-1].get_xlabel().replace(style.STEP_LABEL, style.STEP_LABEL + " + 1 (log)"))
    return mfig


def _band_xy(segs: pd.DataFrame, m: str, lo: int, hi: int):
    """Step-shaped 0/1 outline of modality m's bands: x at segment edges (steps ± 0.5)."""
    xs, ys = [lo - 0.5], [0.0]
    for start, end, d in zip(segs["start"], segs["end"], segs["dominant"]):
        xs.append(start - 0.5)
        ys.append(1.0 if d == m else 0.0)
    xs.append(hi + 0.5)
    ys.append(ys[-1])
    return xs, ys


def _plotly(st, sh, segs, sw, mods, all_mods, ends, acc, lo, hi, title, subtitle, split, epoch_lines, density=False):
    import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
    from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

    density = bool(density) and sw is not None and len(sw) > 0
    heights = [0.62] + ([0.38] if acc is not None else []) + ([0.12] if density else [])
    rows = len(heights)
    titles = ["Shapley shares (training batches)"]
    titles += [f"{split} accuracy at the end of each epoch"] if acc is not None else []
    titles += ["dominance switches per slice of the step range"] if density else []
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08 if rows == 2 else 0.07,
        row_heights=heights if rows > 1 else None,
        subplot_titles=titles if rows > 1 else None,
    )
    if density:
        edges = np.linspace(lo - 0.5, hi + 0.5, 61)
        counts, _ = np.histogram(sw["step"], bins=edges)
        fig.add_trace(
            go.Bar(
                x=(edges[:-1] + edges[1:]) / 2,
                y=counts,
                width=np.diff(edges),
                marker=dict(color="#555"),
                name="switches per slice",
                showlegend=False,
                customdata=np.c_[edges[:-1] + 0.5, edges[1:] - 0.5],
                meta={"kind": "switch_density"},
                hovertemplate="steps %{customdata[0]:.0f}–%{customdata[1]:.0f}: %{y} switches<extra></extra>",
            ),
            rows,
            1,
        )
        fig.update_yaxes(title_text="switches", rangemode="tozero", nticks=3, row=rows, col=1)
    if segs is not None:
        for m in mods:
            xs, ys = _band_xy(segs, m, lo, hi)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line=dict(width=0, shape="hv"),
                    fill="tozeroy",
                    fillcolor=style.with_alpha(style.modality_color(m, all_mods), 0.16),
                    name=f"{m} dominant",
                    legendgroup=f"band-{m}",
                    hoverinfo="skip",
                    meta={"kind": "band", "modality": m},
                ),
                1,
                1,
            )
    for m in mods:
        fig.add_trace(
            go.Scatter(
                x=st["step"],
                y=sh[f"share_{m}"],
                mode="lines",
                name=f"share of {m}",
                line=dict(color=style.modality_color(m, all_mods), width=1.8),
                meta={"kind": "share", "modality": m},
                hovertemplate=f"step %{{x}}<br>share of {m}: %{{y:.2f}}<extra></extra>",
            ),
            1,
            1,
        )
    if sw is not None and len(sw):
        fig.add_trace(
            go.Scatter(
                x=sw["step"],
                y=np.full(len(sw), 1.05),
                mode="markers",
                name="dominance switch (colour: new dominant)",
                marker=dict(
                    symbol="triangle-down",
                    size=9,
                    line=dict(width=0.5, color="#333"),
                    color=[style.modality_color(t, all_mods) for t in sw["to"]],
                ),
                legendgroup="switch",
                showlegend=False,
                customdata=np.stack([sw["from"], sw["to"]], 1),
                meta={"kind": "switch"},
                hovertemplate="step %{x}: %{customdata[0]} → %{customdata[1]}<extra></extra>",
            ),
            1,
            1,
        )
        # legend entry in a neutral colour (the markers themselves take the new dominant's colour)
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name="dominance switch (colour: new dominant)",
                marker=dict(symbol="triangle-down", size=9, color="#bbb", line=dict(width=0.5, color="#333")),
                legendgroup="switch",
                hoverinfo="skip",
                meta={"kind": "legend"},
            ),
            1,
            1,
        )
    if acc is not None:
        for name, x, y, color, ep in acc:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=f"acc: {name}",
                    line=dict(color=color, dash="solid" if name == "fused" else "dash"),
                    customdata=ep,
                    meta={"kind": "accuracy"},
                    hovertemplate=f"{name}<br>after epoch %{{customdata}}: %{{y:.1f}} %<extra></extra>",
                ),
                2,
                1,
            )
        fig.update_yaxes(title_text=style.acc_label(split).replace(" (", "<br>("), range=[0, 101], row=2, col=1)
    if epoch_lines:
        for e, s in ends.items():
            if e > 0:
                fig.add_vline(x=s - 0.5, line=dict(color="#888", width=1, dash="dot"))
    fig.update_yaxes(title_text="Shapley share of<br>batch accuracy (0–1)", range=[0, 1.1], row=1, col=1)
    fig.update_xaxes(range=[lo - 0.5, hi + 0.5])
    fig.update_xaxes(
        title_text=style.STEP_LABEL + ("; dotted lines: epoch ends" if epoch_lines else ""), row=rows, col=1
    )
    return style.style_plotly(fig, title, height={1: 420, 2: 560}.get(rows, 660), subtitle=subtitle)


def _mpl(st, sh, segs, sw, mods, all_mods, ends, acc, lo, hi, title, split, epoch_lines):
    from matplotlib.patches import Patch  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    fig = style.mpl_figure(7.0, 4.4 if acc is not None else 3.0)
    if acc is not None:
        ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[0.62, 0.38])
    else:
        ax, ax2 = fig.subplots(), None
    handles = []
    if segs is not None:
        for start, end, d in zip(segs["start"], segs["end"], segs["dominant"]):
            if d in mods:
                ax.axvspan(start - 0.5, end + 0.5, color=style.modality_color(d, all_mods), alpha=0.16, lw=0)
        handles += [Patch(color=style.modality_color(m, all_mods), alpha=0.3, label=f"{m} dominant") for m in mods]
    for m in mods:
        (h,) = ax.plot(
            st["step"], sh[f"share_{m}"], color=style.modality_color(m, all_mods), lw=1.3, label=f"share of {m}"
        )
        handles.append(h)
    if sw is not None and len(sw):
        ax.scatter(
            sw["step"],
            np.full(len(sw), 1.05),
            marker="v",
            s=18,
            zorder=3,
            edgecolors="#333",
            linewidths=0.4,
            c=[style.modality_color(t, all_mods) for t in sw["to"]],
            clip_on=False,
        )
        from matplotlib.lines import Line2D  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="v",
                color="#bbb",
                mec="#333",
                mew=0.4,
                label="dominance switch\n(colour: new dominant)",
            )
        )
    for e, s in ends.items():
        if epoch_lines and e > 0:
            for a in (ax, ax2):
                if a is not None:
                    a.axvline(s - 0.5, color="#888", lw=0.7, ls=":")
    ax.set(ylabel="Shapley share of\nbatch accuracy (0–1)", ylim=(0, 1.1), xlim=(lo - 0.5, hi + 0.5))
    fig.suptitle(title, fontsize=9)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    last = ax
    if ax2 is not None:
        for name, x, y, color, _ in acc:
            ax2.plot(x, y, color=color, ls="-" if name == "fused" else "--", marker=".", label=name)
        ax2.set(ylabel=style.acc_label(split).replace(" (", "\n("), ylim=(0, 101))
        ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        last = ax2
    last.set_xlabel(style.STEP_LABEL + ("; dotted lines: epoch ends" if epoch_lines else ""))
    return fig


@style.styled
def epoch_shares(runs, split: str = "test", backend: str = "plotly"):
    """Shapley shares per epoch on the held-out (or training) set, one panel per run."""
    backend = check_backend(backend)
    runs = as_runs(runs)
    n = len(runs)
    title = f"Shapley shares of {split}-set accuracy per epoch"
    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(rows=1, cols=n, subplot_titles=list(runs), shared_yaxes=True)
        seen = set()
        for i, (label, run) in enumerate(runs.items()):
            mods = modalities_of(run)
            e = run.epochs
            for m in mods:
                fig.add_trace(
                    go.Scatter(
                        x=e["epoch"],
                        y=e[f"{split}_share_{m}"],
                        mode="lines+markers",
                        name=f"share of {m}",
                        legendgroup=m,
                        showlegend=m not in seen,
                        line=dict(color=style.modality_color(m, mods)),
                    ),
                    1,
                    i + 1,
                )
                seen.add(m)
            fig.update_xaxes(
                title_text=f"{style.EPOCH_LABEL} (0 = before training)",
                row=1,
                col=i + 1,
                dtick=style.epoch_dtick(e["epoch"].max()),
            )
        fig.update_yaxes(title_text=f"Shapley share of {split} accuracy (0–1)", row=1, col=1)
        fig.update_yaxes(range=[-0.02, 1.02])
        return style.style_plotly(fig, title, height=380)
    fig = style.mpl_figure(3.0 * n + 0.5, 2.6)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True, squeeze=False)).ravel()
    for ax, (label, run) in zip(axes, runs.items()):
        mods = modalities_of(run)
        for m in mods:
            ax.plot(
                run.epochs["epoch"],
                run.epochs[f"{split}_share_{m}"],
                marker=".",
                color=style.modality_color(m, mods),
                label=f"share of {m}",
            )
        ax.set(title=label, xlabel=f"{style.EPOCH_LABEL} (0 = before training)", ylim=(-0.02, 1.02))
        style.integer_ticks(ax)
    axes[0].set_ylabel(f"Shapley share of {split} accuracy (0–1)")
    axes[0].legend()
    fig.suptitle(title)
    return fig


def dominance_summary(runs) -> pd.DataFrame:
    """Per run: steps, switches and when they happen (the first and last switch's step, and per epoch
    ``e<epoch>: <count> (steps first–last)``), and the fraction of steps each modality dominated."""
    rows = []
    for label, run in as_runs(runs).items():
        s = run.steps
        sw = switch_points(s)
        per = switches_per_epoch(s) if len(s) else pd.DataFrame(columns=["epoch", "switches", "first", "last"])
        row = {
            "run": label,
            "steps": len(s),
            "switches": len(sw),
            "first switch (step)": int(sw["step"].min()) if len(sw) else np.nan,
            "last switch (step)": int(sw["step"].max()) if len(sw) else np.nan,
            "switches per epoch": "; ".join(
                f"e{r.epoch}: {r.switches}" + (f" ({r.first:.0f}–{r.last:.0f})" if r.switches else "")
                for r in per.itertuples()
            ),
        }
        for m in modalities_of(run):
            row[f"dominant_{m}_%"] = 100 * float((s["dominant"] == m).mean()) if len(s) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
