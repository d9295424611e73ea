"""The run directory: what a training run leaves behind, read back by ``load_run``.

Layout of ``<run>/`` (docs/runs.md)::

    status.json        state (running | finished | failed | interrupted), pid, host, heartbeat, progress
    lock               pid and host of the trainer writing it (only while one does)
    config.json        resolved Config
    model.json         what ``build_model`` needs (shapes, classes, encoders)
    steps.csv          one row per optimisation step, appended while training
    epochs.csv         one row per evaluated epoch (epoch 0 = before training), appended at epoch ends
    summary.json       final numbers; its presence marks a finished run
    checkpoints/epoch_NNNN.pt   model, method (optimizer) and RNG state, for analysis
    checkpoints/resume.pt       everything a resume needs (msam_lab.training.resume)

The writer is ``msam_lab.runs.writer``. A run is readable from its first step: ``load_run`` opens
running and stopped runs too, and ``Run.state`` says which.

A run written from your own loop by ``msam_lab.RunLogger`` has the same files; its ``model.json``
says ``"kind": "logged"`` (``Run.logged``) and holds the modalities instead of a model spec, so its
model is rebuilt by a factory you pass (``run.load_model(epoch, factory=MyModel)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from msam_lab.config import Config, ConfigError, _check_type, field_names
from msam_lab.datasets import load_dataset
from msam_lab.models.multimodal import MultimodalModel, model_from_spec
from msam_lab.runs import checkpoint_io, migrate, surfaces

# the layout and the small-file readers live in layout (torch-free, for msam-lab status); every name
# is re-exported here, so `from msam_lab.runs.reader import read_status` keeps working
from msam_lab.runs.layout import (  # noqa: F401
    CHECKPOINTS,
    CONFIG,
    EPOCHS,
    JSON_LIMIT,
    LOGGED,
    MODEL,
    PREVIOUS_RESUME,
    RESUME,
    STATES,
    STATUS,
    STEPS,
    SUMMARY,
    RunFileError,
    _is_int,
    _is_number,
    _short,
    complete_lines,
    find_runs,
    is_run,
    is_run_dir,
    read_json,
    read_status,
    read_table,
    run_state,
)
from msam_lab.runs.lock import LOCK, read_lock


def check_output_dir(out) -> Path:
    """Raise ConfigError unless ``out`` can receive a new run: absent, an empty folder, or what a
    start that never took a step left there (``start_leftovers``: the new run replaces it)."""
    out = Path(out)
    if start_leftovers(out):
        return out
    if is_run_dir(out):
        state = run_state(out)
        hint = (
            "resume it with `msam-lab train --resume` or choose another --out"
            if state in ("failed", "interrupted")
            else "choose another --out or delete it"
        )
        raise ConfigError(f"output directory {out} already holds a {state} run; {hint}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty; choose another --out")
    return out


def start_leftovers(out) -> list[Path] | None:
    """What a start that never took a step left in ``out``, for a new run to replace; None when ``out``
    holds anything else (or nothing).

    Either no status.json (a full disk or a kill as the run started) and only a lock whose trainer is
    gone, config.json, model.json, a checkpoints/ folder without checkpoints and temporary files; or
    a failed or interrupted run that took no step (status ``last_step`` -1, no step row: it failed in
    the epoch-0 evaluation) holding only a run's own files. Nothing there is a symlink.
    """
    out = Path(out)
    try:
        entries = list(out.iterdir()) if out.is_dir() else []
    except OSError:
        return None
    if not entries:
        return None
    started = (out / STATUS).exists() or (out / STATUS).is_symlink()
    try:
        if started:
            status = read_status(out)
            if status.get("state") not in ("failed", "interrupted") or status.get("last_step", 0) != -1:
                return None
            if (out / STEPS).exists() and len(complete_lines(out / STEPS).splitlines()) > 1:
                return None
        else:
            lock = read_lock(out)
            if lock is not None and lock.alive():
                return None  # a trainer starting there right now
    except (OSError, ValueError):  # damaged files: not ours to replace
        return None
    allowed = {LOCK, CONFIG, MODEL, CHECKPOINTS} | (
        {STATUS, STEPS, EPOCHS, "sharpness.csv", ".sharpness.csv.lock"} if started else set()
    )
    for p in entries:
        temporary = p.name.startswith(".") and ".tmp-" in p.name
        if p.is_symlink() or not (temporary or p.name in allowed):
            return None
        if p.name == CHECKPOINTS:
            inner = list(p.iterdir()) if p.is_dir() else None
            if inner is None or any(q.is_symlink() or not q.is_file() for q in inner):
                return None
            if not started and any(not q.name.startswith(".") for q in inner):
                return None
        elif not p.is_file():
            return None
    return entries


@dataclass
class Run:
    """A run read back: ``config``, ``steps``, ``epochs`` (DataFrames), ``summary`` ({} until it finishes),
    ``status`` (status.json; ``state`` is one of ``STATES``). ``reload()`` reads it again."""

    path: Path
    config: Config
    steps: pd.DataFrame
    epochs: pd.DataFrame
    summary: dict
    model_spec: dict = field(repr=False, default_factory=dict)
    status: dict = field(repr=False, default_factory=dict)
    raw_config: dict = field(repr=False, default_factory=dict)  # config.json as stored

    @property
    def logged(self) -> bool:
        """True for a run written by msam_lab.RunLogger from a model msam_lab did not build."""
        return self.model_spec.get("kind") == LOGGED

    @property
    def state(self) -> str:
        return self.status.get("state", "finished" if self.summary else "running")

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    def reload(self) -> "Run":
        """This run read again from disk (a running run has grown meanwhile)."""
        return load_run(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def modalities(self) -> tuple[str, ...]:
        if self.logged:
            return tuple(self.model_spec["modalities"])
        return tuple(self.model_spec["input_shapes"])

    @property
    def checkpoints(self) -> dict[int, Path]:
        """Saved epochs -> checkpoint file, in epoch order (other names in checkpoints/ are not epochs)."""
        found = {}
        for f in (self.path / CHECKPOINTS).glob("epoch_*.pt"):
            match = _EPOCH_FILE.fullmatch(f.name)
            if match:
                found[int(match.group(1))] = f
        return dict(sorted(found.items()))

    def build_model(self, factory=None):
        """A fresh (untrained) model of this run's architecture; a logged run's from ``factory()``."""
        if self.logged:
            if factory is None:
                raise ValueError(
                    f"run {self.path} was logged from your own model (msam_lab.RunLogger): pass "
                    f"factory=<a function returning a fresh model> to rebuild it"
                )
            return factory()
        if factory is not None:
            raise ValueError(f"run {self.path} was trained by msam_lab, which rebuilds its model itself; drop factory=")
        try:
            return model_from_spec(migrate.model_spec(self.model_spec))
        # what a spec of wrong values raises while the layers are built (sizes, kinds, missing keys)
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise RunFileError(
                f"{self.path / MODEL}: does not describe a model msam_lab can build "
                f"({type(err).__name__}: {first}; damaged)"
            ) from None

    def load_checkpoint(self, epoch: int | None = None, map_location="cpu") -> dict:
        """The checkpoint dict of ``epoch`` (default: the last one)."""
        ckpts = self.checkpoints
        if not ckpts:
            raise FileNotFoundError(f"run {self.path} has no checkpoints")
        epoch = max(ckpts) if epoch is None else epoch
        if epoch not in ckpts:
            raise KeyError(f"run {self.path} has no checkpoint for epoch {epoch}; saved: {sorted(ckpts)}")
        state = checkpoint_io.load(ckpts[epoch], map_location=map_location)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise RunFileError(f"{ckpts[epoch]}: not a checkpoint (no model state dict in it; damaged)")
        return state

    def load_model(self, epoch: int | None = None, device="cpu", factory=None) -> MultimodalModel:
        """The model with the weights of ``epoch`` (default: last), in eval mode (``factory``: see build_model)."""
        model = self.build_model(factory)
        if epoch is None and self.checkpoints:
            epoch = max(self.checkpoints)
        weights = self.load_checkpoint(epoch)["model"]
        try:
            model.load_state_dict(weights)
        # missing or unexpected keys, a tensor of another shape, a value that is no tensor
        except (RuntimeError, TypeError, AttributeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise RunFileError(
                f"{self.checkpoints[epoch]}: its weights do not fit the model {self.path / MODEL} "
                f"describes ({first}; one of them is damaged, or from another run)"
            ) from None
        return model.to(device).eval()

    @property
    def landscapes(self) -> dict[str, Path]:
        """Saved loss surfaces of this run: name -> folder (see msam_lab.landscape)."""
        return surfaces.list_landscapes(self.path)

    def load_landscape(self, name: str):
        """The saved surface ``name`` (a msam_lab.runs.surfaces.Surface)."""
        return surfaces.load_landscape(self.path, name)

    def load_data(self, device="cpu"):
        """The run's dataset splits (regenerated or read from the cache)."""
        if self.logged:
            raise ValueError(
                f"run {self.path} was logged from your own loop (msam_lab.RunLogger); its data "
                f"lives in your code, not in msam_lab"
            )

        return load_dataset(self.config.dataset, **self.config.data).to(device)


