"""Loss landscapes and sharpness: 1-D curves per modality, 2-D surfaces (3-D surface + contour) with
the training trajectory (PCA projection) drawn on them, side-by-side comparisons on one colour
scale, and sharpness per modality encoder.

Inputs are ``msam_lab.landscape.Surface`` objects (``s[metric]``, ``s.coords``, ``s.meta``) and the
tables of ``sharpness_for_run``. Metric names follow the surface: ``loss``/``acc`` (fused model),
``loss_only_<m>`` (modality m alone, the others zeroed), ``loss_without_<m>`` (m zeroed).
For figures that are compared, pass the same ``zmin``/``zmax`` (``shared_range``) to each — the
comparison functions here do it themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from msam_lab.viz import style
from msam_lab.viz.common import check_backend

PARTS = ("fused", "only", "without")


# ---------------------------------------------------------------- names and labels


def metric_key(modality: str | None = None, what: str = "loss", part: str = "only") -> str:
    """``loss`` (modality None or "fused"), ``loss_only_<m>`` or ``loss_without_<m>``; ``what``: loss|acc."""
    if what not in ("loss", "acc"):
        raise ValueError(f"what must be 'loss' or 'acc', got {what!r}")
    if modality in (None, "fused"):
        return what
    if part not in ("only", "without"):
        raise ValueError(f"part must be 'only' or 'without', got {part!r}")
    return f"{what}_{part}_{modality}"


def metric_title(metric: str, with_units: bool = True) -> str:
    """Readable name of a surface metric, with its unit."""
    what, _, rest = metric.partition("_")
    unit = " (nats)" if what == "loss" else " (%)"
    base = "cross-entropy" if what == "loss" else "accuracy"
    if not rest:
        text = f"fused-model {base}"
    elif rest.startswith("only_"):
        text = f"{base}, {rest[5:]} alone (others zeroed)"
    elif rest.startswith("without_"):
        text = f"{base} without {rest[8:]} (zeroed)"
    else:
        text = metric
    return text + (unit if with_units else "")


def _values(surface, metric: str, log: bool = False) -> np.ndarray:
    v = np.asarray(surface[metric], dtype=float)
    if metric.startswith("acc"):
        v = 100 * v
    if log:
        v = np.log10(np.where(v > 0, v, np.nan))
    return v


def value_title(metric: str, log: bool = False) -> str:
    return ("log10 " if log else "") + metric_title(metric)


def direction_title(surface, k: int, sep: str = " ") -> str:
    """Axis title of direction ``k``: what the direction is, then (after ``sep``) the coordinate's unit.

    ``sep="<br>"`` for plotly, ``"\n"`` for matplotlib, to keep long titles inside the figure.
    """
    meta = surface.meta
    kind = str(meta.get("directions", "random"))
    if kind.startswith("reuse:"):
        kind = kind[len("reuse:") :]
    if kind == "pca":
        evr = meta.get("explained_variance_ratio") or []
        share = f" ({100 * evr[k]:.0f} % of variance)" if k < len(evr) else ""
        return f"PC{k + 1} of the trajectory{share}{sep}(L2 distance in parameter space)"
    if kind == "between" and k == 0:
        same = meta.get("to") and meta.get("run") and str(meta.get("to")) == str(meta.get("run"))
        end = f"epoch {meta.get('to_epoch')}" + ("" if same else f" of {_path_name(meta.get('to'))}")
        return f"interpolation α{sep}(0 = epoch {meta.get('epoch')}, 1 = {end})"
    return f"α{k + 1}: random direction {k + 1}{sep}(filter-normalised; 1 = one filter norm)"


def colorbar_title(metric: str, log: bool = False, width: int = 22) -> str:
    """``value_title`` in lines of about ``width`` characters (plotly: ``<br>``): written up the colour
    bar, a one-line title longer than the bar ran into the figure's title."""
    import textwrap  # noqa: PLC0415 - only for colour-bar titles

    return "<br>".join(textwrap.wrap(value_title(metric, log), width, break_on_hyphens=False))


