"""OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation with generalisation enhancement.

Per batch, as the authors' ``main.py`` (GeWu-Lab/OGM-GE_CVPR2022) does it:

1. one plain backward of the fused cross-entropy;
2. score_m = Σ_i softmax(out_m)_i[y_i], with out_m modality m's unimodal logits
   (``unimodal_logits``: head m's output for late_sum; weight block·f_m + bias/M for
   late_concat, the code's convention; fused logits with only m present otherwise);
3. ratio ρ_m = score_m / score_weak and coefficient

       k_m = 1 − tanh(α·ρ_m)   if ρ_m > 1,     k_m = 1   otherwise.

   This is Eq. (10) of the paper and the released code, which writes it
   ``1 - tanh(alpha * relu(ratio))``: the relu is a no-op there because the branch
   is only taken for ratio > 1. We use exactly this form, NOT 1 − tanh(α·(ρ−1)): so
   the dominant modality's coefficient jumps from 1 to at most 1 − tanh(α) as soon
   as it leads;
4. inside the epoch window ``ogm_start_epoch <= epoch <= ogm_end_epoch`` (0-based,
   inclusive, as the code's ``modulation_starts <= epoch <= modulation_ends``), every
   encoder parameter's gradient g becomes k_m·g, plus, with ``ogm_noise`` (GE), noise
   N(0, std(g) + 1e-8) drawn per element, std taken over the unscaled gradient tensor
   (the code's "bug fixed" version). As in the code, the noise goes to every
   modality's encoder, the weaker one (k = 1) included;
5. the base optimizer steps.

M ≥ 3 modalities (the paper has two): each modality is compared with the WEAKEST one,
ρ_m = score_m / min_j score_j, so the weakest keeps k = 1 and every modality that leads
it is slowed by 1 − tanh(α·ρ_m). For M = 2 this is the original rule.

Deliberate differences: the code modulates only 4-D (convolution) weight gradients;
we modulate every parameter of the encoder (our MLP encoders have no convolutions, so
the literal rule would do nothing). At an exact tie of the scores the code slows
audio (its "else" branch), we slow nobody.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab import distributed
from msam_lab.config import ConfigError
from msam_lab.methods.base import Method
from msam_lab.methods.options import MethodOptions
from msam_lab.methods.unimodal_logits import unimodal_logits


def ogm_coefficients(scores, alpha: float) -> np.ndarray:
    """k_m = 1 − tanh(α·ρ_m) if ρ_m = score_m / min(score) > 1, else 1 (module doc)."""
    scores = np.asarray(scores, dtype=float)
    weakest = scores.min()
    coef = np.ones(len(scores))
    for m, s in enumerate(scores):
        ratio = s / weakest if weakest > 0 else (math.inf if s > 0 else 1.0)
        if ratio > 1:
            coef[m] = 1.0 - math.tanh(alpha * ratio)
    return coef


@dataclass
class OGMGEOptions(MethodOptions):
    ogm_alpha: float = 0.1  # OGM-GE α (README default; 0.8 suggested for CREMA-D)
    ogm_start_epoch: int = 0  # modulation window, 0-based and inclusive (code: 0..50)
    ogm_end_epoch: int = 50
    ogm_noise: bool = True  # GE: add N(0, std(grad)) to the modulated grads


def check_window(options, prefix: str) -> None:
    start, end = getattr(options, f"{prefix}_start_epoch"), getattr(options, f"{prefix}_end_epoch")
    if start < 0 or end < start:
        raise ConfigError(
            f"{prefix}_start_epoch/{prefix}_end_epoch must satisfy 0 <= start <= end, got {start} and {end}"
        )


def check_min_modalities(name: str, modalities, minimum: int = 2) -> None:
    if len(modalities) < minimum:
        raise ConfigError(
            f"{name} balances modalities and needs at least {minimum}; this dataset has "
            f"{len(modalities)} ({', '.join(modalities)}); use method=joint"
        )


def check_stage_order(field: str, order, modalities=None) -> None:
    """A stage order (ReconBoost's, MIE's): distinct names; with ``modalities``, each exactly once."""
    if not all(isinstance(m, str) for m in order) or len(set(order)) != len(order):
        raise ConfigError(f"{field} must be a list of distinct modality names, got {order!r}")
    if modalities is not None and order and sorted(order) != sorted(modalities):
        raise ConfigError(f"{field} must list each modality once: {', '.join(modalities)}; got {', '.join(order)}")


class OGMGE(Method):
    name = "ogm_ge"
    OPTIONS = OGMGEOptions

    def __init__(self, model, config):
        super().__init__(model, config)
        self.options = OGMGEOptions.of(config)

    @classmethod
    def validate_config(cls, config) -> None:
        o = OGMGEOptions.of(config)
        if o.ogm_alpha < 0:
            raise ConfigError(f"ogm_alpha must be >= 0, got {o.ogm_alpha}")
        check_window(o, "ogm")

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        check_min_modalities(cls.name, modalities)

    def active(self) -> bool:
        epoch = getattr(self, "epoch", 0)
        return self.options.ogm_start_epoch <= epoch <= self.options.ogm_end_epoch

    @torch.no_grad()
    def scores(self, features, labels) -> np.ndarray:
        """score_m = Σ_i softmax(out_m)_i[y_i] for every modality."""
        out = []
        for logits in unimodal_logits(self.model, [f.detach() for f in features]):
            p = F.softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            out.append(float(p))
        return distributed.sum_over_ranks(out)  # data parallel: the global batch's sums

    @torch.no_grad()
    def modulate(self, coef) -> None:
        """Scale each encoder's gradients by its coefficient, then add GE noise if enabled."""
        for m, name in enumerate(self.model.modalities):
            for p in self.model.encoder_parameters(name):
                if p.grad is None:
                    continue
                g = p.grad
                new = g * float(coef[m])
                if self.options.ogm_noise:
                    std = g.std().item() if g.numel() > 1 else 0.0
                    new = new + torch.randn_like(g) * (std + 1e-8)
                p.grad = new

    def step(self, inputs, labels):
        features, obs, loss = self.fused_backward(inputs, labels)
        scores = self.scores(features, labels)
        coef = ogm_coefficients(scores, self.options.ogm_alpha) if self.active() else np.ones(len(scores))
        if self.active():
            self.modulate(coef)
        self.update()
        return self.record(loss, obs, **self.per_modality(coef=coef, score=scores))
