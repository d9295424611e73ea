"""``msam-lab plot``: every kind of figure, as .png (matplotlib) and standalone .html (plotly), for one run
and for several (a folder of runs); and the one-line errors.

The runs are copies of tests/fixtures/old_runs/old_run (a finished synthetic M-SAM run with a 1-D and a
2-D landscape and sharpness rows), so nothing trains here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from msam_lab.cli import plot as plot_cli
from msam_lab.cli.commands import build_parser, main

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "old_runs" / "old_run"
KINDS = tuple(plot_cli.KINDS)
# the two labelled copies: as_runs names runs of one method by their folders
LABELS = ("M-SAM (a)", "M-SAM (b)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder of two finished runs, ``a`` and ``b``."""
    folder = tmp_path_factory.mktemp("plot") / "runs"
    for name in ("a", "b"):
        shutil.copytree(OLD_RUN, folder / name)
    return folder


def plot(*argv) -> int:
    return main(["plot", *map(str, argv)])


def name_flags(kind: str) -> list[str]:
    return ["--name", "r2"] if kind == "landscape" else []  # old_run has two landscapes: p1 (1-D) and r2 (2-D)


def check_file(path: Path, labels=()) -> None:
    """A whole PNG, or a standalone plotly page (plotly.js inside, no CDN) naming ``labels``."""
    data = path.read_bytes()
    if path.suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.rstrip().endswith(b"IEND\xaeB`\x82")
        return
    text = data.decode()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "Plotly.newPlot" in text and "<script src=" not in text and len(text) > 1_000_000  # plotly.js inside
    for label in labels:
        assert label in text, label
    assert not list(path.parent.glob(f".{path.name}*"))  # no temporary file left beside it


# the core tier draws one .png and one .html; the slow tier every kind in both formats
CORE = {("dominance", "png"), ("landscape", "html")}


@pytest.mark.parametrize(
    ("kind", "ext"),
    [
        pytest.param(kind, ext, marks=() if (kind, ext) in CORE else pytest.mark.slow)
        for kind in KINDS
        for ext in ("png", "html")
    ],
)
def test_plot_writes_each_kind_for_one_run(runs, tmp_path, kind, ext, capsys):
    out = tmp_path / "figs" / f"{kind}.{ext}"  # a folder that does not exist yet
    assert plot(runs / "a", "--what", kind, "--out", out, *name_flags(kind)) == 0
    check_file(out)
    assert capsys.readouterr().out.strip() == f"wrote {out} ({kind}, 1 run, {plot_cli.FORMATS['.' + ext]})"


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["png", "html"])
@pytest.mark.parametrize("kind", KINDS)
def test_plot_writes_each_kind_for_a_folder_of_runs(runs, tmp_path, kind, ext):
    out = tmp_path / f"{kind}.{ext}"
    assert plot(runs, "--what", kind, "--out", out, *name_flags(kind)) == 0
    check_file(out, LABELS if ext == "html" else ())


def args_for(*argv):
    return build_parser().parse_args(["plot", *map(str, argv)])


def test_several_runs_give_the_comparison_figures(runs):
    """One run: its own figure; the folder: one panel or one trace set per run, labelled by run."""
    from msam_lab import viz

    one = viz.as_runs([str(runs / "a")])
    both = viz.as_runs([str(p) for p in plot_cli.run_paths([runs])])
    assert list(both) == list(LABELS)

    def titles(fig):
        return [a.text for a in fig.layout.annotations]

    def names(fig):
        return {t.name for t in fig.data}

    # dominance: one run's step-by-step shares; several runs' shares per epoch, one panel each
    fig = plot_cli.figure(args_for(runs / "a", "--what", "dominance", "--out", "x.html"), one, "plotly")
    assert "step by step" in fig.layout.title.text
    fig = plot_cli.figure(args_for(runs, "--what", "dominance", "--out", "x.html"), both, "plotly")
    assert titles(fig)[:2] == list(LABELS) and "per epoch" in fig.layout.title.text
    # curves, tau, sharpness: one trace set per run, named by it
    for kind in ("curves", "tau", "sharpness"):
        fig = plot_cli.figure(args_for(runs, "--what", kind, "--out", "x.html"), both, "plotly")
        assert set(LABELS) <= names(fig), kind
    # 2-D landscapes: one surface alone is the 3-D + contour figure; several, contours side by side
    fig = plot_cli.figure(args_for(runs / "a", "--what", "landscape", "--name", "r2", "--out", "x.html"), one, "plotly")
    assert {t.type for t in fig.data} >= {"surface", "contour"}
    fig = plot_cli.figure(args_for(runs, "--what", "landscape", "--name", "r2", "--out", "x.html"), both, "plotly")
    assert [t.type for t in fig.data].count("contour") == 2 and set(LABELS) <= set(titles(fig))
    # 1-D landscapes: one panel per run
    fig = plot_cli.figure(args_for(runs, "--what", "landscape", "--name", "p1", "--out", "x.html"), both, "plotly")
    assert set(LABELS) <= set(titles(fig))


def test_sharpness_takes_the_latest_rows_of_one_split(runs):
    """old_run's sharpness.csv holds the timeline's train rows, then `msam-lab sharpness`'s test rows."""
    import pandas as pd

    table = pd.read_csv(runs / "a" / "sharpness.csv")
    assert set(table["split"]) == {"train", "test"}
    from msam_lab import viz

    tables = plot_cli.sharpness_tables(viz.as_runs([str(runs / "a")]), "lambda_1")
    (rows,) = tables.values()
    last = table[table["split"] == table["split"].iloc[-1]]
    assert set(rows["split"]) == {last["split"].iloc[0]}
    assert len(rows) == len(last.drop_duplicates(["epoch", "scope"])) and not rows.duplicated(["epoch", "scope"]).any()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["{a}", "--what", "tau", "--out", "x.pdf"], "--out x.pdf: name a .png (matplotlib) or .html (plotly) file"),
        (["{missing}", "--what", "tau", "--out", "x.png"], "does not exist"),
        (["{a}", "--what", "tau", "--name", "r2", "--out", "x.png"], "--name picks a landscape"),
        (["{a}", "--what", "landscape", "--out", "x.png"], "has 2 landscapes; pick one with --name (p1, r2)"),
        (["{a}", "--what", "landscape", "--name", "r22", "--out", "x.png"], "did you mean 'r2'?"),
        (["{a}", "--what", "landscape", "--name", "r2", "--metric", "los", "--out", "x.png"], "did you mean 'loss'?"),
        (["{a}", "--what", "sharpness", "--metric", "trase", "--out", "x.png"], "did you mean 'trace'?"),
        (["{a}", "--what", "landscpe", "--out", "x.png"], "did you mean 'landscape'?"),
        (["{empty}", "--what", "tau", "--out", "x.png"], "holds no run directory"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(runs, tmp_path, capsys, argv, expected):
    (tmp_path / "empty").mkdir()
    paths = {"a": runs / "a", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    argv = [a.format(**paths) for a in argv]
    out = tmp_path / "x.png"
    argv = [str(out) if a == "x.png" else a for a in argv]
    try:
        code = plot(*argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not out.exists() and not list(tmp_path.glob(".x.png*"))