def direction_brief(surface, k: int) -> str:
    """One short line for direction ``k`` (the axis title of a panel beside the first): ``PC2 (31 %)``."""
    meta = surface.meta
    evr = meta.get("explained_variance_ratio") or []
    if str(meta.get("directions", "random")).replace("reuse:", "") == "pca" and k < len(evr):
        return f"{direction_short(surface, k)} ({100 * evr[k]:.0f} % of variance)"
    return direction_short(surface, k)


def direction_short(surface, k: int) -> str:
    """A short name of direction ``k`` (3-D axis labels): PC1, α1, ..."""
    kind = str(surface.meta.get("directions", "random")).replace("reuse:", "")
    if kind == "pca":
        return f"PC{k + 1}"
    if kind == "between" and k == 0:
        return "α (interpolation)"
    return f"α{k + 1}"


def _path_name(path) -> str:

    return Path(str(path)).name if path else "?"


def surface_label(surface) -> str:
    meta = surface.meta
    return f"{style.method_label(meta.get('method', ''))} epoch {meta.get('epoch', '?')}"


def shared_z(surfaces, metric: str, log: bool = False, pad: float = 0.0) -> tuple[float, float]:
    """(zmin, zmax) of ``metric`` over several surfaces, for one colour scale across them."""
    surfaces = surfaces.values() if isinstance(surfaces, Mapping) else surfaces
    return style.shared_range([_values(s, metric, log) for s in surfaces], pad=pad)


def _as_surfaces(surfaces) -> dict:
    if isinstance(surfaces, Mapping):
        return dict(surfaces)
    if not isinstance(surfaces, (list, tuple)):
        surfaces = [surfaces]
    out = {}
    for s in surfaces:
        label = surface_label(s)
        while label in out:
            label += "'"
        out[label] = s
    return out


# ---------------------------------------------------------------- trajectory


def trajectory(surface) -> pd.DataFrame | None:
    """The training trajectory in the surface's plane (PCA surfaces): ``epoch``, ``x``, ``y``; else None.

    The coordinates are the checkpoints' projections onto the two PCA directions, centred at the
    surface's own epoch (which sits at the origin).
    """
    traj = surface.meta.get("trajectory")
    if traj is None or surface.dim != 2:
        return None
    traj = np.asarray(traj, dtype=float)
    return pd.DataFrame(
        {"epoch": surface.meta.get("trajectory_epochs", list(range(len(traj)))), "x": traj[:, 0], "y": traj[:, 1]}
    )


def _epoch_labels(epochs, max_labels: int = 7) -> list[str]:
    """``e<k>`` labels for the trajectory points: all when few, else every k-th plus the last."""
    epochs = list(epochs)
    step = max(1, int(np.ceil(len(epochs) / max_labels)))
    return [f"e{e}" if (i % step == 0 or i == len(epochs) - 1) else "" for i, e in enumerate(epochs)]


def _on_surface(surface, metric, x, y, log=False) -> np.ndarray:
    """Surface value at (x, y) by bilinear interpolation (the height the path is drawn at)."""
    from scipy.interpolate import RegularGridInterpolator  # noqa: PLC0415 - scipy loads only when this reader or view runs

    f = RegularGridInterpolator(
        (surface.coords[0], surface.coords[1]), _values(surface, metric, log), bounds_error=False, fill_value=None
    )
    return f(np.stack([x, y], 1))


# ---------------------------------------------------------------- 1-D


def _marks(surface) -> list[float]:
    """Coordinates worth a vertical line: θ₀ (0), and the end point (1) of an interpolation."""
    return [0.0, 1.0] if "between" in str(surface.meta.get("directions", "")) else [0.0]


