"""Each modality's own logits inside a fused model, for methods that score modalities (OGM-GE, ReconBoost).

Per fusion:

- ``late_sum`` (``SumFusion``): head m's output, ``heads[m](f_m)`` with its own bias;
- ``late_concat`` (``ConcatFusion``) with a linear head: modality m's block of the head
  weight times its features plus ``bias / M`` (OGM-GE's convention, which halves the bias
  for two modalities);
- ``early``, a concat fusion with an MLP head (``head_hidden``), any other fusion: the fused logits
  with only m present, the other modalities zeroed at the input (their encoders' all-zero features).

For both linear late fusions the M outputs sum exactly to the fused logits. Everything is
differentiable with respect to ``features`` and the head parameters; the zero features
of the generic path are computed without gradient, in eval mode, unless passed in.

(These are not AGM's Shapley-decomposed logits, which ``coalitions.decomposed_logits``
gives; for late fusion the two coincide up to how the bias is shared.)
"""

from __future__ import annotations

import torch
from torch import nn

from msam_lab.models import coalitions
from msam_lab.models.multimodal import ConcatFusion, MultimodalModel, SumFusion


@torch.no_grad()
def eval_zero_features(model: MultimodalModel) -> list[torch.Tensor]:
    """Each encoder's output for an all-zero input, in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return model.zero_features()
    finally:
        model.train(was_training)


def unimodal_logits(
    model: MultimodalModel, features: list[torch.Tensor], zero_features: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """List of M tensors (B, C): modality m's logits, by the rule of the model's fusion (module doc)."""
    fusion = model.fusion
    n_mod = len(features)
    if isinstance(fusion, SumFusion):
        return [head(f) for head, f in zip(fusion.heads, features)]
    if isinstance(fusion, ConcatFusion) and isinstance(fusion.head, nn.Linear):  # blocks exist only then
        weight, bias = fusion.head.weight, fusion.head.bias
        out, start = [], 0
        for f in features:
            block = weight[:, start : start + f.shape[1]]
            start += f.shape[1]
            logits = f @ block.t()
            out.append(logits if bias is None else logits + bias / n_mod)
        return out
    if zero_features is None:
        zero_features = eval_zero_features(model)
    masks = [1 << m for m in range(n_mod)]
    return list(coalitions.coalition_logits(model, features, zero_features, masks).unbind(0))
