"""M-SAM in PyTorch Lightning (``pip install 'msam_lab[lightning]'``; docs/integrations.md has the recipes).

Manual optimization (``self.automatic_optimization = False``, ``configure_optimizers`` returns ``msam_lab.MSAM``)::

    def training_step(self, batch, batch_idx):
        x, y = batch
        manual_step(self, lambda present: self(x, present), y)   # observe, both passes, the step; logs msam/*

Automatic optimization: Lightning calls ``opt.step(closure)`` (the closure runs ``training_step`` and the
backward), so M-SAM only needs the batch's observation first::

    def on_train_batch_start(self, batch, batch_idx):
        x, y = batch
        observe(self, lambda present: self(x, present), y)

Both helpers keep the Shapley record as ``module.msam_record`` and log it with ``self.log`` (``msam/loss``,
``msam/share_<m>``, ``msam/dominant`` as the modality's index) on the steps the trainer's loggers write
(``log_every_n_steps``); ``RunDirectory`` writes every step's record into msam_lab's run folder on rank 0.
Under ``strategy='ddp'`` the first pass runs under ``no_sync`` (ε follows each rank's shard),
the observation is reduced over ranks (every rank picks the same dominant modality) and one all-reduce
averages the update gradient, as ``MSAM.step(forward, labels)`` does around a DDP model.

Precision: '32-true' and 'bf16-mixed' (Lightning's autocast wraps the step's forwards). '16-mixed' is an
error: its GradScaler steps the optimizer without the closure and scales only the losses Lightning sees.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from msam_lab.models.multimodal import running_stats_kept
from msam_lab.optim.msam import MSAM, ShapleyRecord, coalition_logits
from msam_lab.runs.logger import RunLogger

UNSUPPORTED_PRECISION = ("16-mixed", "16", "16-true", "transformer-engine", "transformer-engine-float16")


def msam_of(module: pl.LightningModule):
    """(Lightning's optimizer wrapper, the ``MSAM`` inside it) of a module whose ``configure_optimizers`` returns
    M-SAM; checks the precision and points M-SAM's ``model`` at the DDP wrapper (for ``no_sync``)."""
    wrapped = module.optimizers()
    if isinstance(wrapped, list):
        wrapped = wrapped[0]
    opt = getattr(wrapped, "optimizer", wrapped)
    if not isinstance(opt, MSAM):
        raise TypeError(f"configure_optimizers must return msam_lab.MSAM(...), got {type(opt).__name__}")
    precision = str(module.trainer.precision)
    if precision in UNSUPPORTED_PRECISION:
        raise ValueError(
            f"Trainer(precision={precision!r}) steps M-SAM without its closure (a GradScaler): "
            "use precision='bf16-mixed' or '32-true'"
        )
    wrapper = module.trainer.strategy.model
    if isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
        opt.model = wrapper
    return wrapped, opt


def observe(module: pl.LightningModule, forward, labels, loss_fn=F.cross_entropy, coalitions=None) -> ShapleyRecord:
    """The batch's Shapley record before Lightning's ``opt.step(closure)`` (automatic optimization): call it
    from ``on_train_batch_start``. Logs it and keeps it as ``module.msam_record``."""
    _, opt = msam_of(module)
    rec = opt.observe(forward, labels, loss_fn, coalitions)
    _log(module, opt, rec)
    return rec


def manual_step(module: pl.LightningModule, forward, labels, loss_fn=F.cross_entropy, coalitions=None) -> ShapleyRecord:
    """One M-SAM update inside ``training_step`` under manual optimization: the clean pass and the observation
    (no gradient sync), θ+ε, the perturbed backward through ``module.manual_backward`` (DDP's one all-reduce,
    with the plain part added first), θ restored and the base step through Lightning's optimizer (so
    ``global_step``, hooks and schedulers see it). Returns the record (``loss``: the fused loss at θ)."""
    if module.automatic_optimization:
        raise ValueError("manual_step needs manual optimization: set self.automatic_optimization = False in __init__")
    wrapped, opt = msam_of(module)
    strategy = module.trainer.strategy
    full = frozenset(opt.modalities)
    unimodal = opt.options["variant"] == "unimodal"
    opt.zero_grad(set_to_none=True)
    block = getattr(strategy, "block_backward_sync", None)
    with block() if block is not None else torch.enable_grad():  # the first pass stays on this rank
        if unimodal:
            output = coalition_logits(forward, opt.modalities)
            rec = opt.observe(forward, labels, loss_fn, coalitions)
            loss = loss_fn(output[-1].detach(), labels)
            opt.backward(opt.split_losses(output, labels, loss_fn))
        else:
            loss = loss_fn(forward(full), labels)
            rec = opt.observe(forward, labels, loss_fn, coalitions)
            opt.backward(loss)
    keep = opt.options["bn_policy"] == "restore"

    def perturbed():  # at θ+ε (MSAM.step ran first_step)
        if strategy.world_size > 1:
            opt.add_plain()  # before the synchronised backward: DDP averages the sum
        with running_stats_kept(module, keep):
            again = coalition_logits(forward, opt.modalities) if unimodal else forward(full)
            module.manual_backward(opt.dominant_loss(again, labels, loss_fn))

    wrapped.step(closure=perturbed)
    rec.loss = float(loss.detach())
    _log(module, opt, rec)
    return rec


def logs_this_step(trainer) -> bool:
    """Whether the trainer's loggers write this step's metrics (``log_every_n_steps``; Lightning's own test,
    which is meant to be asked before the step). ``self.log`` costs about as much as a small model's step, so
    the record is logged only where it is written; without the internal, every step."""
    if not trainer.loggers:
        return False
    return bool(getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True))


