"""Evaluate a model on coalitions of modalities (absent ones zeroed at the input).

The fast path runs each encoder once on the real inputs and once on a single
all-zero sample, then runs only the fusion for every coalition, all coalitions
stacked into one batch. It equals the naive path (zeroed inputs through the
whole network) whenever the encoders are in eval mode or have no BatchNorm or
dropout; ``tests/models/test_coalitions.py`` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab import shapley
from msam_lab.datasets import Batch
from msam_lab.models.multimodal import MultimodalModel, eval_mode, is_mode_invariant


def present_of(mask: int, modalities) -> frozenset:
    """The modalities of coalition ``mask`` (bit m: modality m present)."""
    return frozenset(name for m, name in enumerate(modalities) if mask >> m & 1)


@lru_cache(maxsize=256)
def presents_of(masks: tuple[int, ...], modalities: tuple[str, ...]) -> tuple[frozenset, ...]:
    """``present_of`` of each mask; a step's observation asks for the same ones every time (a tuple: shared)."""
    return tuple(present_of(mask, modalities) for mask in masks)


@lru_cache(maxsize=256)
def masks_of(presents: tuple[frozenset, ...], modalities: tuple[str, ...]) -> tuple[int, ...]:
    """The inverse of ``presents_of``: each coalition's mask (bit m: ``modalities[m]`` present)."""
    return tuple(shapley.mask_of([m for m, name in enumerate(modalities) if name in p]) for p in presents)


def coalition_logits(
    model: MultimodalModel, features: list[torch.Tensor], zero_features: list[torch.Tensor], masks
) -> torch.Tensor:
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

    accuracy: np.ndarray  # (2^M,)
    loss: np.ndarray | None  # (2^M,); None where the observation needs no losses (optim.msam.observe_tensors)


@torch.no_grad()
def eval_features(model: MultimodalModel, inputs: Batch):
    """Eval-mode features and zero features; restores every module's mode afterwards."""
    with eval_mode(model):
        return model.encode(inputs), model.zero_features()


def coalition_losses(logits: torch.Tensor, labels: torch.Tensor, loss_fn=None, total: bool = False) -> torch.Tensor:
    """Each coalition's mean loss (``total``: summed over the batch), float64, from logits (K, B, C).

    ``loss_fn`` None: cross-entropy of all K coalitions in one call (msam_lab's own models); else
    ``loss_fn(logits_k, labels)``, a batch mean, once per coalition (a caller's own loss).
    """
    k, n, c = logits.shape
    if loss_fn is None:
        per_sample = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k), reduction="none").view(k, n)
        return (per_sample.sum(1) if total else per_sample.mean(1)).double()
    means = torch.stack([loss_fn(z, labels) for z in logits]).double()
    return means * n if total else means


def coalition_stats(logits: torch.Tensor, labels: torch.Tensor, loss_fn=None) -> CoalitionStats:
    """Accuracy and mean loss of each coalition of logits (K, B, C) on one batch: the observation's game."""
    accuracy = (logits.argmax(-1) == labels).float().mean(1)
    both = torch.stack([accuracy.double(), coalition_losses(logits, labels, loss_fn)]).cpu().numpy()  # one host sync
    return CoalitionStats(both[0], both[1])


@torch.no_grad()
def coalition_totals(logit_batches, loss_fn=None, decompose: bool = False):
    """Summed loss and correct count of each coalition over ``(logits (K, B, C), labels)`` batches.

    ``decompose``: also the correct counts of each modality's Shapley-decomposed logits (the logits must
    then be of every coalition 0 .. 2^M - 1, in order). Returns ``(loss_sum, correct, n, parts | None)``,
    float64 numpy arrays and the sample count; summed on the device, one host sync at the end.
    """
    totals, parts, n = None, None, 0
    for logits, labels in logit_batches:
        batch = torch.stack(
            [coalition_losses(logits, labels, loss_fn, total=True), (logits.argmax(-1) == labels).sum(1).double()]
        )
        totals = batch if totals is None else totals + batch
        if decompose:
            right = (decomposed_logits(logits).argmax(-1) == labels).sum(1).double()
            parts = right if parts is None else parts + right
        n += len(labels)
    if n == 0:  # an empty shard under data parallelism: the caller decides
        return None, None, 0, None
    totals = totals.cpu().numpy()
    return totals[0], totals[1], n, None if parts is None else parts.cpu().numpy()


