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
    checkpoints/resume.pt       everything a resume needs (msam_lab.resume)

The writer is ``msam_lab.run_writer``. A run is readable from its first step: ``load_run`` opens
running and stopped runs too, and ``Run.state`` says which.

A run written from your own loop by ``msam_lab.RunLogger`` has the same files; its ``model.json``
says ``"kind": "logged"`` (``Run.logged``) and holds the modalities instead of a model spec, so its
model is rebuilt by a factory you pass (``run.load_model(epoch, factory=MyModel)``).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .config import Config, ConfigError, field_names, from_stored
from .models import MultimodalModel, model_from_spec
from .run_lock import read_lock

STATUS, SUMMARY, CONFIG, MODEL = "status.json", "summary.json", "config.json", "model.json"
STEPS, EPOCHS, CHECKPOINTS, RESUME = "steps.csv", "epochs.csv", "checkpoints", "resume.pt"
STATES = ("running", "finished", "failed", "interrupted")
LOGGED = "logged"          # model.json "kind" of a run written by msam_lab.RunLogger


def is_run(path) -> bool:
    """True for a *finished* run (its summary.json exists)."""
    return (Path(path) / SUMMARY).is_file()


def is_run_dir(path) -> bool:
    """True for any run directory, finished or not."""
    path = Path(path)
    return (path / STATUS).is_file() or is_run(path)


def read_status(path) -> dict:
    """``status.json`` as written, with ``state`` corrected for a trainer that died without saying so.

    A run that says ``running`` but whose lock is stale (its pid is gone) was killed: it reads as
    ``interrupted`` with ``stale_lock`` naming the dead trainer.
    """
    path = Path(path)
    try:
        status = json.loads((path / STATUS).read_text())
    except FileNotFoundError:
        if is_run(path):          # a run written before status.json existed
            return {"state": "finished"}
        raise FileNotFoundError(f"no run directory at {path} (no {STATUS}); train one with `msam-lab train`") from None
    if status.get("state") == "running":
        lock = read_lock(path)
        if lock is None or not lock.alive(status.get("heartbeat_unix")):
            status["stale_lock"] = "no lock" if lock is None else f"{lock.describe()} is gone"
            status["state"] = "interrupted"
    return status


def run_state(path) -> str:
    return read_status(path)["state"]


def check_output_dir(out) -> Path:
    """Raise ConfigError unless ``out`` can receive a new run (absent or an empty folder)."""
    out = Path(out)
    if is_run_dir(out):
        state = run_state(out)
        hint = "resume it with `msam-lab train --resume` or choose another --out" \
            if state in ("failed", "interrupted") else "choose another --out or delete it"
        raise ConfigError(f"output directory {out} already holds a {state} run; {hint}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty; choose another --out")
    return out


def complete_lines(path: Path) -> str:
    """The text of a file the trainer appends to, without a torn last line (a kill mid-write)."""
    text = path.read_text()
    return text if text.endswith("\n") else text[:text.rfind("\n") + 1]


def read_table(path: Path) -> pd.DataFrame:
    """A CSV the trainer appends to, as complete rows."""
    try:
        text = complete_lines(path)
    except FileNotFoundError:
        return pd.DataFrame()
    if not text.strip():
        return pd.DataFrame()
    return pd.read_csv(io.StringIO(text))


def find_runs(paths) -> list[Path]:
    """Run directories among ``paths``: each is a run or a folder searched (recursively) for runs."""
    found = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(q.parent for q in p.rglob(STATUS) if not q.parent.name.startswith(".")))
            found.extend(sorted(q.parent for q in p.rglob(SUMMARY)
                                if not (q.parent / STATUS).exists() and not q.parent.name.startswith(".")))
    return list(dict.fromkeys(found))


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
    raw_config: dict = field(repr=False, default_factory=dict)   # config.json as stored

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
        """Saved epochs -> checkpoint file, in epoch order."""
        files = sorted((self.path / CHECKPOINTS).glob("epoch_*.pt"))
        return {int(f.stem.split("_")[1]): f for f in files}

    def build_model(self, factory=None):
        """A fresh (untrained) model of this run's architecture; a logged run's from ``factory()``."""
        if self.logged:
            if factory is None:
                raise ValueError(f"run {self.path} was logged from your own model (msam_lab.RunLogger): pass "
                                 f"factory=<a function returning a fresh model> to rebuild it")
            return factory()
        if factory is not None:
            raise ValueError(f"run {self.path} was trained by msam_lab, which rebuilds its model itself; "
                             f"drop factory=")
        return model_from_spec(self.model_spec)

    def load_checkpoint(self, epoch: int | None = None, map_location="cpu") -> dict:
        """The checkpoint dict of ``epoch`` (default: the last one)."""
        ckpts = self.checkpoints
        if not ckpts:
            raise FileNotFoundError(f"run {self.path} has no checkpoints")
        epoch = max(ckpts) if epoch is None else epoch
        if epoch not in ckpts:
            raise KeyError(f"run {self.path} has no checkpoint for epoch {epoch}; saved: {sorted(ckpts)}")
        return torch.load(ckpts[epoch], map_location=map_location, weights_only=False)

    def load_model(self, epoch: int | None = None, device="cpu", factory=None) -> MultimodalModel:
        """The model with the weights of ``epoch`` (default: last), in eval mode (``factory``: see build_model)."""
        model = self.build_model(factory)
        model.load_state_dict(self.load_checkpoint(epoch)["model"])
        return model.to(device).eval()

    @property
    def landscapes(self) -> dict[str, Path]:
        """Saved loss surfaces of this run: name -> folder (see msam_lab.landscape)."""
        from .landscape import list_landscapes
        return list_landscapes(self.path)

    def load_landscape(self, name: str):
        """The saved surface ``name`` (a msam_lab.landscape.Surface)."""
        from .landscape import load_landscape
        return load_landscape(self.path, name)

    def load_data(self, device="cpu"):
        """The run's dataset splits (regenerated or read from the cache)."""
        if self.logged:
            raise ValueError(f"run {self.path} was logged from your own loop (msam_lab.RunLogger); its data "
                             f"lives in your code, not in msam_lab")
        from .datasets import load_dataset
        return load_dataset(self.config.dataset, **self.config.data).to(device)


def load_run(path) -> Run:
    """Read a run directory: finished, running, failed or interrupted (``Run.state`` says which)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    if not is_run_dir(path):
        raise FileNotFoundError(f"{path} is not a run directory (no {STATUS}); train one with `msam-lab train`")
    status = read_status(path)
    raw = json.loads((path / CONFIG).read_text())
    spec = json.loads((path / MODEL).read_text())
    summary = json.loads((path / SUMMARY).read_text()) if is_run(path) else {}
    return Run(path=path, config=_config_of(raw, spec), steps=read_table(path / STEPS),
               epochs=read_table(path / EPOCHS), summary=summary, model_spec=spec, status=status, raw_config=raw)


def _config_of(raw: dict, spec: dict) -> Config:
    """The run's Config. A logged run's config.json is yours: the Config holds the keys of it that
    are Config fields (method, dataset, seed, epochs and any you share) and defaults for the rest."""
    if spec.get("kind") != LOGGED:
        return from_stored(raw)
    known = set(field_names())
    return Config(**{k: v for k, v in raw.items() if k in known and v is not None})
