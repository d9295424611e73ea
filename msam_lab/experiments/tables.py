"""Markdown tables of sweep folders, so docs/results.md is regenerated, never hand-edited.

    from msam_lab.experiments.tables import sweep_markdown, write_table
    text = sweep_markdown("runs/tables/main", command="msam-lab sweep ... --out runs/tables/main")
    write_table("docs/results.md", "runs/tables/main", text)

``sweep_markdown`` reads a finished sweep folder (its ``sweep.csv`` and each run's steps and summary) and
returns one block: a start marker, the command that made it, the date, the machine, the runs' wall time,
the table (mean ± std over seeds per method and ρ), an end marker. ``write_table`` puts that block into a
Markdown file: it replaces the block of the same sweep folder where the file has one (the prose around it
is kept) and appends it otherwise, so one file holds the tables of many sweeps, each rewritten by its own
command (``msam-lab sweep ... --table PATH.md``).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from msam_lab.experiments.cells import run_dir
from msam_lab.experiments.sweep import RUNS_FILE, summarise, upgrade_runs
from msam_lab.runs import atomic
from msam_lab.runs.reader import load_run

BEGIN = "<!-- msam-lab sweep table: {key} -->"
END = "<!-- end msam-lab sweep table: {key} -->"


def cell(mean, std, digits: int = 3) -> str:
    """``mean ± std`` (``mean`` alone without a std: one seed; ``-`` for a missing number)."""
    if mean is None or pd.isna(mean):
        return "-"
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(list(values), dtype=float)
    if len(values) == 0 or np.isnan(values).any():
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else np.nan


def _run_extras(out: Path, row) -> dict:
    """What sweep.csv lacks: each modality's mean Shapley share over the steps, the device and torch."""
    rho = None if pd.isna(row["rho"]) else float(row["rho"])
    run = load_run(run_dir(out, row["method"], int(row["seed"]), rho if _has_rho_dir(out, row) else None))
    extras = {f"share_{m}": run.steps[f"share_{m}"].mean() for m in run.modalities if f"share_{m}" in run.steps}
    extras["device"] = run.summary.get("device", "?")
    extras["torch"] = run.summary.get("torch", "?")
    extras["modalities"] = run.modalities
    return extras


def _has_rho_dir(out: Path, row) -> bool:
    """A run of a SAM-type method sits under ``rho<R>/`` only when the sweep had a ρ axis (``--rho``)."""
    return not pd.isna(row["rho"]) and (Path(out) / row["method"] / f"rho{float(row['rho']):g}").is_dir()


def _wall(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def table_rows(out) -> tuple[list[str], list[list[str]], dict]:
    """(header, rows, facts) of sweep folder ``out``: one row per (method, ρ) in the sweep's order;
    ``facts``: ``runs``, ``wall_s`` (sum of the runs' wall times), ``devices``, ``torch``."""
    out = Path(out)
    path = out / RUNS_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: {out} is not a finished sweep folder (run msam-lab sweep first)")
    runs = upgrade_runs(pd.read_csv(path))
    if runs.empty:
        raise ValueError(f"{path} lists no runs; run the sweep first")
    extras = pd.DataFrame([_run_extras(out, row) for _, row in runs.iterrows()])
    runs = pd.concat([runs.reset_index(drop=True), extras], axis=1)
    modalities = list(extras["modalities"].iloc[0])
    summary = summarise(runs.drop(columns=["modalities", "device", "torch"]))
    header = ["method", "ρ", "seeds", "test acc (best val)", "test acc (last)"]
    header += [f"{m} in model (best val)" for m in modalities] + ["τ (best val)"]
    header += [f"mean {m} share" for m in modalities] + ["switches", "wall per run"]
    rows = []
    for _, s in summary.iterrows():
        same_rho = (runs["rho"] == s["rho"]) | (runs["rho"].isna() & pd.isna(s["rho"]))
        group = runs[(runs["method"] == s["method"]) & same_rho]
        row = [s["method"], "" if pd.isna(s["rho"]) else f"{s['rho']:g}", str(int(s["n_seeds"]))]
        for col in ["acc_at_best", "acc_last", *[f"acc_{m}_at_best" for m in modalities], "tau_at_best"]:
            row.append(cell(s.get(f"{col}_mean"), s.get(f"{col}_std")))
        for m in modalities:
            row.append(cell(*_mean_std(group[f"share_{m}"]), digits=2))
        switches, _ = _mean_std(group["switches"])
        row.append("-" if pd.isna(switches) else f"{switches:.1f}")
        wall, _ = _mean_std(group["wall_s"])
        row.append(_wall(wall))
        rows.append(row)
    facts = {
        "runs": len(runs),
        "wall_s": float(runs["wall_s"].sum(min_count=1)),
        "devices": sorted(set(map(str, runs["device"]))),
        "torch": sorted(set(map(str, runs["torch"]))),
    }
    return header, rows, facts


def machine() -> str:
    """This machine in a few words (where the table was written)."""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"


def sweep_markdown(out, command: str, date: str | None = None, where: str | None = None) -> str:
    """The block of sweep folder ``out`` (markers included, no trailing newline), made by ``command``.

    ``date``: ISO date (default today); ``where``: the machine (default :func:`machine`)."""
    header, rows, facts = table_rows(out)
    key = Path(out).as_posix()
    date = datetime.date.today().isoformat() if date is None else date
    where = machine() if where is None else where
    lines = [
        BEGIN.format(key=key) + " <!-- written by the command below; edits between the markers are overwritten -->",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Written {date} on {where}; {facts['runs']} runs on {', '.join(facts['devices'])} "
        f"(torch {', '.join(facts['torch'])}), {_wall(facts['wall_s'])} of training in all (the runs' wall "
        "times summed); mean ± std over seeds, test numbers at the best-validation epoch and the last.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        END.format(key=key),
    ]
    return "\n".join(lines)


def write_table(path, out, text: str) -> Path:
    """Put ``text`` (a ``sweep_markdown`` block of sweep folder ``out``) into Markdown file ``path``:
    in place of that folder's block where the file has one, appended otherwise (the file is created
    if absent). Written whole (atomic): a failure leaves the previous file."""
    path = Path(path)
    if path.suffix.lower() != ".md":
        raise ValueError(f"the table goes into a Markdown file; name one ending in .md, got {path}")
    key = Path(out).as_posix()
    begin, end = BEGIN.format(key=key), END.format(key=key)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = old.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(begin)]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) > 1 or len(ends) > 1:
        raise ValueError(f"{path} holds the table of {key} more than once; delete all but one block and rerun")
    if starts != [] and (ends == [] or ends[0] < starts[0]) or (starts == [] and ends != []):
        raise ValueError(
            f"{path}: the block of {key} lacks its start or end marker ({begin!r} ... {end!r}); "
            "restore the marker or delete the block's remains, and rerun"
        )
    if starts:
        new_lines = lines[: starts[0]] + text.splitlines() + lines[ends[0] + 1 :]
    else:
        new_lines = lines + ([""] if lines and lines[-1].strip() else []) + text.splitlines()
    atomic.write_text(path, "\n".join(new_lines) + "\n")
    return path
