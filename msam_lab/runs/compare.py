"""One table over several runs: method, fused and per-modality accuracy, τ, switches, time.

Test numbers appear twice, each labelled in its header: at the epoch of best validation accuracy
(``test_acc (best val)``, msam_lab.runs.selection) and at the last epoch (``test_acc (last)``). A run
without a validation split (or written before validation existed) has only the last-epoch numbers:
its ``best_epoch`` and ``(best val)`` cells are empty (NA / NaN), which is not an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from msam_lab.runs.layout import SUMMARY, find_runs, is_run, is_run_dir, run_state
from msam_lab.runs.reader import Run, load_run, summary_number
from msam_lab.runs.selection import BEST, LAST, labelled, selection_summary
from msam_lab.runs.status import StatusError, existing_paths


def _selected(run: Run, keys) -> dict:
    """``selection_summary`` of the run's epoch table; last-epoch numbers of ``keys`` fall back to summary.json."""
    sel = selection_summary(run.epochs)
    for key in keys:
        if f"{key}_last" not in sel:
            sel[f"{key}_last"] = summary_number(run, key)
    return sel


def _num(value) -> float:
    return np.nan if value is None else value


def compare_runs(runs) -> pd.DataFrame:
    """``runs``: Run objects or run directories (finished). One row per run.

    Columns: ``run``, ``method``, ``seed``, ``best_epoch`` (NA without validation), then
    ``test_acc (best val)``, ``test_acc (last)``, ``test_acc_<m> (best val)``, ``test_acc_<m> (last)``
    for each modality m, ``tau (best val)``, ``tau (last)``, ``switches``, ``wall_s``.
    ``test_acc_<m>`` is modality m's Shapley-decomposed accuracy inside the fused model; ``switches``
    counts changes of the per-step dominant modality.
    """
    rows = []
    for run in runs:
        run = run if isinstance(run, Run) else load_run(run)
        keys = ["test_acc"] + [f"test_acc_{m}" for m in run.modalities] + ["tau"]
        sel = _selected(run, keys)
        # method and seed from the (checked) config: summary.json repeats them
        row = {"run": run.name, "method": run.config.method, "seed": run.config.seed, "best_epoch": sel["best_epoch"]}
        for key in keys:
            row[labelled(key, BEST)] = _num(sel.get(f"{key}_at_best"))
            row[labelled(key, LAST)] = _num(sel.get(f"{key}_last"))
        row.update(
            {
                "switches": _num(summary_number(run, "dominance_switches")),
                "wall_s": _num(summary_number(run, "wall_time")),
            }
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    if "best_epoch" in df:
        df["best_epoch"] = df["best_epoch"].astype("Int64")
    return df


def _cell(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}"
    return str(value)


def format_table(df: pd.DataFrame) -> str:
    """The table as text: floats with 3 decimals, missing cells (no validation) as ``-``."""
    return df.astype(object).apply(lambda col: col.map(_cell)).to_string(index=False)


def finished_runs(paths) -> tuple[list[Path], list[Path]]:
    """The finished runs among ``paths`` (run directories, or folders searched recursively, as
    ``msam-lab status`` takes them) and the unfinished ones found in those folders.

    StatusError (one line) for a path that does not exist, a run given by name that has not finished,
    or a folder without a finished run."""
    finished, unfinished = [], []
    for path in existing_paths(paths):
        if is_run_dir(path):
            if not is_run(path):
                state = run_state(path)
                if state == "finished":  # its status says so, but the summary is gone
                    raise StatusError(f"{path / SUMMARY} is missing: the run's summary was deleted or never written")
                raise StatusError(f"{path} has not finished (it is {state}); `msam-lab status {path}` shows how far")
            finished.append(path)
            continue
        found = find_runs([path])
        done = [r for r in found if is_run(r)]
        if not done:
            what = f"{len(found)} run{'s' if len(found) != 1 else ''}, none finished" if found else "no run directory"
            raise StatusError(f"{path} holds {what}; give a finished run or a folder of them (msam-lab status {path})")
        finished += done
        unfinished += [r for r in found if not is_run(r)]
    return list(dict.fromkeys(finished)), unfinished


# ---------------------------------------------------------------- the compact table (msam-lab demo)


def _compact_columns(df: pd.DataFrame) -> tuple[str, list[str]]:
    """(``"best val"`` or ``"last"``, the modalities) of a compare_runs table."""
    best = labelled("test_acc", BEST)
    at = BEST if best in df and len(df) and df[best].notna().all() else LAST
    mods = [
        c[len("test_acc_") : -len(f" ({at})")]
        for c in df.columns
        if c.startswith("test_acc_") and c.endswith(f"({at})")
    ]
    return at, mods


def compact_rows(df: pd.DataFrame, modalities=None) -> pd.DataFrame:
    """A compare_runs table as text cells, few and narrow columns: the run (when it is not just the method),
    method, seed (when they differ), the selected epoch, test accuracy, each modality's Shapley part of it,
    τ, switches and time. The numbers are those at the best-validation epoch when every run has one,
    else at the last epoch. ``modalities``: those to show (default all)."""
    at, mods = _compact_columns(df)
    mods = mods if modalities is None else [m for m in mods if m in modalities]
    out = pd.DataFrame(index=df.index)
    if (df["run"].astype(str) != df["method"].astype(str)).any():
        out["run"] = df["run"].astype(str)
    out["method"] = df["method"].astype(str)
    if df["seed"].nunique() > 1:
        out["seed"] = df["seed"].map(_cell)
    if at == BEST:
        out["epoch"] = df["best_epoch"].map(_cell)
    out["acc"] = df[labelled("test_acc", at)].map(_cell)
    for m in mods:
        out[m] = df[labelled(f"test_acc_{m}", at)].map(_cell)
    out["τ"] = df[labelled("tau", at)].map(lambda v: "-" if pd.isna(v) else f"{v + 0.0:.3f}".replace("-0.000", "0.000"))
    out["switches"] = df["switches"].map(lambda v: "-" if pd.isna(v) else f"{int(v)}")
    out["time"] = df["wall_s"].map(_duration)
    return out


def _duration(seconds) -> str:
    """``83 s``, ``2.3 min``, ``1.5 h``; ``-`` for none."""
    if seconds is None or pd.isna(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def _aligned(cells: pd.DataFrame) -> list[str]:
    left = {"run", "method"}
    widths = {c: max([len(c), *(len(v) for v in cells[c])]) for c in cells.columns}

    def line(values):
        return "  ".join(v.ljust(widths[c]) if c in left else v.rjust(widths[c]) for c, v in zip(cells.columns, values))

    return [line(cells.columns).rstrip()] + [line(r).rstrip() for r in cells.itertuples(index=False)]


def compact_legend(df: pd.DataFrame, width: int = 100, modalities=None) -> str:
    """One line (at most ``width`` characters) saying what the compact table's columns are."""
    at, mods = _compact_columns(df)
    mods = mods if modalities is None else [m for m in mods if m in modalities]
    parts = [f"acc: test accuracy at the {'best-val' if at == BEST else 'last'} epoch"]
    if mods:
        names = ", ".join(mods) if len(mods) <= 3 else "per-modality columns"
        parts.append(f"{names}: Shapley-decomposed acc")
    parts += ["τ: overfitting gap", "switches of dominance"]
    while len("; ".join(parts)) > width and len(parts) > 1:
        parts.pop()
    return "; ".join(parts)[:width]


def format_compact(df: pd.DataFrame, width: int = 100) -> str:
    """The compact table of a compare_runs table, every line at most ``width`` characters, then its legend.

    Too wide, it first shortens the run names (to no fewer than 12 characters), then leaves out
    modality columns from the last; ``msam-lab compare`` prints every column."""
    _, mods = _compact_columns(df)
    shown = list(mods)
    while True:
        cells = compact_rows(df, shown)
        lines = _aligned(cells)
        over = max(len(line) for line in lines) - width
        if over > 0 and "run" in cells:
            longest = max(len(v) for v in cells["run"])
            keep = max(12, longest - over)
            if keep < longest:
                cells["run"] = [v if len(v) <= keep else v[: keep - 1] + "…" for v in cells["run"]]
                lines = _aligned(cells)
                over = max(len(line) for line in lines) - width
        if over <= 0 or not shown:
            break
        shown.pop()
    lines = [line[:width] for line in lines]  # nothing left to drop: cut (a very long method name)
    return "\n".join([*lines, compact_legend(df, width, shown)])
