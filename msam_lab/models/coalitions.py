"""Evaluate a model on coalitions of modalities (absent ones zeroed at the input).

The fast path runs each encoder once on the real inputs and once on a single
all-zero sample, then runs only the fusion for every coalition, all coalitions
stacked into one batch. It equals the naive path (zeroed inputs through the
whole network) whenever the encoders are in eval mode or have no BatchNorm or
dropout; ``tests/test_coalitions.py`` checks that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab import shapley
from msam_lab.datasets import Batch
from msam_lab.models.multimodal import MultimodalModel, eval_mode, is_mode_invariant


def present_of(mask: int, modalities) -> frozenset:
    """The modalities of coalition ``mask`` (bit m: modality m present)."""
    return frozenset(name for m, name in enumerate(modalities) if mask >> m & 1)


def coalition_logits(model: MultimodalModel, features: list[torch.Tensor],
                     zero_features: list[torch.Tensor], masks) -> torch.Tensor:
    """Logits (K, B, C) of coalitions ``masks`` from precomputed features."""
    return model.fuse_coalitions(features, zero_features, [int(k) for k in masks])


def coalition_logits_naive(model: MultimodalModel, inputs: Batch, masks) -> torch.Tensor:
    """Reference path: every coalition through the whole network with zeroed inputs."""
    outs = []
    for k in masks:
        present = {model.modalities[m] for m in shapley.members(int(k), len(model.modalities))}
        outs.append(model(inputs, present=present))
    return torch.stack(outs)


def decomposed_logits(all_coalition_logits: torch.Tensor) -> torch.Tensor:
    """Per-modality logits (M, B, C): the Shapley decomposition of the logit game.

    The empty coalition counts as zero (AGM's convention), so the M outputs
    sum exactly to the fused logits. For two modalities this is AGM's
    out_a = (f(a,v) - f(0,v) + f(a,0)) / 2.
    """
    game = all_coalition_logits.clone()
    game[0] = 0
    return shapley.exact_shapley(game)


@dataclass
class CoalitionStats:
    """Per-coalition accuracy and mean loss on one batch or data set."""

    accuracy: np.ndarray   # (2^M,)
    loss: np.ndarray       # (2^M,)


@torch.no_grad()
def eval_features(model: MultimodalModel, inputs: Batch):
    """Eval-mode features and zero features; restores every module's mode afterwards."""
    with eval_mode(model):
        return model.encode(inputs), model.zero_features()


@torch.no_grad()
def batch_coalition_stats(model: MultimodalModel, inputs: Batch, labels: torch.Tensor,
                          features: list[torch.Tensor] | None = None,
                          masks=None) -> CoalitionStats:
    """Accuracy and loss of every coalition in ``masks`` (default all) on one batch.

    ``features`` from a training forward may be passed in (detached) when the
    model is mode-invariant; otherwise the eval-mode features are computed.
    """
    n_mod = len(model.modalities)
    masks = shapley.all_masks(n_mod) if masks is None else masks
    invariant = getattr(model, "mode_invariant", None)
    invariant = is_mode_invariant(model) if invariant is None else invariant
    if features is not None and invariant:
        # train mode computes the same function: reuse the features, skip the mode switches
        logits = coalition_logits(model, [f.detach() for f in features], model.zero_features(), masks)
    else:
        feats, zeros = eval_features(model, inputs)
        with eval_mode(model):   # the fusion part too (an early-fusion trunk may hold BatchNorm)
            logits = coalition_logits(model, feats, zeros, masks)
    k, n, c = logits.shape
    correct = (logits.argmax(-1) == labels).float().mean(1)
    loss = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k), reduction="none").view(k, n).mean(1)
    return CoalitionStats(correct.cpu().numpy().astype(float), loss.cpu().numpy().astype(float))


def modality_shapley(stats_fn, n_modalities: int, value: str = "accuracy",
                     exact_max: int = shapley.EXACT_MAX, n_permutations: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Shapley values of the game S -> Acc(S) (or -loss(S)).

    ``stats_fn(masks) -> CoalitionStats`` evaluates a list of masks. Exact up
    to ``exact_max`` modalities, permutation sampling beyond.
    """
    if value not in ("accuracy", "loss"):
        raise ValueError(f"unknown Shapley value {value!r}; choose accuracy or loss")

    def values(masks):
        stats = stats_fn(masks)
        return stats.accuracy if value == "accuracy" else -stats.loss

    if n_modalities <= exact_max:
        return shapley.exact_shapley(values(shapley.all_masks(n_modalities)))
    return shapley.sampled_shapley(values, n_modalities, n_permutations, seed)
