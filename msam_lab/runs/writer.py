"""Writing a run directory while it trains: status, streamed tables, checkpoints, the lock.

The directory is valid from its first step (docs/runs.md): ``status.json`` says what state it is
in, step rows are appended every ``flush_every`` seconds, epoch rows at every epoch end, and
every file that is replaced (status, checkpoints, summary) is replaced atomically. A killed
trainer therefore loses at most the step rows of its last ``flush_every`` seconds, and those are
re-done by a resume from the last resume checkpoint anyway.

When the disk fills, the failure is still recorded: ``status.json`` is written with spare room
(padded with spaces, ``atomic.padded``) and rewritten in place when no new file can be made, so the
run reads ``failed`` with the error and the lock is released. An append that fails is cut back to
the last whole line. A start that fails (full disk, read-only folder) takes back what it made. No
file of the run is written through a symlink (``faults.refuse_symlinks``, ``O_NOFOLLOW``).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from msam_lab import faults
from msam_lab.loggers import LoggerGroup, check_available
from msam_lab.runs import atomic, checkpoint_io
from msam_lab.runs.lock import LOCK, RunLock
from msam_lab.runs.reader import (
    CHECKPOINTS,
    CONFIG,
    EPOCHS,
    MODEL,
    PREVIOUS_RESUME,
    RESUME,
    STATUS,
    STEPS,
    SUMMARY,
    check_output_dir,
    complete_lines,
    read_json,
    read_status,
    start_leftovers,
)
from msam_lab.shapley import rows_on_host

# what a trainer writes in a run folder: none of these may be a symlink (it would write outside the run)
WRITTEN = (
    STATUS,
    LOCK,
    CONFIG,
    MODEL,
    STEPS,
    EPOCHS,
    SUMMARY,
    CHECKPOINTS,
    f"{CHECKPOINTS}/{RESUME}",
    f"{CHECKPOINTS}/{PREVIOUS_RESUME}",
    "sharpness.csv",
    "tensorboard",  # msam_lab.loggers' folders
    "wandb",
)
# status.json keys that readers compute (runs.read_status) and a writer must never store back
COMPUTED = ("stale_lock",)
ERROR_ROOM = 500  # characters of an error kept when status.json is rewritten in place


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back to the same float
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
        data = self._lines(rows, self.columns).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise faults.named(err, self.path) from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)  # one write: a kill leaves whole lines or a torn last one
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as err:  # a full disk mid-append: back to the last whole line
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise faults.named(err, self.path) from None
        finally:
            os.close(fd)

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
    replaced, the others kept; the header is widened to new columns. Rewritten atomically, under an
    exclusive flock on ``.<name>.lock`` beside it: processes updating one table at once (sharpness of
    several epochs in parallel) each see the others' rows, and none is lost."""
    path = Path(path)
    faults.refuse_symlinks(path.parent, path)
    with atomic.locked(path.with_name(f".{path.name}.lock")):
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


def _logger_group(out: Path, config: dict | None, spec: dict | None) -> LoggerGroup:
    """The run's ``loggers`` (msam_lab.loggers), checked before anything is written, opened on first use."""
    return LoggerGroup(check_available((config or {}).get("loggers") or []), out, config, spec)