@style.styled
def curves_1d(
    surfaces, metrics=None, what: str = "loss", ymin=None, ymax=None, log: bool = False, backend: str = "plotly"
):
    """1-D landscapes, one panel per surface, one line per metric, on a shared y range.

    ``metrics``: default the fused model plus each modality alone (``<what>_only_<m>``).
    ``ymin``/``ymax``: default the range over every panel (so panels compare directly).
    """
    backend = check_backend(backend)
    surfaces = _as_surfaces(surfaces)
    for label, s in surfaces.items():
        if s.dim != 1:
            raise ValueError(f"curves_1d needs 1-D surfaces; {label!r} is {s.dim}-D")
    first = next(iter(surfaces.values()))
    mods = first.meta.get("modalities", [])
    if metrics is None:
        metrics = [what] + [m for m in (f"{what}_only_{x}" for x in mods) if m in first.values]
    if ymin is None or ymax is None:
        lo, hi = style.shared_range([_values(s, m, log) for s in surfaces.values() for m in metrics], pad=0.03)
        ymin = lo if ymin is None else ymin
        ymax = hi if ymax is None else ymax
    ytitle = ("log10 " if log else "") + ("cross-entropy (nats)" if what == "loss" else "accuracy (%)")
    n = len(surfaces)

    def color(metric):
        for m in mods:
            if metric.endswith(f"_{m}"):
                return style.modality_color(m, mods), ("dot" if "_without_" in metric else "dash")
        return style.FUSED_COLOR, "solid"

    def name(metric):
        rest = metric.partition("_")[2]
        if not rest:
            return "fused model"
        return f"{rest[5:]} alone" if rest.startswith("only_") else f"without {rest[8:]}"

    title = f"1-D {'loss' if what == 'loss' else 'accuracy'} landscapes (per-modality: others zeroed)"
    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(rows=1, cols=n, subplot_titles=list(surfaces), shared_yaxes=True)
        for i, (label, s) in enumerate(surfaces.items()):
            for m in metrics:
                c, dash = color(m)
                fig.add_trace(
                    go.Scatter(
                        x=s.coords[0],
                        y=_values(s, m, log),
                        mode="lines",
                        name=name(m),
                        legendgroup=m,
                        showlegend=i == 0,
                        line=dict(color=c, dash=dash),
                        meta={"metric": m},
                        hovertemplate=f"{label}<br>{name(m)}<br>α=%{{x:.2f}}: %{{y:.3f}}<extra></extra>",
                    ),
                    1,
                    i + 1,
                )
            for x0 in _marks(s):
                fig.add_vline(x=x0, line=dict(color="#aaa", width=1, dash="dot"), row=1, col=i + 1)
            fig.update_xaxes(title_text=direction_title(s, 0, "<br>"), row=1, col=i + 1)
        fig.update_yaxes(title_text=ytitle, row=1, col=1)
        fig.update_yaxes(range=[ymin, ymax])
        return style.style_plotly(fig, title, height=420)
    fig = style.mpl_figure(3.2 * n + 0.4, 2.8)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True, squeeze=False)).ravel()
    for ax, (label, s) in zip(axes, surfaces.items()):
        for m in metrics:
            c, dash = color(m)
            ax.plot(
                s.coords[0],
                _values(s, m, log),
                color=c,
                ls={"solid": "-", "dash": "--", "dot": ":"}[dash],
                label=name(m),
            )
        for x0 in _marks(s):
            ax.axvline(x0, color="#aaa", lw=0.7, ls=":")
        ax.set(title=label, xlabel=direction_title(s, 0, "\n"), ylim=(ymin, ymax))
    axes[0].set_ylabel(ytitle)
    axes[0].legend()
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- 2-D


def _clip(v, zmin, zmax):
    return np.clip(v, zmin, zmax)


