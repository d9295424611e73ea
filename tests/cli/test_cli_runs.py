"""The commands that read runs: ``compare`` and ``status`` take the same arguments (runs or folders of runs),
a missing path "does not exist", the demo's report fits 100 columns, and progress off a terminal is one
line per unit of work (no carriage-return frames).

The runs are copies of tests/fixtures/old_runs (a finished and an interrupted synthetic run): nothing
trains here.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from msam_lab.cli.commands import DEMO_METHODS, DEMO_WIDTH, demo_report, main
from msam_lab.runs.compare import compact_rows, compare_runs, format_compact
from msam_lab.training.progress import Counter, Progress

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_runs"


@pytest.fixture
def runs(tmp_path) -> Path:
    """runs/ holding two finished runs (one a level down) and an interrupted one."""
    folder = tmp_path / "runs"
    shutil.copytree(FIXTURES / "old_run", folder / "msam")
    shutil.copytree(FIXTURES / "old_run", folder / "sweep" / "msam-s1")
    shutil.copytree(FIXTURES / "old_interrupted", folder / "stopped")
    return folder


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def table_runs(text: str) -> list[str]:
    return [line.split()[0] for line in text.strip().splitlines()[1:]]


def test_compare_and_status_take_a_folder_of_runs(runs, capsys):
    code, out, err = cli(capsys, "compare", runs)
    assert code == 0 and table_runs(out) == ["msam", "msam-s1"]  # the finished ones, found recursively
    assert "1 unfinished run left out" in err and "stopped" in err
    code, out, _ = cli(capsys, "status", runs)
    assert code == 0 and sorted(table_runs(out)) == ["msam", "stopped", "sweep/msam-s1"]


def test_compare_and_status_take_runs_and_folders_mixed(runs, capsys):
    code, out, _ = cli(capsys, "compare", runs / "msam", runs / "sweep")
    assert code == 0 and table_runs(out) == ["msam", "msam-s1"]
    code, out, _ = cli(capsys, "status", runs / "msam", runs / "sweep")
    assert code == 0 and len(table_runs(out)) == 2


def test_compare_and_status_default_to_runs(runs, capsys, monkeypatch):
    monkeypatch.chdir(runs.parent)
    assert table_runs(cli(capsys, "compare")[1]) == ["msam", "msam-s1"]
    assert len(table_runs(cli(capsys, "status")[1])) == 3


@pytest.mark.parametrize("command", ["compare", "status"])
def test_a_missing_path_does_not_exist(runs, capsys, command):
    code, out, err = cli(capsys, command, runs / "msam", runs / "nope")
    assert code == 2 and not out
    assert err.strip() == f"msam-lab: error: {runs / 'nope'} does not exist (give a run directory or a folder of runs)"


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["landscape", "{nope}", "--quiet"], "RUN"),
        (["sharpness", "{nope}"], "RUN"),
        (["landscape", "{run}", "--directions", "between", "--to", "{nope}"], "--to"),
        (["train", "--resume", "{nope}"], "--resume"),
    ],
)
def test_commands_of_one_run_say_a_missing_one_does_not_exist(runs, capsys, argv, what):
    argv = [a.format(nope=runs / "nope", run=runs / "msam") for a in argv]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.startswith(f"msam-lab: error: {what} {runs / 'nope'} does not exist;"), err
    assert len(err.strip().splitlines()) == 1 and not (runs / "nope").exists()


def test_compare_names_what_is_wrong_with_an_unfinished_run_or_an_empty_folder(runs, capsys, tmp_path):
    code, _, err = cli(capsys, "compare", runs / "stopped")
    assert code == 2 and "has not finished (it is interrupted)" in err and "msam-lab status" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "compare", tmp_path / "empty")
    assert code == 2 and "holds no run directory" in err and len(err.strip().splitlines()) == 1
    (runs / "msam" / "summary.json").unlink()  # its status still says finished
    code, _, err = cli(capsys, "compare", runs / "msam")
    assert code == 2 and f"{runs / 'msam' / 'summary.json'} is missing" in err
    shutil.rmtree(runs / "msam")
    shutil.rmtree(runs / "sweep")
    code, _, err = cli(capsys, "compare", runs)
    assert code == 2 and "holds 1 run, none finished" in err


# ---------------------------------------------------------------- the demo's report


def demo_runs(tmp_path) -> list[Path]:
    """Three finished runs named as the demo names them (copies of old_run, three modalities)."""
    paths = []
    for method in DEMO_METHODS:
        shutil.copytree(FIXTURES / "old_run", tmp_path / "demo" / method)
        paths.append(tmp_path / "demo" / method)
    return paths


def test_demo_report_fits_100_columns_with_legend_place_and_next_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = [p.relative_to(tmp_path) for p in demo_runs(tmp_path / "runs")]  # runs/demo/joint, as make demo
    text = demo_report(paths, "runs/demo")
    lines = text.splitlines()
    assert max(map(len, lines)) <= DEMO_WIDTH
    header = lines[0].split()
    assert header[:3] == ["run", "method", "epoch"] and header[-3:] == ["τ", "switches", "time"]
    assert {"m0", "m1", "m2"} <= set(header)  # every modality of these runs fits
    legend = lines[len(paths) + 1]
    assert legend.startswith("acc: test accuracy at the best-val epoch") and "τ" in legend
    assert "runs: runs/demo/{joint,sam,msam}" in lines
    nxt = lines[lines.index("next:") + 1 :]
    assert len(nxt) == 3 and all(line.startswith("  msam-lab ") for line in nxt)
    assert "msam-lab compare runs/demo" in nxt[0] and "--what dominance" in nxt[1]
    assert "--out DIR" not in text and "--out dir" not in text.lower()
    takeover = demo_report(paths, "runs/demo", takeover=True).splitlines()
    assert max(map(len, takeover)) <= DEMO_WIDTH and "--set data.scenario=takeover" in takeover[-1]


def test_compact_cells_are_the_compare_numbers(tmp_path):
    paths = demo_runs(tmp_path)
    table = compare_runs(paths)
    cells = compact_rows(table)
    summary = json.loads((paths[0] / "summary.json").read_text())
    assert cells["acc"].iloc[0] == f"{table['test_acc (best val)'].iloc[0]:.3f}"
    assert float(cells["acc"].iloc[0]) == pytest.approx(summary["test_acc_at_best"], abs=5e-4)
    assert float(cells["m1"].iloc[0]) == pytest.approx(summary["test_acc_m1_at_best"], abs=5e-4)
    assert int(cells["switches"].iloc[0]) == summary["dominance_switches"]


def test_compact_table_shortens_then_drops_columns_to_fit(tmp_path):
    paths = demo_runs(tmp_path)
    table = compare_runs(paths)
    table["run"] = ["a-very-long-run-name-from-a-sweep-" + "x" * 40, "b", "c"]
    for width in (100, 80, 60):
        text = format_compact(table, width=width)
        assert max(map(len, text.splitlines())) <= width, text
        assert "acc" in text.splitlines()[0]
    narrow = format_compact(table, width=60).splitlines()
    assert "…" in narrow[1]  # the long run name was cut
    assert "m2" not in narrow[0].split()  # the last modality's column went first
    # without a best-validation epoch, the last epoch's numbers, said so
    last = table.assign(**{"test_acc (best val)": float("nan")})
    text = format_compact(last)
    assert "epoch" not in text.splitlines()[0].split() and "at the last epoch" in text.splitlines()[-1]
    assert text.splitlines()[1].split()[2] == f"{last['test_acc (last)'].iloc[0]:.3f}"


def test_demo_reuses_finished_runs_and_prints_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo_runs(tmp_path / "runs")
    code, out, _ = cli(capsys, "demo")
    lines = out.splitlines()
    assert code == 0 and max(map(len, lines)) <= DEMO_WIDTH
    assert lines[0] == "runs/demo/joint: finished run found, reusing it (delete runs/demo for a fresh demo)"
    assert "--out" not in "\n".join(lines[:3]) and "next:" in lines
    from msam_lab.datasets import dataset_options

    if "scenario" in dataset_options("av-digits"):  # the demo's dataset has a scenario where dominance switches
        assert "data.scenario=takeover" in lines[-1]


# ---------------------------------------------------------------- progress off a terminal


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_training_progress_off_a_terminal_is_one_line_per_epoch():
    stream = io.StringIO()
    progress = Progress(total_steps=30, epochs=3, desc="msam on synthetic", stream=stream)
    for epoch in range(4):
        for _ in range(10 if epoch else 0):
            progress.step({"loss": 1.0})
        progress.epoch({"epoch": epoch, "train_loss": 1.0, "test_acc": 0.5, "wall_time": 2.0 * epoch})
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and len(text.splitlines()) == 4
    assert [line.split(":")[1].split()[1] for line in text.splitlines()] == ["0/3", "1/3", "2/3", "3/3"]


def test_counter_off_a_terminal_is_a_line_per_twentieth():
    stream = io.StringIO()
    counter = Counter("landscape", "points", stream=stream)
    for done in range(1, 442):
        counter(done, 441)
    counter.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and 15 <= len(lines) <= Counter.LINES + 1
    assert lines[-1].startswith("landscape: 441/441 points (100%)")
    done = [int(re.match(r"landscape: (\d+)/441", line).group(1)) for line in lines]
    assert done == sorted(done) and max(b - a for a, b in zip(done, done[1:])) <= -(-441 // Counter.LINES)


def test_counter_on_a_terminal_draws_a_bar_and_quiet_draws_nothing():
    tty = Terminal()
    counter = Counter("landscape", "points", stream=tty)
    for done in range(1, 10):
        counter(done, 9)
    counter.close()
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    counter = Counter("landscape", "points", quiet=True, stream=quiet)
    counter(1, 9)
    assert quiet.getvalue() == ""


def test_landscape_command_off_a_terminal_prints_lines_not_frames(runs, capsys):
    code, out, err = cli(
        capsys, "landscape", runs / "msam", "--dim", "2", "--grid", "3", "--n-samples", "16", "--name", "plain"
    )
    assert code == 0 and "landscape written to" in out
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("landscape: ")]
    assert lines and lines[-1].startswith("landscape: 9/9 points (100%)")
