"""Where a sweep's cells run: ``inline`` (here, one after another: msam_lab.experiments.sweep), ``local``
(submitit's LocalExecutor: one process per cell, ``max_parallel`` at once) or ``slurm`` (submitit
on SLURM: one job per cell, submitted as one job array). docs/scale.md, "Sweeps on a cluster".

Each job runs ``sweep.complete_cell``, the decision the inline sweep makes: reuse a finished run,
resume an interrupted or failed one from ``checkpoints/resume.pt``, or train it. Submitit keeps its
pickles and logs under ``<out>/.submitit/`` (``<job id>_0_log.out``, ``.err``). Running the same sweep again is
resumable:

* a finished cell is reused and gets no job (a sweep with every cell finished submits nothing);
* an interrupted or failed cell gets a job that resumes it;
* a cell whose run is ``running`` (a live job of an earlier submission) gets no second job: the
  parent waits for it; finished, it is collected; stopped short, it then gets a job that resumes it.

A job is a ``submitit.helpers.Checkpointable``: when SLURM is about to stop it (its time limit, or
a pre-emption signalled with USR2), submitit calls ``checkpoint()``, which resubmits the same call,
and requeues the job (at most ``max_num_timeout`` times after a time-out, 3 by default). The trainer
marks the run failed on the way out; the requeued job finds it so and resumes it from its last
resume point, which is at every epoch end and every ``resume_every`` steps.

The parent waits for every job, then the sweep writes its tables over the cells that finished and
names, one line each, those that did not. msam_lab keeps no job database: jobs still queued from an
earlier submission are unknown to a rerun (``scancel`` them first; a duplicate that starts after
its cell finished returns at once).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import submitit
import torch
from submitit.helpers import Checkpointable, DelayedSubmission

from msam_lab.config import ConfigError
from msam_lab.experiments.cells import Cell, cell_action, complete_cell, describe
from msam_lab.runs.lock import STALE_AFTER
from msam_lab.runs.reader import is_run, is_run_dir, read_status

LAUNCHERS = ("inline", "local", "slurm")
LOG_DIR = ".submitit"  # under the sweep's out: submitit's pickles and job logs
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes; a local cell may take days
POLL_S = {"local": 0.5, "slurm": 30.0}  # how often the parent looks at its jobs (SLURM: don't hammer sacct)
DEFAULT_JOB_NAME = "msam-sweep"

# The option names submitit accepts: its shared keys (translated for each cluster: timeout_min ->
# --time, mem_gb -> --mem, ...) and the SlurmExecutor's own (the sbatch flags it knows). A shared
# key is passed as it is, a SLURM-only one as slurm_<key>, as AutoExecutor wants.
GENERIC = submitit.AutoExecutor._typed_parameters()
LIST_KEYS = ("setup", "teardown", "srun_args")  # repeated --slurm setup=... accumulate
NOT_KEY_VALUE = ("additional_parameters",)  # a dict: not one KEY=VALUE
SLURM_KEYS = sorted(set(submitit.SlurmExecutor._valid_parameters()) - set(GENERIC) - set(NOT_KEY_VALUE))
CONSTRUCTOR_KEYS = {"max_num_timeout": int}  # SlurmExecutor(…, max_num_timeout=3)
ACCEPTED = sorted(set(GENERIC) | set(SLURM_KEYS) | set(CONSTRUCTOR_KEYS))


@dataclass
class LaunchPlan:
    """Checked launcher options: ``parameters`` for ``AutoExecutor.update_parameters``,
    ``constructor`` for ``AutoExecutor(...)``, ``max_parallel`` jobs at once (local only; SLURM
    throttles a job array itself with ``array_parallelism``)."""

    launcher: str
    parameters: dict = field(default_factory=dict)
    constructor: dict = field(default_factory=dict)
    max_parallel: int | None = None


def _typed(key: str, text: str, kind):
    """``text`` as ``kind`` (int, float, bool or str); ConfigError naming the key otherwise."""
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--slurm {key}={text}: {key} takes true or false")
        return text.lower() in ("true", "1", "yes")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(
                f"--slurm {key}={text}: {key} takes {'an integer' if kind is int else 'a number'}"
            ) from None
    return text


def _scalar(text: str):
    """A SLURM-only value as sbatch wants it: true/false a flag, a whole number an int, else the text
    (``time=1-00:00:00``, ``mem=32G``, ``partition=gpu``)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def parse_slurm_options(pairs) -> tuple[dict, dict]:
    """Repeated ``KEY=VALUE`` strings -> (``update_parameters`` kwargs, constructor kwargs).

    ``KEY`` is one of submitit's names (``-`` may stand for ``_``: ``cpus-per-task=8``); an unknown
    one is a ConfigError listing the accepted names."""
    parameters, constructor = {}, {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ConfigError(f"--slurm expects KEY=VALUE, e.g. --slurm partition=gpu; got {pair!r}")
        value = value.strip()
        if key in CONSTRUCTOR_KEYS:
            constructor[key] = _typed(key, value, CONSTRUCTOR_KEYS[key])
        elif key in GENERIC:
            parameters[key] = _typed(key, value, GENERIC[key])
        elif key in LIST_KEYS:
            parameters.setdefault(f"slurm_{key}", []).append(value)
        elif key in SLURM_KEYS:
            parameters[f"slurm_{key}"] = _scalar(value)
        else:
            raise ConfigError(f"--slurm {key}: not a submitit option; accepted: {', '.join(ACCEPTED)}")
    return parameters, constructor


def plan_launch(launcher: str, slurm=(), max_parallel: int | None = None) -> LaunchPlan:
    """Check the launcher's options before anything is planned or written (ConfigError)."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; choose from: {', '.join(LAUNCHERS)}")
    if launcher == "inline":
        raise ConfigError(
            "the inline launcher runs in msam_lab.experiments.sweep.run_sweep; launch is for local and slurm"
        )
    if isinstance(slurm, str):
        slurm = [slurm]
    if slurm and launcher != "slurm":
        raise ConfigError(
            f"--slurm options are for --launcher slurm (got --launcher {launcher}); add --launcher slurm or drop them"
        )
    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise ConfigError(f"--max-parallel must be a positive integer, got {max_parallel!r}")
    if launcher == "local":
        return LaunchPlan("local", max_parallel=max_parallel)
    parameters, constructor = parse_slurm_options(slurm)
    if "timeout_min" not in parameters and "slurm_time" not in parameters:
        raise ConfigError(
            "--launcher slurm needs each job's time limit: --slurm timeout_min=MINUTES "
            "(submitit's default is 5 minutes)"
        )
    if max_parallel is not None:
        if "slurm_array_parallelism" in parameters:
            raise ConfigError("--max-parallel and --slurm array_parallelism say the same thing; pass one")
        parameters["slurm_array_parallelism"] = max_parallel
    if submitit.SlurmExecutor.affinity() <= 0:
        raise ConfigError(
            "--launcher slurm: no SLURM here (srun is not on PATH); run the sweep on the "
            "cluster's login node, or use --launcher local"
        )
    return LaunchPlan("slurm", parameters, constructor)


def build_executor(plan: LaunchPlan, out) -> submitit.AutoExecutor:
    """The submitit executor of ``plan``, its pickles and logs in ``<out>/.submitit/``."""
    folder = Path(out).absolute() / LOG_DIR
    constructor = {f"{plan.launcher}_{k}": v for k, v in plan.constructor.items()}
    executor = submitit.AutoExecutor(folder=folder, cluster=plan.launcher, **constructor)
    try:
        if plan.launcher == "local":
            executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
        else:
            executor.update_parameters(**{"name": DEFAULT_JOB_NAME, **plan.parameters})
    except (ValueError, NameError) as err:  # submitit's own check of a value (e.g. a bad mem)
        raise ConfigError(f"--slurm: {str(err).splitlines()[0]}") from None
    return executor


class CellJob(Checkpointable):
    """One submitit job: bring one cell's run to finished (``sweep.complete_cell``).

    ``threads``: torch threads for the job (local jobs share this machine's cores)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, cell: Cell) -> str:
        if self.threads:
            torch.set_num_threads(self.threads)
        wait_for_trainer(cell.path)
        return complete_cell(cell)

    def checkpoint(self, cell: Cell) -> DelayedSubmission:
        """Called by submitit just before SLURM stops the job; the requeued job makes the same call,
        which finds the run stopped and resumes it from its resume checkpoint: nothing else to save."""
        return DelayedSubmission(self, cell)


def wait_for_trainer(path, timeout_s: float = STALE_AFTER + 60.0, poll_s: float = 5.0) -> None:
    """Wait while the run at ``path`` reads ``running``. A requeued job can find its killed
    predecessor's lock from another node: it counts as stale once that heartbeat is STALE_AFTER old."""
    deadline = time.monotonic() + timeout_s
    while cell_action(path) == "running" and time.monotonic() < deadline:
        time.sleep(poll_s)


def _owner(path) -> str:
    status = read_status(path)
    return f"pid {status.get('pid')} on {status.get('host')}"


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")


def _trace_line(error: Exception) -> str:
    """The last exception line (``msam_lab.config.ConfigError: …``) of the traceback submitit wraps
    a job's error in; the message's first line when it holds none (a job killed without a result)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = [line for line in lines if EXCEPTION_LINE.match(line)]
    return found[-1] if found else (" ".join(lines[:2]) if lines else type(error).__name__)


def _failure(cell: Cell, job, label: str) -> str | None:
    """None for a cell whose run finished (whatever its job said), else one line: state, why, log."""
    if is_run(cell.path):
        return None
    status = read_status(cell.path) if is_run_dir(cell.path) else {"state": "not started"}
    error = job.exception()
    if status.get("state") == "failed" and status.get("error"):
        why = status["error"]  # the trainer's own one line (non-finite loss, ...)
    elif error is not None:
        why = _trace_line(error)
    else:
        why = "the job ended without finishing the run"
    return f"{label}: {status['state']}: {why} (job {job.job_id}, log {job.paths.stderr})"


def run_cells(cells: list[Cell], plan: LaunchPlan, out, quiet: bool = False) -> list[str]:
    """One job per cell that is not finished, ``plan.max_parallel`` at once; wait for them all.
    Returns one line per cell that did not finish (empty: every cell finished)."""
    say = (lambda text: None) if quiet else print
    labels = [f"[{i}/{len(cells)}] {describe(cell)}" for i, cell in enumerate(cells, 1)]
    todo, watched = [], []
    for i, cell in enumerate(cells):
        action = cell_action(cell.path)
        if action == "reuse":
            say(f"{labels[i]}: finished run found at {cell.path}, reusing it")
        elif action == "running":
            say(
                f"{labels[i]}: being trained by {_owner(cell.path)} (an earlier submission?); "
                f"no second job, waiting for it"
            )
            watched.append(i)
        else:
            todo.append(i)
    if not todo and not watched:
        return []

    limit = None
    if plan.launcher == "local":
        limit = plan.max_parallel or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // limit) if limit else None
    job_fn = CellJob(threads)
    executor, jobs, failed = None, {}, {}
    try:
        while todo or jobs or watched:
            free = len(todo) if limit is None else max(0, limit - len(jobs))
            batch, todo = todo[:free], todo[free:]
            if batch:
                executor = executor or build_executor(plan, out)
                actions = [cell_action(cells[i].path) for i in batch]  # train or resume
                with executor.batch():  # SLURM: one job array
                    submitted = [
                        executor.submit(job_fn, replace(cells[i], path=cells[i].path.absolute())) for i in batch
                    ]
                for i, action, job in zip(batch, actions, submitted):
                    jobs[i] = job
                    say(f"{labels[i]}: job {job.job_id} submitted ({action} -> {cells[i].path})")
            time.sleep(POLL_S[plan.launcher])
            for i in [i for i, job in jobs.items() if job.done()]:
                line = _failure(cells[i], jobs.pop(i), labels[i])
                if line is None:
                    say(f"{labels[i]}: finished")
                else:
                    failed[i] = line
                    say(f"{labels[i]}: did not finish")
            for i in [i for i in watched if cell_action(cells[i].path) != "running"]:
                watched.remove(i)
                if is_run(cells[i].path):
                    say(f"{labels[i]}: finished by its other trainer")
                else:
                    say(f"{labels[i]}: its trainer stopped ({read_status(cells[i].path)['state']}); a job resumes it")
                    todo.append(i)
    except BaseException:
        if plan.launcher == "local":  # local jobs are this process's children: stop them with it
            for job in jobs.values():
                job.cancel(check=False)
        elif jobs:
            print(
                f"msam-lab: {len(jobs)} SLURM job(s) keep running; run the same sweep again to collect "
                f"them, or scancel them",
                flush=True,
            )
        raise
    return [failed[i] for i in sorted(failed)]