class RunWriter:
    """Owns a run directory while one trainer writes it.

    ``RunWriter(out, config, spec)`` creates a new run (``out`` absent or empty, or holding what a
    start that failed before its first step left: ``runs.start_leftovers``, replaced);
    ``RunWriter(out, resume=True)`` reopens an interrupted or failed one. Either takes the lock.
    """

    def __init__(
        self,
        out,
        config: dict | None = None,
        spec: dict | None = None,
        *,
        resume: bool = False,
        flush_every: float = 1.0,
    ):
        self.out = Path(out)
        self.flush_every = float(flush_every)
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        if resume:
            faults.refuse_symlinks(self.out, *WRITTEN)
            previous = read_status(self.out)
            self.lock = RunLock(self.out)
            self.stale = self.lock.acquire(previous.get("heartbeat_unix"))
            self.status = {k: v for k, v in previous.items() if k not in COMPUTED and k != "ended"}
            self.status["resumed"] = int(previous.get("resumed", 0)) + 1
            self.status.update(state="running", pid=os.getpid(), host=socket.gethostname(), error=None)
            try:
                self.steps = CsvAppender(self.out / STEPS)
                self.epochs = CsvAppender(self.out / EPOCHS)
                self.loggers = _logger_group(self.out, read_json(self.out / CONFIG), read_json(self.out / MODEL))
                self.write_status()
            except BaseException:
                self.lock.release()  # the run stays as it was: interrupted or failed, resumable
                raise
        else:
            self._start(config, spec)

    def _start(self, config: dict | None, spec: dict | None) -> None:
        out = self.out
        leftovers = [p for p in start_leftovers(out) or [] if p.name != LOCK]
        check_output_dir(out)
        self.loggers = _logger_group(out, config, spec)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(out)
        try:
            self.stale = self.lock.acquire()
            for p in leftovers:  # a start that never took a step: nothing to keep
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            atomic.write_json(out / CONFIG, config)
            atomic.write_json(out / MODEL, spec)
            (out / CHECKPOINTS).mkdir(exist_ok=True)
            self.status = {
                "started": now_iso(),
                "last_step": -1,
                "last_epoch": 0,
                "resumed": 0,
                "skipped_batches": 0,
                "epochs": (config or {}).get("epochs"),
                "method": (config or {}).get("method"),
                "dataset": (config or {}).get("dataset"),
            }
            self.status.update(state="running", pid=os.getpid(), host=socket.gethostname(), error=None)
            self.steps = CsvAppender(out / STEPS)
            self.epochs = CsvAppender(out / EPOCHS)
            self.write_status()
        except BaseException:
            self._undo_start(created)
            raise

    def _undo_start(self, created: bool) -> None:
        """Take back what a failed start made (a full disk, a read-only folder): nothing half-made
        stays to block ``--out``, ``--resume`` or ``status``."""
        with contextlib.suppress(OSError):
            for name in (STATUS, CONFIG, MODEL, STEPS, EPOCHS):
                (self.out / name).unlink(missing_ok=True)
            if (self.out / CHECKPOINTS).is_dir() and not any((self.out / CHECKPOINTS).iterdir()):
                (self.out / CHECKPOINTS).rmdir()
        with contextlib.suppress(OSError):
            self.lock.release()
        if created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty

    # -- streaming -------------------------------------------------------------------
    def write_status(self) -> None:
        t = time.time()
        self.status.update(
            heartbeat=datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds"), heartbeat_unix=t
        )
        path = self.out / STATUS
        try:
            atomic.write_bytes(path, atomic.padded(self._status_bytes()))
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # a full disk: no temporary file can be made, but the padded file's own blocks can be rewritten
            error = self.status.get("error")
            try:
                if isinstance(error, str) and len(error) > ERROR_ROOM:
                    self.status["error"] = error[:ERROR_ROOM] + "…"
                atomic.overwrite_in_place(path, self._status_bytes())
            except OSError:
                raise err from None

    def _status_bytes(self) -> bytes:
        return (json.dumps(self.status, indent=2, default=str) + "\n").encode()

    def log_step(self, row: dict) -> None:
        """Buffer one step row; its device values (0-d tensors) stay there until the flush reads them all."""
        self._pending.append(row)
        self.status["last_step"] = row["step"]
        if row.get("skipped"):
            self.status["skipped_batches"] += 1
        if time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()

    def log_epoch(self, row: dict) -> None:
        self.flush(status=False)
        self.epochs.append([row])
        self.loggers.log_epoch(row)
        self.status["last_epoch"] = row["epoch"]
        self.write_status()

    def flush(self, status: bool = True) -> None:
        rows = rows_on_host(self._pending)  # one device→host copy for the whole flush
        self.steps.append(rows)
        self.loggers.log_steps(rows)  # host values, as written
        self._pending = []
        self._last_flush = time.monotonic()
        if status:
            self.write_status()

    def replace_rows(self, name: str, rows: list[dict], keys) -> None:
        """Rows of an analysis table ``<run>/<name>`` (sharpness.csv), replacing those with the same keys."""
        replace_rows(self.out / name, rows, keys)
        if name == "sharpness.csv":
            self.loggers.log_sharpness(rows)

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self, epoch: int, state: dict) -> None:
        """``checkpoints/epoch_NNNN.pt`` and its SHA-256 sidecar (msam_lab.runs.checkpoint_io)."""
        checkpoint_io.save(self.out / CHECKPOINTS / f"epoch_{epoch:04d}.pt", state)

    def drop_checkpoint(self, epoch: int) -> None:
        """Delete ``checkpoints/epoch_NNNN.pt`` (a selected epoch that a later, better one replaced)."""
        checkpoint_io.remove(self.out / CHECKPOINTS / f"epoch_{epoch:04d}.pt")

    def save_resume(self, state: dict) -> None:
        """The resume checkpoint; the step rows it covers are flushed first, so none is lost.

        The point it replaces is kept as ``resume.prev.pt`` (what a resume falls back to when
        ``resume.pt`` is damaged), unless that one is damaged itself: the first save after a resume
        that fell back checks it, later ones know it is their own."""
        self.flush(status=False)
        latest = self.out / CHECKPOINTS / RESUME
        if getattr(self, "_resume_is_ours", False) or checkpoint_io.intact(latest):
            checkpoint_io.rotate(latest, latest.with_name(PREVIOUS_RESUME))
        checkpoint_io.save(latest, state)
        self._resume_is_ours = True
        self.status["resume_point"] = {"step": state["position"]["step"], "epoch": state["position"]["epoch"]}
        self.write_status()

    def truncate(self, next_step: int, completed_epochs: int) -> None:
        """Drop the rows written after a resume point: steps >= ``next_step``, epochs > ``completed_epochs``."""
        kept = self.steps.keep(lambda r: int(r["step"]) < next_step)
        self.loggers.start_step = next_step  # a logger drops what it had from here on
        self.epochs.keep(lambda r: int(r["epoch"]) <= completed_epochs)
        self.status.update(
            last_step=next_step - 1,
            last_epoch=completed_epochs,
            skipped_batches=sum(int(float(r.get("skipped") or 0)) for r in kept),
        )

    # -- the end -------------------------------------------------------------------------
    def finish(self, summary: dict) -> None:
        self.flush(status=False)
        atomic.write_json(self.out / SUMMARY, summary)
        self.loggers.finish()  # the figures, from the tables just flushed
        self._close("finished")

    def fail(self, message: str) -> bool:
        """Mark the run failed and release the lock; False if a fault stopped that. The fault is not
        raised: the caller is already raising the error that made the run fail (a read-only disk takes
        the status too: the lock then stays, and readers report the run interrupted once this process
        is gone)."""
        try:
            self._close("failed", message)
        except OSError:
            return False
        return True

    def interrupt(self, message: str = "interrupted") -> None:
        with contextlib.suppress(OSError):
            self._close("interrupted", message)

    def _close(self, state: str, error: str | None = None) -> None:
        try:
            self.flush(status=False)
        except OSError:  # the disk that failed us; the status below may still get through
            pass
        self.loggers.close()
        self.status.update(state=state, error=error, ended=now_iso())
        try:
            self.write_status()
        finally:
            self.lock.release()