def _log(module, opt, rec: ShapleyRecord) -> None:
    module.msam_record = rec
    if not logs_this_step(module.trainer):
        return
    values = {f"msam/share_{m}": float(v) for m, v in rec.shares.items()}
    values["msam/dominant"] = float(opt.modalities.index(rec.dominant))
    if not math.isnan(rec.loss):
        values["msam/loss"] = rec.loss
    module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)


class RunDirectory(pl.Callback):
    """Writes msam_lab's run folder (``msam_lab.RunLogger``) from rank 0: a steps.csv row per batch from
    ``module.msam_record`` (with the lr), an epochs.csv row per epoch, summary.json at the end. ``epoch_row``:
    ``(trainer, module) -> dict`` for that row, e.g. ``msam_lab.epoch_row(...)`` of your evaluation; by default
    the epoch's mean step loss as ``train_loss``. Other keyword arguments go to ``RunLogger``."""

    def __init__(self, out, epoch_row=None, **run_logger_kwargs):
        self.out, self.epoch_row, self.kwargs = out, epoch_row, run_logger_kwargs
        self.run: RunLogger | None = None
        self._losses: list[float] = []

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            _, opt = msam_of(pl_module)
            self.kwargs.setdefault(
                "epochs", trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            )
            self.run = RunLogger(self.out, opt.modalities, **self.kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rec = getattr(pl_module, "msam_record", None)
        if self.run is None or rec is None:
            return
        if math.isnan(rec.loss) and isinstance(outputs, dict) and torch.is_tensor(outputs.get("loss")):
            rec.loss = float(outputs["loss"].detach())  # automatic optimization: the closure's loss
        self._losses.append(rec.loss)
        self.run.log_step(rec, lr=float(msam_of(pl_module)[1].param_groups[0]["lr"]))
        pl_module.msam_record = None  # logged once

    def on_train_epoch_end(self, trainer, pl_module):
        row = self.epoch_row(trainer, pl_module) if self.epoch_row is not None else None
        if self.run is None:
            return
        if row is None:
            row = {"train_loss": sum(self._losses) / len(self._losses)} if self._losses else {}
        self._losses = []
        self.run.log_epoch(trainer.current_epoch + 1, row)

    def on_fit_end(self, trainer, pl_module):
        if self.run is not None:
            self.run.close()
            self.run = None

    def on_exception(self, trainer, pl_module, exception):
        if self.run is not None:
            self.run.__exit__(type(exception), exception, exception.__traceback__)
            self.run = None
