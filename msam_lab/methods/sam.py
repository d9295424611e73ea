"""SAM (Foret et al. 2021): descend with the gradient taken at θ + ρ·g/‖g‖."""

from __future__ import annotations

import torch

from msam_lab import distributed
from msam_lab.methods.base import Method
from msam_lab.models.multimodal import running_stats_kept
from msam_lab.optim import base as optim
from msam_lab.optim.sam import SAM


class SAMMethod(Method):
    name = "sam"

    def make_base_optimizer(self, params):
        c = self.config
        base, kwargs = optim.base_optimizer(c)
        self.sam = SAM(params, base, rho=c.rho, adaptive=c.adaptive, **kwargs)
        return self.sam.base_optimizer

    def ascend(self, only=None) -> None:
        """θ -> θ + ε from the current gradients (``only``: these parameters), gradients then zeroed.

        Data parallel: ε follows this rank's shard (the first pass is not synchronised, as under DDP's
        ``no_sync``), unless ``sam_epsilon=global`` averages the first-pass gradients first, so that ε is
        the one-process ε of the global batch, at the price of a second all-reduce per update.
        """
        if self.config.sam_epsilon == "global":
            distributed.average_gradients([p for g in self.sam.param_groups for p in g["params"]], self.batch_samples)
        self.sam.first_step(zero_grad=True, only=only)

    def perturbed_backward(self, loss_fn) -> torch.Tensor:
        """Backward of ``loss_fn()`` at the perturbed weights, BN statistics per ``bn_policy``."""
        with running_stats_kept(self.model, self.config.bn_policy == "restore"):
            loss = loss_fn()
            self.backward(loss)
        return loss

    def step(self, inputs, labels):
        _, obs, loss = self.fused_backward(inputs, labels)
        self.ascend()
        self.perturbed_backward(lambda: self.loss(self.model(inputs), labels))
        self.sam.restore()
        self.update()
        return self.record(loss, obs)
