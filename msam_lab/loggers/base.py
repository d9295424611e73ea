"""The logger interface: what a run hands a tracker, and the four primitives a backend writes it with.

A run gives every logger the same calls, live (the run writer) or from disk (``msam-lab export``):

    log_config(config, modalities)   once, at the start: hyperparameters, and the modality names
    log_steps(rows)                  steps.csv rows, as they are written (x: the step)
    log_epoch(row)                   one epochs.csv row (x: the epoch; 0 is before training)
    log_sharpness(rows)              sharpness.csv rows (x: the epoch)
    finish(run_dir)                  at the end: the dominance and curve figures, as images; then close()

Every number of a row becomes one scalar named ``steps/<column>``, ``epochs/<column>`` or
``sharpness/<split>/<scope>/<column>``; a column whose value is a modality's name (``dominant``,
``test_dominant``, ``perturbed``) becomes ``<column>_index``, the modality's position in the list that
``log_config`` writes as the text ``modalities``. So a row and its scalars map one to one, and a run
trained with a logger and one exported afterwards read back the same.

A backend subclasses :class:`Logger` and writes ``scalars``, ``text``, ``hparams``, ``images`` and
``close`` (msam_lab/loggers/tensorboard.py, wandb.py).
"""

from __future__ import annotations

import json
import math

STEP_AXIS, EPOCH_AXIS = "step", "epoch"
# sharpness.csv columns that are settings of a measurement, not measures (its keys and its budget)
SHARPNESS_SETTINGS = ("epoch", "split", "scope", "n_samples", "subset_seed", "seed", "topk", "probes", "n_parameters")


def scalar(value) -> float | None:
    """A cell as a number: a Python or numpy number, a 0-d tensor, or text that reads as one (a CSV
    cell); None for anything else (empty cells, names)."""
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    item = getattr(value, "item", None)  # numpy scalars, 0-d tensors
    if callable(item):
        try:
            return scalar(item())
        except (TypeError, ValueError, RuntimeError):  # an array of more than one value
            return None
    return None


def row_scalars(row: dict, modalities, skip=()) -> dict[str, float]:
    """``{column: number}`` of one table row: its numbers, and ``<column>_index`` for a modality name."""
    out = {}
    for key, value in row.items():
        if key in skip:
            continue
        number = scalar(value)
        if number is not None:
            out[key] = number
        elif isinstance(value, str) and value in modalities:
            out[f"{key}_index"] = float(modalities.index(value))
    return out


def modalities_of(spec: dict | None) -> tuple[str, ...]:
    """A model.json's modalities, in order: a logged run's list, or the trainer's input shapes."""
    spec = spec or {}
    names = spec.get("modalities") or list(spec.get("input_shapes") or {})
    return tuple(str(n) for n in names)


def hparam_value(value):
    """A config value as a hyperparameter: numbers, strings and booleans as they are, anything else
    (None, lists, dicts) as its JSON text."""
    if isinstance(value, (bool, int, float, str)) and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


class Logger:
    """A tracker a run writes to. Subclasses write the five primitives below; the rest is shared."""

    modalities: tuple[str, ...] = ()

    # -- the primitives a backend writes ----------------------------------------------------
    def scalars(self, values: dict[str, float], axis: str, at: int) -> None:
        """``values`` (tag -> number) at x = ``at`` of ``axis`` (``step`` or ``epoch``)."""
        raise NotImplementedError

    def text(self, tag: str, text: str) -> None:
        raise NotImplementedError

    def hparams(self, params: dict, metrics: tuple[str, ...]) -> None:
        """The run's hyperparameters (``hparam_value``s); ``metrics``: scalar tags that judge the run."""
        raise NotImplementedError

    def images(self, images: dict, at: int) -> None:
        """``images``: name -> an HxWx3 uint8 array (figures drawn by msam_lab.loggers.figures)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- what a run calls -------------------------------------------------------------------
    def log_config(self, config: dict, modalities) -> None:
        self.modalities = tuple(modalities)
        params = {k: hparam_value(v) for k, v in sorted((config or {}).items())}
        self.hparams(params, ("epochs/test_acc", "epochs/val_acc", "epochs/tau"))
        self.text("config", "```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```")
        self.text("modalities", ", ".join(f"{i}: {m}" for i, m in enumerate(self.modalities)))

    def log_steps(self, rows) -> None:
        for row in rows:
            at = scalar(row.get("step"))
            if at is not None:
                values = row_scalars(row, self.modalities, skip=("step",))
                self.scalars({f"steps/{k}": v for k, v in values.items()}, STEP_AXIS, int(at))

    def log_epoch(self, row: dict) -> None:
        at = scalar(row.get("epoch"))
        if at is not None:
            values = row_scalars(row, self.modalities, skip=("epoch",))
            self.scalars({f"epochs/{k}": v for k, v in values.items()}, EPOCH_AXIS, int(at))

    def log_sharpness(self, rows) -> None:
        for row in rows:
            at = scalar(row.get("epoch"))
            if at is None:
                continue
            where = "/".join(str(row.get(k) or "-") for k in ("split", "scope"))
            values = row_scalars(row, (), skip=SHARPNESS_SETTINGS)
            self.scalars({f"sharpness/{where}/{k}": v for k, v in values.items()}, EPOCH_AXIS, int(at))

    def finish(self, run_dir) -> None:
        """The figures of the finished run, then close."""
        from msam_lab.loggers.figures import run_images  # noqa: PLC0415 - matplotlib and pandas: at the end only

        images, last_step = run_images(run_dir, self.modalities)
        if images:
            self.images(images, last_step)
        self.close()