def _surface_traces(
    surface, metric, zmin, zmax, log, show_trajectory, scene=None, coloraxis="coloraxis", showlegend=False
):
    import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn

    x, y = surface.coords
    z = _values(surface, metric, log)
    traces = [
        go.Surface(
            x=x,
            y=y,
            z=_clip(z, zmin, zmax).T,
            coloraxis=coloraxis,
            cmin=zmin,
            cmax=zmax,
            name=metric,
            meta={"metric": metric, "kind": "surface"},
            hovertemplate="x=%{x:.2f}<br>y=%{y:.2f}<br>value=%{z:.3f}<extra></extra>",
            contours=dict(z=dict(show=True, usecolormap=True, project=dict(z=True), width=1)),
        )
    ]
    traj = trajectory(surface) if show_trajectory else None
    if traj is not None:
        h = _clip(_on_surface(surface, metric, traj["x"], traj["y"], log), zmin, zmax)
        traces.append(
            go.Scatter3d(
                x=traj["x"],
                y=traj["y"],
                z=h + 0.01 * (zmax - zmin),
                mode="lines+markers",
                text=[str(e) for e in traj["epoch"]],
                name="training trajectory",
                line=dict(color="#d62728", width=6),
                marker=dict(size=3, color="#d62728"),
                meta={"kind": "trajectory"},
                showlegend=showlegend,
                legendgroup="trajectory",
                hovertemplate="epoch %{text}<br>(%{x:.2f}, %{y:.2f})<extra></extra>",
            )
        )
    if scene:
        for t in traces:
            t.scene = scene
    return traces


def _contour_traces(
    surface, metric, zmin, zmax, log, show_trajectory, n_levels, coloraxis="coloraxis", showlegend=True
):
    import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn

    x, y = surface.coords
    z = _values(surface, metric, log)
    traces = [
        go.Contour(
            x=x,
            y=y,
            z=z.T,
            coloraxis=coloraxis,
            autocontour=False,
            contours=dict(start=zmin, end=zmax, size=(zmax - zmin) / n_levels, coloring="heatmap"),
            line=dict(width=0.5, color="rgba(255,255,255,0.5)"),
            name=metric,
            meta={"metric": metric, "kind": "contour"},
            hovertemplate="x=%{x:.2f}<br>y=%{y:.2f}<br>value=%{z:.3f}<extra></extra>",
        )
    ]
    traj = trajectory(surface) if show_trajectory else None
    if traj is not None:
        traces.append(
            go.Scatter(
                x=traj["x"],
                y=traj["y"],
                mode="lines+markers+text",
                name="training trajectory",
                text=_epoch_labels(traj["epoch"]),
                customdata=traj["epoch"],
                textposition="top right",
                textfont=dict(color="white", size=11, shadow="1px 1px 2px black"),
                showlegend=showlegend,
                cliponaxis=False,
                line=dict(color="#d62728", width=2.5),
                marker=dict(size=7, color="#d62728"),
                legendgroup="trajectory",
                meta={"kind": "trajectory"},
                hovertemplate="epoch %{customdata}: (%{x:.2f}, %{y:.2f})<extra></extra>",
            )
        )
    traces.append(
        go.Scatter(
            x=[0],
            y=[0],
            mode="markers",
            name=f"θ at epoch {surface.meta.get('epoch', '?')}",
            marker=dict(symbol="x", size=10, color="white", line=dict(width=1.5, color="black")),
            showlegend=showlegend,
            legendgroup="centre",
            meta={"kind": "centre"},
            hoverinfo="skip",
        )
    )
    return traces


def _zrange(surfaces, metric, log, zmin, zmax):
    if zmin is None or zmax is None:
        lo, hi = shared_z(surfaces, metric, log)
        zmin = lo if zmin is None else zmin
        zmax = hi if zmax is None else zmax
    if not zmax > zmin:
        raise ValueError(f"zmax must exceed zmin, got {zmin}, {zmax}")
    return float(zmin), float(zmax)


def _check_2d(surface):
    if surface.dim != 2:
        raise ValueError(f"this figure needs a 2-D surface, got a {surface.dim}-D one")


