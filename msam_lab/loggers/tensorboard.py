"""TensorBoard: event files in ``<run>/tensorboard/`` (``tensorboard --logdir runs/`` shows every run)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from msam_lab.loggers.base import Logger


class TensorBoardLogger(Logger):
    def __init__(self, folder, start_step: int | None = None):
        # purge_step: TensorBoard drops what an earlier process logged from a resumed run's first step on
        self.writer = SummaryWriter(str(Path(folder)), purge_step=start_step, flush_secs=30)

    def scalars(self, values, axis, at):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, at)

    def text(self, tag, text):
        self.writer.add_text(tag, text, 0)

    def hparams(self, params, metrics):
        # the HParams dashboard's three records, in this writer's file; the metrics are scalar tags logged anyway
        for record in hparams(params, dict.fromkeys(metrics, 0.0)):
            self.writer.file_writer.add_summary(record)

    def images(self, images, at):
        for name, rgb in images.items():
            self.writer.add_image(f"figures/{name}", rgb, at, dataformats="HWC")

    def close(self):
        self.writer.close()
