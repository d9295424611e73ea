"""``train(config)``: one run from config to run directory, written while it trains.

The loop below reads top to bottom; each concern around it lives in its own module:
``run_writer`` (status, streamed tables, checkpoints, lock), ``resume`` (the state a resume
needs), ``nonfinite`` (``nan_policy``), ``progress`` (bar or log lines), ``interrupts`` (SIGTERM),
``sharpness_timeline`` (``sharpness_every``), ``data_parallel`` (N ranks under torchrun).
"""

from __future__ import annotations

import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from msam_lab import distributed, faults
from msam_lab.analysis import sharpness_timeline
from msam_lab.analysis.metrics import epoch_metrics, train_eval_subset
from msam_lab.config import Config, ConfigError
from msam_lab.datasets import load_for_training
from msam_lab.datasets.validation import with_validation
from msam_lab.errors import TrainingError
from msam_lab.methods import build_method
from msam_lab.models.multimodal import has_batchnorm, model_from_spec, spec_encoders
from msam_lab.optim import schedules
from msam_lab.runs.reader import CHECKPOINTS, EPOCHS, RESUME, STEPS, Run, check_output_dir, load_run, read_table
from msam_lab.runs.selection import selection_summary, table_summary
from msam_lab.runs.writer import RunWriter, rows_on_host
from msam_lab.training import ranks as data_parallel
from msam_lab.training import resume as resume_mod
from msam_lab.training import setup, speed
from msam_lab.training.guards import NonFiniteError, StepGuard, sigterm_as_keyboard_interrupt
from msam_lab.training.progress import Progress


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_out(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.dataset}-{cfg.method}-s{cfg.seed}-{stamp}"


def _load_splits(cfg: Config, device):
    try:
        splits = load_for_training(cfg.dataset, cfg.data, device, cfg.data_path, cfg.stream_above_mb, cfg.num_workers)
    except OSError as err:
        if err.errno in faults.ENVIRONMENT:  # a full disk or a read-only cache folder: not the config's fault
            raise
        raise ConfigError(str(err)) from None
    except ValueError as err:  # a loader's one-line layout/option message
        raise ConfigError(str(err)) from None
    except MemoryError:
        raise ConfigError(
            f"dataset {cfg.dataset} does not fit in memory with these options; choose smaller data.* sizes"
        ) from None
    unknown = sorted(set(cfg.encoders) - set(splits.modalities))
    if unknown:
        raise ConfigError(
            f"encoders.{unknown[0]} names no modality of {cfg.dataset}; "
            f"its modalities are: {', '.join(splits.modalities)}"
        )
    return splits


def _model_spec(splits, cfg: Config) -> dict:
    """The model's spec, as ``models.model_from_spec`` reads it back (run directory: spec.json)."""
    return {
        "input_shapes": {m: list(shape) for m, shape in splits.train.sample_shapes.items()},
        "num_classes": splits.num_classes,
        "fusion": cfg.fusion,
        "encoders": spec_encoders(cfg.fusion, splits.info.get("encoders", {}), cfg.encoders),
        "feature_dim": cfg.feature_dim,
        "hidden_dim": cfg.hidden_dim,
        "encoder_options": cfg.encoder_options,
        "fusion_trunk": cfg.fusion_trunk,
        "head_hidden": cfg.head_hidden,
    }


def _build(spec: dict, cfg: Config, device):
    """The model and its method, before anything is written: a model that cannot be built is bad input."""
    try:
        model = model_from_spec(spec).to(device)
        if cfg.channels_last:
            speed.use_channels_last(model)
        if cfg.compile:
            speed.compile_model(model)
        return model, build_method(model, cfg)
    except ValueError as err:  # an encoder that does not fit its modality's inputs
        raise ConfigError(str(err)) from None
    except (MemoryError, RuntimeError) as err:  # e.g. feature_dim so large the weights cannot be allocated
        raise ConfigError(
            f"cannot build the model ({str(err).splitlines()[0][:200]}); lower feature_dim / hidden_dim"
        ) from None


def _evaluated(epoch: int, cfg: Config) -> bool:
    return epoch == 0 or epoch == cfg.epochs or epoch % cfg.eval_every == 0


def _scheduled(epoch: int, cfg: Config) -> bool:
    """An analysis checkpoint's epoch: the first, the last, every ``checkpoint_every``-th."""
    return epoch == 0 or epoch == cfg.epochs or bool(cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0)


