"""The metrics of msam_lab's own runs for a model msam_lab did not build, from its forward alone.

``forward(model, inputs, present) -> logits`` computes the model's logits on a batch with only the
modalities in ``present`` (the caller decides how the others are removed: zeros, mask tokens,
dropped tokens). ``batches`` is a re-iterable of ``(inputs, labels)``. ``evaluate_forward`` returns
the keys ``metrics.evaluate`` returns for a ``MultimodalModel``, with the same meaning:

- ``loss``, ``acc``: the fused model;
- ``acc_<m>``: accuracy of modality m's Shapley-decomposed logits (AGM's definition; the empty
  coalition counts as zero logits, so the M parts sum to the fused logits);
- ``acc_only_<m>``: accuracy with only m present;
- ``shapley_<m>``, ``share_<m>``, ``dominant``: exact Shapley values of coalition accuracy (or of −loss).

Every coalition is one call of ``forward`` (2^M − 1 per batch, the empty one included for its value).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msam_lab import shapley
from msam_lab.models import coalitions
from msam_lab.models.coalitions import present_of  # noqa: F401  (re-exported)
from msam_lab.models.multimodal import eval_mode


@torch.no_grad()
def coalition_totals(model, forward, batches, modalities, masks, loss_fn=F.cross_entropy, decompose=False):
    """Per mask: summed loss and correct count over ``batches``; also the decomposed correct counts
    per modality when ``decompose`` (``masks`` must then be every mask, in order). Returns
    ``(loss_sum, correct, n, decomposed_correct | None)`` as float64 arrays and the sample count."""
    masks = [int(m) for m in masks]
    if decompose and masks != list(range(1 << len(modalities))):
        raise ValueError("decompose needs every coalition mask 0 .. 2^M - 1, in order")
    logit_batches = (
        (torch.stack([forward(model, inputs, present_of(mask, modalities)) for mask in masks]).float(), labels)
        for inputs, labels in batches
    )
    loss_sum, correct, n, parts = coalitions.coalition_totals(logit_batches, loss_fn, decompose)
    if n == 0:
        raise ValueError("batches is empty: give at least one (inputs, labels) batch")
    return loss_sum, correct, n, parts


def evaluate_forward(
    model,
    forward,
    batches,
    modalities,
    loss_fn=F.cross_entropy,
    share_rule: str = "clip",
    shapley_value: str = "accuracy",
    share_temperature: float = 1.0,
) -> dict:
    """Loss, accuracy, per-modality accuracies and Shapley shares (see the module docstring), eval mode."""
    names = tuple(modalities)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"modalities must be distinct names, e.g. ('image', 'audio'); got {names!r}")
    if len(names) > shapley.EXACT_MAX:
        raise ValueError(
            f"evaluate_forward computes exact Shapley values: at most {shapley.EXACT_MAX} modalities, got {len(names)}"
        )
    masks = list(range(1 << len(names)))
    with eval_mode(model):
        loss_sum, correct, n, parts = coalition_totals(model, forward, batches, names, masks, loss_fn, decompose=True)
    acc, loss = correct / n, loss_sum / n
    phi = shapley.exact_shapley(acc if shapley_value == "accuracy" else -loss)
    share = shapley.shares(phi, share_rule, share_temperature, [loss[1 << m] for m in range(len(names))])
    return coalitions.game_summary(names, acc, loss, phi, share, parts / n)
