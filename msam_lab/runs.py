"""The run directory: what a training run leaves behind, written atomically, read back by ``load_run``.

Layout of ``<run>/``::

    config.json        resolved Config
    model.json         what ``build_model`` needs (shapes, classes, encoders)
    steps.csv          one row per optimisation step
    epochs.csv         one row per epoch (epoch 0 = before training)
    summary.json       final numbers; its presence marks a finished run
    checkpoints/epoch_NNNN.pt   model, method (optimizer) and RNG state

A run is trained into a hidden ``.<name>.partial-<pid>`` folder beside the
target and renamed into place at the end, so an interrupted or failed run
leaves no half-written run directory behind.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .config import Config, ConfigError, from_dict
from .models import MultimodalModel, model_from_spec

SUMMARY = "summary.json"


def is_run(path) -> bool:
    return (Path(path) / SUMMARY).is_file()


def check_output_dir(out) -> Path:
    """Raise ConfigError unless ``out`` can receive a new run (absent or an empty folder)."""
    out = Path(out)
    if is_run(out):
        raise ConfigError(f"output directory {out} already holds a run; choose another --out or delete it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty; choose another --out")
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


class RunWriter:
    """Writes a run into a temporary folder; ``finish`` moves it into place."""

    def __init__(self, out):
        self.out = check_output_dir(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        (self.tmp / "checkpoints").mkdir(parents=True)

    def json(self, name: str, obj) -> None:
        _write_json(self.tmp / name, obj)

    def checkpoint(self, epoch: int, state: dict) -> None:
        torch.save(state, self.tmp / "checkpoints" / f"epoch_{epoch:04d}.pt")

    def finish(self, steps: pd.DataFrame, epochs: pd.DataFrame, summary: dict) -> Path:
        steps.to_csv(self.tmp / "steps.csv", index=False)
        epochs.to_csv(self.tmp / "epochs.csv", index=False)
        self.json(SUMMARY, summary)
        if self.out.exists():
            self.out.rmdir()       # checked empty above
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Run:
    """A finished run, read back: ``config``, ``steps``, ``epochs`` (DataFrames), ``summary``."""

    path: Path
    config: Config
    steps: pd.DataFrame
    epochs: pd.DataFrame
    summary: dict
    model_spec: dict = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model_spec["input_shapes"])

    @property
    def checkpoints(self) -> dict[int, Path]:
        """Saved epochs -> checkpoint file, in epoch order."""
        files = sorted((self.path / "checkpoints").glob("epoch_*.pt"))
        return {int(f.stem.split("_")[1]): f for f in files}

    def build_model(self) -> MultimodalModel:
        """A fresh (untrained) model of this run's architecture."""
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

    def load_model(self, epoch: int | None = None, device="cpu") -> MultimodalModel:
        """The model with the weights of ``epoch`` (default: last), in eval mode."""
        model = self.build_model()
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
        from .datasets import load_dataset
        return load_dataset(self.config.dataset, **self.config.data).to(device)


def load_run(path) -> Run:
    """Read a finished run directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no run directory at {path}")
    if not is_run(path):
        raise FileNotFoundError(f"{path} is not a finished run (no {SUMMARY}); train one with `msam-lab train`")
    config = from_dict(json.loads((path / "config.json").read_text()))
    return Run(path=path, config=config,
               steps=pd.read_csv(path / "steps.csv"),
               epochs=pd.read_csv(path / "epochs.csv"),
               summary=json.loads((path / SUMMARY).read_text()),
               model_spec=json.loads((path / "model.json").read_text()))
