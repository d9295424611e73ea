"""The run folder's layout and what reads its small files: file names, status, tables, JSON.

Torch-free (pandas and numpy only), so ``msam-lab status`` answers without loading torch. The
layout itself is drawn in ``msam_lab.runs.reader``'s docstring (docs/runs.md); ``reader`` re-exports
every name here, so ``from msam_lab.runs.reader import read_status`` keeps working.

Nothing read here executes code: a file that is not a regular file, too large, not JSON or not a
CSV table is a ``RunFileError`` naming it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from msam_lab.errors import ConfigError
from msam_lab.runs.lock import read_lock

STATUS, SUMMARY, CONFIG, MODEL = "status.json", "summary.json", "config.json", "model.json"
STEPS, EPOCHS, CHECKPOINTS, RESUME = "steps.csv", "epochs.csv", "checkpoints", "resume.pt"
PREVIOUS_RESUME = "resume.prev.pt"  # the resume point before resume.pt: what a damaged one falls back to
STATES = ("running", "finished", "failed", "interrupted")
LOGGED = "logged"  # model.json "kind" of a run written by msam_lab.RunLogger


class RunFileError(ConfigError):
    """A file of a run folder (or of a dataset) is damaged, missing or unsafe; the message names it.

    A ConfigError: bad input, one line and exit 2 at the command line."""


def read_regular(path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (a symlink to one is followed).

    A FIFO, a device (``/dev/zero``) or a folder in a file's place would hang or never end: refused in
    one line, like a missing or unreadable file, and a file larger than ``limit`` bytes."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise RunFileError(f"{path}: missing{' (a symlink to nowhere)' if path.is_symlink() else ''}") from None
    except OSError as err:
        raise RunFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunFileError(f"{path}: not a regular file; a run folder holds plain files")
        if limit is not None and info.st_size > limit:
            raise RunFileError(f"{path}: {info.st_size} bytes, more than the {limit} such a file can have")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as err:
        raise RunFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    finally:
        os.close(fd)


JSON_LIMIT = 16 * 2**20  # bytes: a status, config, model or summary file is a few kB


def read_json(path) -> dict:
    """A JSON object file of a run (status, config, model, summary); RunFileError naming it otherwise."""
    path = Path(path)
    data = read_regular(path, JSON_LIMIT)
    try:
        value = json.loads(data)
    # ValueError: not JSON, not UTF-8, an int of thousands of digits; RecursionError: [[[[...
    except (ValueError, RecursionError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise RunFileError(f"{path}: not valid JSON{where} (damaged or truncated)") from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: holds a JSON {type(value).__name__}, not an object (damaged)")
    return value


def is_run(path) -> bool:
    """True for a *finished* run (its summary.json exists)."""
    return (Path(path) / SUMMARY).is_file()


def is_run_dir(path) -> bool:
    """True for any run directory, finished or not."""
    path = Path(path)
    return (path / STATUS).is_file() or is_run(path)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# status.json's fields and the values each may hold (docs/runs.md); other keys are left alone
_STATUS_TYPES = {
    "state": (lambda v: v in STATES, "one of " + ", ".join(STATES)),
    "pid": (lambda v: v is None or _is_int(v), "an integer"),
    "host": (lambda v: v is None or isinstance(v, str), "a string"),
    "started": (lambda v: v is None or isinstance(v, str), "a string"),
    "heartbeat": (lambda v: v is None or isinstance(v, str), "a string"),
    "ended": (lambda v: v is None or isinstance(v, str), "a string"),
    "heartbeat_unix": (lambda v: v is None or _is_number(v), "a finite number"),
    "last_step": (lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "last_epoch": (lambda v: _is_int(v) and v >= -1, "an integer >= -1"),
    "epochs": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0"),
    "method": (lambda v: v is None or isinstance(v, str), "a string"),
    "dataset": (lambda v: v is None or isinstance(v, str), "a string"),
    "error": (lambda v: v is None or isinstance(v, str), "a string"),
    "skipped_batches": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "resumed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "resume_point": (
        lambda v: (
            v is None or (isinstance(v, dict) and all(_is_int(v.get(k)) and v.get(k) >= 0 for k in ("step", "epoch")))
        ),
        "{step, epoch} (integers >= 0)",
    ),
}


def _check_status(file: Path, status: dict) -> dict:
    if "state" not in status:
        raise RunFileError(f"{file}: has no state (damaged)")
    for key, (ok, expected) in _STATUS_TYPES.items():
        if key in status and not ok(status[key]):
            raise RunFileError(f"{file}: {key} must be {expected}, got {_short(status[key])} (damaged)")
    return status


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_status(path) -> dict:
    """``status.json`` as written, with ``state`` corrected for a trainer that died without saying so.

    A run that says ``running`` but whose lock is stale (its pid is gone) was killed: it reads as
    ``interrupted`` with ``stale_lock`` naming the dead trainer. A damaged status.json (not a JSON
    object, a field of the wrong type) is a RunFileError naming it.
    """
    path = Path(path)
    if not (path / STATUS).exists() and not (path / STATUS).is_symlink():
        if is_run(path):  # a run written before status.json existed
            return {"state": "finished"}
        raise FileNotFoundError(f"no run directory at {path} (no {STATUS}); train one with `msam-lab train`")
    status = _check_status(path / STATUS, read_json(path / STATUS))
    status.pop("stale_lock", None)  # computed, never stored; older writers stored it back on a resume
    if status.get("state") == "running":
        lock = read_lock(path)
        if lock is None or not lock.alive(status.get("heartbeat_unix")):
            status["stale_lock"] = "no lock" if lock is None else f"{lock.describe()} is gone"
            status["state"] = "interrupted"
    return status


def run_state(path) -> str:
    return read_status(path)["state"]


def complete_lines(path: Path) -> str:
    """The text of a file the trainer appends to, without a torn last line (a kill mid-write).

    Missing: FileNotFoundError. Not a regular file, not UTF-8 text, NUL bytes: RunFileError naming it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: missing")
    try:
        text = read_regular(path).decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunFileError(
            f"{path}: not a text table (bytes that are not UTF-8 at offset {err.start}; damaged)"
        ) from None
    if "\0" in text:
        raise RunFileError(f"{path}: not a text table (NUL bytes; damaged)")
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


