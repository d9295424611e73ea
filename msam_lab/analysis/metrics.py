"""Evaluation metrics: fused and per-modality accuracy, Shapley shares, τ, dominance switches.

Per-modality accuracy has two definitions, kept apart by name:
- ``acc_<m>``: accuracy of modality m's Shapley-decomposed logits (AGM's definition);
- ``acc_only_<m>``: accuracy with every other modality zeroed at the input.
"""

from __future__ import annotations

import numpy as np
import torch

from msam_lab import distributed, shapley
from msam_lab.datasets import MultimodalData
from msam_lab.models import coalitions
from msam_lab.models.multimodal import MultimodalModel, channels_last_on_cpu, eval_mode
from msam_lab.shapley import dominance_switches  # noqa: F401  (re-exported)


@torch.no_grad()
def dataset_coalition_stats(
    model: MultimodalModel, data: MultimodalData, masks, batch_size: int = 512
) -> coalitions.CoalitionStats:
    """Coalition accuracy and mean loss over a whole data set (eval mode)."""
    masks = list(masks)
    correct = np.zeros(len(masks))
    loss = np.zeros(len(masks))
    for inputs, labels in data.batches(batch_size, shard=distributed.shard_of):  # data parallel: a shard each
        s = coalitions.batch_coalition_stats(model, inputs, labels, None, masks)
        correct += s.accuracy * len(labels)
        loss += s.loss * len(labels)
    both = distributed.sum_over_ranks(np.stack([correct, loss]))
    return coalitions.CoalitionStats(both[0] / len(data), both[1] / len(data))


@torch.no_grad()
def evaluate(
    model: MultimodalModel,
    data: MultimodalData,
    batch_size: int = 128,
    share_rule: str = "clip",
    shapley_value: str = "accuracy",
    exact_max: int = shapley.EXACT_MAX,
    n_permutations: int = 64,
    seed: int = 0,
    share_temperature: float = 1.0,
) -> dict:
    """Loss, accuracy, per-modality accuracies and Shapley shares of ``model`` on ``data``.

    One eval-mode pass: features once per batch, every coalition through the fusion; the coalition game
    is summed as ``evaluate_forward`` sums it (``coalitions.coalition_totals``).
    """
    names = model.modalities
    n_mod = len(names)
    exact = n_mod <= exact_max
    masks = shapley.all_masks(n_mod) if exact else [shapley.mask_of(range(n_mod))] + [1 << m for m in range(n_mod)]
    with eval_mode(model), channels_last_on_cpu(model):
        # data parallel: each rank evaluates its shard of every batch, the sums are then added up
        logit_batches = (
            (coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), masks), labels)
            for inputs, labels in data.batches(batch_size, shard=distributed.shard_of)
        )
        loss, correct, _, parts = coalitions.coalition_totals(logit_batches, decompose=exact)
        if loss is None:  # an empty shard: zeros to the all-reduce
            loss, correct = np.zeros(len(masks)), np.zeros(len(masks))
        parts = np.zeros(n_mod) if parts is None else parts
        correct, loss, parts = np.split(
            distributed.sum_over_ranks(np.concatenate([correct, loss, parts])), [len(masks), 2 * len(masks)]
        )
        total = len(data)
        acc, mean_loss = correct / total, loss / total
        if exact:
            phi = shapley.exact_shapley(acc if shapley_value == "accuracy" else -mean_loss)
        else:

            def stats_fn(ms):
                return dataset_coalition_stats(model, data, ms, batch_size)

            phi = coalitions.modality_shapley(stats_fn, n_mod, shapley_value, exact_max, n_permutations, seed)
    acc, mean_loss = dict(zip(masks, acc)), dict(zip(masks, mean_loss))
    alone = [mean_loss[1 << m] for m in range(n_mod)]  # the loss share rule reads them
    share = shapley.shares(phi, share_rule, share_temperature, alone)
    return coalitions.game_summary(names, acc, mean_loss, phi, share, parts / total if exact else None)


def train_eval_subset(data: MultimodalData, n_samples: int, seed: int) -> MultimodalData:
    """The seeded subset of the train split that epoch evaluation measures (all of it for 0 or >= N).

    Drawn from its own generator, so choosing it touches no RNG that training uses.
    """
    if n_samples <= 0 or n_samples >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n_samples]
    return data.subset(index.sort().values)


def epoch_metrics(
    model: MultimodalModel, train: MultimodalData, test: MultimodalData, config, val: MultimodalData | None = None
) -> dict:
    """The epoch table's row (without ``epoch`` and ``wall_time``): ``train_``/``test_`` metrics, τ.

    With ``val`` (the run's validation split, msam_lab.datasets.validation) the row also holds
    ``val_loss``, ``val_acc`` and every other ``val_<key>`` of ``evaluate`` (per-modality
    accuracies, Shapley values, shares, dominant), after the train/test columns, which do not change.
    τ stays the train/test gap.
    """
    c = config
    kw = dict(
        batch_size=c.eval_batch_size,
        share_rule=c.share_rule,
        shapley_value=c.shapley_value,
        exact_max=c.shapley_exact_max,
        n_permutations=c.shapley_permutations,
        seed=c.seed,
        share_temperature=c.share_temperature,
    )
    return epoch_row(
        evaluate(model, train, **kw), evaluate(model, test, **kw), None if val is None else evaluate(model, val, **kw)
    )


def epoch_row(train: dict, test: dict, val: dict | None = None) -> dict:
    """One epoch-table row from ``evaluate``-style results of the splits (``train_``/``test_``/``val_``
    prefixed keys, and τ, the train/test gap). msam_lab.RunLogger's rows are made the same way."""
    tr, te = train, test
    row = {
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "test_loss": te["loss"],
        "test_acc": te["acc"],
        "tau": tau(tr["acc"], te["acc"]),
        "tau_loss": tau_loss(tr["loss"], te["loss"]),
    }
    for split, res in (("train", tr), ("test", te)):
        for key, value in res.items():
            if key not in ("loss", "acc"):
                row[f"{split}_{key}"] = value
    if val is not None:
        row.update({"val_loss": val["loss"], "val_acc": val["acc"]})
        row.update({f"val_{key}": value for key, value in val.items() if key not in ("loss", "acc")})
    return row


def tau(train: float, test: float) -> float:
    """Normalised overfitting gap, accuracy form: (Acc_train − Acc_test) / Acc_train."""
    return (train - test) / train if train > 0 else float("nan")


def tau_loss(train_loss: float, test_loss: float) -> float:
    """Loss form of τ: (L_test − L_train) / L_train."""
    return (test_loss - train_loss) / train_loss if train_loss > 0 else float("nan")
