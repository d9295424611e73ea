"""Joint training: cross-entropy on the fused output, one base-optimizer step."""
from __future__ import annotations

from .base import Method


class Joint(Method):
    name = "joint"

    def step(self, inputs, labels):
        self.model.train()
        features = self.model.encode(inputs)
        obs = self.observe(inputs, labels, features)
        loss = self.loss(self.model.fuse(features), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return self.record(loss, obs)