@style.styled
def surface_figure(
    surface,
    metric: str = "loss",
    zmin=None,
    zmax=None,
    show_trajectory: bool = True,
    log: bool = False,
    n_levels: int = 20,
    kinds=("surface", "contour"),
    backend: str = "plotly",
):
    """A 2-D landscape as a 3-D surface and a filled contour, side by side, on one colour scale
    (``zmin``/``zmax``, default the surface's own range; values beyond it are clipped in the 3-D view),
    with the training trajectory (PCA surfaces) drawn on both."""
    backend = check_backend(backend)
    _check_2d(surface)
    zmin, zmax = _zrange([surface], metric, log, zmin, zmax)
    kinds = list(kinds)
    title = f"{surface_label(surface)}: {value_title(metric, log)}"
    if backend == "plotly":
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        specs = [[{"type": "scene" if k == "surface" else "xy"} for k in kinds]]
        fig = make_subplots(
            rows=1,
            cols=len(kinds),
            specs=specs,
            horizontal_spacing=0.22,  # the contour's two-line y title stays off the 3-D view
            column_widths=[0.58, 0.42] if kinds == ["surface", "contour"] else None,  # the 3-D view gets room
            subplot_titles=["3-D view" if k == "surface" else "contour (top view)" for k in kinds],
        )
        for i, k in enumerate(kinds):
            if k == "surface":
                for t in _surface_traces(surface, metric, zmin, zmax, log, show_trajectory):
                    fig.add_trace(t, 1, i + 1)
            else:
                for t in _contour_traces(surface, metric, zmin, zmax, log, show_trajectory, n_levels):
                    fig.add_trace(t, 1, i + 1)
                fig.update_xaxes(title_text=direction_title(surface, 0, "<br>"), row=1, col=i + 1)
                fig.update_yaxes(title_text=direction_title(surface, 1, "<br>"), row=1, col=i + 1)
                fig.update_xaxes(ticklabelstandoff=4, row=1, col=i + 1)
                fig.update_yaxes(ticklabelstandoff=4, row=1, col=i + 1)
        fig.update_layout(
            coloraxis=dict(
                colorscale=style.SURFACE_SCALE_PLOTLY,
                cmin=zmin,
                cmax=zmax,
                colorbar=dict(title=dict(text=colorbar_title(metric, log), side="right")),
            )
        )
        fig.update_scenes(
            xaxis_title_text=direction_short(surface, 0),
            yaxis_title_text=direction_short(surface, 1),
            zaxis_title_text=("log10 " if log else "")
            + ("loss (nats)" if metric.startswith("loss") else "accuracy (%)"),
            zaxis_range=[zmin, zmax],
            aspectmode="manual",
            aspectratio=dict(x=1, y=1, z=0.7),
            camera=dict(eye=dict(x=1.5, y=-1.5, z=1.0)),
            **{f"{a}axis": dict(nticks=5, tickfont=dict(size=10), title_font=dict(size=12)) for a in "xyz"},
        )
        fig.update_layout(legend=dict(orientation="h", y=-0.2))
        return style.style_plotly(fig, title, height=580)
    from matplotlib import colors  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    fig = style.mpl_figure(4.4 * len(kinds) + 1.0, 3.8)
    norm = colors.Normalize(zmin, zmax)
    levels = np.linspace(zmin, zmax, n_levels + 1)
    x, y = surface.coords
    z = _values(surface, metric, log)
    traj = trajectory(surface) if show_trajectory else None
    # a spacer column between panels keeps the 3-D z label clear of the contour's y label
    ratios = [x for k in kinds for x in (1.0, 0.12)][:-1]
    gs = fig.add_gridspec(1, len(ratios), width_ratios=ratios)
    for i, k in enumerate(kinds):
        if k == "surface":
            ax = fig.add_subplot(gs[0, 2 * i], projection="3d")
            X, Y = np.meshgrid(x, y, indexing="ij")
            ax.plot_surface(
                X, Y, _clip(z, zmin, zmax), cmap=style.SURFACE_CMAP_MPL, norm=norm, linewidth=0, antialiased=True
            )
            if traj is not None:
                h = _clip(_on_surface(surface, metric, traj["x"], traj["y"], log), zmin, zmax)
                ax.plot(traj["x"], traj["y"], h, color="#d62728", marker="o", ms=3, zorder=5)
            ax.set(xlabel=direction_short(surface, 0), ylabel=direction_short(surface, 1), zlim=(zmin, zmax))
            ax.set_zlabel(
                ("log10 " if log else "") + ("loss (nats)" if metric.startswith("loss") else "acc. (%)"), labelpad=2
            )
            ax.set_title("3-D view")
        else:
            ax = fig.add_subplot(gs[0, 2 * i])
            ax.contourf(x, y, _clip(z, zmin, zmax).T, levels=levels, cmap=style.SURFACE_CMAP_MPL, norm=norm)
            ax.contour(x, y, _clip(z, zmin, zmax).T, levels=levels, colors="white", linewidths=0.3, alpha=0.6)
            _mpl_trajectory(ax, traj, surface)
            ax.set(
                xlabel=direction_title(surface, 0, "\n"),
                ylabel=direction_title(surface, 1, "\n"),
                title="contour (top view)",
            )
    fig.colorbar(_mappable(norm), ax=fig.axes, label=value_title(metric, log), shrink=0.85)
    fig.suptitle(title)
    return fig