def game_summary(names, accuracy, loss, phi, share, parts=None) -> dict:
    """``evaluate``'s keys from a data set's coalition game: ``accuracy[mask]`` and ``loss[mask]`` (arrays
    over every mask, or dicts), Shapley values, shares, and the decomposed logits' accuracies ``parts``
    (None: not computed, nan)."""
    full = (1 << len(names)) - 1
    out = {"loss": float(loss[full]), "acc": float(accuracy[full])}
    for m, name in enumerate(names):
        out[f"acc_{name}"] = float("nan") if parts is None else float(parts[m])
        out[f"acc_only_{name}"] = float(accuracy[1 << m])
        out[f"shapley_{name}"] = float(phi[m])
        out[f"share_{name}"] = float(share[m])
    out["dominant"] = names[shapley.dominant(share)]
    return out


FEATURE_SOURCES = ("eval", "batch")  # config.CoalitionFeatures


@torch.no_grad()
def model_coalition_logits(
    model: MultimodalModel, inputs: Batch, masks, features: list[torch.Tensor] | None = None, source: str = "eval"
) -> torch.Tensor:
    """Logits (K, B, C) of coalitions ``masks``, eval mode, each encoder once (every mode restored after).

    ``features`` from a training forward are reused (detached) when the model is mode-invariant, and
    also for a BatchNorm model when ``source="batch"`` (``coalition_features``): the present modalities
    then carry the training pass's features (train-mode BatchNorm), the absent ones their eval-mode zero
    feature, and the fusion runs in eval mode; no encoder runs on the batch again. ``source="eval"``
    runs the encoders once more on ``inputs`` in eval mode.
    """
    if source not in FEATURE_SOURCES:
        raise ValueError(f"coalition features must be one of {', '.join(FEATURE_SOURCES)}, got {source!r}")
    invariant = getattr(model, "mode_invariant", None)
    invariant = is_mode_invariant(model) if invariant is None else invariant
    if features is not None and invariant:
        # train mode computes the same function: reuse the features, skip the mode switches
        return coalition_logits(model, [f.detach() for f in features], model.zero_features(), masks)
    if features is not None and source == "batch":
        with eval_mode(model):  # absent modalities and the fusion as at test time (one zero sample each)
            return coalition_logits(model, [f.detach() for f in features], model.zero_features(), masks)
    feats, zeros = eval_features(model, inputs)
    with eval_mode(model):  # the fusion part too (an early-fusion trunk may hold BatchNorm)
        return coalition_logits(model, feats, zeros, masks)


@torch.no_grad()
def batch_coalition_stats(
    model: MultimodalModel,
    inputs: Batch,
    labels: torch.Tensor,
    features: list[torch.Tensor] | None = None,
    masks=None,
    source: str = "eval",
) -> CoalitionStats:
    """Accuracy and loss of every coalition in ``masks`` (default all) on one batch (see
    ``model_coalition_logits`` for ``features`` and ``source``)."""
    masks = shapley.all_masks(len(model.modalities)) if masks is None else masks
    return coalition_stats(model_coalition_logits(model, inputs, masks, features, source), labels)


def modality_shapley(
    stats_fn,
    n_modalities: int,
    value: str = "accuracy",
    exact_max: int = shapley.EXACT_MAX,
    n_permutations: int = 64,
    seed: int = 0,
) -> np.ndarray:
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
