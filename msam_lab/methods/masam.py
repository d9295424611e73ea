"""MASAM (ICLR 2026): SAM on the encoder of an adaptively chosen dominant modality.

"Multimodal Adaptive Sharpness-Aware Minimization for Heterogeneous Data Fusion", rules as
DESIGN §3b restates them from the released code (``Orange2107/MASAM-Multimodal-Adaptive-SAM``,
``models/masam.py`` and ``models/sam_decomp_closure.py``; read, not copied). Per batch:

1. clean pass at θ: an auxiliary linear head per modality on that modality's encoder
   features (owned by this method); L = L_mm + Σ_m L_m (fused CE + each head's CE). For every
   tensor p of encoder m keep a_p = ∇_p L_mm and u_p = ∇_p L_m, and the gradient of L;
2. APS picks the dominant modality d (``aps_scores``):
       Ē_m ← β·Ē_m + (1−β)·L_m     (first step: Ē_m = L_m, D_m = 0)
       D_m = max(0, L_m(previous batch) − Ē_m)   with Ē_m already including this batch
       S_m = mean over encoder-m tensors of cos(u_p, a_p)
       APS_m = w·D_m + (1−w)·S_m,   d = argmax APS (ties: the lowest index);
3. MDPS perturbs encoder d only (``mdps_perturbation``): q_p = (⟨u_p,a_p⟩/‖a_p‖²)·a_p if
   ⟨u_p,a_p⟩ ≥ 0 else a_p; ε = ρ·κ·q/‖q‖ over d's block, κ = cos(u, a) over the block if
   positive, else 1; BatchNorm statistics kept (``bn_policy``) in the pass at θ+ε;
4. restore θ; every encoder takes ∇L(θ+ε), the heads (fusion and auxiliary) the clean ∇L(θ).

``masam_mode=code`` follows the released code's quirks: κ is the cosine of the block's LAST
tensor only, and two modalities only. ``masam_aps=false`` (the default in code mode: the
README commands run it, since the YAML's ``dynamic_mode: true`` is overridden by argparse's
default) perturbs every encoder, each block normalised on its own (‖ε_m‖ = ρ·κ_m).

``aps_scores`` and ``mdps_perturbation`` are pure functions of per-modality lists of
gradient tensors, so they work on any model's parameter groups.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from msam_lab.config import ConfigError
from msam_lab.methods.ogm_ge import check_min_modalities
from msam_lab.methods.options import MethodOptions
from msam_lab.methods.sam import SAMMethod
from msam_lab.models.multimodal import eval_mode
from msam_lab.optim import base as optim
from msam_lab.optim.sam import add_to_grads

Mode = typing.Literal["paper", "code"]
MODES = typing.get_args(Mode)


@dataclass
class MASAMOptions(MethodOptions):
    masam_mode: Mode = "paper"  # paper | code (the released code's quirks); ρ is the shared `rho`
    masam_beta: float = 0.9  # EMA β of each unimodal loss (code: --momentum 0.9)
    masam_w: float = 0.5  # APS weight of the loss decay D vs alignment S (--score_weight)
    masam_aps: bool | None = None  # APS picks one encoder; false: perturb all; None: paper on, code off


# -- the rules, model-agnostic -------------------------------------------------------
def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32: the rules' dot products and norms must not run in fp16/bf16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _dot(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (_wide(u) * _wide(a)).sum()


def _cos(dot, uu, aa) -> float:
    """dot / (‖u‖·‖a‖), 0 when either is zero (as F.cosine_similarity gives for a zero vector)."""
    denom = float(uu) ** 0.5 * float(aa) ** 0.5
    return float(dot) / denom if denom > 0 else 0.0


def tensor_cosine(u: torch.Tensor, a: torch.Tensor) -> float:
    """cos(u_p, a_p) of one tensor, flattened."""
    return _cos(_dot(u, a), _dot(u, u), _dot(a, a))


def alignment(u, a) -> np.ndarray:
    """S_m: per modality, the mean over its tensors of cos(u_p, a_p) (0 for an empty block)."""
    return np.array(
        [float(np.mean([tensor_cosine(up, ap) for up, ap in zip(um, am)])) if um else 0.0 for um, am in zip(u, a)]
    )


def loss_decay(losses, state: dict | None, beta: float) -> tuple[np.ndarray, dict]:
    """D_m and the new EMA state, in the released code's order: EMA first, then D against it.

    ``state``: ``{"ema": [Ē_m], "last": [L_m of the previous batch]}`` or None (first step:
    Ē = L and D = 0). Returns ``(D, {"ema": ..., "last": losses})``.
    """
    losses = np.asarray(losses, dtype=float)
    if state is None or state.get("ema") is None:
        return np.zeros_like(losses), {"ema": losses.tolist(), "last": losses.tolist()}
    ema = beta * np.asarray(state["ema"], dtype=float) + (1 - beta) * losses
    decay = np.maximum(0.0, np.asarray(state["last"], dtype=float) - ema)
    return decay, {"ema": ema.tolist(), "last": losses.tolist()}


def aps_scores(u, a, losses, state: dict | None = None, beta: float = 0.9, w: float = 0.5) -> tuple[np.ndarray, dict]:
    """APS_m = w·D_m + (1−w)·S_m for every modality; the dominant one is ``argmax``.

    ``u[m]``/``a[m]``: the gradients of L_m / of L_mm for the tensors of modality m's encoder
    (same order, same shapes); ``losses[m]``: this batch's L_m; ``state``: what the previous
    call returned (None on the first step). The returned state carries ``ema`` and ``last``
    for the next call, plus this call's ``decay`` (D) and ``align`` (S) as read-outs.
    """
    decay, new_state = loss_decay(losses, state, beta)
    align = alignment(u, a)
    scores = w * decay + (1 - w) * align
    return scores, {**new_state, "decay": decay.tolist(), "align": align.tolist()}


def projected_direction(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """q_p: u_p projected on a_p when they agree (⟨u,a⟩ ≥ 0), else a_p itself (float32 or wider)."""
    u, a = _wide(u), _wide(a)
    dot, aa = (u * a).sum(), (a * a).sum()
    if dot < 0:
        return a.clone()
    # a_p = 0 means no direction to project on: q_p = 0 (the code's 0/0 would be NaN)
    return (dot / aa) * a if aa > 0 else torch.zeros_like(a)


def mdps_kappa(u, a, mode: str = "paper") -> float:
    """κ of one encoder block: cos(u, a) over the whole block (``code``: its last tensor only), 1 if ≤ 0."""
    if not u:
        return 1.0
    if mode == "code":
        cos = tensor_cosine(u[-1], a[-1])
    else:
        cos = _cos(sum(_dot(x, y) for x, y in zip(u, a)), sum(_dot(x, x) for x in u), sum(_dot(y, y) for y in a))
    return cos if cos > 0 else 1.0


def mdps_perturbation(u, a, rho: float, mode: str = "paper") -> list[torch.Tensor]:
    """ε_p = ρ·κ·q_p/‖q‖ for the tensors of ONE encoder block (lists of u_p, a_p); ‖ε‖ = ρ·κ.

    Float32 or wider, in the inputs' order; all zeros when q = 0.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    q = [projected_direction(x, y) for x, y in zip(u, a)]
    if not q:
        return []
    norm = torch.norm(torch.stack([t.norm() for t in q]))
    scale = rho * mdps_kappa(u, a, mode) / (float(norm) + 1e-12)
    return [scale * t for t in q]


