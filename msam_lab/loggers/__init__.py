"""Experiment trackers fed from a run's tables: TensorBoard, Weights & Biases (docs/integrations.md, "Loggers").

``loggers: [tensorboard]`` in a config (or ``RunLogger(..., loggers=["tensorboard"])``) makes the run writer
(msam_lab.runs.writer, rank 0 only) hand every step row, epoch row and sharpness row to each named logger as
it writes them to disk, the config as hyperparameters at the start, and the dominance and curve figures at
the end. ``msam-lab export RUN... --tensorboard DIR`` replays a run already on disk the same way.

A backend is one short module: a :class:`msam_lab.loggers.base.Logger` with four primitives (scalars, text,
hyperparameters, images); the rows are translated into them once, in ``base``. This package imports only
the standard library and the config here, so the run writer can import it without loading a backend.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import typing
import warnings
from pathlib import Path

from msam_lab.config import LoggerName, check_loggers
from msam_lab.loggers.base import modalities_of

NAMES = typing.get_args(LoggerName)  # tensorboard, wandb
# name -> (the package it needs, the pip extra that installs it, the folder it writes in the run)
NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
FOLDERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_available(names) -> list[str]:
    """``names`` checked (ConfigError: unknown name, with a did-you-mean; or its package missing, with the
    pip line), before a run writes anything."""
    names = check_loggers(names)
    for name in names:
        package, extra = NEEDS[name]
        if importlib.util.find_spec(package) is None:
            from msam_lab.errors import ConfigError  # noqa: PLC0415 - only on this error path

            raise ConfigError(f"loggers: {name} needs the {package} package: pip install 'msam-lab[{extra}]'")
    return names


def open_logger(name: str, run_dir, *, start_step: int | None = None, target=None):
    """The backend ``name`` writing for the run ``run_dir`` (into ``target``, default its folder in the run).

    ``start_step``: a resumed run's first step; what an earlier process logged from there on is dropped
    (TensorBoard's purge_step) because the resume does those steps again."""
    check_available([name])
    folder = Path(target) if target is not None else Path(run_dir) / FOLDERS[name]
    if name == "tensorboard":
        from msam_lab.loggers.tensorboard import TensorBoardLogger  # noqa: PLC0415 - torch's SummaryWriter: when used

        return TensorBoardLogger(folder, start_step=start_step)
    from msam_lab.loggers.wandb import WandbLogger  # noqa: PLC0415 - wandb loads slowly: only when used

    # wandb makes its own wandb/ folder in the one it is given
    return WandbLogger(folder.parent if target is None else folder, run_name=Path(run_dir).name, start_step=start_step)


class LoggerGroup:
    """The run writer's loggers: opened on first use (a resume says first where it restarts), each given
    the config first. A logger that fails is dropped with one warning and the run goes on: the run
    folder keeps every row, and ``msam-lab export`` writes them again later."""

    def __init__(self, names, run_dir, config: dict | None, spec: dict | None):
        self.names = check_loggers(names)
        self.run_dir = Path(run_dir)
        self.config = dict(config or {})
        self.modalities = modalities_of(spec)
        self.start_step: int | None = None
        self._open: list | None = None

    def __bool__(self) -> bool:
        return bool(self.names)

    def _loggers(self) -> list:
        if self._open is None:
            self._open = []
            for name in self.names:
                try:
                    logger = open_logger(name, self.run_dir, start_step=self.start_step)
                    logger.log_config(self.config, self.modalities)
                except Exception as err:  # noqa: BLE001 - a tracker's failure must not stop training
                    self._dropped(name, err)
                else:
                    self._open.append((name, logger))
        return self._open

    def _each(self, method: str, *args) -> None:
        if not self.names:
            return
        for name, logger in list(self._loggers()):
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker's failure must not stop training
                self._open.remove((name, logger))
                self._dropped(name, err)

    def _dropped(self, name: str, err: Exception) -> None:
        first = (str(err).splitlines() or [""])[0][:300]
        warnings.warn(
            f"msam_lab: the {name} logger stopped ({type(err).__name__}: {first}); the run goes on and keeps "
            f"every row: `msam-lab export {self.run_dir} --tensorboard DIR` writes them later",
            RuntimeWarning,
            stacklevel=4,
        )

    def log_steps(self, rows) -> None:
        if rows:
            self._each("log_steps", rows)

    def log_epoch(self, row: dict) -> None:
        self._each("log_epoch", row)

    def log_sharpness(self, rows) -> None:
        self._each("log_sharpness", rows)

    def finish(self) -> None:
        """The figures, then close."""
        self._each("finish", self.run_dir)
        self._open = []

    def close(self) -> None:
        """Close without figures (a failed or interrupted run): what was logged is flushed."""
        if self._open:
            self._each("close")
        self._open = []


def replay(run_dir, logger) -> dict:
    """Hand a run already on disk to ``logger`` (a ``base.Logger``), as its trainer would have: the config,
    every step, epoch and sharpness row, the figures. Returns how many rows of each it read."""
    from msam_lab.runs.layout import CONFIG, EPOCHS, MODEL, STEPS, complete_lines, read_json  # noqa: PLC0415 - pandas: for export, not for the writer's import

    run_dir = Path(run_dir)

    def rows(name: str) -> list[dict]:
        path = run_dir / name
        return list(csv.DictReader(io.StringIO(complete_lines(path)))) if path.is_file() else []

    config = {k: v for k, v in read_json(run_dir / CONFIG).items() if k != "format_version"}
    logger.log_config(config, modalities_of(read_json(run_dir / MODEL)))
    steps, epochs, sharpness = rows(STEPS), rows(EPOCHS), rows("sharpness.csv")
    logger.log_steps(steps)
    for row in epochs:
        logger.log_epoch(row)
    logger.log_sharpness(sharpness)
    logger.finish(run_dir)
    return {"steps": len(steps), "epochs": len(epochs), "sharpness": len(sharpness)}
