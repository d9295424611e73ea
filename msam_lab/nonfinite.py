"""What a non-finite loss or gradient does to a training step (``nan_policy``).

Checked after each update, where one fused check sees everything: a non-finite gradient that was
applied leaves a non-finite parameter behind, so loss, gradients and parameters together catch it.

- ``stop``: raise ``NonFiniteError`` naming what was non-finite; the trainer marks the run failed.
- ``skip``: put the model and the method's whole state (optimizer, histories) back as they were
  before the batch and mark the step row ``skipped = 1``. This costs one copy of that state per
  step, which is why it is not the default.
"""
from __future__ import annotations

import copy
import math

import torch


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or parameter; ``what`` names it."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def first_non_finite(loss: float, model: torch.nn.Module, grads: bool = True) -> str | None:
    """``None`` when loss, gradients (unless ``grads=False``) and parameters are all finite, else what is not."""
    if not math.isfinite(loss):
        return f"loss ({loss})"
    tensors = [p.detach() for p in model.parameters()] + \
              [p.grad.detach() for p in model.parameters() if grads and p.grad is not None]
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return None                                   # the common case: one check, one sync
    for name, p in model.named_parameters():          # the rare case: name the culprit
        if grads and p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return f"gradient of {name}"
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name}"
    return "a tensor"


class StepGuard:
    """``StepGuard(policy, model, method).step(inputs, labels)`` -> the step row, with ``skipped``."""

    def __init__(self, policy: str, model, method):
        if policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be stop or skip, got {policy!r}")
        self.policy, self.model, self.method = policy, model, method

    def step(self, inputs, labels) -> dict:
        before = self._snapshot() if self.policy == "skip" else None
        row = self.method.train_step(inputs, labels)
        # fp16: inf gradients on an overflow are the GradScaler's business (it skipped the update and
        # lowered the scale); loss and parameters are still checked
        what = first_non_finite(row["loss"], self.model, grads=not row.get("overflow", 0))
        if what is None:
            return {**row, "skipped": 0}
        if self.policy == "stop":
            raise NonFiniteError(what)
        self.model.load_state_dict(before["model"])
        self.method.load_state_dict(before["method"])
        self.model.zero_grad(set_to_none=True)
        return {**row, "skipped": 1}

    def _snapshot(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "method": self.method.state_dict()})
