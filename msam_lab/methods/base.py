"""What every training method shares: the base optimizer and the per-step observation.

A method owns the optimizer and does a whole update in ``step(inputs, labels)``,
returning a flat record for the step table. Every method records the same
Shapley observation of the batch (accuracy of each modality coalition at the
pre-step weights), so dominance can be compared across methods; M-SAM uses it
to decide, the others only log it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab import distributed, shapley
from msam_lab.config import Config
from msam_lab.datasets import Batch
from msam_lab.models import coalitions
from msam_lab.models.multimodal import MultimodalModel
from msam_lab.optim import base as optim
from msam_lab.optim import msam, schedules
from msam_lab.optim.precision import Precision


@dataclass
class Observation:
    """One batch's observation, on the model's device (no host sync; ``Method.record`` keeps it there)."""

    phi: np.ndarray | torch.Tensor  # Shapley values (M,), float64
    share: np.ndarray | torch.Tensor  # shares (M,), sum to one
    dominant: int | torch.Tensor  # index of the dominant modality (a 0-d int64 tensor)


class Method:
    name = "base"
    OPTIONS = None  # the method's own options dataclass (msam_lab.methods.options), None: no options

    def __init__(self, model: MultimodalModel, config: Config):
        self.validate_modalities(config, model.modalities)
        self.model = model
        self.config = config
        self._previous_dominant: int | None = None
        self.precision = Precision(config.precision, next(model.parameters()).device)
        self.lr_factor = 1.0  # the schedule's factor for this epoch (set_lr_factor)
        self.batch_samples = 0  # this rank's samples in the current step (train_step)
        self.optimizer = self.make_base_optimizer(model.parameters())

    def make_base_optimizer(self, params) -> torch.optim.Optimizer:
        return optim.make_optimizer(params, self.config)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer the lr schedule scales (methods with auxiliary ones extend it)."""
        return [self.optimizer]

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Method-specific config checks; raise ``ConfigError`` with the fix in the message."""

    @classmethod
    def validate_modalities(cls, config: Config, modalities: tuple[str, ...]) -> None:
        """Checks against the dataset's modalities (called at construction and by the sweep)."""

    # -- hooks the trainer calls -------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based); methods with schedules override it."""
        self.epoch = epoch

    def set_lr_factor(self, factor: float) -> float:
        """Scale every optimizer's lr to ``factor`` × its configured lr; return the base optimizer's lr."""
        self.lr_factor = factor
        for opt in self.optimizers():
            schedules.set_lr_factor(opt, factor)
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, inputs: Batch, labels: torch.Tensor, host: bool = True) -> dict:
        """``step`` under the configured precision: forwards autocast, the fp16 scale updated after.

        ``host=False``: the row as ``step`` made it, device values still there (the trainer's: its writer
        copies a whole flush of rows at once); True: read on the host (one sync)."""
        self.batch_samples = len(labels)  # the weight of this rank's shard in every reduction
        with self.precision.autocast():
            row = self.step(inputs, labels)
        overflow = self.precision.end_step()
        row = {**row, "overflow": int(overflow)} if self.precision.scaler is not None else row
        return shapley.rows_on_host([row])[0] if host else row

    def step(self, inputs: Batch, labels: torch.Tensor) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "previous_dominant": None if self._previous_dominant is None else int(self._previous_dominant),
            "precision": self.precision.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._previous_dominant = state.get("previous_dominant")
        self.precision.load_state_dict(state.get("precision", {}))

    # -- shared pieces -------------------------------------------------------------
    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels)

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """``loss.backward()``, scaled first under fp16 (every method backpropagates through here)."""
        self.precision.scale(loss).backward(**kwargs)

    def update(self, optimizer: torch.optim.Optimizer | None = None, clip: bool = True) -> None:
        """The last act of an update: unscale (fp16), clip as ``grad_clip`` says, step ``optimizer``.

        ``clip=False`` for auxiliary optimizers (CGGM's heads): the clip rule is about the model.
        """
        opt = self.optimizer if optimizer is None else optimizer
        c = self.config
        # data parallel: every rank steps with the global batch's gradient (inf/nan included, so an fp16
        # overflow is skipped on all ranks alike); clipping then sees the global norm
        distributed.average_gradients([p for g in opt.param_groups for p in g["params"]], self.batch_samples)
        self.precision.unscale(opt)
        if clip and c.grad_clip > 0:
            params = [p for g in opt.param_groups for p in g["params"]]
            optim.clip_gradients(params, c.grad_clip, c.grad_clip_rule, optim.output_weights(self.model))
        self.precision.step(opt)

    def observe(self, inputs: Batch, labels: torch.Tensor, features=None) -> Observation:
        """Shapley values, shares and dominant modality of this batch at the current weights: M-SAM's one
        ``observe`` (msam_lab.optim.msam), its coalitions through the fusion with each encoder run once.
        A BatchNorm model runs its encoders once more in eval mode, unless ``coalition_features`` is
        ``batch`` and the training pass's ``features`` are given (``coalitions.model_coalition_logits``)."""
        c = self.config
        model = self.model
        if 0 < c.shapley_batch < len(labels):
            # the training batches are shuffled, so their first N samples are a uniform subsample: with
            # BatchNorm encoders this shrinks the extra eval-mode encoder pass by B/N (bench/paper_step_cost.py)
            n = c.shapley_batch
            inputs, labels = {m: x[:n] for m, x in inputs.items()}, labels[:n]
            features = None if features is None else [f[:n] for f in features]
        names = model.modalities

        def logits(presents):
            masks = coalitions.masks_of(tuple(presents), names)
            return coalitions.model_coalition_logits(model, inputs, masks, features, c.coalition_features)

        phi, share, d = msam.observe_tensors(
            None,
            labels,
            names,
            loss_fn=None,
            share_rule=c.share_rule,
            tie_rule=c.tie_rule,
            shapley_value=c.shapley_value,
            exact_max=c.shapley_exact_max,
            n_permutations=c.shapley_permutations,
            seed=c.seed,
            previous=self._previous_dominant,
            share_temperature=c.share_temperature,
            coalitions=logits,
        )
        if c.dist_debug:
            distributed.check_same(int(d), "the dominant modality")
        self._previous_dominant = d
        return Observation(phi, share, d)

    def fused_backward(self, inputs: Batch, labels: torch.Tensor):
        """Train-mode forward, the Shapley observation at θ, fused CE, its gradient in ``p.grad``.

        The first half of most updates; returns ``(features, observation, loss)``.
        """
        model = self.model
        model.train()
        features = model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        loss = self.loss(model.fuse(features), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        return features, obs, loss

    def per_modality(self, **columns) -> dict:
        """``coef=[...]`` -> ``{"coef_image": ..., "coef_audio": ...}`` for the step table."""
        return {
            f"{key}_{name}": float(values[m])
            for key, values in columns.items()
            for m, name in enumerate(self.model.modalities)
        }

    def record(self, loss: torch.Tensor, obs: Observation, **extra) -> dict:
        """The step row; ``loss`` is the global batch's mean under data parallelism.

        Device values stay on the device (0-d tensors, the dominant modality a ``shapley.Pick``): the
        writer copies a whole flush of rows to the host at once (``runs.writer.rows_on_host``)."""
        names = self.model.modalities
        if distributed.active():
            loss = float(distributed.mean_over_ranks(float(loss.detach()), self.batch_samples))
        else:
            loss = loss.detach()
        on_device = torch.is_tensor(obs.dominant)
        row = {"loss": loss, "dominant": shapley.Pick(obs.dominant, names) if on_device else names[obs.dominant]}
        for m, name in enumerate(names):
            row[f"shapley_{name}"] = obs.phi[m] if on_device else float(obs.phi[m])
            row[f"share_{name}"] = obs.share[m] if on_device else float(obs.share[m])
        row.update(extra)
        return row
