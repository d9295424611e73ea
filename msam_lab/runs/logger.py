"""``RunLogger``: your own training loop writing msam_lab's run directory (docs/runs.md, docs/api.md).

    with msam_lab.RunLogger("runs/mine", modalities=("image", "audio"), config={"lr": 0.05}) as log:
        log.log_epoch(0, msam_lab.epoch_row(train=..., test=...))       # epoch 0: before training
        for epoch in range(1, epochs + 1):
            for inputs, labels in batches:
                log.log_step(opt.step(forward, labels))                 # a ShapleyRecord, or a dict
            log.log_epoch(epoch, msam_lab.epoch_row(train=..., test=...))
            log.checkpoint(epoch, model, opt)
    # leaving the block writes summary.json; an exception marks the run failed

The directory is the trainer's format (same files, columns and status states), so ``load_run``,
``compare``, the widgets and the notebooks read it. ``model.json`` records ``kind: logged``, the
modalities and ``scopes`` (modality -> submodule path, for per-encoder sharpness); the model itself
lives in your code, so landscapes and sharpness take a model factory and your forward
(``msam_lab.landscape.landscape_for_run(run, model_factory=..., forward=..., batches=...)``).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import time
from datetime import datetime, timezone

import torch

from msam_lab import faults
from msam_lab.config import ConfigError, check_loggers
from msam_lab.optim.msam import ShapleyRecord
from msam_lab.runs import checkpoint_io
from msam_lab.runs.reader import EPOCHS, LOGGED, STEPS, is_run_dir, read_table, run_state
from msam_lab.runs.selection import table_summary
from msam_lab.runs.writer import RunWriter

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _plain(config: dict) -> dict:
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError, RecursionError) as err:
        raise ConfigError(
            f"RunLogger config must hold plain values (numbers, strings, lists, dicts): "
            f"{str(err).splitlines()[0][:200]}"
        ) from None


class RunLogger:
    """Writes a run directory from a plain PyTorch loop: ``log_step``, ``log_epoch``, ``checkpoint``, ``close``.

    ``out``: a new (absent or empty) folder. ``modalities``: the names your forward understands.
    ``config``: your hyperparameters (plain JSON values), stored as ``config.json`` with ``method``,
    ``dataset``, ``seed`` and ``epochs`` beside them. ``scopes``: modality -> the submodule path of its
    encoder (e.g. ``{"image": "image_net"}``), so ``sharpness_for_run`` can measure each encoder.
    ``restart=True``: an interrupted or failed run already in ``out`` (a loop stopped midway) is
    deleted and started afresh; a finished or running one is never touched. ``loggers``: trackers fed as
    the run is written, e.g. ``["tensorboard"]`` (event files in ``<out>/tensorboard``; msam_lab.loggers).
    """

    def __init__(
        self,
        out,
        modalities,
        config: dict | None = None,
        *,
        method: str = "custom",
        dataset: str = "custom",
        seed: int = 0,
        epochs: int | None = None,
        scopes: dict | None = None,
        flush_every: float = 1.0,
        restart: bool = False,
        loggers=(),
    ):
        names = tuple(modalities) if not isinstance(modalities, str) else (modalities,)
        if (
            not names
            or len(set(names)) != len(names)
            or not all(isinstance(m, str) and _NAME.fullmatch(m) for m in names)
        ):
            raise ConfigError(
                f"modalities must be distinct plain names (letters, digits, _ . -), e.g. "
                f"('image', 'audio'); got {names!r}"
            )
        for label, value in (("method", method), ("dataset", dataset)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ConfigError(f"{label} must be a plain name (letters, digits, _ . -), got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
            raise ConfigError(f"epochs must be a non-negative int or None, got {epochs!r}")
        scopes = dict(scopes or {})
        unknown = sorted(set(scopes) - set(names))
        if unknown or not all(isinstance(v, str) and v for v in scopes.values()):
            raise ConfigError(
                f"scopes maps a modality to its encoder's submodule path, e.g. "
                f"{{'{names[0]}': 'encoders.{names[0]}'}}; got {scopes!r}"
            )
        self.modalities = names
        user = _plain(config or {})
        loggers = check_loggers(list(loggers) if isinstance(loggers, tuple) else loggers)
        reserved = sorted({"method", "dataset", "seed", "epochs", "loggers"} & set(user))
        if reserved:
            raise ConfigError(
                f"config key {reserved[0]!r} is a RunLogger argument; pass RunLogger(..., {reserved[0]}=...) instead"
            )
        self.config = {**user, "method": method, "dataset": dataset, "seed": seed, "epochs": epochs}
        if loggers:  # config.json says which, as a trainer's does (the run writer opens them)
            self.config["loggers"] = loggers
        spec = {"kind": LOGGED, "modalities": list(names), "scopes": scopes}
        if restart and is_run_dir(out) and run_state(out) in ("interrupted", "failed"):
            shutil.rmtree(out)  # only after every argument checked: bad input deletes nothing
        self.writer = RunWriter(out, self.config, spec, flush_every=flush_every)
        self.out = self.writer.out
        self.step = 0  # the next step row's number
        self.epoch = 0  # the last logged epoch; step rows belong to epoch + 1
        self.n_parameters: int | None = None
        self.closed = False
        self._last_epoch: int | None = None
        self._started = time.perf_counter()

    # -- rows ------------------------------------------------------------------------------------
    def log_step(self, record: ShapleyRecord | dict | None = None, **values) -> dict:
        """One row of steps.csv: ``step`` and ``epoch`` numbered for you, then the record's ``loss``,
        ``dominant``, ``shapley_<m>``, ``share_<m>`` (from a ShapleyRecord), then ``values``."""
        self._check_open()
        row = {"step": self.step, "epoch": self.epoch + 1}
        if isinstance(record, ShapleyRecord):
            self._check_modalities(record.shares, "the record's")
            row.update(loss=record.loss, dominant=record.dominant)
            row.update({f"shapley_{m}": record.shapley[m] for m in self.modalities})
            row.update({f"share_{m}": record.shares[m] for m in self.modalities})
            if record.overflow:
                row["overflow"] = 1
        elif record is not None:
            row.update(dict(record))
        row.update(values)
        if row.get("dominant") is not None and row["dominant"] not in self.modalities:
            raise ValueError(f"dominant {row['dominant']!r} is not one of the logger's modalities {self.modalities}")
        self.writer.log_step(row)
        self.step = int(row["step"]) + 1
        return row

    def log_epoch(self, epoch: int, row: dict | None = None, **values) -> dict:
        """One row of epochs.csv for ``epoch`` (0: before training), e.g. ``msam_lab.epoch_row(...)``;
        ``wall_time`` is added. Epochs must increase."""
        self._check_open()
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if self._last_epoch is not None and epoch <= self._last_epoch:
            raise ValueError(f"epoch {epoch} comes after epoch {self._last_epoch}; epochs must increase")
        full = {"epoch": epoch, **(row or {}), **values, "wall_time": self.wall_time()}
        self.writer.log_epoch(full)
        self.epoch = self._last_epoch = epoch
        return full

    def checkpoint(self, epoch: int, model: torch.nn.Module, optimizer=None, **extra) -> None:
        """``checkpoints/epoch_NNNN.pt`` with the model's state dict (and the optimizer's), written atomically
        with its SHA-256 (msam_lab.runs.checkpoint_io). ``extra`` values must be tensors, numbers, strings or
        dicts / lists of them: what a run folder can be read back with, without running code."""
        self._check_open()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"checkpoint needs the model (an nn.Module), got {type(model).__name__}")
        for key, value in extra.items():
            checkpoint_io.check_plain(value, f"checkpoint {key}=")
        state = {"epoch": int(epoch), "model": model.state_dict(), **extra}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        self.writer.checkpoint(int(epoch), state)
        self.n_parameters = sum(p.numel() for p in model.parameters())

    def wall_time(self) -> float:
        return time.perf_counter() - self._started

    # -- the end ------------------------------------------------------------------------------------
    def close(self, **summary) -> dict:
        """Write summary.json (the trainer's keys, from the tables; ``summary`` adds or overrides) and
        mark the run finished. Needs at least one logged epoch."""
        self._check_open()
        self.writer.flush(status=False)
        epochs = read_table(self.out / EPOCHS)
        if epochs.empty:
            raise ValueError("close() needs at least one log_epoch row (the tables compare and the widgets read)")
        full = {
            "method": self.config["method"],
            "dataset": self.config["dataset"],
            "seed": self.config["seed"],
            "epochs": self.config["epochs"] if self.config["epochs"] is not None else self.epoch,
            "steps": self.step,
            "wall_time": self.wall_time(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_parameters": self.n_parameters,
            "skipped_batches": 0,
            "resumed": 0,
            "logged": True,
            **table_summary(read_table(self.out / STEPS), epochs),
            **summary,
        }
        self.writer.finish(full)
        self.closed = True
        return full

    def fail(self, message: str) -> None:
        """Mark the run failed (its rows and checkpoints stay readable)."""
        if not self.closed:
            self.writer.fail(message)
            self.closed = True

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if self.closed:
            return False
        if kind is None:
            self.close()
        elif issubclass(kind, KeyboardInterrupt):
            self.writer.interrupt(f"interrupted at step {self.step}")
            self.closed = True
        else:
            self.fail(faults.describe(err) if isinstance(err, OSError) else f"{kind.__name__}: {err}")
        return False

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"the run {self.out} is already closed; start a new RunLogger")

    def _check_modalities(self, keys, what: str) -> None:
        if set(keys) != set(self.modalities):
            raise ValueError(f"{what} modalities {sorted(keys)} differ from the logger's {list(self.modalities)}")