# Columns that hold numbers wherever they appear (the readers compute with them); the others (dominant,
# perturbed, scope, split, a RunLogger's own columns) may hold text.
_NUMERIC = re.compile(
    r"(step|epoch|loss|lr|wall_time|skipped|overflow|tau(_loss)?|n_samples|seed|subset_seed|"
    r"topk|probes|rho|lambda_\d+|trace(_se)?|eps_sharpness|"
    r"((train|test|val)_)?(acc|loss|share|shapley)(_.+)?)"
)
_REQUIRED = {STEPS: "step", EPOCHS: "epoch", "sharpness.csv": "epoch"}  # the column each table is keyed by


def read_table(path: Path) -> pd.DataFrame:
    """A CSV the trainer appends to, as complete rows; a missing file is an empty table.

    A damaged table (not CSV, rows of the wrong length, text in a number column, a step or epoch
    that is not a whole number) is a RunFileError naming the file."""
    path = Path(path)
    try:
        text = complete_lines(path)
    except FileNotFoundError:
        return pd.DataFrame()
    if not text.strip():
        return pd.DataFrame()
    try:
        table = pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OverflowError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise RunFileError(f"{path}: not a CSV table ({first}; damaged)") from None
    for column in table.columns:
        if _NUMERIC.fullmatch(str(column)) and not pd.api.types.is_numeric_dtype(table[column]):
            raise RunFileError(f"{path}: column {column!r} holds text where numbers belong (damaged)")
    if path.name in _REQUIRED and _REQUIRED[path.name] not in table.columns:
        raise RunFileError(f"{path}: has no {_REQUIRED[path.name]!r} column (damaged)")
    if "epoch" in table.columns:
        values = table["epoch"].to_numpy(dtype=float)
        if not (np.isfinite(values).all() and (values == values.round()).all() and (values >= 0).all()):
            raise RunFileError(f"{path}: column 'epoch' must hold whole numbers >= 0 in every row (damaged)")
    counters = [c for c in ("step", "epoch", "skipped") if c in table.columns and path.name in (STEPS, EPOCHS)]
    if counters:
        # the trainer's tables as written, not as pandas reads them: a resume re-reads them as text
        # (run_writer.CsvAppender), where int("1.0") or int(float("inf")) fails
        cells = pd.read_csv(io.StringIO(text), usecols=counters, dtype=str, keep_default_na=False)
        for column in counters:
            bad = [v for v in cells[column] if not _counter(v, empty_ok=column == "skipped")]
            if bad:
                raise RunFileError(
                    f"{path}: column {column!r} must hold whole numbers >= 0, got {_short(bad[0])} (damaged)"
                )
    return table


def _counter(text: str, empty_ok: bool) -> bool:
    text = text.strip()
    return text.isdigit() and text.isascii() or (empty_ok and not text)


def find_runs(paths) -> list[Path]:
    """Run directories among ``paths``: each is a run or a folder searched (recursively) for runs."""
    found = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(q.parent for q in p.rglob(STATUS) if not q.parent.name.startswith(".")))
            found.extend(
                sorted(
                    q.parent
                    for q in p.rglob(SUMMARY)
                    if not (q.parent / STATUS).exists() and not q.parent.name.startswith(".")
                )
            )
    return list(dict.fromkeys(found))
