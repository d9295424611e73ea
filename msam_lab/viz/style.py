"""One look for every figure: colours per modality and method, axis labels, matplotlib and plotly styles,
shared colour ranges, and saving (matplotlib PDF+PNG, plotly self-contained HTML, plotly PNG when a
Chromium is installed).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------- colours

# Okabe–Ito (colour-blind safe); fixed per name so a modality keeps its colour in every figure.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MODALITY_COLORS = {
    "image": "#0072B2",
    "visual": "#0072B2",
    "video": "#0072B2",
    "m0": "#0072B2",
    "audio": "#E69F00",
    "m1": "#E69F00",
    "text": "#009E73",
    "m2": "#009E73",
    "m3": "#CC79A7",
}
METHOD_COLORS = {
    "joint": "#7F7F7F",
    "sam": "#56B4E9",
    "msam": "#D55E00",
    "ogm_ge": "#009E73",
    "agm": "#CC79A7",
    "cggm": "#E69F00",
    "reconboost": "#0072B2",
    "unimodal": "#000000",
    "masam": "#999933",
    "mie": "#882255",
}  # Tol olive and wine: distinct from the above
METHOD_LABELS = {
    "joint": "Joint",
    "sam": "SAM",
    "msam": "M-SAM",
    "ogm_ge": "OGM-GE",
    "agm": "AGM",
    "cggm": "CGGM",
    "reconboost": "ReconBoost",
    "unimodal": "Unimodal",
    "masam": "MASAM",
    "mie": "MIE",
}
FUSED_COLOR = "#222222"
# Sequential colour scale of loss surfaces (plotly name and matplotlib name of the same map).
SURFACE_SCALE_PLOTLY = "Viridis"
SURFACE_CMAP_MPL = "viridis"


def modality_color(name: str, modalities: Sequence[str] = ()) -> str:
    """The colour of modality ``name`` (fixed for known names, else by its index in ``modalities``)."""
    if name in MODALITY_COLORS:
        return MODALITY_COLORS[name]
    index = list(modalities).index(name) if name in modalities else abs(hash(name))
    return PALETTE[index % len(PALETTE)]


def method_color(method: str, index: int = 0) -> str:
    return METHOD_COLORS.get(method, PALETTE[index % len(PALETTE)])


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def with_alpha(hex_color: str, alpha: float) -> str:
    """``#RRGGBB`` -> ``rgba(r,g,b,alpha)`` (plotly fill colours)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# ---------------------------------------------------------------- axis labels (with units)

STEP_LABEL = "training step (mini-batch)"
EPOCH_LABEL = "epoch"
LOSS_LABEL = "cross-entropy loss (nats)"
SHARE_LABEL = "Shapley share of batch accuracy (0–1)"
TAU_LABELS = {
    "acc": "τ = (Acc_train − Acc_test) / Acc_train (fraction)",
    "loss": "τ_loss = (L_test − L_train) / L_train (fraction)",
}


def acc_label(split: str = "test") -> str:
    return f"{split} accuracy (%)"


# ---------------------------------------------------------------- shared colour / axis ranges


def shared_range(arrays: Iterable, pad: float = 0.0, log: bool = False) -> tuple[float, float]:
    """(min, max) over every finite value of ``arrays`` — pass it as ``zmin/zmax`` (plotly) or
    ``vmin/vmax`` (matplotlib) to each of several figures so their colour scales agree."""
    lo, hi = np.inf, -np.inf
    for a in arrays:
        a = np.asarray(a, dtype=float)
        if log:
            a = np.log10(np.where(a > 0, a, np.nan))
        a = a[np.isfinite(a)]
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if not np.isfinite(lo):
        raise ValueError("shared_range: no finite values")
    if hi == lo:
        hi = lo + 1e-12
    span = hi - lo
    return lo - pad * span, hi + pad * span


# ---------------------------------------------------------------- matplotlib

MPL_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "savefig.dpi": 200,
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "legend.frameon": False,
}


@contextlib.contextmanager
def mpl_style():
    """Publication rcParams (a context: leaves the global style alone)."""
    import matplotlib as mpl  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    with mpl.rc_context(MPL_RC):
        yield


