"""M-SAM: sharpness-aware minimisation of the dominant modality's share of the loss.

Per batch (DESIGN §2): Shapley values of coalition accuracy give shares v and
the dominant modality d; the loss splits into L_d (d's share) and L_s (the
rest); ε = ρ·∇L_d/‖∇L_d‖; the update gradient is ∇L_d(θ+ε) + ∇L_s(θ).

Variants (``msam_variant``):
- ``default``: L_d = v_d·ℓ, L_s = (1−v_d)·ℓ with ℓ the fused loss, so the update
  mixes the SAM and the plain gradient, g = v_d·∇ℓ(θ+ε) + (1−v_d)·∇ℓ(θ);
- ``unimodal``: L_m = v_m·CE(out_m) with out_m modality m's Shapley-decomposed
  logits, so ε really follows the dominant modality's own loss;
- ``params``: as default, but ε moves only the dominant encoder's parameters.

Ablation of the choice (``msam_dominant``, the paper's "fixed dominant modality"
question): ``shapley`` perturbs d; ``fixed:<m>``, ``random`` and ``alternate``
perturb another modality c (``shapley.PerturbedModality``). c takes d's place
entirely, share included: the shares of c and d are swapped before the split,
so L_c = v_d·(c's loss) and every arm applies the same amount of SAM, v_d; only
where ε points differs. (Using c's own share v_c instead would make SAM vanish
whenever c contributes nothing, v_c = 0, and the ablation would then measure
the amount of SAM, not its target; v = 1 would give the ablation arms more SAM
than the Shapley arm.) In ``default`` ε = ρ·∇ℓ/‖∇ℓ‖ names no modality, so the
choice could change nothing: it is refused there. The step table keeps the
Shapley-dominant modality (``dominant``) beside the perturbed one (``perturbed``);
the Shapley observation is made every step regardless.
"""
from __future__ import annotations

import torch

from msam_lab.models import coalitions
from msam_lab import shapley
from msam_lab.config import ConfigError
from msam_lab.models.multimodal import absent_features
from msam_lab.optim.sam import add_to_grads
from msam_lab.methods.sam import SAMMethod


class MSAM(SAMMethod):
    name = "msam"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.perturbed = shapley.PerturbedModality(config.msam_dominant, model.modalities, config.seed)

    @classmethod
    def validate_config(cls, config) -> None:
        kind = config.msam_dominant.partition(":")[0]
        if kind not in ("shapley", "fixed", "random", "alternate"):
            raise ConfigError(f"msam_dominant must be one of {', '.join(shapley.DOMINANT_CHOICES)}, "
                              f"got {config.msam_dominant!r}")
        if kind != "shapley" and config.msam_variant == "default":
            raise ConfigError(f"msam_dominant={config.msam_dominant} changes nothing with msam_variant=default "
                              "(its ε names no modality); set msam_variant=params or unimodal")

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        try:
            shapley.check_dominant_choice(config.msam_dominant, modalities)
        except ValueError as err:
            raise ConfigError(f"msam_dominant: {err}") from None

    def _unimodal_losses(self, features, zeros, labels, share, d):
        """(L_d, L_s) from each modality's decomposed logits (graph kept for both)."""
        n_mod = len(self.model.modalities)
        all_logits = coalitions.coalition_logits(self.model, features, zeros, shapley.all_masks(n_mod))
        per_modality = coalitions.decomposed_logits(all_logits)
        losses = [self.loss(per_modality[m], labels) for m in range(n_mod)]
        l_s = sum(float(share[m]) * losses[m] for m in range(n_mod) if m != d)
        return float(share[d]) * losses[d], l_s

    def step(self, inputs, labels):
        c, model = self.config, self.model
        model.train()
        features = model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        # d from here on is the perturbed modality: the Shapley-dominant one unless msam_dominant says otherwise
        d = self.perturbed(obs.dominant)
        share = shapley.swap_shares(obs.share, obs.dominant, d)
        v_d = float(share[d])
        params = [p for g in self.sam.param_groups for p in g["params"]]
        self.sam.zero_grad(set_to_none=True)

        if c.msam_variant == "unimodal":
            l_d, l_s = self._unimodal_losses(features, absent_features(model), labels, share, d)
            with torch.no_grad():
                loss = self.loss(model.fuse(features), labels)
            grads_s = (torch.autograd.grad(self.precision.scale(l_s), params, retain_graph=True, allow_unused=True)
                       if torch.is_tensor(l_s) else [None] * len(params))
            self.backward(l_d)

            def perturbed_loss():
                feats = model.encode(inputs)
                return self._unimodal_losses(feats, absent_features(model), labels, share, d)[0]
        else:
            loss = self.loss(model.fuse(features), labels)
            self.backward(loss)
            # ∇L_d(θ) = v_d·∇ℓ: the scale cancels in ε, so p.grad = ∇ℓ already points the right way.
            grads_s = [None if p.grad is None else (1.0 - v_d) * p.grad for p in params]

            def perturbed_loss():
                return v_d * self.loss(model(inputs), labels)

        only = model.encoder_parameters(model.modalities[d]) if c.msam_variant == "params" else None
        self.ascend(only)
        self.perturbed_backward(perturbed_loss)
        self.sam.restore()
        add_to_grads(params, grads_s)
        self.update()
        return self.record(loss, obs, perturbed=model.modalities[d], rho_share=v_d)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "perturbed": self.perturbed.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "perturbed" in state:            # checkpoints from before the ablation: a fresh choice
            self.perturbed.load_state_dict(state["perturbed"])
