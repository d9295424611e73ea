"""What the notebooks share: quick mode, where runs and figures go, train-or-reuse.

Quick mode (``MSAM_LAB_QUICK=1``, ``msam_lab.paths.quick_mode()``): the notebooks and ``msam_lab.figures``
swap in tiny settings (the ``synthetic`` dataset, 2–3 epochs, small landscape grids) so each runs headless in well under
a minute on 2 CPU cores. The test suite runs every notebook that way.

Folders, each overridable by an environment variable (the tests point them at
temporary folders so nothing lands in the checkout):

- ``runs_root()``:  ``MSAM_LAB_RUNS``, default ``<repo>/runs/notebooks`` (``.../quick`` in quick mode);
- ``figures_dir()``: ``MSAM_LAB_FIGURES``, default ``<repo>/figures``.

``ensure_run(name, config)`` trains a run into ``runs_root()/<name>-<hash>``
(the hash of the resolved config) or, when that run is already finished,
loads it: rerunning a notebook reuses its runs, changing a parameter trains a
new one. A run left interrupted there (a kernel stopped mid-training) is resumed.

``start_run(name, config)`` does the same on a background thread and returns at
once with a ``BackgroundRun`` (``.path``, ``.join()`` -> the finished Run), so a
notebook can follow the run while it trains (``widgets.LiveCurves``,
``widgets.DominanceExplorer(..., follow=True)``) and join it before reading it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd

from msam_lab.landscape import landscape_for_run, list_landscapes, load_landscape, sharpness_for_run
from msam_lab.landscape.for_run import SHARPNESS_CSV

# re-exported: the notebooks read them from here
from msam_lab.paths import (  # noqa: F401
    FIGURES_ENV,
    QUICK_DATA,
    QUICK_ENV,
    RUNS_ENV,
    figures_dir,
    pick,
    project_root,
    quick_mode,
    runs_root,
)
from msam_lab.runs.reader import is_run, is_run_dir, load_run, read_table, run_state
from msam_lab.training.loop import train
from msam_lab.training.setup import config_hash  # noqa: F401
from msam_lab.viz.style import method_label


def run_path(name: str, config, root=None) -> Path:
    return Path(root if root is not None else runs_root()) / f"{name}-{config_hash(config)}"


class TrainingBar:
    """A ``tqdm.auto`` bar over a run's steps (a widget in Jupyter, text elsewhere) with an ETA.

    The total is known once the first epoch has ended (steps per epoch × epochs); before that the bar
    counts steps and shows their rate. ``on_step``/``on_epoch`` chain to the caller's callbacks.
    """

    def __init__(self, desc: str, epochs: int, on_step=None, on_epoch=None):
        from tqdm.auto import tqdm  # noqa: PLC0415 - picks the notebook widget or the terminal bar at use

        self.epochs, self._on_step, self._on_epoch = int(epochs), on_step, on_epoch
        self.bar = tqdm(total=None, desc=desc, unit="step", leave=True, mininterval=0.5)

    def on_step(self, row) -> None:
        self.bar.update(row["step"] + 1 - self.bar.n)
        if self._on_step is not None:
            self._on_step(row)

    def on_epoch(self, row) -> None:
        epoch = int(row["epoch"])
        if epoch > 0 and self.bar.total is None:
            self.bar.total = self.bar.n // epoch * self.epochs  # steps per epoch × epochs
        self.bar.set_postfix_str(f"epoch {epoch}/{self.epochs}", refresh=True)
        if self._on_epoch is not None:
            self._on_epoch(row)

    def close(self) -> None:
        self.bar.close()


def _epochs_of(config) -> int:
    epochs = config.get("epochs") if isinstance(config, dict) else getattr(config, "epochs", None)
    return int(epochs or 1)


def _train_into(path: Path, config, quiet: bool, on_step=None, on_epoch=None, progress: bool = False):
    """``progress``: a ``TrainingBar`` while it trains (notebooks: no cell is silent)."""
    if not progress:
        return _train_plain(path, config, quiet, on_step, on_epoch)
    bar = TrainingBar(f"training {path.name}", _epochs_of(config), on_step, on_epoch)
    try:
        return _train_plain(path, config, quiet, bar.on_step, bar.on_epoch)
    finally:
        bar.close()


def _train_plain(path: Path, config, quiet: bool, on_step=None, on_epoch=None):
    """Train ``config`` into ``path``, resuming the interrupted run found there (a stopped kernel's)."""

    try:
        if is_run_dir(path) and run_state(path) == "interrupted":
            return train(resume=path, quiet=quiet, on_step=on_step, on_epoch=on_epoch)
        return train(config, out=path, quiet=quiet, on_step=on_step, on_epoch=on_epoch)
    except OSError:
        if is_run(path):  # finished meanwhile by another process
            return load_run(path)
        raise


def ensure_run(name: str, config, root=None, quiet: bool = True, on_step=None, on_epoch=None, progress: bool = True):
    """The finished run of ``config`` under ``root`` (default ``runs_root()``): loaded if there, else trained
    (an interrupted run there is resumed) with a progress bar and ETA (``progress=False``: none).

    ``quiet=False`` prints the trainer's progress (a bar on a terminal, one line per epoch elsewhere);
    ``on_step(row)`` / ``on_epoch(row)`` are passed to ``train`` (not called for a reloaded run).
    """

    path = run_path(name, config, root)
    if is_run(path):
        return load_run(path)
    return _train_into(path, config, quiet, on_step, on_epoch, progress=progress and quiet)


class BackgroundRun:
    """A run training on a daemon thread of this process (see ``start_run``).

    ``path``: its run directory; ``running``: the thread is still training; ``run``: the run as it is
    now on disk; ``join(timeout)``: wait for the thread, re-raise its error, return the finished Run.
    """

    def __init__(self, path: Path, thread: threading.Thread | None = None):
        self.path = Path(path)
        self.thread = thread
        self.result = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def run(self):

        return load_run(self.path)

    def join(self, timeout: float | None = None):
        """Wait until the training thread ends (``timeout``: seconds, then TimeoutError); the finished Run."""
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TimeoutError(f"{self.path} is still training after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result if self.result is not None else self.run

    def __repr__(self) -> str:
        return f"BackgroundRun({str(self.path)!r}, {'training' if self.running else 'done'})"


def start_run(name: str, config, root=None, quiet: bool = True, timeout: float = 120.0) -> BackgroundRun:
    """``ensure_run`` on a background thread: returns once the run directory exists, so it can be followed.

    A finished run already there is reused (no thread). ``timeout``: seconds to wait for the trainer
    to create the directory (data loading comes first). The thread is a daemon: it stops with the
    kernel, leaving an interrupted run that the next ``start_run``/``ensure_run`` resumes.
    """

    path = run_path(name, config, root)
    job = BackgroundRun(path)
    if is_run(path):
        return job

    def target():
        try:
            job.result = _train_into(path, config, quiet)
        except BaseException as err:  # noqa: BLE001 - re-raised by join()
            job.error = err

    job.thread = threading.Thread(target=target, name=f"msam-lab-train-{path.name}", daemon=True)
    # a run left from before would be found at once: wait for this trainer's own status instead
    before = path.joinpath("status.json").stat().st_mtime_ns if is_run_dir(path) else None
    job.thread.start()
    deadline = time.monotonic() + timeout
    while job.thread.is_alive():
        if is_run_dir(path) and (before is None or path.joinpath("status.json").stat().st_mtime_ns != before):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"the trainer did not create {path} within {timeout} s")
        time.sleep(0.02)
    job.join()  # it ended already: re-raises its error (a bad config), else it finished
    return job


def data_settings() -> dict:
    """The dataset part of the notebooks' configs: av-digits (defaults), or ``QUICK_DATA`` in quick mode."""
    return dict(QUICK_DATA) if quick_mode() else {"dataset": "av-digits"}


# av-digits scenario -> its quick-mode stand-in: QUICK_DATA, with m0 (the more informative) slowed for the
# takeover (synthetic's speed knob), so the weaker m1 leads early and m0 takes over
QUICK_SCENARIOS = {"imbalanced": {}, "takeover": {"speed": [0.2, 1.0]}}


def scenario_settings(scenario: str) -> dict:
    """The dataset part of a config for an av-digits ``scenario`` (``imbalanced`` | ``takeover``), or its
    synthetic stand-in in quick mode."""
    if scenario not in QUICK_SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(QUICK_SCENARIOS)}, got {scenario!r}")
    if quick_mode():
        return {**QUICK_DATA, "data": {**QUICK_DATA["data"], **QUICK_SCENARIOS[scenario]}}
    return {"dataset": "av-digits", "data": {"scenario": scenario}}


