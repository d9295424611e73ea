"""Joint training: cross-entropy on the fused output, one base-optimizer step."""

from __future__ import annotations

from msam_lab.methods.base import Method


class Joint(Method):
    name = "joint"

    def step(self, inputs, labels):
        _, obs, loss = self.fused_backward(inputs, labels)
        self.update()
        return self.record(loss, obs)