def load_run(path) -> Run:
    """Read a run directory: finished, running, failed or interrupted (``Run.state`` says which).

    Nothing read executes code (checkpoints load weights-only, msam_lab.runs.checkpoint_io). A damaged
    file (status, config, model, summary, a table) is a RunFileError naming it; so is a checkpoint
    when ``load_checkpoint`` / ``load_model`` reads it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    if not is_run_dir(path):
        raise FileNotFoundError(f"{path} is not a run directory (no {STATUS}); train one with `msam-lab train`")
    status = read_status(path)
    raw = read_json(path / CONFIG)
    spec = _check_spec(path / MODEL, read_json(path / MODEL))
    summary = read_json(path / SUMMARY) if is_run(path) else {}
    return Run(
        path=path,
        config=_config_of(path / CONFIG, raw, spec),
        steps=read_table(path / STEPS),
        epochs=read_table(path / EPOCHS),
        summary=summary,
        model_spec=spec,
        status=status,
        raw_config=raw,
    )


_EPOCH_FILE = re.compile(r"epoch_(\d{1,9})\.pt")


def _check_spec(file: Path, spec: dict) -> dict:
    """model.json's shape: what ``modalities`` and ``build_model`` read (a wrong value fails there, named)."""
    if spec.get("kind") == LOGGED:
        names = spec.get("modalities")
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(m, str) for m in names)
            or not isinstance(spec.get("scopes", {}), dict)
        ):
            raise RunFileError(
                f"{file}: a logged run's model.json needs modalities (a list of names) and scopes (a mapping; damaged)"
            )
        return spec
    shapes = spec.get("input_shapes")
    if (
        not isinstance(shapes, dict)
        or not shapes
        or not all(
            isinstance(m, str) and isinstance(s, list) and all(_is_int(n) and n > 0 for n in s)
            for m, s in shapes.items()
        )
    ):
        raise RunFileError(f"{file}: input_shapes must map each modality to its shape (positive integers; damaged)")
    for key in ("num_classes", "feature_dim", "hidden_dim"):
        if key in spec and not (_is_int(spec[key]) and spec[key] > 0):
            raise RunFileError(f"{file}: {key} must be a positive integer, got {_short(spec[key])} (damaged)")
    return spec


