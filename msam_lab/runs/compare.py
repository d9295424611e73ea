"""One table over several runs: method, fused and per-modality accuracy, τ, switches, time.

Test numbers appear twice, each labelled in its header: at the epoch of best validation accuracy
(``test_acc (best val)``, msam_lab.runs.selection) and at the last epoch (``test_acc (last)``). A run
without a validation split (or written before validation existed) has only the last-epoch numbers:
its ``best_epoch`` and ``(best val)`` cells are empty (NA / NaN), which is not an error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msam_lab.runs.reader import Run, load_run, summary_number
from msam_lab.runs.selection import BEST, LAST, labelled, selection_summary


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