def make_config(method: str, data: dict | None = None, epochs: int = 10, seed: int = 0, **fields) -> dict:
    """A run config for the notebooks: ``data`` (``{"dataset": ..., "data": {...}}``, default
    ``data_settings()``), a checkpoint every epoch (landscapes need the trajectory), plus ``fields``."""
    return {
        **(data_settings() if data is None else data),
        "method": method,
        "epochs": int(epochs),
        "seed": int(seed),
        "checkpoint_every": 1,
        **fields,
    }


def ensure_runs(configs: dict, root=None, quiet: bool = True) -> dict:
    """``{label: config}`` -> ``{label: Run}`` with ``ensure_run`` (label used as the folder name)."""
    return {label: ensure_run(label, cfg, root, quiet) for label, cfg in configs.items()}


def method_runs(methods, quiet: bool = True, **config) -> dict:  # each trained one shows its bar
    """``{display label: Run}`` for each method, with ``make_config(method, **config)`` (trained or reused)."""

    return {method_label(m): ensure_run(m, make_config(m, **config), quiet=quiet) for m in methods}


def landscape_name(
    dim: int,
    directions: str,
    grid: int,
    n_samples: int,
    epoch: int,
    split: str = "test",
    seed: int = 0,
    span: float = 1.0,
) -> str:
    """The folder name a surface with these settings is saved under (so settings never clash)."""
    return f"nb-{directions}-{dim}d-e{epoch}-g{grid}-span{span:g}-n{n_samples}-{split}-s{seed}"


