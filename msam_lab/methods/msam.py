"""M-SAM in the trainer: an adapter over msam_lab.optim.msam.MSAM, where the algorithm lives (DESIGN §2).

The optimizer holds the split of the loss, ε and the plain part; this class feeds it the trainer's
forwards (each encoder once, the coalitions through the fusion), its observation (``Method.observe``:
``shapley_batch``, data parallel), and the trainer's update (``sam_epsilon``, ``bn_policy``, clipping).
``msam_variant`` is the optimizer's ``variant``, ``msam_dominant`` its ``dominant`` (the ablation of the
choice; refused with ``default``, whose ε names no modality). The step table keeps the Shapley-dominant
modality (``dominant``) beside the perturbed one (``perturbed``) and the amount of SAM (``rho_share``).
"""

from __future__ import annotations

import torch

from msam_lab import shapley
from msam_lab.config import ConfigError
from msam_lab.methods.sam import SAMMethod
from msam_lab.models import coalitions
from msam_lab.models.multimodal import absent_features
from msam_lab.optim import base as optim
from msam_lab.optim.msam import MSAM as MSAMOptimizer


class MSAM(SAMMethod):
    name = "msam"

    def make_base_optimizer(self, params):
        c, model = self.config, self.model
        base, kwargs = optim.base_optimizer(c)
        self.sam = MSAMOptimizer(
            params,
            base,
            modalities=model.modalities,
            model=model,
            rho=c.rho,
            adaptive=c.adaptive,
            variant=c.msam_variant,
            dominant=c.msam_dominant,
            seed=c.seed,
            bn_policy=c.bn_policy,
            precision=self.precision,
            **kwargs,
        )
        return self.sam.base_optimizer

    @property
    def perturbed(self) -> shapley.PerturbedModality:
        return self.sam.perturbed

    @classmethod
    def validate_config(cls, config) -> None:
        kind = config.msam_dominant.partition(":")[0]
        if kind not in ("shapley", "fixed", "random", "alternate"):
            raise ConfigError(
                f"msam_dominant must be one of {', '.join(shapley.DOMINANT_CHOICES)}, got {config.msam_dominant!r}"
            )
        if kind != "shapley" and config.msam_variant == "default":
            raise ConfigError(
                f"msam_dominant={config.msam_dominant} changes nothing with msam_variant=default "
                "(its ε names no modality); set msam_variant=params or unimodal"
            )

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        try:
            shapley.check_dominant_choice(config.msam_dominant, modalities)
        except ValueError as err:
            raise ConfigError(f"msam_dominant: {err}") from None

    def _coalition_logits(self, features):
        """Every coalition's logits with grad, from features: the unimodal variant's output."""
        masks = shapley.all_masks(len(self.model.modalities))
        return coalitions.coalition_logits(self.model, features, absent_features(self.model), masks)

    def step(self, inputs, labels):
        model, opt = self.model, self.sam
        model.train()
        features = model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        split = opt.choose(obs.share, obs.dominant)
        opt.zero_grad(set_to_none=True)
        if self.config.msam_variant == "unimodal":
            output = self._coalition_logits(features)
            with torch.no_grad():
                loss = self.loss(model.fuse(features), labels)
            opt.backward(opt.split_losses(output, labels, self.loss))

            def perturbed_loss():
                return opt.dominant_loss(self._coalition_logits(model.encode(inputs)), labels, self.loss)
        else:
            loss = self.loss(model.fuse(features), labels)
            opt.backward(loss)

            def perturbed_loss():
                return opt.dominant_loss(model(inputs), labels, self.loss)

        self.ascend()  # ε from ∇L_d(θ); params: the perturbed encoder only
        self.perturbed_backward(perturbed_loss)
        opt.restore()  # θ back, ∇L_s(θ) added
        self.update()
        c = split.perturbed  # a device index (default variant: no host sync) or an int
        perturbed = shapley.Pick(c, model.modalities) if torch.is_tensor(c) else model.modalities[c]
        return self.record(loss, obs, perturbed=perturbed, rho_share=split.v)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "perturbed": self.perturbed.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "perturbed" in state:  # checkpoints from before the ablation: a fresh choice
            self.perturbed.load_state_dict(state["perturbed"])
