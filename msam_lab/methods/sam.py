"""SAM (Foret et al. 2021): descend with the gradient taken at θ + ρ·g/‖g‖."""
from __future__ import annotations

import torch

from .. import optim
from ..models import running_stats_kept
from ..sam import SAM
from .base import Method


class SAMMethod(Method):
    name = "sam"

    def make_base_optimizer(self, params):
        c = self.config
        base, kwargs = optim.base_optimizer(c)
        self.sam = SAM(params, base, rho=c.rho, adaptive=c.adaptive, **kwargs)
        return self.sam.base_optimizer

    def perturbed_backward(self, loss_fn) -> torch.Tensor:
        """Backward of ``loss_fn()`` at the perturbed weights, BN statistics per ``bn_policy``."""
        with running_stats_kept(self.model, self.config.bn_policy == "restore"):
            loss = loss_fn()
            self.backward(loss)
        return loss

    def step(self, inputs, labels):
        _, obs, loss = self.fused_backward(inputs, labels)
        self.sam.first_step(zero_grad=True)
        self.perturbed_backward(lambda: self.loss(self.model(inputs), labels))
        self.sam.restore()
        self.update()
        return self.record(loss, obs)
