"""Landscape and sharpness metrics of a model msam_lab did not build, from the caller's forward.

``ForwardEvaluation(forward, batches, modalities)`` is what ``compute_surface`` and ``sharpness``
take in place of a ``MultimodalModel`` and a data split: ``forward(model, inputs, present) -> logits``
(the contract of msam_lab.analysis.forward_eval) over a fixed list of ``(inputs, labels)`` batches. Its
metrics are the built-in ones, by name (``surface.metric_names``): ``loss``/``acc`` of the fused model,
``*_only_<m>`` with only m present and ``*_without_<m>`` with m removed, each coalition one forward.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab.analysis.forward_eval import coalition_totals, present_of
from msam_lab.landscape.points import coalition_plan, fingerprint, metric_names


def batches_fingerprint(batches) -> str:
    """SHA-1 of every tensor in ``batches`` (inputs and labels, by position and key)."""

    flat = {}
    for i, (inputs, labels) in enumerate(batches):
        parts = inputs.items() if isinstance(inputs, dict) else [("", inputs)]
        flat.update({f"{i}:{k}": v for k, v in parts if torch.is_tensor(v)})
        flat[f"{i}:labels"] = labels
    return fingerprint(flat)


class ForwardEvaluation:
    def __init__(self, forward, batches, modalities: Sequence[str], per_modality: bool = True, loss_fn=F.cross_entropy):

        if not callable(forward):
            raise TypeError("forward must be a function forward(model, inputs, present) -> logits")
        self.forward = forward
        self.batches = list(batches)  # fixed: every point sees the same samples
        if not self.batches:
            raise ValueError("batches is empty: give the (inputs, labels) batches to evaluate on")
        self.modalities = tuple(modalities)
        self.per_modality = per_modality
        self.loss_fn = loss_fn
        self.masks, rows = coalition_plan(self.modalities, per_modality)
        self.rows = [r for _, r in rows]
        self.names = metric_names(self.modalities, per_modality)
        self.n = sum(len(labels) for _, labels in self.batches)
        self.sha1 = batches_fingerprint(self.batches)  # a saved surface is reused only on the same data

    def to(self, device) -> "ForwardEvaluation":
        """The batches moved to ``device`` (the model's), in place."""

        def move(x):
            return (
                x.to(device) if torch.is_tensor(x) else {k: move(v) for k, v in x.items()} if isinstance(x, dict) else x
            )

        self.batches = [(move(inputs), labels.to(device)) for inputs, labels in self.batches]
        return self

    @torch.no_grad()
    def __call__(self, model) -> np.ndarray:
        """Every metric (``self.names`` order) at the model's current parameters."""
        loss_sum, correct, n, _ = coalition_totals(
            model, self.forward, self.batches, self.modalities, self.masks, self.loss_fn
        )
        return np.array([v for r in self.rows for v in (loss_sum[r] / n, correct[r] / n)])

    def fused_loss(self, model):
        """A function giving the mean fused loss over the batches, with its graph (for Hessian products)."""
        full = present_of((1 << len(self.modalities)) - 1, self.modalities)

        def loss() -> torch.Tensor:
            total = 0
            for inputs, labels in self.batches:
                total = total + self.loss_fn(self.forward(model, inputs, full), labels) * len(labels)
            return total / self.n

        return loss
