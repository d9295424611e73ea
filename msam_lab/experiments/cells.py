"""One cell of a sweep: its run folder, and the one decision every launcher makes for it.

``complete_cell`` brings a cell's run to finished: it reuses a finished run, resumes an interrupted or
failed one from its last resume point, or trains it. The inline sweep (sweep.py) and each submitit job
(launch.py) call it, so the decision lives here only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from msam_lab.config import Config, ConfigError
from msam_lab.methods import method_class
from msam_lab.methods.sam import SAMMethod
from msam_lab.runs import migrate
from msam_lab.runs.reader import CONFIG, check_output_dir, is_run, is_run_dir, read_json, run_state
from msam_lab.training.loop import train


def uses_rho(method: str) -> bool:
    """True for methods whose update depends on ρ (SAM and everything built on it)."""
    return issubclass(method_class(method), SAMMethod)


def run_dir(out, method: str, seed: int, rho: float | None = None) -> Path:
    path = Path(out) / method
    if rho is not None:
        path = path / f"rho{rho:g}"
    return path / f"seed{seed}"


@dataclass
class Cell:
    method: str
    seed: int
    rho: float | None
    config: Config
    path: Path


def _normalised(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def check_existing(cell: Cell, allow_running: bool = False) -> None:
    """A run at the cell's path (finished, or interrupted/failed: to be resumed) must hold the same
    config; a run still training there is an error unless ``allow_running`` (a launcher that waits
    for it), anything else always is."""
    if not is_run_dir(cell.path):
        check_output_dir(cell.path)
        return
    state = run_state(cell.path)
    if state == "running" and not allow_running:
        raise ConfigError(f"{cell.path} is being trained by another process; wait for it or use another --out")
    # an older format, and fields added after that run was made, read as what that run did (runs.migrate)
    stored = {**_normalised(Config().to_dict()), **migrate.config_values(read_json(cell.path / CONFIG))}
    wanted = _normalised(cell.config.to_dict())
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            raise ConfigError(
                f"{cell.path} holds a {state} run with {key}={stored.get(key)!r}, but the sweep "
                f"asks for {key}={wanted.get(key)!r}; use another --out or delete that run"
            )


def describe(cell: Cell) -> str:
    """``msam seed 1 rho 0.1``: the cell as progress and error lines name it."""
    return f"{cell.method} seed {cell.seed}" + (f" rho {cell.rho:g}" if cell.rho is not None else "")


def cell_action(path) -> str:
    """What bringing the run at ``path`` to finished takes: ``reuse`` (finished), ``resume``
    (interrupted or failed), ``train`` (nothing there yet), or ``running`` (another trainer holds it)."""
    if is_run(path):
        return "reuse"
    if not is_run_dir(path):
        return "train"
    return "running" if run_state(path) == "running" else "resume"


def complete_cell(cell: Cell, quiet: bool = False, label: str | None = None) -> str:
    """Bring one cell's run to finished: reuse a finished run, resume an interrupted or failed one
    from its last resume checkpoint, or train it. Every launcher (inline, and each submitit job)
    calls this, so the decision lives here only. Returns the action taken (``cell_action``)."""
    label = label or describe(cell)
    action = cell_action(cell.path)
    if action == "reuse":
        if not quiet:
            print(f"{label}: finished run found at {cell.path}, reusing it")
    elif action == "resume":  # interrupted or failed: continue it, don't start again
        if not quiet:
            print(f"{label}: {run_state(cell.path)} run found at {cell.path}, resuming it")
        train(resume=cell.path, quiet=quiet)
    elif action == "train":
        if not quiet:
            print(f"{label}: training {cell.config.epochs} epochs on {cell.config.dataset} -> {cell.path}")
        train(cell.config, out=cell.path, quiet=quiet)
    else:  # the trainer's lock says why (pid, host)
        raise ConfigError(f"{cell.path} is being trained by another process; wait for it or use another --out")
    return action