def styled(func):
    """Decorator: run a plotting function inside ``mpl_style()`` (artists pick up the style when created)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with mpl_style():
            return func(*args, **kwargs)

    return wrapper


def _register_notebook_display() -> None:
    """Inside IPython, show a bare matplotlib ``Figure`` as PNG (pyplot, which would do this, is never
    imported here, so figures are not shown twice)."""
    try:
        from IPython import get_ipython  # noqa: PLC0415 - IPython exists only inside a notebook

        shell = get_ipython()
    except ImportError:
        return
    if shell is None:
        return
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    formatter = shell.display_formatter.formatters["image/png"]
    if Figure not in formatter.type_printers:
        formatter.for_type(Figure, lambda fig: _png_bytes(fig))


def _png_bytes(fig) -> bytes:

    buf = io.BytesIO()
    with mpl_style():
        fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def mpl_figure(width: float = 6.5, height: float = 3.0):
    """A matplotlib Figure not registered with pyplot (no double display in notebooks), constrained layout."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    _register_notebook_display()
    with mpl_style():
        return Figure(figsize=(width, height), layout="constrained")


def save_mpl(fig, stem, formats: Sequence[str] = ("pdf", "png")) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` (publication style); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with mpl_style():
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, format=fmt)
            out.append(path)
    return out


# ---------------------------------------------------------------- plotly

PLOTLY_TEMPLATE = "plotly_white"


def style_plotly(
    fig, title: str | None = None, height: int | None = None, width: int | None = None, subtitle: str | None = None
):
    """The common plotly look (template, fonts, legend, margins); returns ``fig``."""
    fig.update_layout(
        template=PLOTLY_TEMPLATE,
        font=dict(size=13),
        margin=dict(l=80, r=30, t=(95 if subtitle else 75) if title else 40, b=60),
        legend=dict(bgcolor="rgba(255,255,255,0.7)"),
    )
    if title is not None:
        fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=17)))
        if subtitle:
            fig.update_layout(title_subtitle=dict(text=subtitle, font=dict(size=12, color="#555")))
    if height:
        fig.update_layout(height=height)
    if width:
        fig.update_layout(width=width)
    return fig


def write_html(figs, path, title: str = "msam_lab figures") -> Path:
    """One self-contained HTML page (plotly.js embedded once, works offline) holding ``figs``.

    ``figs``: a figure, or ``{heading: figure}``.
    """
    import plotly.io as pio  # noqa: PLC0415 - plotly loads only when a figure is drawn

    if not isinstance(figs, dict):
        figs = {"": figs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body style='font-family:sans-serif;max-width:1400px;margin:auto'>"
    ]
    for i, (heading, fig) in enumerate(figs.items()):
        if heading:
            parts.append(f"<h2>{heading}</h2>")
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """A Chromium/Chrome executable kaleido can drive (``BROWSER_PATH``, then the PATH), or None."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def integer_ticks(ax, axis: str = "x") -> None:
    """Matplotlib: integer tick labels only (epochs)."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - matplotlib loads only when a figure is drawn

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def epoch_dtick(max_epoch) -> int:
    """Plotly tick spacing for an epoch axis: integers, at most ~10 ticks."""
    return max(1, int(np.ceil(float(max_epoch) / 10)))


def write_plotly_png(figs: dict, folder, scale: float = 2.0, width: int = 1100) -> list[Path]:
    """Static PNGs of plotly figures (``{stem: figure}``) with kaleido; skipped, with a printed note,
    when no Chromium is installed (kaleido needs one; it is never downloaded here)."""
    browser = find_chromium()
    if browser is None:
        print(
            "note: no Chromium found (install Debian's `chromium`); skipping plotly static PNG export. "
            "The interactive HTML and the matplotlib PDF/PNG figures are written regardless."
        )
        return []
    os.environ.setdefault("BROWSER_PATH", browser)
    import plotly.io as pio  # noqa: PLC0415 - plotly loads only when a figure is drawn

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png" for stem in figs]
    try:
        pio.write_images(list(figs.values()), paths, scale=scale, width=width)
    except Exception as err:  # kaleido/Chromium failures must not lose the other figures
        print(f"note: plotly static PNG export failed with {browser} ({type(err).__name__}: {err}); skipped")
        return []
    return paths
