"""What the runs under a folder are doing: one row per run, for ``msam-lab status``.

    from msam_lab.runs.status import status_table, format_status
    table = status_table(["runs/"])      # a DataFrame, one row per run found (folders searched recursively)
    print(format_status(table))

Columns of ``status_table``: ``run`` (path relative to the folder given; a run given directly keeps
the path as given), ``path``, ``method``, ``state`` (``running`` | ``finished`` | ``failed`` |
``interrupted``), ``stale`` (why an interrupted run reads so: ``pid 123 gone``, else empty), ``pid``
(a running run's trainer, from its lock: shown as ``running (pid 123)``; else empty),
``epoch``, ``epochs``, ``step`` (last recorded), ``test_acc`` (last epoch row), ``dominant`` and
``dominant_share`` (the test split's dominant modality and its Shapley share at the last epoch row),
``heartbeat_age_s`` (seconds since the trainer's last heartbeat; NaN for finished runs) and
``error``. Only ``status.json`` and ``epochs.csv`` are read, so a large run costs no more than a small one.
"""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import pandas as pd

from msam_lab.runs.layout import CONFIG, EPOCHS, SUMMARY, find_runs, is_run_dir, read_status, read_table
from msam_lab.runs.lock import read_lock

COLUMNS = [
    "run",
    "path",
    "method",
    "state",
    "stale",
    "pid",
    "epoch",
    "epochs",
    "step",
    "test_acc",
    "dominant",
    "dominant_share",
    "heartbeat_age_s",
    "error",
]
DASH = "—"


class StatusError(ValueError):
    """A path given to ``status_table`` (or ``compare.finished_runs``) does not exist."""


def existing_paths(paths) -> list[Path]:
    """``paths`` (one path or several) as Paths; a StatusError for the first that does not exist."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    for p in paths:
        if not p.exists():
            raise StatusError(f"{p} does not exist (give a run directory or a folder of runs)")
    return paths


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stale(path: Path, status: dict) -> str:
    """Why a run that says running reads as interrupted: its trainer's pid is gone, or it has no lock."""
    if not status.get("stale_lock"):
        return ""
    lock = read_lock(path)
    if lock is None:
        return "no lock"
    if lock.pid < 0:
        return "lock unreadable"
    return f"pid {lock.pid} gone" if lock.here else f"pid {lock.pid} on {lock.host} gone"


def _trainer(path: Path, status: dict, state: str) -> str:
    """``pid 123`` (``pid 123 on HOST`` from another host) of the trainer writing a running run: its lock's."""
    if state != "running":
        return ""
    lock = read_lock(path)
    pid, host = (lock.pid, lock.host) if lock is not None and lock.pid > 0 else (status.get("pid"), status.get("host"))
    if pid is None:
        return ""
    return f"pid {pid}" if host in (None, socket.gethostname()) else f"pid {pid} on {host}"


def run_row(path, label: str | None = None, now: float | None = None) -> dict:
    """The status row of one run directory."""
    path = Path(path)
    now = time.time() if now is None else now
    status = read_status(path)
    state = status.get("state", "finished")
    config = _json(path / CONFIG) if not status.get("method") or not status.get("epochs") else {}
    summary = _json(path / SUMMARY) if state == "finished" else {}
    epochs = read_table(path / EPOCHS)
    last = epochs.iloc[-1] if len(epochs) else None

    def pick(key, *sources):
        for src in sources:
            if src.get(key) is not None:
                return src[key]
        return None

    step = status.get("last_step")
    if step is None and summary.get("steps") is not None:  # a run written before status.json existed
        step = int(summary["steps"]) - 1
    row = {
        "run": label if label is not None else str(path),
        "path": str(path),
        "method": pick("method", status, config, summary),
        "state": state,
        "stale": _stale(path, status),
        "pid": _trainer(path, status, state),
        "epoch": int(last["epoch"]) if last is not None and "epoch" in last else status.get("last_epoch"),
        "epochs": pick("epochs", status, config, summary),
        "step": int(step) if step is not None and int(step) >= 0 else None,
        "test_acc": float(last["test_acc"]) if last is not None and "test_acc" in last else None,
        "dominant": None,
        "dominant_share": None,
        "heartbeat_age_s": (now - float(status["heartbeat_unix"]))
        if state != "finished" and status.get("heartbeat_unix") is not None
        else math.nan,
        "error": status.get("error") or None,
    }
    if last is not None and isinstance(last.get("test_dominant"), str):
        row["dominant"] = last["test_dominant"]
        share = last.get(f"test_share_{row['dominant']}")
        row["dominant_share"] = float(share) if share is not None and not pd.isna(share) else None
    return row


