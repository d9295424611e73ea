"""AGM (Li et al., ICCV 2023): adaptive gradient modulation on Shapley-decomposed logits.

Per batch, following the authors' code (AGM_ICCV2023: its two-modality MOSEI trainer
``run/MOSEI_main.py``, its three-modality UR-Funny trainer, defaults from ``utils/config.py``):

1. training forward through every coalition WITH gradient: features in train mode,
   absent modalities replaced by their encoders' all-zero features (also with
   gradient), the fusion run on all 2^M coalitions; out_m = modality m's Shapley
   decomposition of the logits with the empty coalition counted as zero
   (``coalitions.decomposed_logits``), so Σ_m out_m = f(all modalities) exactly. For
   two modalities out_a = ½[f(a,v) − f(0,v) + f(a,0)] (the code's ``Modality_Audio``),
   for three the code's 1/3, 1/6, 1/3 weights;
2. score s_m = mean_i −log softmax(out_m)_i[y_i], each term capped at −log 1e-8;
3. gaps against the others, current and running:
       r_m = exp(mean_{j≠m} s_j − s_m),      η_m = exp(mean_{j≠m} ŝ_j − ŝ_m),
   which is the code's exp(2·(mean − s_m)) for two modalities and
   exp(3/2·(mean − s_m)) for three (mean − s_m scaled by M/(M−1) is exactly
   mean_{j≠m} s_j − s_m); this is how we extend AGM to any M;
4. k_m = exp(α·min(η_m − r_m, agm_clip)): a modality doing better now than its history
   (relative to the others) has r_m > η_m and is slowed (k_m < 1); one doing worse is
   sped up. (DESIGN §3 abbreviates this as exp(α·(gap_running − gap_current)); the code
   compares the exponentials of the gaps, and so do we.) The two-modality code has no
   cap, the three-modality code caps at 7; we always cap (``agm_clip``) to avoid overflow;
5. running scores ŝ_m are updated AFTER computing k: the mean of all batch scores
   seen so far, ŝ ← ŝ·(t−1)/t + s/t with t the global step (the code; ŝ starts at 0,
   so the first step has η_m = 1), or an EMA ŝ ← μ·ŝ + (1−μ)·s with ``agm_momentum`` μ > 0;
6. loss = CE(Σ_m out_m, y); a backward hook on each out_m multiplies the gradient
   flowing back through it by k_m (the code's ``Modality_out`` hooks), then the base
   optimizer steps. Outside the window ``agm_start_epoch <= epoch <= agm_end_epoch``
   (0-based, inclusive) k_m = 1 and the update equals joint training's; scores are
   tracked regardless, as in the code.

Deliberate differences: the code runs its padded passes in eval mode; we compute zero
features in train mode (the same for models without BatchNorm/dropout, which are all our
models; for mode-dependent models they come from eval mode, as in the code). The code's
occasional gradient-norm clipping (when a head weight's gradient exceeds 1 or 5) is not
reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab import distributed, shapley
from msam_lab.config import ConfigError
from msam_lab.methods.base import Method
from msam_lab.methods.ogm_ge import check_min_modalities, check_window
from msam_lab.methods.options import MethodOptions
from msam_lab.models import coalitions
from msam_lab.models.multimodal import absent_features

SCORE_FLOOR = 1e-8


@dataclass
class AGMOptions(MethodOptions):
    agm_alpha: float = 1.0  # AGM α (code default)
    agm_start_epoch: int = 0  # modulation window, 0-based and inclusive (code: 0..20)
    agm_end_epoch: int = 20
    agm_momentum: float = 0.0  # 0: running score = mean of past batches (code); >0: EMA
    agm_clip: float = 7.0  # cap on η_m − r_m inside exp (3-modality code: 7)


def agm_scores(per_modality_logits, labels) -> np.ndarray:
    """s_m = mean_i −log p_m,i(y_i), each term capped at −log 1e-8 (the code's guard)."""
    out = []
    cap = -math.log(SCORE_FLOOR)
    for logits in per_modality_logits:
        nll = -F.log_softmax(logits.detach(), dim=1).gather(1, labels[:, None]).squeeze(1)
        out.append(float(nll.clamp(max=cap).mean()))
    return np.asarray(out)


def agm_gaps(scores) -> np.ndarray:
    """mean_{j≠m} s_j − s_m for every m (needs M ≥ 2)."""
    s = np.asarray(scores, dtype=float)
    return (s.sum() - s) / (len(s) - 1) - s


def agm_coefficients(scores, running, alpha: float, clip: float) -> np.ndarray:
    """k_m = exp(α·min(exp(gap(running)_m) − exp(gap(current)_m), clip))."""
    ratio = np.exp(agm_gaps(scores))
    optimal = np.exp(agm_gaps(running))
    return np.exp(alpha * np.minimum(optimal - ratio, clip))


class AGM(Method):
    name = "agm"
    OPTIONS = AGMOptions

    def __init__(self, model, config):
        super().__init__(model, config)
        self.options = AGMOptions.of(config)
        n_mod = len(model.modalities)
        self.running = np.zeros(n_mod)
        self.t = 0

    @classmethod
    def validate_config(cls, config) -> None:
        o = AGMOptions.of(config)
        if o.agm_alpha < 0:
            raise ConfigError(f"agm_alpha must be >= 0, got {o.agm_alpha}")
        if not 0.0 <= o.agm_momentum < 1.0:
            raise ConfigError(
                f"agm_momentum must be in [0, 1) (0: running mean as in the AGM code), got {o.agm_momentum}"
            )
        if o.agm_clip <= 0:
            raise ConfigError(f"agm_clip must be > 0, got {o.agm_clip}")
        check_window(o, "agm")

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        check_min_modalities(cls.name, modalities)
        if len(modalities) > shapley.EXACT_MAX:
            raise ConfigError(
                f"agm decomposes the logits exactly over all 2^M coalitions and supports at most "
                f"{shapley.EXACT_MAX} modalities; this dataset has {len(modalities)}"
            )

    def active(self) -> bool:
        epoch = getattr(self, "epoch", 0)
        return self.options.agm_start_epoch <= epoch <= self.options.agm_end_epoch

    def update_running(self, scores) -> None:
        self.t += 1
        mu = self.options.agm_momentum
        if mu == 0 or self.t == 1:
            self.running = self.running * (self.t - 1) / self.t + np.asarray(scores) / self.t
        else:
            self.running = mu * self.running + (1 - mu) * np.asarray(scores)

    def decomposed(self, features) -> torch.Tensor:
        """(M, B, C) Shapley-decomposed logits, with gradient."""
        n_mod = len(self.model.modalities)
        logits = coalitions.coalition_logits(
            self.model, features, absent_features(self.model), shapley.all_masks(n_mod)
        )
        return coalitions.decomposed_logits(logits)

    def step(self, inputs, labels):
        model, o = self.model, self.options
        model.train()
        features = model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        per_modality = self.decomposed(features).unbind(0)
        scores = distributed.mean_over_ranks(agm_scores(per_modality, labels), len(labels))  # the global batch's
        if self.active():
            coef = agm_coefficients(scores, self.running, o.agm_alpha, o.agm_clip)
        else:
            coef = np.ones(len(scores))
        self.update_running(scores)
        for out_m, k in zip(per_modality, coef):
            if k != 1.0:
                out_m.register_hook(lambda g, k=float(k): g * k)
        loss = self.loss(sum(per_modality), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.update()
        return self.record(loss, obs, **self.per_modality(coef=coef, score=scores))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "running": self.running.tolist(), "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.running = np.asarray(state["running"], dtype=float)
        self.t = int(state["t"])
