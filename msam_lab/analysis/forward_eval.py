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
from msam_lab.models.coalitions import decomposed_logits, present_of  # noqa: F401  (present_of: re-exported)
from msam_lab.models.multimodal import eval_mode


@torch.no_grad()
def coalition_totals(model, forward, batches, modalities, masks, loss_fn=F.cross_entropy, decompose=False):
    """Per mask: summed loss and correct count over ``batches``; also the decomposed correct counts
    per modality when ``decompose`` (``masks`` must then be every mask, in order). Returns
    ``(loss_sum, correct, n, decomposed_correct | None)`` as float64 arrays and the sample count."""
    masks = [int(m) for m in masks]
    if decompose and masks != list(range(1 << len(modalities))):
        raise ValueError("decompose needs every coalition mask 0 .. 2^M - 1, in order")
    totals, parts, n = None, None, 0       # summed on the device: one host sync at the end, not two per coalition
    for inputs, labels in batches:
        logits = torch.stack([forward(model, inputs, present_of(mask, modalities)) for mask in masks]).float()
        loss = torch.stack([loss_fn(z, labels) for z in logits]).double() * len(labels)   # loss_fn: a batch mean
        batch = torch.stack([loss, (logits.argmax(-1) == labels).sum(1).double()])
        totals = batch if totals is None else totals + batch
        if decompose:
            right = (decomposed_logits(logits).argmax(-1) == labels).sum(1).double()
            parts = right if parts is None else parts + right
        n += len(labels)
    if n == 0:
        raise ValueError("batches is empty: give at least one (inputs, labels) batch")
    totals = totals.cpu().numpy()
    return totals[0], totals[1], n, None if parts is None else parts.cpu().numpy()


def evaluate_forward(model, forward, batches, modalities, loss_fn=F.cross_entropy, share_rule: str = "clip",
                     shapley_value: str = "accuracy", share_temperature: float = 1.0) -> dict:
    """Loss, accuracy, per-modality accuracies and Shapley shares (see the module docstring), eval mode."""
    names = tuple(modalities)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"modalities must be distinct names, e.g. ('image', 'audio'); got {names!r}")
    if len(names) > shapley.EXACT_MAX:
        raise ValueError(f"evaluate_forward computes exact Shapley values: at most {shapley.EXACT_MAX} "
                         f"modalities, got {len(names)}")
    masks = list(range(1 << len(names)))
    with eval_mode(model):
        loss_sum, correct, n, parts = coalition_totals(model, forward, batches, names, masks, loss_fn,
                                                       decompose=True)
    acc, loss = correct / n, loss_sum / n
    phi = shapley.exact_shapley(acc if shapley_value == "accuracy" else -loss)
    share = shapley.shares(phi, share_rule, share_temperature, [loss[1 << m] for m in range(len(names))])
    full = masks[-1]
    out = {"loss": float(loss[full]), "acc": float(acc[full])}
    for m, name in enumerate(names):
        out[f"acc_{name}"] = float(parts[m] / n)
        out[f"acc_only_{name}"] = float(acc[1 << m])
        out[f"shapley_{name}"] = float(phi[m])
        out[f"share_{name}"] = float(share[m])
    out["dominant"] = names[shapley.dominant(share)]
    return out