def train(config=None, out=None, quiet: bool = False, overrides=(), resume=None, on_step=None, on_epoch=None) -> Run:
    """Train one model as ``config`` says and write its run directory; return the loaded run.

    ``config``: a Config, a dict of fields, a YAML path or None (defaults);
    ``overrides``: ``key=value`` strings applied on top;
    ``resume``: an interrupted or failed run directory to continue (its own config is used);
    ``on_step(row)`` / ``on_epoch(row)``: called after each step / evaluated epoch is recorded.
    """
    if resume is not None:
        if config is not None or overrides or out is not None:
            raise ConfigError("resume continues a run with its own config; pass only the run directory")
        out, cfg = Path(resume), resume_mod.resumable(resume)
    else:
        cfg = setup.resolve(config, overrides)
    device = data_parallel.device_for_rank(cfg, resolve_device)  # joins torchrun's process group
    if resume is None:
        out = Path(out) if out is not None else default_out(cfg)
        out = data_parallel.check_out(out, check_output_dir)  # on every rank, before rank 0 writes
    master_process = distributed.is_main()  # rank 0 writes the run and prints; one process: always
    quiet = quiet or not master_process
    splits = with_validation(_load_splits(cfg, device), cfg.val_fraction, cfg.seed)
    train_eval = train_eval_subset(splits.train, cfg.train_eval_samples, cfg.seed)
    seed_everything(cfg.seed)
    spec = _model_spec(splits, cfg)
    model, method = _build(spec, cfg, device)
    model = data_parallel.prepare_model(model, cfg, device)  # rank 0's weights on every rank
    generator = torch.Generator().manual_seed(cfg.seed)
    # nan_policy=stop reads its finite flags once per flush_every, as the writer its rows (one rank alone
    # must not stop at another step than the others: every step under data parallelism)
    check_every = 0.0 if distributed.active() else cfg.flush_every
    guard = StepGuard(cfg.nan_policy, model, method, check_every=check_every)

    batch_size = data_parallel.global_batch(cfg)  # each rank trains on its shard of every one
    point = resume_mod.load_resume_point(out) if resume is not None else None
    pos = resume_mod.restore(point, model, method, generator) if point is not None else resume_mod.Position()
    data_parallel.check_resumed_batch(pos.global_batch, batch_size, cfg)
    epoch, batch, step = pos.epoch, pos.batch, pos.step
    # a last batch too small to shard over the ranks (or one sample with BatchNorm) is dropped
    drop_last = data_parallel.check_batch(cfg, len(splits.train), has_batchnorm(model))
    steps_per_epoch = len(splits.train) // batch_size if drop_last else -(-len(splits.train) // batch_size)
    progress = Progress(cfg.epochs * steps_per_epoch, cfg.epochs, f"{cfg.method} on {cfg.dataset}", quiet, done=step)
    writer = None  # the other ranks write nothing: the weights and record are rank 0's
    if master_process:
        writer = (
            RunWriter(out, resume=True, flush_every=cfg.flush_every)
            if resume is not None
            else RunWriter(out, cfg.to_dict(), spec, flush_every=cfg.flush_every)
        )
    if writer is not None and writer.stale is not None and not quiet:
        print(f"{out}: took over the stale lock of {writer.stale.describe()} (no longer running)", file=sys.stderr)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    started = time.perf_counter()

    def wall() -> float:
        return pos.wall_time + time.perf_counter() - started

    def record_epoch(epoch: int) -> None:
        nonlocal best_val
        row = {
            "epoch": epoch,
            **epoch_metrics(model, train_eval, splits.test, cfg, val=splits.val),
            "lr": lr,
            "wall_time": wall(),
        }
        if master_process:
            writer.log_epoch(row)
        sharpness_timeline.at_epoch(writer, model, splits.train, epoch, cfg)  # sharpness_every: per-block Hessian
        if epoch > 0 and row.get("val_acc", -1) > best_val:  # selection's rule: earliest best, not epoch 0
            best_val = row["val_acc"]
            select(epoch)
        progress.epoch(row)
        if on_epoch is not None:
            on_epoch(row)

    def select(epoch: int) -> None:
        """The selected model can be loaded: its checkpoint replaces the previous selection's, so a run
        keeps one beside the scheduled ones however often validation improves (new one first: a kill
        between the two leaves both)."""
        nonlocal selected
        checkpoint(epoch)
        if master_process and selected is not None and not _scheduled(selected, cfg):
            writer.drop_checkpoint(selected)
        selected = epoch

    def checkpoint(epoch: int) -> None:
        if not master_process:
            return
        writer.checkpoint(
            epoch,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "method": method.state_dict(),
                "rng": {**resume_mod.rng_state(), "batches": generator.get_state()},
            },
        )

    def unrecord(at: int) -> None:
        """A deferred finite check failed: the rows from step ``at`` on are not steps done."""
        if master_process:
            writer._pending = [r for r in writer._pending if r["step"] < at]
            writer.steps.keep(lambda r: int(r["step"]) < at)
            writer.status["last_step"] = at - 1

    def checked(last_step: int) -> None:
        """The guard's pending finite checks read (before anything is saved or evaluated)."""
        try:
            guard.check()
        except NonFiniteError as err:
            unrecord(last_step - err.steps_ago)
            status = writer.status if master_process else {}
            raise TrainingError(_non_finite_message(err, last_step - err.steps_ago, epoch + 1, out, status)) from None

    def save_resume_point(epoch_generator) -> None:
        checked(step - 1)
        if not master_process:
            return
        point = resume_mod.Position(epoch, batch, step, wall(), batch_size)
        writer.save_resume(resume_mod.capture(model, method, epoch_generator, point))

    try:
        torch.use_deterministic_algorithms(cfg.deterministic or was_deterministic)
        with sigterm_as_keyboard_interrupt():
            if resume is not None and master_process:
                writer.truncate(pos.step, pos.epoch if point is not None else -1)  # rows after the point
            # the best validation accuracy so far, read back from the (truncated) epoch table on a resume
            selection = selection_summary(read_table(out / EPOCHS)) if resume is not None else {}
            best_val = selection.get("best_val_acc")
            best_val = -1.0 if best_val is None else best_val
            selected = selection.get("best_epoch")  # the epoch whose checkpoint select() keeps
            lr = method.set_lr_factor(schedules.lr_factor(epoch, cfg))  # row 0 shows epoch 1's lr
            if point is None:
                record_epoch(0)
                checkpoint(0)
                save_resume_point(generator.get_state())

            while epoch < cfg.epochs:
                method.start_epoch(epoch)
                lr = method.set_lr_factor(schedules.lr_factor(epoch, cfg))
                epoch_generator = generator.get_state()
                for inputs, labels in splits.train.batches(
                    batch_size,
                    shuffle=True,
                    generator=generator,
                    drop_last=drop_last,
                    start_batch=batch,
                    shard=distributed.shard_of,
                ):
                    try:
                        row = {"step": step, "epoch": epoch + 1, **guard.step(inputs, labels)}
                    except NonFiniteError as err:
                        status = writer.status if master_process else {}
                        at = step - err.steps_ago
                        unrecord(at)
                        raise TrainingError(_non_finite_message(err, at, epoch + 1, out, status)) from None
                    if master_process:
                        writer.log_step(row)  # device values stay there until the writer's flush
                    if progress.bar is not None or on_step is not None:
                        row = rows_on_host([row])[0]  # a terminal's bar or a callback reads it: one sync
                    progress.step(row)
                    step, batch = step + 1, batch + 1
                    if on_step is not None:
                        on_step(row)
                    if cfg.resume_every and step % cfg.resume_every == 0 and batch < steps_per_epoch:
                        save_resume_point(epoch_generator)
                checked(step - 1)
                epoch, batch = epoch + 1, 0
                if _evaluated(epoch, cfg):
                    record_epoch(epoch)
                if _scheduled(epoch, cfg) and epoch != selected:  # select() wrote a selected one
                    checkpoint(epoch)
                save_resume_point(generator.get_state())
            if master_process:
                writer.finish(_summary(cfg, model, device, step, wall(), out, writer.status, splits.info))
            data_parallel.finished(out)  # the other ranks read the run back once it is written
    except KeyboardInterrupt:
        if master_process:
            writer.interrupt(
                f"interrupted at step {step} (epoch {min(epoch + 1, cfg.epochs)}); resume with "
                f"`msam-lab train --resume {out}`"
            )
        raise
    except TrainingError as err:
        if master_process:
            writer.fail(str(err))
        raise
    except OSError as err:  # the disk filled, went read-only, ...: the run says so, the CLI in one line
        recorded = writer.fail(faults.describe(err)) if master_process else False
        err.add_note(
            (
                "run marked failed; "
                if recorded or not master_process
                else "the run could not record it (it reads interrupted once this process ends); "
            )
            + f"`msam-lab train --resume {out}` continues it from its last resume point"
        )
        raise
    except BaseException as err:
        if master_process:
            writer.fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        progress.close()
        torch.use_deterministic_algorithms(was_deterministic)
    return load_run(out)


def _non_finite_message(err: NonFiniteError, step: int, epoch: int, out, status: dict) -> str:
    point = status.get("resume_point")  # the writer's record of the last resume point it saved
    where = (
        f"{Path(out) / CHECKPOINTS / RESUME} (epoch {point['epoch']}, step {point['step']})"
        if point is not None
        else "none"
    )
    return (
        f"{err.headline()} at step {step} (epoch {epoch}); last good checkpoint: {where}; run marked failed ({err.fix})"
    )


def _summary(cfg: Config, model, device, steps: int, wall: float, out, status: dict, info: dict) -> dict:
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "steps": steps,
        "wall_time": wall,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        **data_parallel.summary_fields(cfg),
        "skipped_batches": int(status.get("skipped_batches", 0)),
        "resumed": int(status.get("resumed", 0)),
        "val_split": info.get("val_split", "none"),
        "val_size": info.get("val_size", 0),
        # switches, the last epoch's numbers, best-validation epoch and last (labelled)
        **table_summary(read_table(Path(out) / STEPS), read_table(Path(out) / EPOCHS)),
    }
