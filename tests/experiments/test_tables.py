"""`msam-lab sweep --table PATH.md`: the Markdown block of a sweep folder, regenerated in place."""

import statistics
import sys

import pytest

from msam_lab.cli import commands as cli
from msam_lab.experiments import tables
from msam_lab.experiments.sweep import run_sweep
from msam_lab.runs.reader import load_run

GRID = dict(
    methods=["joint", "msam"],
    seeds=[0, 1],
    dataset="synthetic",
    overrides=["epochs=1", "data.n_samples=160", "eval_every=1"],
)


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    run_sweep(out=out, quiet=True, **GRID)
    return out


def _block(text: str) -> str:
    return f"{tables.BEGIN.format(key='sw')}\nold table\n{tables.END.format(key='sw')}"


def test_the_table_holds_each_methods_mean_over_its_seeds_as_the_runs_say(sweep_folder):
    header, rows, facts = tables.table_rows(sweep_folder)
    assert facts["runs"] == 4 and [r[0] for r in rows] == ["joint", "msam"]
    col = header.index("test acc (last)")
    for row in rows:
        accs = [float(load_run(sweep_folder / row[0] / f"seed{s}").epochs["test_acc"].iloc[-1]) for s in (0, 1)]
        assert row[col].startswith(f"{statistics.mean(accs):.3f}")
        assert row[header.index("seeds")] == "2"


def test_a_rerun_replaces_its_block_in_place_and_keeps_the_prose(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nprose before\n\n" + _block("") + "\n\nprose after\n")
    tables.write_table(doc, "sw", f"{tables.BEGIN.format(key='sw')}\nnew table\n{tables.END.format(key='sw')}")
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    assert text.index("prose before") < text.index("new table") < text.index("prose after")
    tables.write_table(doc, "other", f"{tables.BEGIN.format(key='other')}\nsecond\n{tables.END.format(key='other')}")
    assert doc.read_text().rstrip().endswith(tables.END.format(key="other"))  # a new folder's block is appended


@pytest.mark.parametrize(
    "content, fault",
    [
        (_block("") + "\n" + _block(""), "more than once"),
        (tables.BEGIN.format(key="sw") + "\nno end\n", "lacks its start or end marker"),
    ],
)
def test_a_damaged_block_is_one_line_and_the_file_is_left_alone(tmp_path, content, fault):
    doc = tmp_path / "results.md"
    doc.write_text(content)
    with pytest.raises(ValueError, match=fault):
        tables.write_table(doc, "sw", "x")
    assert doc.read_text() == content


def test_table_only_refuses_an_unfinished_grid_without_training(tmp_path, capsys):
    argv = [
        "sweep",
        "--methods",
        "joint",
        "--seeds",
        "5",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "sw"),
        "--table",
        str(tmp_path / "t.md"),
        "--table-only",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not finished" in err and "drop --table-only" in err
    assert not (tmp_path / "sw" / "joint").exists() and not (tmp_path / "t.md").exists()


def test_the_cli_writes_the_block_of_a_finished_sweep(sweep_folder, tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    monkeypatch.chdir(sweep_folder.parent)
    argv = [
        "sweep",
        "--methods",
        "joint,msam",
        "--seeds",
        "0,1",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--set",
        "data.n_samples=160",
        "--set",
        "eval_every=1",
        "--out",
        "sw",
        "--table",
        str(doc),
        "--table-only",
    ]
    assert cli.main(argv) == 0, sys.stderr
    text = doc.read_text()
    assert "msam-lab sweep" in text and "--out sw" in text and "| joint |" in text and "| msam |" in text
