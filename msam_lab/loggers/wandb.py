"""Weights & Biases, offline by default: a run in ``<run>/wandb/`` (``wandb sync`` uploads it later;
``WANDB_MODE=online`` logs live). Steps and epochs are two x-axes (``define_metric``)."""

from __future__ import annotations

import os
from pathlib import Path

import wandb

from msam_lab.loggers.base import EPOCH_AXIS, STEP_AXIS, Logger


class WandbLogger(Logger):
    def __init__(self, folder, run_name: str, start_step: int | None = None):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            dir=str(folder),
            name=run_name,
            project=os.environ.get("WANDB_PROJECT", "msam-lab"),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",  # several runs in one process (a sweep, a notebook)
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        for axis, prefixes in ((STEP_AXIS, ("steps/*",)), (EPOCH_AXIS, ("epochs/*", "sharpness/*"))):
            self.run.define_metric(axis)
            for prefix in prefixes:
                self.run.define_metric(prefix, step_metric=axis)

    def scalars(self, values, axis, at):
        self.run.log({**values, axis: at})

    def text(self, tag, text):
        self.run.summary[f"text/{tag}"] = text

    def hparams(self, params, metrics):
        self.run.config.update(params, allow_val_change=True)

    def images(self, images, at):
        self.run.log({f"figures/{name}": wandb.Image(rgb) for name, rgb in images.items()})

    def close(self):
        self.run.finish()