def _mappable(norm):
    """A colour-bar source for ``norm`` (continuous ticks, independent of the contour levels)."""
    from matplotlib import cm  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    return cm.ScalarMappable(norm=norm, cmap=style.SURFACE_CMAP_MPL)


def _mpl_trajectory(ax, traj, surface):
    from matplotlib import patheffects  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    if traj is not None:
        ax.plot(traj["x"], traj["y"], color="#d62728", marker="o", ms=3.5, lw=1.6, label="training trajectory")
        for label, xx, yy in zip(_epoch_labels(traj["epoch"]), traj["x"], traj["y"]):
            if label:
                ax.annotate(
                    label,
                    (xx, yy),
                    textcoords="offset points",
                    xytext=(3, 4),
                    fontsize=7,
                    color="white",
                    path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")],
                )
    ax.plot(
        [0],
        [0],
        marker="x",
        color="white",
        mec="black",
        ms=7,
        mew=1.5,
        ls="none",
        label=f"θ at epoch {surface.meta.get('epoch', '?')}",
    )
    ax.legend(loc="lower right", fontsize=7, frameon=True, framealpha=0.7)


@style.styled
def contour_grid(
    surfaces,
    metric: str = "loss",
    zmin=None,
    zmax=None,
    show_trajectory: bool = True,
    log: bool = False,
    n_levels: int = 20,
    backend: str = "plotly",
):
    """Contours of several 2-D surfaces (e.g. one per method) side by side on ONE colour scale and
    one set of contour levels (``zmin``/``zmax`` default to the range over all of them)."""
    backend = check_backend(backend)
    surfaces = _as_surfaces(surfaces)
    for s in surfaces.values():
        _check_2d(s)
    zmin, zmax = _zrange(surfaces.values(), metric, log, zmin, zmax)
    n = len(surfaces)
    title = f"{value_title(metric, log)}: shared colour scale [{zmin:.3g}, {zmax:.3g}]"
    if backend == "plotly":
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        fig = make_subplots(rows=1, cols=n, subplot_titles=list(surfaces), horizontal_spacing=0.13)
        for i, (label, s) in enumerate(surfaces.items()):
            for t in _contour_traces(s, metric, zmin, zmax, log, show_trajectory, n_levels, showlegend=i == 0):
                fig.add_trace(t, 1, i + 1)
            fig.update_xaxes(title_text=direction_title(s, 0, "<br>"), row=1, col=i + 1)
            # beside the first panel, a two-line y title reached into the panel to its left
            y_title = direction_title(s, 1, "<br>") if i == 0 else direction_brief(s, 1)
            fig.update_yaxes(title_text=y_title, row=1, col=i + 1)
        fig.update_xaxes(ticklabelstandoff=4)  # the x and y "−1" met at the lower-left corner
        fig.update_yaxes(ticklabelstandoff=4)
        fig.update_layout(
            coloraxis=dict(
                colorscale=style.SURFACE_SCALE_PLOTLY,
                cmin=zmin,
                cmax=zmax,
                colorbar=dict(title=dict(text=colorbar_title(metric, log), side="right")),
            ),
            legend=dict(orientation="h", y=-0.25),
        )
        return style.style_plotly(fig, title, height=460)
    from matplotlib import colors  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    fig = style.mpl_figure(3.3 * n + 1.0, 3.3)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel()
    norm = colors.Normalize(zmin, zmax)
    levels = np.linspace(zmin, zmax, n_levels + 1)
    for ax, (label, s) in zip(axes, surfaces.items()):
        z = _clip(_values(s, metric, log), zmin, zmax).T
        ax.contourf(s.coords[0], s.coords[1], z, levels=levels, cmap=style.SURFACE_CMAP_MPL, norm=norm)
        ax.contour(s.coords[0], s.coords[1], z, levels=levels, colors="white", linewidths=0.3, alpha=0.6)
        _mpl_trajectory(ax, trajectory(s) if show_trajectory else None, s)
        ax.set(title=label, xlabel=direction_title(s, 0, "\n"), ylabel=direction_title(s, 1, "\n"))
    fig.colorbar(_mappable(norm), ax=list(axes), label=value_title(metric, log), shrink=0.9)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- sharpness

