"""Regenerate every figure in ``figures/`` from scratch: ``make figures`` (or ``python -m msam_lab.figures``).

Trains what is missing (reusing the notebooks' runs under ``runs/notebooks/``), computes the
landscapes, sharpness and the multi-seed sweep, then writes

- matplotlib figures as ``fig_<name>.pdf`` + ``fig_<name>.png`` (publication style, ``viz.style``);
- ``table_comparison.{csv,md}`` (mean ± std over seeds);
- ``interactive.html``: every plotly figure in one self-contained page (plotly.js embedded once);
- ``plotly/<name>.png`` static plotly exports, only where a Chromium is installed (kaleido needs
  one; otherwise a note is printed and they are skipped).

``--quick`` (or ``MSAM_LAB_QUICK=1``) uses the tiny quick-mode settings (synthetic data, 2–3 epochs)
and writes to ``runs/quick/figures`` (never into ``figures/``: asking for it is an error).
Notebook 05 calls ``comparison_figures`` to write the method-comparison figures, notebook 08
``rival_figures`` (M-SAM against MASAM, MIE and SAM; the ρ sweep; the fixed-dominant ablation;
sharpness per encoder over training, all from ``msam_lab.experiments.rivals``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from msam_lab import notebook_utils as nb
from msam_lab import viz
from msam_lab.experiments import rivals
from msam_lab.experiments.sweep import run_sweep
from msam_lab.paths import publication_figures_dir

# Names this module writes (and removes first with clean=True); nothing else in the folder is touched.
OUTPUT_PREFIXES = ("fig_", "table_")
OUTPUT_FILES = ("interactive.html",)
OUTPUT_DIRS = ("plotly",)


def settings(quick: bool | None = None) -> dict:
    """Everything the figures depend on, full or quick."""
    quick = nb.quick_mode() if quick is None else quick
    if quick:
        return dict(
            quick=True,
            methods=["joint", "msam"],
            epochs=3,
            grid_1d=11,
            grid_2d=7,
            n_samples=64,
            sharpness=dict(n_samples=64, probes=4, topk=1),
            sweep=dict(methods=["joint", "msam"], seeds=[0, 1], epochs=2),
            rivals=rivals.rival_settings(True),
        )
    return dict(
        quick=False,
        methods=["joint", "msam"],
        epochs=10,
        grid_1d=41,
        grid_2d=21,
        n_samples=512,
        sharpness=dict(n_samples=512, probes=16, topk=1),
        sweep=dict(methods=["joint", "sam", "msam", "ogm_ge", "agm"], seeds=[0, 1, 2], epochs=5),
        rivals=rivals.rival_settings(False),
    )


def _data(s: dict) -> dict:
    return dict(nb.QUICK_DATA) if s["quick"] else {"dataset": "av-digits"}


def core_runs(s: dict) -> dict:
    """The single-seed runs the curves, dominance and landscape figures are drawn from."""
    return {viz.style.method_label(m): nb.ensure_run(m, nb.make_config(m, _data(s), s["epochs"])) for m in s["methods"]}


def sweep_table(s: dict, quiet: bool = True):
    """The multi-seed sweep (trained or reused) summarised as mean ± std over seeds."""

    sw = s["sweep"]
    base = {**_data(s), "epochs": sw["epochs"], "checkpoint_every": 0}
    out = nb.runs_root() / f"sweep-{nb.config_hash(base)}"
    return run_sweep(sw["methods"], seeds=sw["seeds"], config=base, out=out, quiet=quiet)


def _write_table(shown, stem: Path, markdown: bool = True) -> list[Path]:
    """``stem.csv`` and (``markdown``) ``stem.md`` of a DataFrame; returns the paths."""
    shown.to_csv(stem.with_suffix(".csv"), index=False)
    if not markdown:
        return [stem.with_suffix(".csv")]
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    rows = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    stem.with_suffix(".md").write_text(header + rows, encoding="utf-8")
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]


def _refuse_quick_into_figures(out: Path, quick: bool) -> None:
    """Quick figures (2-epoch synthetic runs) never overwrite the publication ones in ``figures/``."""
    if quick and Path(out).resolve() == publication_figures_dir().resolve():
        raise ValueError(
            f"quick mode would overwrite the publication figures in {out}: pass another --out "
            "(quick mode's default is runs/quick/figures), or drop --quick / MSAM_LAB_QUICK"
        )


def comparison_figures(table, out=None) -> list[Path]:
    """Write the method-comparison bar chart (PDF + PNG) and table (CSV + Markdown) into ``out``."""
    out = nb.figures_dir() if out is None else Path(out)
    _refuse_quick_into_figures(out, nb.quick_mode())
    out.mkdir(parents=True, exist_ok=True)
    written = viz.save_mpl(viz.comparison_bars(table, backend="matplotlib"), out / "fig_method_comparison")
    return written + _write_table(viz.comparison_table(table), out / "table_comparison")


# Notebook 08's figures: name -> (tables, backend) -> figure; tables as from ``rivals.all_tables``.
RIVAL_FIGURES = {
    "rivals_comparison": lambda t, b: viz.comparison_bars(t["rivals"], backend=b),
    "rho_sweep": lambda t, b: viz.rho_curve(t["rho"], reference=t["rivals"], backend=b),
    "fixed_dominant": lambda t, b: viz.ablation_bars(t["ablation"], backend=b),
    "sharpness_timeline": lambda t, b: viz.sharpness_timeline_figure(t["sharpness"], metric="trace", backend=b),
}


def rival_figures(tables: dict, out=None) -> list[Path]:
    """Write notebook 08's figures (``fig_<name>`` PDF + PNG for each of ``RIVAL_FIGURES``) and tables
    (``table_rivals``, ``table_rho_sweep``, ``table_fixed_dominant`` as CSV + Markdown, mean ± std;
    ``table_sharpness_timeline.csv``, the long per-epoch table) into ``out``.

    ``tables``: ``{"rivals", "rho", "ablation", "sharpness"}`` as ``rivals.all_tables`` returns them.
    """
    out = nb.figures_dir() if out is None else Path(out)
    _refuse_quick_into_figures(out, nb.quick_mode())
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in RIVAL_FIGURES.items():
        written += viz.save_mpl(make(tables, "matplotlib"), out / f"fig_{name}")
    written += _write_table(viz.comparison_table(tables["rivals"]), out / "table_rivals")
    written += _write_table(viz.comparison_table(tables["rho"]), out / "table_rho_sweep")
    abl = tables["ablation"]
    written += _write_table(
        viz.comparison_table(abl)
        .assign(method=list(abl["arm_label"]))
        .rename(columns={"method": "perturbed (msam_dominant)"}),
        out / "table_fixed_dominant",
    )
    written += _write_table(
        tables["sharpness"].drop(columns=["run"], errors="ignore"), out / "table_sharpness_timeline", markdown=False
    )
    return written


def clean(out: Path) -> None:
    """Remove what a previous ``make_figures`` wrote (only its own names)."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.is_file() and (p.name.startswith(OUTPUT_PREFIXES) or p.name in OUTPUT_FILES):
            p.unlink()
        elif p.is_dir() and p.name in OUTPUT_DIRS:
            shutil.rmtree(p)


