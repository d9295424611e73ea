"""One table over several runs: method, fused and per-modality accuracy, τ, switches, time."""
from __future__ import annotations

import pandas as pd

from .runs import Run, load_run


def compare_runs(runs) -> pd.DataFrame:
    """``runs``: Run objects or run directories. One row per run, final-epoch test numbers.

    ``acc_<m>`` is modality m's Shapley-decomposed accuracy inside the fused
    model; ``switches`` counts changes of the per-step dominant modality.
    """
    rows = []
    for run in runs:
        run = run if isinstance(run, Run) else load_run(run)
        s = run.summary
        row = {"run": run.name, "method": s["method"], "seed": s["seed"], "acc": s["test_acc"]}
        for m in run.modalities:
            row[f"acc_{m}"] = s.get(f"test_acc_{m}")
        row.update({"tau": s["tau"], "switches": s["dominance_switches"], "wall_s": s["wall_time"]})
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda x: f"{x:.3f}")
