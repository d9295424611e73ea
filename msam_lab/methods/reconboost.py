"""ReconBoost (Hua et al., ICML 2024): modality-alternating boosting with ensemble correction.

Each modality m is one learner g_m = its encoder and its part of the head
(``unimodal_logits``: head m for late_sum; weight block m·f_m + bias/M for late_concat,
whose head plays the role of the code's shared "common space" head). The ensemble is

    F(x) = β · Σ_{m in ensemble} g_m(x_m),

with β a learnable scalar (the code's ``boost_rate``, initial value
``recon_boost_rate`` = 1.0). Training runs in stages, as the authors' ``train.py``
(huacong/ReconBoost, fixed schedule) does:

- stage s picks the active modality a = order[s mod M] (``recon_order``, default the
  dataset's modality order; the code's fixed round-robin);
- phase 1 (``recon_stage_epochs`` epochs, code 4): only learner a trains, by a fresh SGD
  optimizer over its parameters, on the boosting loss against the DETACHED ensemble of
  the other learners already in the ensemble,
      L = mean_i −(w1 − w2·p_i)/C · log softmax(g_a(x_i))[y_i],
      p_i = softmax(β·Σ_{m in ensemble, m≠a} g_m(x_i))[y_i]   (p_i = 1 while that set is empty,
  as the code's scalar ``c0`` start gives), w1, w2 = ``recon_weight1/2`` = 5, 1;
- then learner a joins (or re-joins) the ensemble;
- phase 2 (``recon_correct_epochs`` epochs, code 4): a fresh SGD optimizer over every
  learner in the ensemble and β minimises CE(F(x), y) ("correction").

Both phases use lr ``recon_lr`` (default: the run's lr; the code uses 0.01 for both), the
run's momentum and weight decay. With ``recon_stage_steps`` > 0 both phase lengths are
counted in optimisation steps instead (``recon_stage_steps``, ``recon_correct_steps``),
for short runs. Every step records ``active`` (the active modality in phase 1,
``ensemble`` in phase 2), ``stage``, ``phase`` and ``boost_rate``.

Evaluation: the trainer evaluates the model's fused logits. To make them the ensemble's,
every learner's head output layer starts at zero (only the output layer: with ``head_hidden``
an all-zero MLP is a saddle point that gets no gradient), so a learner that has not had
its stage yet adds nothing; for late_sum the fused logits then equal Σ_{m in ensemble} g_m exactly (and for
late_concat up to the shared bias b/M of learners not yet added), and β > 0 does not
change the argmax: ``test_acc`` is the ensemble's accuracy. With a concat MLP head
(``head_hidden``) the learners are the coalition logits head(f_m, zero features of the
others) and the fused logits head(f_1, ..., f_M) are not their sum: ``test_acc`` is then
the fused head's accuracy, not exactly the ensemble's.

Deliberate differences: early fusion has no per-modality learners and is rejected. The
code's "GA" term is MSE between two detached softmaxes, which has no gradient, so it is
left out. The code's learning-rate decay every 30 stages is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from msam_lab.config import ConfigError
from msam_lab.methods.base import Method
from msam_lab.methods.ogm_ge import check_min_modalities, check_stage_order
from msam_lab.methods.options import MethodOptions
from msam_lab.methods.unimodal_logits import unimodal_logits
from msam_lab.models.multimodal import ConcatFusion, SumFusion, last_linear
from msam_lab.optim import base as optim
from msam_lab.optim import schedules

LATE_FUSIONS = ("late_sum", "late_concat")


@dataclass
class ReconBoostOptions(MethodOptions):
    recon_stage_epochs: int = 4  # epochs the active learner trains
    recon_correct_epochs: int = 4  # then epochs of joint ensemble correction
    recon_stage_steps: int = 0  # > 0: count both phases in steps instead of epochs
    recon_correct_steps: int = 0
    recon_weight1: float = 5.0  # boosting loss weights (code: 5 and 1)
    recon_weight2: float = 1.0
    recon_boost_rate: float = 1.0  # initial learnable ensemble scale β
    recon_lr: float | None = None  # lr of both phases; None: lr (code: 0.01)
    recon_order: list = field(default_factory=list)  # stage order of modalities; []: dataset order


class ReconBoost(Method):
    name = "reconboost"
    OPTIONS = ReconBoostOptions

    def __init__(self, model, config):
        super().__init__(model, config)
        self.options = o = ReconBoostOptions.of(config)
        if not isinstance(model.fusion, (SumFusion, ConcatFusion)):
            raise ConfigError("reconboost needs per-modality learners; use fusion=late_sum or late_concat")
        names = list(model.modalities)
        self.order = [names.index(m) for m in (o.recon_order or names)]
        device = next(model.parameters()).device
        self.boost_rate = nn.Parameter(torch.tensor(float(o.recon_boost_rate), device=device))
        with torch.no_grad():
            heads = model.fusion.heads if isinstance(model.fusion, SumFusion) else [model.fusion.head]
            for head in heads:
                # only the OUTPUT layer: zeroing a hidden layer too (head_hidden) would leave
                # the MLP at a saddle (hidden activations 0, output weight 0: every gradient
                # but the output bias's is 0) and the run would never learn
                for p in last_linear(head).parameters():
                    p.zero_()
        self.ensemble: list[int] = []  # modality indices, in the order they (re)joined
        self.steps_done = 0
        self.epoch = 0
        self.phase_key: tuple[int, int] | None = None
        self.phase_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def validate_config(cls, config) -> None:
        if config.fusion not in LATE_FUSIONS:
            raise ConfigError(
                f"reconboost needs per-modality learners; use fusion=late_sum or late_concat (got {config.fusion})"
            )
        o = ReconBoostOptions.of(config)
        if o.recon_stage_steps < 0 or o.recon_correct_steps < 0:
            raise ConfigError("recon_stage_steps and recon_correct_steps must be >= 0")
        if o.recon_stage_steps == 0 and o.recon_stage_epochs < 1:
            raise ConfigError(f"recon_stage_epochs must be >= 1, got {o.recon_stage_epochs}")
        if o.recon_correct_epochs < 0:
            raise ConfigError(f"recon_correct_epochs must be >= 0, got {o.recon_correct_epochs}")
        if o.recon_weight1 < 0 or o.recon_weight2 < 0:
            raise ConfigError("recon_weight1 and recon_weight2 must be >= 0")
        if o.recon_lr is not None and o.recon_lr < 0:
            raise ConfigError(f"recon_lr must be >= 0 or null (the run's lr), got {o.recon_lr}")
        check_stage_order("recon_order", o.recon_order)

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        check_min_modalities(cls.name, modalities)
        check_stage_order("recon_order", ReconBoostOptions.of(config).recon_order, modalities)

    # -- schedule ------------------------------------------------------------------
    def schedule(self) -> tuple[int, int]:
        """(stage, phase) of the next step; phase 1 trains one learner, phase 2 corrects the ensemble."""
        c = self.options
        if c.recon_stage_steps > 0:
            first, second, t = c.recon_stage_steps, c.recon_correct_steps, self.steps_done
        else:
            first, second, t = c.recon_stage_epochs, c.recon_correct_epochs, self.epoch
        stage, within = divmod(t, first + second)
        return stage, 1 if within < first else 2

    def active_modality(self, stage: int) -> int:
        return self.order[stage % len(self.order)]

    def learner_parameters(self, m: int) -> list[nn.Parameter]:
        model = self.model
        params = model.encoder_parameters(model.modalities[m])
        head = model.fusion.heads[m] if isinstance(model.fusion, SumFusion) else model.fusion.head
        return params + list(head.parameters())

    def _join(self, m: int) -> None:
        if m in self.ensemble:
            self.ensemble.remove(m)
        self.ensemble.append(m)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return super().optimizers() + ([] if self.phase_optimizer is None else [self.phase_optimizer])

    def _optimizer(self, params) -> torch.optim.Optimizer:
        c = self.config
        lr = c.lr if self.options.recon_lr is None else self.options.recon_lr
        opt = optim.make_optimizer(params, c, lr)
        schedules.set_lr_factor(opt, self.lr_factor)  # a phase that starts mid-run takes the schedule's lr
        return opt

    def _phase_params(self, key) -> list[nn.Parameter]:
        stage, phase = key
        if phase == 1:
            return self.learner_parameters(self.active_modality(stage))
        params, seen = [], set()
        for m in self.ensemble:
            for p in self.learner_parameters(m):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params + [self.boost_rate]

    def _enter(self, key) -> None:
        """Start a new phase: the learner that finished phase 1 joins; a fresh optimizer (as the code)."""
        if self.phase_key is not None and self.phase_key[1] == 1:
            self._join(self.active_modality(self.phase_key[0]))
        self.phase_key = key
        self.phase_optimizer = self._optimizer(self._phase_params(key))

    # -- the ensemble --------------------------------------------------------------
    def ensemble_logits(self, learner_logits, members) -> torch.Tensor | None:
        """β·Σ_{m in members} g_m, or None for no members."""
        members = list(members)
        if not members:
            return None
        return self.boost_rate * sum(learner_logits[m] for m in members)

    def boosting_loss(self, logits_active, ensemble_others, labels) -> torch.Tensor:
        c = self.options
        n_classes = logits_active.shape[1]
        log_p = F.log_softmax(logits_active, dim=1).gather(1, labels[:, None]).squeeze(1)
        if ensemble_others is None:
            p_ens = torch.ones_like(log_p)
        else:
            p_ens = F.softmax(ensemble_others.detach(), dim=1).gather(1, labels[:, None]).squeeze(1)
        return (-(c.recon_weight1 - c.recon_weight2 * p_ens) * log_p / n_classes).mean()

    def step(self, inputs, labels):
        model = self.model
        key = self.schedule()
        if key != self.phase_key:
            self._enter(key)
        stage, phase = key
        model.train()
        features = model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        if phase == 1:
            a = self.active_modality(stage)
            logits = unimodal_logits(model, features)
            with torch.no_grad():
                others = self.ensemble_logits(logits, (m for m in self.ensemble if m != a))
            loss = self.boosting_loss(logits[a], others, labels)
            active = model.modalities[a]
        else:
            logits = unimodal_logits(model, features)
            loss = self.loss(self.ensemble_logits(logits, self.ensemble), labels)
            active = "ensemble"
        self.phase_optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        self.backward(loss)
        self.update(self.phase_optimizer)
        self.steps_done += 1
        return self.record(
            loss, obs, active=active, stage=stage, phase=phase, boost_rate=float(self.boost_rate.detach())
        )

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "boost_rate": self.boost_rate.detach().clone(),
            "ensemble": list(self.ensemble),
            "steps_done": self.steps_done,
            "epoch": self.epoch,
            "phase_key": self.phase_key,
            "phase_optimizer": None if self.phase_optimizer is None else self.phase_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.boost_rate.copy_(state["boost_rate"])
        self.ensemble = list(state["ensemble"])
        self.steps_done = int(state["steps_done"])
        self.epoch = int(state["epoch"])
        key = state["phase_key"]
        self.phase_key = None if key is None else tuple(key)
        if self.phase_key is not None:
            self.phase_optimizer = self._optimizer(self._phase_params(self.phase_key))
            if state["phase_optimizer"] is not None:
                self.phase_optimizer.load_state_dict(state["phase_optimizer"])