def status_table(paths=("runs",), now: float | None = None) -> pd.DataFrame:
    """One row per run among ``paths`` (run directories, or folders searched recursively for runs).

    A path that does not exist raises ``StatusError``. ``now`` (Unix seconds) fixes the clock for the
    heartbeat ages.
    """
    paths = existing_paths(paths)
    rows = []
    for arg in paths:
        for run in find_runs([arg]):
            if is_run_dir(arg):
                label = str(arg)
            else:
                rel = run.relative_to(arg).as_posix()
                label = rel if len(paths) == 1 else (arg / rel).as_posix()
            try:
                rows.append(run_row(run, label, now))
            except (OSError, ValueError) as err:  # a status.json that cannot be read
                rows.append(
                    {"run": label, "path": str(run), "state": "unreadable", "stale": f"{type(err).__name__}: {err}"}
                )
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------- text


def format_age(seconds) -> str:
    """``3 s``, ``2 min``, ``5.1 h``, ``2.0 d``; ``—`` for none."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return DASH
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _cell(value, fmt="{}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return fmt.format(value)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as ``msam-lab status`` prints it: one text column per field."""

    def state(r):
        why = r["stale"] or (r["pid"] if isinstance(r["pid"], str) else "")
        return f"{r['state']} ({why})" if why else r["state"]

    def epoch(r):
        return f"{_cell(r['epoch'], '{:.0f}')}/{_cell(r['epochs'], '{:.0f}')}"

    def dominant(r):
        if r["dominant"] is None or (isinstance(r["dominant"], float) and math.isnan(r["dominant"])):
            return DASH
        return f"{r['dominant']} {_cell(r['dominant_share'], '{:.2f}')}"

    return pd.DataFrame(
        {
            "run": table["run"].astype(str),
            "method": [_cell(m) for m in table["method"]],
            "state": [state(r) for _, r in table.iterrows()],
            "epoch": [epoch(r) for _, r in table.iterrows()],
            "step": [_cell(s, "{:.0f}") for s in table["step"]],
            "test acc": [_cell(a, "{:.3f}") for a in table["test_acc"]],
            "dominant": [dominant(r) for _, r in table.iterrows()],
            "heartbeat": [format_age(a) for a in table["heartbeat_age_s"]],
        },
        columns=["run", "method", "state", "epoch", "step", "test acc", "dominant", "heartbeat"],
    )


def format_status(table: pd.DataFrame, errors: bool = True) -> str:
    """Aligned text: the table, then (``errors``) one line per failed run with its error."""
    if not len(table):
        return "no runs found"
    shown = display_table(table)
    widths = {c: max(len(c), *(len(v) for v in shown[c])) for c in shown.columns}
    left = {"run", "method", "state", "dominant"}

    def line(values):
        return "  ".join(
            (v.ljust(widths[c]) if c in left else v.rjust(widths[c])) for c, v in zip(shown.columns, values)
        ).rstrip()

    out = [line(list(shown.columns))] + [line(list(r)) for r in shown.itertuples(index=False)]
    if errors:
        for _, r in table[table["state"] == "failed"].iterrows():
            if r["error"]:
                first = str(r["error"]).splitlines()[0]
                out.append(f"{r['run']}: {first[:200]}")
    return "\n".join(out)
