"""The validation split a run selects its model on (docs/runs.md, "Model selection").

``with_validation(splits, val_fraction, seed)`` gives every dataset a validation split:

- the dataset's own one where its loader provides it (``splits.val``: UR-Funny's ``valid``,
  AVE's ``my_val.txt``), kept as it is: kind ``"dataset"``;
- otherwise, for ``val_fraction > 0``, a seeded, class-stratified hold-out of the train split,
  removed from train: kind ``"holdout"``;
- otherwise none (``val = None``): kind ``"none"``.

``splits.info["val_split"]`` records the kind and ``splits.info["val_size"]`` the number of
validation samples (0 for none). The test split is never touched.

Only ``len(data)``, ``data.labels`` and ``data.select(index)`` are used, so in-memory and streaming
data split alike; ``select`` keeps a streaming split streaming (``subset`` would read it into memory).
"""

from __future__ import annotations

import math

import torch

from msam_lab.datasets.base import Splits

KINDS = ("dataset", "holdout", "none")


def holdout_size(n: int, val_fraction: float) -> int:
    """Samples held out of ``n`` for ``val_fraction`` > 0: round(fraction·n), at least 1, leaving ≥ 1 to train."""
    if n < 2:
        raise ValueError(
            f"a train split of {n} sample(s) is too small to hold out a validation split; set val_fraction=0"
        )
    return min(max(1, round(val_fraction * n)), n - 1)


def _stratified_pick(labels: torch.Tensor, perm: torch.Tensor, k: int) -> torch.Tensor | None:
    """``k`` indices, each class contributing its share (largest remainder), in ``perm``'s random order.

    None when the labels are not one integer class per sample (then the pick is plain random).
    """
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or len(labels) == 0:
        return None
    labels_perm = labels[perm]
    classes, counts = torch.unique(labels, return_counts=True)  # sorted classes
    n = len(labels)
    exact = [k * int(c) / n for c in counts]
    quota = [math.floor(q) for q in exact]
    by_remainder = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in by_remainder[: k - sum(quota)]:
        quota[i] += 1
    picked = [perm[labels_perm == c][:q] for c, q in zip(classes.tolist(), quota) if q > 0]
    return torch.cat(picked) if picked else perm[:0]


def holdout_index(labels, val_fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices (CPU int64) of the hold-out: stratified by class, drawn from its own generator."""
    labels = torch.as_tensor(labels).detach().cpu()
    n = len(labels)
    k = holdout_size(n, val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    index = _stratified_pick(labels, perm, k)
    if index is None:
        index = perm[:k]
    return index.sort().values


def with_validation(splits: Splits, val_fraction: float, seed: int) -> Splits:
    """``splits`` with its validation split set (see the module docstring); a new Splits, inputs not copied.

    ``val_fraction`` in [0, 1): the share of the train split to hold out when the dataset has no
    validation split of its own. ``seed`` alone (with the labels) decides the hold-out: the same
    seed gives the same split, and no global RNG (torch, numpy, python) is drawn from.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    info = dict(splits.info)
    train, val = splits.train, splits.val
    if val is not None:
        # a hold-out made by an earlier call stays a hold-out; anything else is the dataset's own
        kind = "holdout" if info.get("val_split") == "holdout" else "dataset"
    elif val_fraction > 0:
        kind = "holdout"
        index = holdout_index(train.labels, val_fraction, seed)
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[index] = False
        rest = torch.nonzero(keep).flatten()  # sorted
        val, train = train.select(index), train.select(rest)
        info["val_fraction"] = float(val_fraction)
    else:
        kind = "none"
    info["val_split"] = kind
    info["val_size"] = 0 if val is None else len(val)
    return Splits(train, splits.test, info, val)
