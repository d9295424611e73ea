"""Resume: the whole state of a training run, captured at a resume point and restored from it.

A resume point is taken at every epoch end, and every ``resume_every`` steps inside an epoch when
that is > 0. It holds the model, the method's whole state (``Method.state_dict``: the optimizer,
baseline histories, M-SAM's previous dominant modality), the python, numpy, torch (and CUDA) RNG
states, and the position: epochs and steps done, batches done inside the current epoch, and the
batch generator's state at that epoch's start, from which the epoch's permutation is drawn again.
Restored on the same machine with deterministic algorithms, the continued run is bitwise the
uninterrupted one (tests/training/test_resume.py kills a real trainer to check it).
"""

from __future__ import annotations

import random
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from msam_lab.config import Config, ConfigError
from msam_lab.runs import checkpoint_io, migrate
from msam_lab.runs.checkpoint_io import RunFileError
from msam_lab.runs.reader import (
    CHECKPOINTS,
    CONFIG,
    EPOCHS,
    LOGGED,
    MODEL,
    PREVIOUS_RESUME,
    RESUME,
    STEPS,
    is_run_dir,
    read_json,
    read_status,
    read_table,
)
from msam_lab.training.setup import resolve


@dataclass
class Position:
    epoch: int = 0  # epochs completed; the epoch in progress has 0-based index ``epoch``
    batch: int = 0  # batches done inside that epoch
    step: int = 0  # steps done in all
    wall_time: float = 0.0  # seconds of training before this point (all sessions)
    global_batch: int = 0  # samples per step over all ranks (0: a point from before data parallelism)


def rng_state() -> dict:
    """The python, numpy, torch (and CUDA) RNG states as plain values and tensors: loadable weights-only."""
    state = {"python": random.getstate(), "numpy": checkpoint_io.numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    checkpoint_io.set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(model, method, epoch_generator_state: torch.Tensor, position: Position) -> dict:
    """Everything a resume needs, as one dict for ``torch.save``."""
    return {
        "model": model.state_dict(),
        "method": method.state_dict(),
        "rng": rng_state(),
        "epoch_generator": epoch_generator_state,
        "position": asdict(position),
    }


def restore(state: dict, model, method, generator: torch.Generator) -> Position:
    """Load ``capture``'s dict into a freshly built model and method; the generator is set to the
    epoch-start state, so that drawing the epoch's permutation again gives the same batches.

    A point that does not fit (another architecture, a damaged state) is a RunFileError naming its file."""
    try:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        set_rng_state(state["rng"])
        generator.set_state(state["epoch_generator"])
        return Position(**state["position"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RunFileError(
            f"{state.get(SOURCE, 'the resume point')}: does not fit this run's model and method "
            f"({type(err).__name__}: {first}); start a new run with --out"
        ) from None


SOURCE = "source"  # load_resume_point's record of the file a point came from (for messages)
_POINT_KEYS = ("model", "method", "rng", "epoch_generator", "position")


def _read_point(path: Path) -> dict:
    point = checkpoint_io.load(path)
    if not isinstance(point, dict) or any(k not in point for k in _POINT_KEYS):
        got = sorted(map(str, point)) if isinstance(point, dict) else type(point).__name__
        raise RunFileError(f"{path}: not a resume point (expected {', '.join(_POINT_KEYS)}; got {got})")
    position, names = point["position"], {f.name for f in fields(Position)}
    if (
        not isinstance(position, dict)
        or not set(position) <= names
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in position.values())
    ):
        raise RunFileError(f"{path}: its position is not a set of non-negative numbers ({', '.join(sorted(names))})")
    if not torch.is_tensor(point["epoch_generator"]) or not isinstance(point["rng"], dict):
        raise RunFileError(f"{path}: its generator or RNG states are not tensors and plain values")
    point[SOURCE] = str(path)
    return point


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def load_resume_point(run_dir) -> dict | None:
    """The last good resume point of a run: ``checkpoints/resume.pt``, checked (checkpoint_io.load).

    Where it is damaged (or missing: a kill between keeping the previous point and writing the new
    one), the previous point, ``resume.prev.pt``, is used instead and one line on stderr says so;
    the trainer then drops the rows written after it, as after any resume. None when the run never
    reached a resume point (it starts over); a RunFileError when it did and no good point is left."""
    folder = Path(run_dir) / CHECKPOINTS
    latest, previous = folder / RESUME, folder / PREVIOUS_RESUME
    for path in (latest, previous, checkpoint_io.sidecar(latest), checkpoint_io.sidecar(previous)):
        # the resume writes these again: what cannot be replaced stops it now, not after the first epoch
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise RunFileError(
                f"{path}: not a regular file (a link, folder or device in its place), which the "
                f"resume would have to replace; move it away, then resume"
            )
    if _present(latest):
        try:
            return _read_point(latest)
        except RunFileError as err:
            problem = str(err)
    else:
        problem = f"{latest}: missing"
    if not _present(previous):
        recorded = read_status(run_dir).get("resume_point")
        if not _present(latest) and recorded is None:
            return None  # killed before its first resume point: starts over
        raise RunFileError(
            f"{problem}; no earlier resume point to fall back to (the run cannot continue): start it again with --out"
        )
    try:
        point = _read_point(previous)
    except RunFileError as err:
        raise RunFileError(
            f"{problem}; the previous point is no better: {err}; start the run again with --out"
        ) from None
    where = point["position"]
    print(
        f"{problem}; resuming from the previous resume point {previous} (step {where.get('step')}, "
        f"epoch {where.get('epoch')}): the steps after it are done again",
        file=sys.stderr,
    )
    return point


def resumable(run_dir) -> Config:
    """The config of a run that can be resumed, validated as a new one is; ConfigError naming why not.

    A damaged status.json, model.json, config.json or table is a RunFileError naming the file."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ConfigError(
            f"--resume {run_dir}: no run directory there (no status.json); start a new run with --out instead"
        )
    if read_json(run_dir / MODEL).get("kind") == LOGGED:
        raise ConfigError(
            f"--resume {run_dir}: that run was logged from your own loop (msam_lab.RunLogger); "
            f"resume it there, from its checkpoints"
        )
    status = read_status(run_dir)
    state = status["state"]
    if state == "finished":
        raise ConfigError(f"--resume {run_dir}: that run already finished; start a new run with --out")
    if state == "running":
        raise ConfigError(
            f"--resume {run_dir}: that run is still training ({status.get('host')}, pid "
            f"{status.get('pid')}); wait for it or stop it first"
        )
    for table in (STEPS, EPOCHS):  # a resume rewrites them from their rows: damaged ones are named now
        read_table(run_dir / table)
    raw = read_json(run_dir / CONFIG)
    try:
        return resolve(migrate.config_values(raw))
    except ConfigError as err:
        raise RunFileError(
            f"{run_dir / CONFIG}: not a valid config ({err}); the run cannot continue with it: "
            f"start a new run with --out"
        ) from None
