"""MIE / IGM (IJCAI 2025, "Interactive Multimodal Learning via Flat Gradient Modification").

Rules as DESIGN §3b restates them, checked against the authors' code (njustkmg/IJCAI25-IGM,
``train_CREMA.py``, ``models/AudioVideo.py``, ``configs/crema.json``).

The model. The paper has no fusion head: each modality m is a learner, its encoder and its
own classifier head, and the test prediction is the mean of the unimodal softmaxes. Here a
learner is encoder m plus head m of a ``late_sum`` model (``head_hidden`` gives the code's
MLP heads), so checkpoints, coalitions, Shapley values and every analysis tool work on the
ordinary model. **Deviation:** the trainer evaluates the model's fused logits, Σ_m z_m,
whose argmax is that of the PRODUCT (geometric mean) of the unimodal softmaxes, not of
their arithmetic mean; ``mean_softmax_logits`` gives the paper's rule for post-hoc
evaluation. Heads start at random, as in the code. (A zeroed output layer, which would keep
a modality out of the fused logits until its stage, is a saddle: the encoder and hidden
layers get no gradient until the output layer has grown, and on AV-MNIST-mini at lr 1e-3
MIE stayed at chance for the whole run; tests/methods/test_leaves_chance.py.)

Stages (MLA-style). Stage s trains modality a = order[s mod M] (``mie_order``; default the
dataset's order; the code starts with audio) for ``mie_stage_epochs[s mod len]`` epochs
(code, CREMA-D: 25, 50, 25, 50, ...), or ``mie_stage_steps`` steps when > 0. A fresh
optimizer (the run's settings, the schedule's current lr) over learner a only, as the code
builds a fresh SGD each stage. **Deviation:** the code restarts each stage from the best
checkpoint (chosen on test F1); our method cannot see checkpoints, so it continues from the
current weights.

Per step, on learner a only:
1. mixup on modality a: λ ~ Beta(α, α) (α = ``mie_mixup_alpha``; α = 0: λ = 1) and a
   permutation π, both drawn from the method's own seeded generator (saved in
   ``state_dict``, so a resume draws the same); x̃ = λ·x + (1−λ)·x[π];
   L_ori = λ·CE(h(e(x̃)), y) + (1−λ)·CE(h(e(x̃)), y[π]);
2. per tensor p of learner a, from g_p = ∇_p L_ori: ε_p = ρ·g_p/‖g_p‖ (ρ = ``mie_rho``;
   each tensor normalised by its OWN norm, not a global one);
3. L_flat = CE(h_{θ+ε}(e(x̃)), y): the perturbed head on the pre-perturbation features of
   the mixed input, with the un-mixed labels y;
4. the gradient of L = w_ori·L_ori + w_flat·L_flat (0.7, 0.3);
5. from stage 2 on, each Linear weight gradient of learner a whose shape matches a Linear
   layer k of the previous stage's modality is right-multiplied by
   P_k = V·diag(exp(−T·(λ_i−λ_min)/(λ_max−λ_min)))·Vᵀ (T = ``mie_temperature``), V and λ
   from the SVD of layer k's accumulated input covariance Σ_b x̄_bᵀx̄_b (x̄_b the batch mean
   of the layer's input); once per matching layer, as the code. Conv layers are untouched;
6. ``mie_restore=false`` (the code): p ← θ+ε stays, the update is applied on top of it;
   ``true``: the update starts from θ (SAM-like). The code's ρ = 1e-10 is below float32
   resolution, so in its setting the perturbation does nothing either way.

The covariance. The code runs the finished stage's best checkpoint over the whole train set
in eval mode. **Deviation:** the Method interface sees only training batches, so the
covariance is accumulated by an eval-mode, no-grad forward of each clean (un-mixed) batch
through learner a during the stage's LAST epoch (every train sample once, at the weights of
that epoch), or during the whole stage when stages are counted in steps.

Also differing from the code: one ρ for encoder and head (the code has ``noise_ratio`` and
``noise_ratio_cls``, both 1e-10); a zero-norm gradient tensor gets ε = 0 (the code divides by
zero); the code's per-stage StepLR(40, 0.1) is the run's lr schedule here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msam_lab.config import ConfigError
from msam_lab.methods.base import Method
from msam_lab.methods.ogm_ge import check_min_modalities, check_stage_order
from msam_lab.methods.options import MethodOptions
from msam_lab.models.multimodal import SumFusion, eval_mode
from msam_lab.optim import base as optim
from msam_lab.optim import schedules


@dataclass
class MIEOptions(MethodOptions):
    mie_stage_epochs: list = field(default_factory=lambda: [25, 50])  # epochs of stage s (cycled; code CREMA-D)
    mie_stage_steps: int = 0  # > 0: every stage lasts this many steps instead (ours, short runs)
    mie_order: list = field(default_factory=list)  # stage order of modalities; []: dataset order (code: audio first)
    mie_mixup_alpha: float = 1.0  # λ ~ Beta(α, α); 0: no mixup (code mixup_alpha 1.0)
    mie_rho: float = 1e-10  # per-tensor step ρ·g/‖g‖ (code noise_ratio; nil in float32)
    mie_restore: bool = False  # undo ε before the update (code: never undone)
    mie_ori_weight: float = 0.7  # weight of the mixup loss (code 1 − flat_ratio)
    mie_flat_weight: float = 0.3  # weight of the flat loss (code flat_ratio 0.3)
    mie_temperature: float = 0.4  # T in exp(−T·(λ−λmin)/(λmax−λmin)) (code temperature1)


def mixup_draw(rng: np.random.Generator, n: int, alpha: float) -> tuple[float, np.ndarray]:
    """λ ~ Beta(α, α) (1 for α = 0) and a permutation of the batch, from ``rng``."""
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    return lam, rng.permutation(n)


def soft_projection(cov: torch.Tensor, temperature: float) -> torch.Tensor:
    """P = V·diag(exp(−T·(λ−λ_min)/(λ_max−λ_min)))·Vᵀ from the SVD of ``cov`` (identity if λ is flat)."""
    c = cov.detach().to("cpu", torch.float64)  # small (d×d); SVD in double on the CPU everywhere
    _, s, vh = torch.linalg.svd(c)
    spread = s.max() - s.min()
    if not spread > 0:
        p = torch.eye(c.shape[0], dtype=c.dtype)
    else:
        v = vh.mH
        p = v @ torch.diag(torch.exp(-temperature * (s - s.min()) / spread)) @ v.mH
    return p.to(cov.device, torch.float32)


def mean_softmax_logits(model, inputs) -> torch.Tensor:
    """log of the mean of a late_sum model's unimodal softmaxes: the paper's test prediction.

    Call it in eval mode under ``torch.no_grad()`` for evaluation (it runs the model as it is).
    """
    probs = [F.softmax(head(f), dim=1) for head, f in zip(model.fusion.heads, model.encode(inputs))]
    return torch.log(sum(probs) / len(probs))


def _positive_ints(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**63 for v in value)
    )


class MIE(Method):
    name = "mie"
    OPTIONS = MIEOptions

    def __init__(self, model, config):
        super().__init__(model, config)
        self.options = MIEOptions.of(config)
        if not isinstance(model.fusion, SumFusion):
            raise ConfigError(f"mie trains each modality's own head; use fusion=late_sum (got {config.fusion})")
        names = list(model.modalities)
        self.order = [names.index(m) for m in (self.options.mie_order or names)]
        self.rng = np.random.default_rng(config.seed)
        self.steps_done = 0
        self.epoch = 0
        self.stage: int | None = None
        self.stage_optimizer: torch.optim.Optimizer | None = None
        self.cov: dict[int, torch.Tensor] = {}  # this stage's modality, by index in linears(a)
        self.projections: dict[int, torch.Tensor] = {}  # the previous stage's modality, same keys

    @classmethod
    def validate_config(cls, config) -> None:
        if config.fusion != "late_sum":
            raise ConfigError(f"mie trains each modality's own head; use fusion=late_sum (got {config.fusion})")
        c = MIEOptions.of(config)
        if c.mie_stage_steps < 0:
            raise ConfigError(f"mie_stage_steps must be >= 0, got {c.mie_stage_steps}")
        if not _positive_ints(c.mie_stage_epochs):
            raise ConfigError(
                f"mie_stage_epochs must be a non-empty list of positive epoch counts, "
                f"e.g. [25, 50]; got {c.mie_stage_epochs!r}"
            )
        for name in ("mie_rho", "mie_mixup_alpha", "mie_temperature"):
            if getattr(c, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
        for name in ("mie_ori_weight", "mie_flat_weight"):
            if not 0 <= getattr(c, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(c, name)}")
        if c.mie_ori_weight == 0 and c.mie_flat_weight == 0:
            raise ConfigError("mie_ori_weight and mie_flat_weight are both 0: nothing would train; set one > 0")
        check_stage_order("mie_order", c.mie_order)

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        check_min_modalities(cls.name, modalities)
        check_stage_order("mie_order", MIEOptions.of(config).mie_order, modalities)

    # -- schedule ------------------------------------------------------------------
    def schedule(self) -> tuple[int, bool]:
        """(stage of the next step, whether it adds to the covariance: the stage's last epoch)."""
        c = self.options
        if c.mie_stage_steps > 0:
            return self.steps_done // c.mie_stage_steps, True
        lengths = c.mie_stage_epochs
        cycles, t = divmod(self.epoch, sum(lengths))
        stage = cycles * len(lengths)
        for length in lengths:
            if t < length:
                return stage, t == length - 1
            t -= length
            stage += 1
        raise AssertionError("unreachable: t < sum(lengths)")

    def active_modality(self, stage: int) -> int:
        return self.order[stage % len(self.order)]

    def learner_parameters(self, m: int) -> list[nn.Parameter]:
        return self.model.encoder_parameters(self.model.modalities[m]) + list(self.model.fusion.heads[m].parameters())

    def linears(self, m: int) -> list[nn.Linear]:
        """Learner m's Linear layers (encoder, then head): the layers the projection concerns."""
        modules = [*self.model.encoders[self.model.modalities[m]].modules(), *self.model.fusion.heads[m].modules()]
        return [mod for mod in modules if isinstance(mod, nn.Linear)]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return super().optimizers() + ([] if self.stage_optimizer is None else [self.stage_optimizer])

    def _stage_optimizer(self, stage: int) -> torch.optim.Optimizer:
        opt = optim.make_optimizer(self.learner_parameters(self.active_modality(stage)), self.config)
        schedules.set_lr_factor(opt, self.lr_factor)  # a stage that starts mid-run takes the schedule's lr
        return opt

    def _enter(self, stage: int) -> None:
        """A new stage: the finished one's covariances become projections; a fresh optimizer."""
        if self.stage is not None:
            t = self.options.mie_temperature
            self.projections = {k: soft_projection(cov, t) for k, cov in self.cov.items()}
            self.cov = {}
        self.stage = stage
        self.stage_optimizer = self._stage_optimizer(stage)

    # -- the pieces of a step --------------------------------------------------------
    @torch.no_grad()
    def accumulate_covariance(self, m: int, x: torch.Tensor) -> None:
        """Add x̄ᵀx̄ of each Linear layer's input (eval mode, clean batch ``x`` of modality m)."""

        def hook(k):
            def add(module, args, output):
                a = args[0].detach().float()
                mean = a.reshape(-1, a.shape[-1]).mean(0, keepdim=True)
                cov = mean.t() @ mean
                self.cov[k] = cov if k not in self.cov else self.cov[k] + cov

            return add

        handles = [layer.register_forward_hook(hook(k)) for k, layer in enumerate(self.linears(m))]
        try:
            with eval_mode(self.model):
                self.model.fusion.heads[m](self.model.encoders[self.model.modalities[m]](x))
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def perturbation(self, params) -> dict[int, torch.Tensor]:
        """ε_p = ρ·g_p/‖g_p‖ per tensor from the gradients in ``p.grad`` (by id; absent: ε = 0)."""
        rho = self.options.mie_rho
        eps = {}
        if rho == 0:
            return eps
        for p in params:
            if p.grad is None:
                continue
            norm = p.grad.norm()
            if torch.isfinite(norm) and norm > 0:  # fp16 overflow or a dead tensor: no step
                eps[id(p)] = rho * p.grad / norm
        return eps

    @torch.no_grad()
    def project(self, a: int, previous: int) -> None:
        """Right-multiply matching Linear weight gradients of learner a by the previous modality's P."""
        before = self.linears(previous)
        for layer in self.linears(a):
            if layer.weight.grad is None:
                continue
            for k, other in enumerate(before):
                if k in self.projections and other.weight.shape == layer.weight.shape:
                    layer.weight.grad.copy_(layer.weight.grad @ self.projections[k].to(layer.weight.grad.dtype))

    def step(self, inputs, labels):
        c, model = self.options, self.model
        stage, collect = self.schedule()
        if stage != self.stage:
            self._enter(stage)
        a = self.active_modality(stage)
        name = model.modalities[a]
        encoder, head = model.encoders[name], model.fusion.heads[a]
        obs = self.observe(inputs, labels)  # eval-mode, clean inputs, pre-step weights
        if collect:
            self.accumulate_covariance(a, inputs[name])

        lam, perm = mixup_draw(self.rng, len(labels), c.mie_mixup_alpha)
        perm = torch.as_tensor(perm, device=labels.device)
        x = inputs[name]
        model.train()
        features = encoder(lam * x + (1 - lam) * x[perm])
        logits = head(features)
        loss_ori = lam * self.loss(logits, labels) + (1 - lam) * self.loss(logits, labels[perm])

        params = self.learner_parameters(a)
        self.stage_optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        self.backward(loss_ori, retain_graph=True)  # g = ∇L_ori: the perturbation's direction
        eps = self.perturbation(params)
        perturbed = {n: p + eps[id(p)] if id(p) in eps else p for n, p in head.named_parameters()}
        loss_flat = self.loss(torch.func.functional_call(head, perturbed, (features,)), labels)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(c.mie_ori_weight)
        self.backward(c.mie_flat_weight * loss_flat)  # accumulates: w_ori·∇L_ori + w_flat·∇L_flat
        if stage > 0:
            self.project(a, self.active_modality(stage - 1))
        if not c.mie_restore:  # the code leaves θ+ε and steps from there
            with torch.no_grad():
                for p in params:
                    if id(p) in eps:
                        p.add_(eps[id(p)])
        self.update(self.stage_optimizer)
        self.steps_done += 1
        loss = c.mie_ori_weight * loss_ori.detach() + c.mie_flat_weight * loss_flat.detach()
        return self.record(
            loss,
            obs,
            stage=stage,
            active=name,
            lambda_mix=lam,
            loss_ori=float(loss_ori.detach()),
            loss_flat=float(loss_flat.detach()),
        )

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "rng": self.rng.bit_generator.state,
            "steps_done": self.steps_done,
            "epoch": self.epoch,
            "stage": self.stage,
            "stage_optimizer": None if self.stage_optimizer is None else self.stage_optimizer.state_dict(),
            "cov": {k: v.clone() for k, v in self.cov.items()},
            "projections": {k: v.clone() for k, v in self.projections.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]
        self.steps_done = int(state["steps_done"])
        self.epoch = int(state["epoch"])
        self.stage = state["stage"]
        device = next(self.model.parameters()).device  # a resume point is loaded onto the CPU
        self.cov = {int(k): v.to(device) for k, v in state["cov"].items()}
        self.projections = {int(k): v.to(device) for k, v in state["projections"].items()}
        self.stage_optimizer = None
        if self.stage is not None:
            self.stage_optimizer = self._stage_optimizer(self.stage)
            if state["stage_optimizer"] is not None:
                self.stage_optimizer.load_state_dict(state["stage_optimizer"])
