"""Writing a run directory while it trains: status, streamed tables, checkpoints, the lock.

The directory is valid from its first step (docs/runs.md): ``status.json`` says what state it is
in, step rows are appended every ``flush_every`` seconds, epoch rows at every epoch end, and
every file that is replaced (status, checkpoints, summary) is replaced atomically. A killed
trainer therefore loses at most the step rows of its last ``flush_every`` seconds, and those are
re-done by a resume from the last resume checkpoint anyway.
"""
from __future__ import annotations

import csv
import io
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from . import atomic
from .run_lock import RunLock
from .runs import (CHECKPOINTS, CONFIG, EPOCHS, MODEL, RESUME, STATUS, STEPS, SUMMARY, check_output_dir,
                   complete_lines, read_status)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)           # shortest string that reads back to the same float
    return str(value)


class CsvAppender:
    """Rows appended to a CSV file whose header is fixed by the first row (widened if a row brings a new key)."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        if path.is_file() and path.stat().st_size:
            with open(path, newline="") as f:
                self.columns = next(csv.reader(f), [])

    def _lines(self, rows, columns) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
        return buf.getvalue()

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        new = [k for row in rows for k in row if k not in self.columns]
        if new or not self.columns:
            self._widen(list(dict.fromkeys(new)))
        with open(self.path, "a", newline="") as f:
            f.write(self._lines(rows, self.columns))    # one write: a kill leaves whole lines or a torn last one
            f.flush()
            os.fsync(f.fileno())

    def _widen(self, new: list[str]) -> None:
        old = self.read()
        self.columns = self.columns + new
        atomic.write_text(self.path, ",".join(self.columns) + "\n" + self._lines(old, self.columns))

    def read(self) -> list[dict]:
        """The complete rows on disk (a torn last line, from a kill mid-write, is dropped)."""
        if not self.path.is_file():
            return []
        return list(csv.DictReader(io.StringIO(complete_lines(self.path))))

    def keep(self, predicate) -> list[dict]:
        """Rewrite the file atomically with only the rows for which ``predicate(row)`` holds; return them."""
        rows = [r for r in self.read() if predicate(r)]
        if self.columns:
            atomic.write_text(self.path, ",".join(self.columns) + "\n" + self._lines(rows, self.columns))
        return rows


def _key_cell(text: str) -> str:
    """A key cell compared by value: 3, 3.0 and '3' are one key (pandas writes ints of a column with gaps as floats)."""
    try:
        return repr(float(text))
    except ValueError:
        return text


def replace_rows(path: Path, rows: list[dict], keys) -> None:
    """Put ``rows`` into the CSV table ``path``: rows already there with the same ``keys`` values are
    replaced, the others kept; the header is widened to new columns. Rewritten atomically."""
    old = CsvAppender(path)
    new = [{k: _cell(float(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    columns = list(dict.fromkeys([*old.columns, *(k for r in new for k in r)]))
    replaced = {tuple(_key_cell(r.get(k, "")) for k in keys) for r in new}
    kept = [r for r in old.read() if tuple(_key_cell(r.get(k) or "") for k in keys) not in replaced]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows([*kept, *new])
    atomic.write_text(path, buf.getvalue())


class RunWriter:
    """Owns a run directory while one trainer writes it.

    ``RunWriter(out, config, spec)`` creates a new run (``out`` absent or empty);
    ``RunWriter(out, resume=True)`` reopens an interrupted or failed one. Either takes the lock.
    """

    def __init__(self, out, config: dict | None = None, spec: dict | None = None, *, resume: bool = False,
                 flush_every: float = 1.0):
        self.out = Path(out)
        self.flush_every = float(flush_every)
        if resume:
            previous = read_status(self.out)
            self.lock = RunLock(self.out)
            self.stale = self.lock.acquire(previous.get("heartbeat_unix"))
            self.status = {**previous, "resumed": int(previous.get("resumed", 0)) + 1}
        else:
            check_output_dir(self.out)
            (self.out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.out)
            self.stale = self.lock.acquire()
            atomic.write_json(self.out / CONFIG, config)
            atomic.write_json(self.out / MODEL, spec)
            self.status = {"started": now_iso(), "last_step": -1, "last_epoch": 0, "resumed": 0,
                           "skipped_batches": 0, "epochs": (config or {}).get("epochs"),
                           "method": (config or {}).get("method"), "dataset": (config or {}).get("dataset")}
        self.status.update(state="running", pid=os.getpid(), host=socket.gethostname(), error=None)
        self.steps = CsvAppender(self.out / STEPS)
        self.epochs = CsvAppender(self.out / EPOCHS)
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self.write_status()

    # -- streaming -------------------------------------------------------------------
    def write_status(self) -> None:
        t = time.time()
        self.status.update(heartbeat=datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds"),
                           heartbeat_unix=t)
        atomic.write_json(self.out / STATUS, self.status)

    def log_step(self, row: dict) -> None:
        self._pending.append(row)
        self.status["last_step"] = row["step"]
        if row.get("skipped"):
            self.status["skipped_batches"] += 1
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def log_epoch(self, row: dict) -> None:
        self.flush(status=False)
        self.epochs.append([row])
        self.status["last_epoch"] = row["epoch"]
        self.write_status()

    def flush(self, status: bool = True) -> None:
        self.steps.append(self._pending)
        self._pending = []
        self._last_flush = time.monotonic()
        if status:
            self.write_status()

    def replace_rows(self, name: str, rows: list[dict], keys) -> None:
        """Rows of an analysis table ``<run>/<name>`` (sharpness.csv), replacing those with the same keys."""
        replace_rows(self.out / name, rows, keys)

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self, epoch: int, state: dict) -> None:
        atomic.torch_save(self.out / CHECKPOINTS / f"epoch_{epoch:04d}.pt", state)

    def save_resume(self, state: dict) -> None:
        """The resume checkpoint; the step rows it covers are flushed first, so none is lost."""
        self.flush(status=False)
        atomic.torch_save(self.out / CHECKPOINTS / RESUME, state)
        self.status["resume_point"] = {"step": state["position"]["step"], "epoch": state["position"]["epoch"]}
        self.write_status()

    def truncate(self, next_step: int, completed_epochs: int) -> None:
        """Drop the rows written after a resume point: steps >= ``next_step``, epochs > ``completed_epochs``."""
        kept = self.steps.keep(lambda r: int(r["step"]) < next_step)
        self.epochs.keep(lambda r: int(r["epoch"]) <= completed_epochs)
        self.status.update(last_step=next_step - 1, last_epoch=completed_epochs,
                           skipped_batches=sum(int(float(r.get("skipped") or 0)) for r in kept))

    # -- the end -------------------------------------------------------------------------
    def finish(self, summary: dict) -> None:
        self.flush(status=False)
        atomic.write_json(self.out / SUMMARY, summary)
        self._close("finished")

    def fail(self, message: str) -> None:
        self._close("failed", message)

    def interrupt(self, message: str = "interrupted") -> None:
        self._close("interrupted", message)

    def _close(self, state: str, error: str | None = None) -> None:
        try:
            self.flush(status=False)
        except OSError:       # the disk that failed us; the status below may still get through
            pass
        self.status.update(state=state, error=error, ended=now_iso())
        try:
            self.write_status()
        finally:
            self.lock.release()