def summary_number(run: "Run", key: str, default=None):
    """``summary.json``'s number ``key`` (``default`` where absent or null); RunFileError naming the
    file when it holds something else there."""
    value = run.summary.get(key)
    if value is None:
        return default
    if not (_is_int(value) or isinstance(value, float)):
        raise RunFileError(f"{run.path / SUMMARY}: {key} must be a number, got {_short(value)} (damaged)")
    return value


def _config_of(file: Path, raw: dict, spec: dict) -> Config:
    """The run's Config. A logged run's config.json is yours: the Config holds the keys of it that
    are Config fields (method, dataset, seed, epochs and any you share) and defaults for the rest.

    Each stored value must have its field's type (config._check_type); the stored config is not
    validated against today's choices (a plug-in may be missing, an old run's values older rules)."""
    try:
        if spec.get("kind") != LOGGED:
            config = migrate.stored_config(raw)
        else:
            known = set(field_names())
            config = Config(**{k: v for k, v in raw.items() if k in known and v is not None})
        for name, annotation in ((f, Config.__dataclass_fields__[f].type) for f in field_names()):
            setattr(config, name, _check_type(name, getattr(config, name), annotation))
    except ConfigError as err:
        raise RunFileError(f"{file}: not a valid stored config ({err}; damaged)") from None
    return config