def make_figures(out=None, quick: bool | None = None, fresh: bool = True, verbose: bool = True) -> list[Path]:
    """Regenerate every figure; returns the paths written."""
    s = settings(quick)
    out = nb.figures_dir() if out is None else Path(out)
    _refuse_quick_into_figures(out, s["quick"])
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        clean(out)
    started = time.perf_counter()

    def say(msg):
        if verbose:
            print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    say(f"runs ({'quick' if s['quick'] else 'full'} settings) under {nb.runs_root()}")
    runs = core_runs(s)
    say("landscapes and sharpness")
    land1 = {k: nb.ensure_landscape(r, dim=1, grid=s["grid_1d"], n_samples=s["n_samples"]) for k, r in runs.items()}
    land2 = {
        k: nb.ensure_landscape(r, dim=2, directions="pca", grid=s["grid_2d"], n_samples=s["n_samples"])
        for k, r in runs.items()
    }
    sharp = {k: nb.ensure_sharpness(r, **s["sharpness"]) for k, r in runs.items()}
    say("sweep")
    table = sweep_table(s)
    say("rivals, ρ sweep, fixed-dominant ablation, sharpness over training")
    rival_tables = rivals.all_tables(s["rivals"])

    z = viz.shared_z(land2.values(), "loss", log=True)  # log10 colour: basins stay visible beside high walls
    figs = {
        "training_curves": lambda b: viz.training_curves(runs, backend=b),
        "accuracy_per_modality": lambda b: viz.accuracy_curves(runs, backend=b),
        "tau": lambda b: viz.tau_curves(runs, form="acc", backend=b),
        "tau_loss": lambda b: viz.tau_curves(runs, form="loss", backend=b),
        "train_vs_test_accuracy": lambda b: viz.train_test_curves(runs, backend=b),
        "landscape_1d": lambda b: viz.curves_1d(land1, backend=b),
        "landscape_2d_compare": lambda b: viz.contour_grid(land2, "loss", log=True, backend=b),
        "sharpness": lambda b: viz.sharpness_figure(sharp, "lambda_1", backend=b),
        "eps_sharpness": lambda b: viz.sharpness_figure(sharp, "eps_sharpness", backend=b),
    }
    for label, run in runs.items():
        key = viz.style.method_label(run.config.method).lower().replace("-", "")
        figs[f"dominance_{key}"] = (lambda r: lambda b: viz.shares_over_steps(r, smooth=10, accuracy=True, backend=b))(
            run
        )
        figs[f"landscape_2d_{key}"] = (
            lambda sf: lambda b: viz.surface_figure(sf, "loss", zmin=z[0], zmax=z[1], log=True, backend=b)
        )(land2[label])
    written = []
    say("matplotlib figures (PDF + PNG)")
    for name, make in figs.items():
        written += viz.save_mpl(make("matplotlib"), out / f"fig_{name}")
    written += comparison_figures(table, out)
    written += rival_figures(rival_tables, out)
    say("plotly figures (interactive.html)")
    plotly_figs = {name: make("plotly") for name, make in figs.items()}
    plotly_figs["method_comparison"] = viz.comparison_bars(table)
    plotly_figs.update({name: make(rival_tables, "plotly") for name, make in RIVAL_FIGURES.items()})
    written.append(
        viz.write_html(
            {name.replace("_", " "): f for name, f in plotly_figs.items()},
            out / "interactive.html",
            title="msam_lab figures",
        )
    )
    say("plotly static PNG (needs Chromium)")
    written += viz.write_plotly_png(plotly_figs, out / "plotly")
    say(f"done: {len(written)} files in {out}")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m msam_lab.figures", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: figures/ of the checkout, runs/quick/figures with --quick, or $MSAM_LAB_FIGURES)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings (synthetic data, 2-3 epochs)")
    p.add_argument("--keep", action="store_true", help="do not delete the previous fig_*/table_* files first")
    args = p.parse_args(argv)
    if args.quick:
        os.environ[nb.QUICK_ENV] = "1"
    try:  # checked before anything is trained
        _refuse_quick_into_figures(Path(args.out) if args.out else nb.figures_dir(), nb.quick_mode())
    except ValueError as err:
        p.exit(2, f"python -m msam_lab.figures: error: {err}\n")
    make_figures(args.out, quick=args.quick or None, fresh=not args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
