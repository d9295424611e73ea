"""Model selection by validation accuracy, read off a run's epoch table (docs/runs.md, "Model selection").

A run with a validation split (msam_lab.datasets.validation) has ``val_acc`` / ``val_loss`` columns
in ``epochs.csv``. The selected model is the one of the epoch with the highest validation accuracy;
its test numbers are reported beside the last epoch's, each under its own label. The test split
never takes part in the choice (docs/runs.md says why).

Old runs (no ``val_*`` columns) and runs with ``val_fraction=0`` on a dataset without a validation
split have no best epoch: ``best_epoch`` is None and only the last-epoch numbers exist.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msam_lab.shapley import dominance_switches

BEST, LAST = "best val", "last"  # the labels tables put in their headers: "test_acc (best val)"


def labelled(name: str, at: str) -> str:
    """A column header naming where the number was taken: ``labelled("test_acc", BEST)`` is
    ``"test_acc (best val)"``, ``labelled("test_acc", LAST)`` is ``"test_acc (last)"``."""
    if at not in (BEST, LAST):
        raise ValueError(f"at must be {BEST!r} or {LAST!r}, got {at!r}")
    return f"{name} ({at})"


def _table(epochs) -> pd.DataFrame:
    """The epoch table of a DataFrame, or of anything with an ``epochs`` DataFrame (a Run)."""
    table = getattr(epochs, "epochs", epochs)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected an epochs table (DataFrame) or a Run, got {type(epochs).__name__}")
    return table


def _epochs_of(table: pd.DataFrame) -> pd.Series:
    return table["epoch"] if "epoch" in table.columns else pd.Series(range(len(table)), index=table.index)


def has_validation(epochs) -> bool:
    """True when the epoch table has a ``val_acc`` column."""
    return "val_acc" in _table(epochs).columns


def best_epoch(epochs) -> int | None:
    """The epoch whose validation accuracy (``val_acc``) is highest; None where there is none.

    - ties go to the earliest epoch (the first model that reached that accuracy);
    - epoch 0 is not a candidate: it is the untrained initialisation, logged only as a reference;
    - rows whose ``val_acc`` is NaN / missing are skipped (e.g. an epoch evaluated without val);
    - None when the table has no ``val_acc`` column (a run without a validation split, or one
      written before validation existed), or no trained epoch with a finite ``val_acc``.
    """
    table = _table(epochs)
    if "val_acc" not in table.columns or table.empty:
        return None
    epoch = pd.to_numeric(_epochs_of(table), errors="coerce")
    acc = pd.to_numeric(table["val_acc"], errors="coerce")
    ok = (epoch > 0) & pd.Series(np.isfinite(acc.to_numpy(dtype=float)), index=table.index)
    if not ok.any():
        return None
    candidates = pd.DataFrame({"epoch": epoch[ok].astype(int), "acc": acc[ok].astype(float)})
    candidates = candidates.sort_values("epoch", kind="stable")
    return int(candidates.loc[candidates["acc"].idxmax(), "epoch"])


def selected_columns(columns) -> list[str]:
    """The epoch-table columns reported at the best and at the last epoch: ``test_loss``, ``test_acc``,
    ``test_acc_<m>`` (Shapley-decomposed), ``test_acc_only_<m>`` (others zeroed), ``tau``, ``tau_loss``."""
    return [c for c in columns if c in ("test_loss", "test_acc", "tau", "tau_loss") or str(c).startswith("test_acc_")]


def _value(v):
    if isinstance(v, bool) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def selection_summary(epochs) -> dict:
    """Test numbers at the best-validation epoch and at the last epoch, each key labelled.

    Contract (the keys the trainer merges into ``summary.json``):

    - ``best_epoch``: int, or None (no ``val_acc`` column / no finite value; see ``best_epoch``);
    - ``best_val_acc``, ``best_val_loss``: validation accuracy / loss at ``best_epoch`` (None without one);
    - ``<col>_at_best`` for every ``<col>`` of ``selected_columns`` — ``test_acc_at_best``,
      ``test_loss_at_best``, ``test_acc_<m>_at_best``, ``test_acc_only_<m>_at_best``,
      ``tau_at_best``, ``tau_loss_at_best``: the epoch table's value at ``best_epoch``; None
      without a best epoch (NaN where the table itself holds NaN);
    - ``last_epoch``: the last row's epoch (None for an empty table);
    - ``<col>_last`` for the same columns — ``test_acc_last``, ``test_loss_last``, … : the last
      row's values. They equal the unlabelled ``test_*`` / ``tau*`` keys ``summary.json`` has always
      had (kept as last-epoch values for old readers).

    An empty table gives only ``best_epoch``, ``best_val_acc``, ``best_val_loss``, ``last_epoch`` (None).
    """
    table = _table(epochs)
    out: dict = {"best_epoch": None, "best_val_acc": None, "best_val_loss": None, "last_epoch": None}
    if table.empty:
        return out
    cols = selected_columns(table.columns)
    best = best_epoch(table)
    last = table.iloc[-1]
    out["last_epoch"] = int(_epochs_of(table).iloc[-1])
    if best is not None:
        row = table[_epochs_of(table) == best].iloc[-1]
        out["best_epoch"] = best
        out["best_val_acc"] = _value(row["val_acc"])
        out["best_val_loss"] = _value(row["val_loss"]) if "val_loss" in table.columns else None
    for c in cols:
        out[f"{c}_at_best"] = None if best is None else _value(row[c])
    for c in cols:
        out[f"{c}_last"] = _value(last[c])
    return out


def table_summary(steps: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    """The summary.json fields read off a run's tables: dominance switches, the last epoch's
    ``test_``/``train_``/``val_``/``tau`` numbers (unlabelled, as summary.json has always had them) and
    ``selection_summary``. The trainer and msam_lab.RunLogger both write these."""

    final = epochs.iloc[-1].to_dict() if len(epochs) else {}
    switches = dominance_switches(steps["dominant"].dropna()) if "dominant" in steps.columns else 0
    return {
        "dominance_switches": switches,
        **{k: final[k] for k in final if k.startswith(("test_", "train_", "val_", "tau"))},
        **selection_summary(epochs),
    }
