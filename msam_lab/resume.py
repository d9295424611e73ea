"""Resume: the whole state of a training run, captured at a resume point and restored from it.

A resume point is taken at every epoch end, and every ``resume_every`` steps inside an epoch when
that is > 0. It holds the model, the method's whole state (``Method.state_dict``: the optimizer,
baseline histories, M-SAM's previous dominant modality), the python, numpy, torch (and CUDA) RNG
states, and the position: epochs and steps done, batches done inside the current epoch, and the
batch generator's state at that epoch's start, from which the epoch's permutation is drawn again.
Restored on the same machine with deterministic algorithms, the continued run is bitwise the
uninterrupted one (tests/test_resume.py kills a real trainer to check it).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError, from_stored
from .runs import CHECKPOINTS, CONFIG, LOGGED, MODEL, RESUME, is_run_dir, read_status


@dataclass
class Position:
    epoch: int = 0          # epochs completed; the epoch in progress has 0-based index ``epoch``
    batch: int = 0          # batches done inside that epoch
    step: int = 0           # steps done in all
    wall_time: float = 0.0  # seconds of training before this point (all sessions)
    global_batch: int = 0   # samples per step over all ranks (0: a point from before data parallelism)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(model, method, epoch_generator_state: torch.Tensor, position: Position) -> dict:
    """Everything a resume needs, as one dict for ``torch.save``."""
    return {"model": model.state_dict(), "method": method.state_dict(), "rng": rng_state(),
            "epoch_generator": epoch_generator_state, "position": asdict(position)}


def restore(state: dict, model, method, generator: torch.Generator) -> Position:
    """Load ``capture``'s dict into a freshly built model and method; the generator is set to the
    epoch-start state, so that drawing the epoch's permutation again gives the same batches."""
    model.load_state_dict(state["model"])
    method.load_state_dict(state["method"])
    set_rng_state(state["rng"])
    generator.set_state(state["epoch_generator"])
    return Position(**state["position"])


def load_resume_point(run_dir) -> dict | None:
    path = Path(run_dir) / CHECKPOINTS / RESUME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def resumable(run_dir) -> Config:
    """The config of a run that can be resumed; ConfigError naming why not otherwise."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ConfigError(f"--resume {run_dir}: no run directory there (no status.json); "
                          f"start a new run with --out instead")
    if (run_dir / MODEL).is_file() and json.loads((run_dir / MODEL).read_text()).get("kind") == LOGGED:
        raise ConfigError(f"--resume {run_dir}: that run was logged from your own loop (msam_lab.RunLogger); "
                          f"resume it there, from its checkpoints")
    status = read_status(run_dir)
    state = status["state"]
    if state == "finished":
        raise ConfigError(f"--resume {run_dir}: that run already finished; start a new run with --out")
    if state == "running":
        raise ConfigError(f"--resume {run_dir}: that run is still training ({status.get('host')}, pid "
                          f"{status.get('pid')}); wait for it or stop it first")
    return from_stored(json.loads((run_dir / CONFIG).read_text()))