SHARPNESS_LABELS = {
    "lambda_1": "top Hessian eigenvalue λ₁ (nats / unit²)",
    "trace": "Hessian trace, Hutchinson (nats / unit²)",
    "eps_sharpness": "ε-sharpness L(θ+ε) − L(θ) (nats)",
}


def _sharpness_frame(tables) -> pd.DataFrame:
    if isinstance(tables, pd.DataFrame):
        df = tables.copy()
        if "run" not in df:
            df["run"] = "run"
        return df
    return pd.concat([t.assign(run=label) for label, t in tables.items()], ignore_index=True)


@style.styled
def sharpness_figure(tables, metric: str = "lambda_1", backend: str = "plotly"):
    """Sharpness of the whole model and of each modality's encoder.

    ``tables``: ``{label: sharpness_for_run(...) table}`` or one table (with a ``run`` column).
    One epoch per run: grouped bars (x = scope, one bar per run). Several epochs: one panel per
    scope, sharpness over epochs, one line per run. Error bars: the Hutchinson standard error for
    ``trace``.
    """
    backend = check_backend(backend)
    if metric not in SHARPNESS_LABELS:
        raise ValueError(f"metric must be one of {list(SHARPNESS_LABELS)}, got {metric!r}")
    df = _sharpness_frame(tables)
    if metric not in df:
        raise ValueError(f"the sharpness tables have no column {metric!r} (computed with topk/probes = 0?)")
    scopes = list(dict.fromkeys(df["scope"]))
    runs = list(dict.fromkeys(df["run"]))
    over_epochs = df.groupby("run")["epoch"].nunique().max() > 1
    rho = df["rho"].iloc[0] if "rho" in df and metric == "eps_sharpness" else None
    ylabel = SHARPNESS_LABELS[metric] + (f", ρ = {rho:g}" if rho is not None else "")
    scope_name = {s: ("whole model" if s == "model" else f"{s} encoder") for s in scopes}
    title = "Sharpness per modality encoder" + (" over training" if over_epochs else "")
    bits = []
    if not over_epochs:
        last = df.groupby("run", sort=False)["epoch"].max()
        bits.append(
            f"epoch {int(last.iloc[0])}"
            if last.nunique() == 1
            else "epoch " + ", ".join(f"{r}: {int(e)}" for r, e in last.items())
        )
    if "n_samples" in df and "split" in df:
        bits.append(f"{df['split'].iloc[0]} loss on {int(df['n_samples'].iloc[0])} samples")
    subtitle = "; ".join(bits) or None

    def err(sub):
        return sub["trace_se"].to_numpy() if metric == "trace" and "trace_se" in sub else None

    if backend == "plotly":
        import plotly.graph_objects as go  # noqa: PLC0415 - plotly loads only when a figure is drawn
        from plotly.subplots import make_subplots  # noqa: PLC0415 - plotly loads only when a figure is drawn

        if not over_epochs:
            fig = go.Figure()
            for i, run in enumerate(runs):
                sub = df[df["run"] == run].set_index("scope").loc[scopes].reset_index()
                e = err(sub)
                fig.add_trace(
                    go.Bar(
                        x=[scope_name[s] for s in scopes],
                        y=sub[metric],
                        name=run,
                        marker_color=style.method_color(_method_from_label(run), i),
                        error_y=dict(type="data", array=e) if e is not None else None,
                    )
                )
            fig.update_layout(barmode="group")
            fig.update_xaxes(title_text="parameter block the sharpness is measured on")
            fig.update_yaxes(title_text=ylabel)
            return style.style_plotly(fig, title, height=420, subtitle=subtitle)
        fig = make_subplots(rows=1, cols=len(scopes), subplot_titles=[scope_name[s] for s in scopes])
        for j, s in enumerate(scopes):
            for i, run in enumerate(runs):
                sub = df[(df["run"] == run) & (df["scope"] == s)].sort_values("epoch")
                e = err(sub)
                fig.add_trace(
                    go.Scatter(
                        x=sub["epoch"],
                        y=sub[metric],
                        mode="lines+markers",
                        name=run,
                        legendgroup=run,
                        showlegend=j == 0,
                        line=dict(color=style.method_color(_method_from_label(run), i)),
                        error_y=dict(type="data", array=e) if e is not None else None,
                    ),
                    1,
                    j + 1,
                )
            fig.update_xaxes(title_text=style.EPOCH_LABEL, row=1, col=j + 1)
        fig.update_yaxes(title_text=ylabel, row=1, col=1)
        return style.style_plotly(fig, title, height=400, subtitle=subtitle)
    if not over_epochs:
        fig = style.mpl_figure(4.8, 3.0)
        ax = fig.subplots()
        width = 0.8 / len(runs)
        xs = np.arange(len(scopes))
        for i, run in enumerate(runs):
            sub = df[df["run"] == run].set_index("scope").loc[scopes].reset_index()
            ax.bar(
                xs + (i - (len(runs) - 1) / 2) * width,
                sub[metric],
                width,
                yerr=err(sub),
                capsize=2,
                label=run,
                color=style.method_color(_method_from_label(run), i),
            )
        ax.set_xticks(xs, [scope_name[s] for s in scopes])
        ax.set(
            xlabel="parameter block the sharpness is measured on",
            ylabel=ylabel,
            title=title + (f"\n({subtitle})" if subtitle else ""),
        )
        ax.legend()
        return fig
    fig = style.mpl_figure(3.0 * len(scopes) + 0.5, 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(scopes), squeeze=False)).ravel()
    for ax, s in zip(axes, scopes):
        for i, run in enumerate(runs):
            sub = df[(df["run"] == run) & (df["scope"] == s)].sort_values("epoch")
            ax.errorbar(
                sub["epoch"],
                sub[metric],
                yerr=err(sub),
                marker=".",
                capsize=2,
                label=run,
                color=style.method_color(_method_from_label(run), i),
            )
        ax.set(title=scope_name[s], xlabel=style.EPOCH_LABEL)
        style.integer_ticks(ax)
    axes[0].set_ylabel(ylabel)
    axes[0].legend()
    fig.suptitle(title + (f" ({subtitle})" if subtitle else ""))
    return fig


def _method_from_label(label: str) -> str:
    inverse = {v: k for k, v in style.METHOD_LABELS.items()}
    return inverse.get(label.split(" ")[0], label)