def ensure_landscape(
    run,
    dim: int = 1,
    directions: str = "random",
    grid: int = 21,
    n_samples: int = 256,
    epoch: int | None = None,
    split: str = "test",
    seed: int = 0,
    span: float = 1.0,
    progress=None,
    **kwargs,
):
    """``landscape.landscape_for_run`` under a name made of its settings: computed once, then reloaded."""

    epoch = max(run.checkpoints) if epoch is None else int(epoch)
    name = landscape_name(dim, directions, grid, n_samples, epoch, split, seed, span)
    if name in list_landscapes(run.path) and not kwargs:
        done = load_landscape(run.path, name)
        if done.complete:
            return done
    bar = None
    if progress is None:  # a bar with an ETA over the grid points (a cell is never silent)
        from tqdm.auto import tqdm  # noqa: PLC0415 - picks the notebook widget or the terminal bar at use

        bar = tqdm(total=None, desc=f"landscape {run.path.name} {dim}-D", unit="point", mininterval=0.5)

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

    try:
        return _landscape(run, dim, directions, grid, n_samples, epoch, split, seed, span, name, progress, kwargs)
    finally:
        if bar is not None:
            bar.close()


def _landscape(run, dim, directions, grid, n_samples, epoch, split, seed, span, name, progress, kwargs):
    return landscape_for_run(
        run.path,
        dim=dim,
        directions=directions,
        grid=grid,
        n_samples=n_samples,
        epoch=epoch,
        split=split,
        seed=seed,
        span=span,
        name=name,
        progress=progress,
        **kwargs,
    )


SHARPNESS_KEYS = ("epoch", "scope", "split", "n_samples", "subset_seed", "seed", "topk", "probes", "rho")


def ensure_sharpness(
    run,
    epochs=None,
    n_samples: int = 256,
    probes: int = 16,
    topk: int = 1,
    rho: float = 0.05,
    split: str = "test",
    seed: int = 0,
    subset_seed: int = 0,
    **kwargs,
):
    """``landscape.sharpness_for_run`` rows for ``epochs`` (None: last; "all"; a list), reusing the rows
    already in ``<run>/sharpness.csv`` that have exactly these settings."""

    wanted = (
        [max(run.checkpoints)]
        if epochs is None
        else sorted(run.checkpoints)
        if epochs == "all"
        else [int(epochs)]
        if isinstance(epochs, int)
        else [int(e) for e in epochs]
    )
    # a run logged from your own model (RunLogger) measures the encoders its scopes name, on your batches
    scopes = ["model", *(run.model_spec.get("scopes", {}) if run.logged else run.modalities)]
    path = run.path / SHARPNESS_CSV
    if path.is_file():
        # the table records the subset size actually used: the whole split when it is smaller
        if run.logged:
            n_used = sum(len(labels) for _, labels in kwargs.get("batches") or [])
        else:
            n_used = n_samples if n_samples is None else min(n_samples, len(getattr(run.load_data(), split)))
        settings = {
            "split": split,
            "n_samples": n_used,
            "subset_seed": subset_seed,
            "seed": seed,
            "topk": topk,
            "probes": probes,
            "rho": rho,
        }
        old = read_table(path)  # a damaged table: one line naming it (runs.read_table)
        if set(SHARPNESS_KEYS) <= set(old.columns):
            mask = pd.Series(True, index=old.index)
            for k, v in settings.items():
                mask &= old[k].astype(str) == str(v) if k == "split" else (old[k].astype(float) == float(v))
            have = old[mask & old["epoch"].isin(wanted) & old["scope"].isin(scopes)]
            if len(have) == len(wanted) * len(scopes):
                return have.sort_values(
                    ["epoch", "scope"],
                    key=lambda c: c.map({s: i for i, s in enumerate(scopes)}) if c.name == "scope" else c,
                ).reset_index(drop=True)
    bar = None
    if kwargs.get("progress") is None:  # a bar with an ETA, one tick per (epoch, scope) measured
        from tqdm.auto import tqdm  # noqa: PLC0415 - picks the notebook widget or the terminal bar at use

        bar = tqdm(total=len(wanted) * len(scopes), desc=f"sharpness {run.path.name}", unit="measure")
        kwargs["progress"] = lambda message: (bar.update(1 if bar.n < bar.total else 0), bar.set_postfix_str(message))
    try:
        return _sharpness(run, wanted, n_samples, probes, topk, rho, split, seed, subset_seed, kwargs)
    finally:
        if bar is not None:
            bar.close()


def _sharpness(run, wanted, n_samples, probes, topk, rho, split, seed, subset_seed, kwargs):
    return sharpness_for_run(
        run.path,
        epochs=wanted,
        n_samples=n_samples,
        probes=probes,
        topk=topk,
        rho=rho,
        split=split,
        seed=seed,
        subset_seed=subset_seed,
        **kwargs,
    )
