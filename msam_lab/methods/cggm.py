"""CGGM (Guo et al., NeurIPS 2024): classifier-guided gradient modulation.

Per batch, following the authors' code (zrguo/CGGM, ``src/msatrain.py`` and
``src/foodtrain.py``):

1. the fused cross-entropy, plus λ·L_gm of the PREVIOUS step (below), backward;
2. an auxiliary classifier per modality on the DETACHED unimodal features, trained with
   the sum of their cross-entropies by their own optimizer (here SGD with the base
   momentum and weight decay, lr ``cggm_cls_lr``; the code uses cls_lr = lr/2, so the
   default None means lr/2);
3. acc_m = batch accuracy of aux classifier m (its prediction before its own update);
   diff_m = acc_m(t) − acc_m(t−1) (acc(0) = 0);
       B_m = (Σ_k diff_k + ε − diff_m) / (Σ_k diff_k + ε),   ε = ``cggm_eps`` = 1e-8;
   a modality whose classifier improved the most gets the smallest B;
4. every parameter gradient of encoder m is multiplied by ρ·B_m (ρ = ``cggm_rho``);
5. the direction term for the next step,
       L_gm = (Σ_m |B_m| − Σ_m B_m·cos(w_aux_m, w_fus_m)) / M,
   where, as in the code, w_aux_m is aux classifier m's OUTPUT-LAYER WEIGHT and w_fus_m
   the fusion's output-layer weight (the code names them ``cls_grad``/``fusion_grad``
   but passes the weight tensors, not their gradients). Its gradient reaches only the
   fusion weight, evaluated at this step's values (the code keeps clones), and is added
   at the next step with weight λ (``cggm_lambda``);
6. the aux optimizer steps; the model's gradients are clipped to norm ``cggm_clip``
   (the code clips at 0.8 in every script), then the base optimizer steps.

Our analogue of "the fusion's output layer" for modality m: late_sum → head m's (last)
output-layer weight; late_concat with a linear head → modality m's column block of the head
weight; early, a concat MLP head (``head_hidden``) and other fusions → the last linear layer
of the fusion, shared by all m. Aux classifier m is
Linear(d_m, h) → ReLU → Linear(h, C) with h the input width of that fusion weight, so the
two weights have the same shape (the code's aux classifiers are small transformers with
the same output layer shape as the fusion's).

M ≥ 3: the formulas are per modality already (the code runs three modalities).

The published rule's blow-up, and the guard (``cggm_guard``, on by default). An accuracy
on a batch of N samples moves in steps of 1/N, so two classifiers' changes cancel exactly
(Σ diff = 0, diff ≠ 0) on a sizeable fraction of steps, and then B_m = 1 − diff_m/ε:
|B_m| ≥ 10⁸/N with opposite signs, one encoder pushed UP its loss. Without exact
cancellation |Σ diff| ≥ 1/N, so |B_m| ≤ 1 + N·|diff_m|, still negative for one modality
whenever the changes have mixed signs. The code has no guard at its own batch sizes
(64 for MOSI/MOSEI/IEMOCAP/BraTS, 128 for Food-101; accuracy granularity 1/64 for MOSI's
sign accuracy and IEMOCAP's 4 classes, 1/128 for Food-101; BraTS uses a Dice score,
continuous): only ``+ 1e-8`` and the gradient-norm clip at 0.8 (all
parameters). So it meets |B| = 1.6·10⁶ (N = 64, one sample's change) or 7.8·10⁵ (N = 128)
too; with two modalities whose accuracies only fluctuate (binomial batch noise, N = 64
or 128) that is 3–8 % of the steps, and some B is negative on about 20 % of all steps.

The guard clips B to [0, ``cggm_bound``] (default 1). All B_m lie in [0, 1] exactly when
every diff_m has the sign of Σ diff (B_m is then the fraction of the total change made by
the other modalities, the regime the rule describes); there the guarded B is the
published one bit for bit (so is any B already inside [0, bound]; the one ε-sized
exception: a classifier that alone got worse has published B = ε/(Σ diff + ε) ≈ −10⁻⁶,
guarded 0). Otherwise some |diff_m|
exceeds |Σ diff|, B is ill-conditioned (one sample more or less moves it by order N), and
the guard keeps the formula's sign pattern but saturates it: negative B → 0 (that
encoder pauses instead of ascending), B above the bound → the bound. With two modalities
and bound 1 the guarded B sums to 1 (up to ε) on every step on which some accuracy
changed, as the well-conditioned published B does, so the guard moves modulation between
the encoders and never adds any. ``cggm_guard=false`` is the code's
rule; a larger ``cggm_bound`` keeps more of its boosts above 1. The code also clips
gradients for all of its baselines; we clip only here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msam_lab import distributed
from msam_lab.config import ConfigError
from msam_lab.methods.base import Method
from msam_lab.methods.ogm_ge import check_min_modalities
from msam_lab.methods.options import MethodOptions
from msam_lab.models.multimodal import ConcatFusion, SumFusion, last_linear
from msam_lab.optim import base as optim


@dataclass
class CGGMOptions(MethodOptions):
    cggm_rho: float = 1.3  # CGGM ρ: encoder m's grads scaled by ρ·B_m
    cggm_lambda: float = 0.2  # λ of the direction term L_gm
    cggm_cls_lr: float | None = None  # aux classifiers' lr; None: lr/2 (code's cls_lr/lr)
    cggm_clip: float = 0.8  # grad-norm clip after modulation (code: 0.8; 0 = off)
    cggm_eps: float = 1e-8  # added to Σ diff in B_m
    cggm_guard: bool = True  # clip B_m to [0, cggm_bound] (ours; false: the code's unbounded B)
    cggm_bound: float = 1.0  # guard's upper bound: B's range when all diffs share a sign


def cggm_coefficients(acc_prev, acc_now, eps: float = 1e-8, bound: float | None = None) -> np.ndarray:
    """B_m = (Σ diff + ε − diff_m) / (Σ diff + ε) with diff = acc_now − acc_prev.

    ``bound``: the guarded form, B clipped to [0, bound] (None: the published, unbounded B).
    """
    diff = np.asarray(acc_now, dtype=float) - np.asarray(acc_prev, dtype=float)
    total = diff.sum() + eps
    coef = (total - diff) / total
    return coef if bound is None else np.clip(coef, 0.0, bound)


def fusion_output_weights(model) -> list[tuple[nn.Parameter, slice]]:
    """Per modality: (fusion output-layer weight, its column slice for that modality)."""
    fusion = model.fusion
    n_mod = len(model.modalities)
    if isinstance(fusion, SumFusion):
        return [(last_linear(h).weight, slice(None)) for h in fusion.heads]
    if isinstance(fusion, ConcatFusion) and isinstance(fusion.head, nn.Linear):
        out, start = [], 0
        for d in _feature_dims(model):
            out.append((fusion.head.weight, slice(start, start + d)))
            start += d
        return out
    output = last_linear(fusion)
    if output is None:
        raise ConfigError("cggm needs a fusion with a linear output layer")
    return [(output.weight, slice(None))] * n_mod


def _feature_dims(model) -> list[int]:
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            return [z.shape[1] for z in model.zero_features()]
        finally:
            model.train(was)


class AuxClassifier(nn.Module):
    def __init__(self, in_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out_layer(F.relu(self.hidden(x)))


class CGGM(Method):
    name = "cggm"
    OPTIONS = CGGMOptions

    def __init__(self, model, config):
        super().__init__(model, config)
        self.options = o = CGGMOptions.of(config)
        device = next(model.parameters()).device
        self.targets = fusion_output_weights(model)
        dims = _feature_dims(model)
        self.aux = nn.ModuleList(
            AuxClassifier(d, w[:, cols].shape[1], w.shape[0]) for d, (w, cols) in zip(dims, self.targets)
        ).to(device)
        cls_lr = config.lr / 2 if o.cggm_cls_lr is None else o.cggm_cls_lr
        self.aux_optimizer = optim.make_optimizer(self.aux.parameters(), config, cls_lr)
        self.acc_prev = np.zeros(len(model.modalities))
        self.pending: dict | None = None  # B and weight snapshots for next step's L_gm

    @classmethod
    def validate_config(cls, config) -> None:
        o = CGGMOptions.of(config)
        for name in ("cggm_rho", "cggm_lambda", "cggm_clip"):
            if getattr(o, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(o, name)}")
        if o.cggm_cls_lr is not None and o.cggm_cls_lr < 0:
            raise ConfigError(f"cggm_cls_lr must be >= 0 or null (lr/2), got {o.cggm_cls_lr}")
        if o.cggm_eps <= 0:
            raise ConfigError(f"cggm_eps must be > 0, got {o.cggm_eps}")
        if o.cggm_bound <= 0:
            raise ConfigError(f"cggm_bound must be > 0, got {o.cggm_bound}")

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        check_min_modalities(cls.name, modalities)

    # -- the direction term ------------------------------------------------------
    def direction_loss(self, coef, aux_weights, fusion_weights) -> torch.Tensor:
        """L_gm = (Σ|B| − Σ B_m·cos(w_aux_m, w_fus_m)) / M (differentiable in ``fusion_weights``)."""
        n_mod = len(coef)
        cos = [F.cosine_similarity(a.reshape(-1), w.reshape(-1), dim=0) for a, w in zip(aux_weights, fusion_weights)]
        return (float(np.abs(coef).sum()) - sum(float(b) * c for b, c in zip(coef, cos))) / n_mod

    def add_direction_grad(self) -> float:
        """Add λ·∂L_gm/∂w (at the snapshot values) to the fusion weights' grads; return L_gm."""
        p = self.pending
        if p is None:
            return float("nan")
        device = self.targets[0][0].device
        leaves = [w.detach().to(device).clone().requires_grad_(True) for w in p["fusion"]]
        l_gm = self.direction_loss(p["coef"], [a.to(device) for a in p["aux"]], leaves)
        lam = self.options.cggm_lambda
        if lam > 0:
            grads = torch.autograd.grad(l_gm, leaves)
            with torch.no_grad():
                for (param, cols), g in zip(self.targets, grads):
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    param.grad[:, cols] += lam * g
        return float(l_gm.detach())

    def step(self, inputs, labels):
        model, c = self.model, self.options
        features, obs, loss = self.fused_backward(inputs, labels)
        self.precision.unscale(self.optimizer)  # fp16: the direction term and the scaling below are unscaled
        l_gm_prev = self.add_direction_grad()

        self.aux_optimizer.zero_grad(set_to_none=True)
        aux_logits = [head(f.detach()) for head, f in zip(self.aux, features)]
        self.backward(sum(F.cross_entropy(z, labels) for z in aux_logits))
        acc_now = np.array([float((z.detach().argmax(1) == labels).float().mean()) for z in aux_logits])
        acc_now = distributed.mean_over_ranks(acc_now, len(labels))  # data parallel: the global batch's
        coef = cggm_coefficients(self.acc_prev, acc_now, c.cggm_eps, c.cggm_bound if c.cggm_guard else None)
        self.acc_prev = acc_now
        self.pending = {
            "coef": coef.tolist(),
            "aux": [h.out_layer.weight.detach().clone() for h in self.aux],
            "fusion": [w[:, cols].detach().clone() for w, cols in self.targets],
        }

        with torch.no_grad():
            for m, name in enumerate(model.modalities):
                for p in model.encoder_parameters(name):
                    if p.grad is not None:
                        p.grad.mul_(c.cggm_rho * float(coef[m]))
        self.update(self.aux_optimizer, clip=False)
        if c.cggm_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.cggm_clip)
        self.update()

        return self.record(loss, obs, l_gm=l_gm_prev, **self.per_modality(coef=coef, aux_acc=acc_now))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return super().optimizers() + [self.aux_optimizer]

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "aux": self.aux.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "acc_prev": self.acc_prev.tolist(),
            "pending": self.pending,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.aux.load_state_dict(state["aux"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.acc_prev = np.asarray(state["acc_prev"], dtype=float)
        self.pending = state["pending"]