# -- the method ------------------------------------------------------------------------
def auxiliary_heads(model) -> nn.ModuleList:
    """Linear(d_m, C) per modality on the encoder features, on the model's device and dtype."""
    p = next(model.parameters())
    with torch.no_grad(), eval_mode(model):
        zeros = model.zero_features()
        n_classes = model.fuse(zeros).shape[1]
    return nn.ModuleList(nn.Linear(z.shape[1], n_classes) for z in zeros).to(p.device, p.dtype)


class MASAM(SAMMethod):
    """A SAM-family method (so ``rho`` and ``bn_policy`` apply and sweeps grid ρ), but its ε is
    MDPS's, applied by hand: it has no ``self.sam`` wrapper."""

    name = "masam"
    OPTIONS = MASAMOptions

    def __init__(self, model, config):
        self.options = MASAMOptions.of(config)
        # built first: the base optimizer (made in Method.__init__) steps them with the model,
        # as the released code's single AdamW does
        self.aux = auxiliary_heads(model)
        super().__init__(model, config)
        self.aps_state: dict | None = None

    def make_base_optimizer(self, params):
        return optim.make_optimizer([{"params": list(params)}, {"params": list(self.aux.parameters())}], self.config)

    @classmethod
    def validate_config(cls, config) -> None:
        o = MASAMOptions.of(config)
        if o.masam_mode not in MODES:
            raise ConfigError(f"masam_mode must be one of {', '.join(MODES)}, got {o.masam_mode!r}")
        if not 0 <= o.masam_beta < 1:
            raise ConfigError(f"masam_beta (the loss EMA's β) must be in [0, 1), got {o.masam_beta}")
        if not 0 <= o.masam_w <= 1:
            raise ConfigError(f"masam_w (APS weight of the loss decay) must be in [0, 1], got {o.masam_w}")
        if config.adaptive:
            raise ConfigError("masam has no adaptive (ASAM) form; set adaptive=false")

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        check_min_modalities(cls.name, modalities)
        if MASAMOptions.of(config).masam_mode == "code" and len(modalities) != 2:
            raise ConfigError(
                f"masam_mode=code follows the released code, which runs two modalities; this "
                f"dataset has {len(modalities)} ({', '.join(modalities)}); use masam_mode=paper"
            )

    def uses_aps(self) -> bool:
        aps = self.options.masam_aps
        return self.options.masam_mode == "paper" if aps is None else aps

    def _clean_pass(self, inputs, labels):
        """Forward at θ, the Shapley observation, p.grad = ∇L(θ); returns what the rules need."""
        model = self.model
        model.train()
        self.aux.train()
        features = model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        loss_mm = self.loss(model.fuse(features), labels)
        aux_losses = [self.loss(head(f), labels) for head, f in zip(self.aux, features)]
        blocks = [[p for p in model.encoder_parameters(m) if p.requires_grad] for m in model.modalities]
        encoder = [p for b in blocks for p in b]
        aux = list(self.aux.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        # L_m reaches only encoder m (and head m), so ∇ of Σ_m L_m on encoder m's block is u = ∇L_m
        uni = torch.autograd.grad(
            self.precision.scale(sum(aux_losses)), encoder + aux, retain_graph=True, allow_unused=True
        )
        self.backward(loss_mm)  # p.grad = a on the encoders
        multi = [None if p.grad is None else p.grad.clone() for p in encoder]
        add_to_grads(encoder + aux, uni)  # p.grad = ∇L(θ) everywhere
        # per block only the tensors both losses reach (fp16: all scaled alike, the rules are scale-free)
        grads = dict(zip(encoder, zip(uni, multi)))
        kept = [[p for p in b if grads[p][0] is not None and grads[p][1] is not None] for b in blocks]
        u = [[grads[p][0] for p in b] for b in kept]
        a = [[grads[p][1] for p in b] for b in kept]
        return obs, loss_mm, [float(x.detach()) for x in aux_losses], kept, u, a

    def step(self, inputs, labels):
        model, c, o = self.model, self.config, self.options
        obs, loss_mm, aux_losses, blocks, u, a = self._clean_pass(inputs, labels)
        encoders = set(model.encoders.parameters())
        heads = [p for p in list(model.parameters()) + list(self.aux.parameters()) if p not in encoders]
        clean_heads = [None if p.grad is None else p.grad.clone() for p in heads]

        scores, self.aps_state = aps_scores(u, a, aux_losses, self.aps_state, o.masam_beta, o.masam_w)
        d = int(np.argmax(scores))
        perturbed = [d] if self.uses_aps() else list(range(len(blocks)))
        kappas = [mdps_kappa(u[m], a[m], o.masam_mode) for m in range(len(blocks))]

        device = next(model.parameters()).device
        saved = []
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for m in perturbed:
                for p, e in zip(blocks[m], mdps_perturbation(u[m], a[m], c.rho, o.masam_mode)):
                    saved.append((p, p.detach().clone()))
                    p.add_(e.to(p.dtype))
        torch.clear_autocast_cache()  # the perturbed forward must not reuse cached copies of θ

        def perturbed_loss():
            features = model.encode(inputs)
            return self.loss(model.fuse(features), labels) + sum(
                self.loss(head(f), labels) for head, f in zip(self.aux, features)
            )

        self.optimizer.zero_grad(set_to_none=True)
        self.perturbed_backward(perturbed_loss)  # BN statistics kept as bn_policy says

        with torch.no_grad():
            for p, old in saved:
                p.copy_(old)  # θ back bit for bit
            for p, g in zip(heads, clean_heads):
                p.grad = g  # heads: the clean ∇L(θ)
        torch.clear_autocast_cache()
        self.update()

        names = model.modalities
        # both choices are computed here: does M-SAM's Shapley-dominant modality agree with MASAM's APS?
        return self.record(
            loss_mm,
            obs,
            aps_dominant=names[d],
            aps_agrees=int(d == obs.dominant),
            kappa=float(np.mean([kappas[m] for m in perturbed])),
            loss_total=float(loss_mm.detach()) + sum(aux_losses),
            **self.per_modality(
                aps=scores,
                decay=self.aps_state["decay"],
                align=self.aps_state["align"],
                kappa=kappas,
                aux_loss=aux_losses,
            ),
        )

    def state_dict(self) -> dict:
        return {**super().state_dict(), "aux": self.aux.state_dict(), "aps_state": self.aps_state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.aux.load_state_dict(state["aux"])
        self.aps_state = state["aps_state"]
