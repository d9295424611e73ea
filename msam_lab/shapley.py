"""Shapley values of a modality game, shares, and the dominant modality.

A coalition is an int bitmask: bit m set <=> modality m present. A game is a
vector ``values[mask]`` over all 2^M coalitions (exact), or a callable that
evaluates a list of masks (sampled, for large M).

``PerturbedModality`` is the paper's ablation of the last step: which modality
M-SAM perturbs, the Shapley-dominant one or a fixed, random or alternating one.
"""

from __future__ import annotations

import math
import typing
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from msam_lab import config

EXACT_MAX = 10  # 2^10 coalitions is still cheap; beyond, sample permutations
SHARE_RULES = typing.get_args(config.ShareRule)
DOMINANT_CHOICES = ("shapley", "fixed:<modality>", "random", "alternate")
TIE_RULES = typing.get_args(config.TieRule)


def all_masks(n_modalities: int) -> np.ndarray:
    return np.arange(1 << n_modalities)


def mask_of(present: Sequence[int]) -> int:
    return sum(1 << m for m in present)


def members(mask: int, n_modalities: int) -> list[int]:
    return [m for m in range(n_modalities) if mask >> m & 1]


@lru_cache(maxsize=None)
def _shapley_matrix(n_modalities: int) -> np.ndarray:
    """W (M, 2^M) with phi = W @ values: the exact Shapley formula as one matrix."""
    m_all = n_modalities
    weights = [math.factorial(s) * math.factorial(m_all - s - 1) / math.factorial(m_all) for s in range(m_all)]
    W = np.zeros((m_all, 1 << m_all))
    for mask in range(1 << m_all):
        size = bin(mask).count("1")
        for m in range(m_all):
            if not mask >> m & 1:
                W[m, mask | 1 << m] += weights[size]
                W[m, mask] -= weights[size]
    W.setflags(write=False)
    return W


def shapley_matrix(n_modalities: int) -> np.ndarray:
    if not 1 <= n_modalities <= EXACT_MAX:
        raise ValueError(
            f"exact Shapley supports 1..{EXACT_MAX} modalities, got {n_modalities}; use sampled_shapley for more"
        )
    return _shapley_matrix(n_modalities)


def exact_shapley(values) -> np.ndarray | torch.Tensor:
    """Exact Shapley values of a game given on all 2^M coalitions.

    ``values`` has shape (2^M, ...): scalar games give (M,), vector-valued
    games (e.g. logits per sample) give (M, ...). Works for numpy and torch.
    """
    n = len(values)
    n_modalities = n.bit_length() - 1
    if n != 1 << n_modalities:
        raise ValueError(f"a game needs 2^M coalition values, got {n}")
    W = shapley_matrix(n_modalities)
    if isinstance(values, torch.Tensor):
        Wt = torch.tensor(W, dtype=values.dtype, device=values.device)
        return torch.tensordot(Wt, values, dims=1)
    return np.tensordot(W, np.asarray(values, dtype=float), axes=1)


def sampled_shapley(
    value_fn: Callable[[list[int]], Sequence[float]], n_modalities: int, n_permutations: int = 64, seed: int = 0
) -> np.ndarray:
    """Monte-Carlo Shapley by random permutations (unbiased; seeded).

    ``value_fn`` receives the distinct masks needed, all at once, and returns
    their values in the same order, so a caller can evaluate them in one batch.
    """
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(n_modalities) for _ in range(n_permutations)])
    chains = np.zeros((n_permutations, n_modalities + 1), dtype=np.int64)
    for k in range(n_modalities):
        chains[:, k + 1] = chains[:, k] | (1 << perms[:, k])
    needed = np.unique(chains)
    value = dict(zip(needed.tolist(), np.asarray(value_fn(needed.tolist()), dtype=float)))
    phi = np.zeros(n_modalities)
    for p in range(n_permutations):
        for k in range(n_modalities):
            phi[perms[p, k]] += value[int(chains[p, k + 1])] - value[int(chains[p, k])]
    return phi / n_permutations


def singleton_masks(n_modalities: int) -> list[int]:
    """The coalitions {m}, m = 0..M-1: what the ``loss`` share rule needs besides phi."""
    return [1 << m for m in range(n_modalities)]


def softmax(x, temperature: float) -> np.ndarray:
    """softmax(x / T), shifted by max(x) first so that a tiny T cannot overflow."""
    with np.errstate(over="ignore"):  # (x - max)/T -> -inf for a denormal T: exp gives the 0 it should
        z = np.exp((np.asarray(x, dtype=float) - np.max(x)) / temperature)
    return z / z.sum()


def shares(phi, rule: str = "clip", temperature: float = 1.0, unimodal_loss=None) -> np.ndarray:
    """Normalise Shapley values to non-negative shares that sum to one.

    ``clip`` (default): v_m = max(phi_m, 0) / sum_j max(phi_j, 0), uniform when
    no modality contributes positively. ``shift``: v_m proportional to
    phi_m - min(phi), uniform when all are equal. The paper only says
    "linearly normalised"; clip is our reading of it.

    ``softmax``: v = softmax(phi / T), T = ``temperature``: T -> 0 gives the
    argmax one-hot (tied maxima share equally), T -> inf the uniform shares.
    Accuracy Shapley values lie in [-1, 1], so T = 1 is already close to
    uniform; T ~ 0.05 is selective.

    ``loss``: v = softmax(-unimodal_loss / T), with ``unimodal_loss[m]`` the
    loss of the coalition {m} (modality m alone, the others removed as in
    every coalition pass): the modality whose lone prediction fits best gets
    the largest share. It ignores phi, so interactions between modalities do
    not count; phi is still what is logged.
    """
    phi = np.asarray(phi, dtype=float)
    if rule == "softmax":
        return softmax(phi, temperature)
    if rule == "loss":
        if unimodal_loss is None or len(unimodal_loss) != len(phi):
            raise ValueError("share rule 'loss' needs unimodal_loss=[loss of coalition {m} for each m]")
        return softmax(-np.asarray(unimodal_loss, dtype=float), temperature)
    if rule == "clip":
        pos = np.maximum(phi, 0.0)
    elif rule == "shift":
        pos = phi - phi.min()
    else:
        raise ValueError(f"unknown share rule {rule!r}; choose one of: {', '.join(SHARE_RULES)}")
    total = pos.sum()
    if total <= 0:
        return np.full(len(phi), 1.0 / len(phi))
    return pos / total


def dominant(share, tie: str = "lowest", previous: int | None = None) -> int:
    """Index of the largest share.

    Ties: ``lowest`` takes the lowest modality index; ``previous`` keeps the
    previous dominant modality when it is among the tied, else the lowest.
    """
    share = np.asarray(share, dtype=float)
    tied = np.flatnonzero(share == share.max())
    if tie == "previous":
        if previous is not None and previous in tied:
            return int(previous)
    elif tie != "lowest":
        raise ValueError(f"unknown tie rule {tie!r}; choose one of: {', '.join(TIE_RULES)}")
    return int(tied[0])


def check_dominant_choice(choice: str, modalities) -> None:
    """Raise ValueError unless ``choice`` is one of ``DOMINANT_CHOICES`` for these modalities."""
    kind, _, name = choice.partition(":")
    if kind == "fixed" and name in modalities:
        return
    if kind == "fixed":
        raise ValueError(f"{choice!r} names no modality; use fixed:<one of {', '.join(modalities)}>")
    if name or kind not in ("shapley", "random", "alternate"):
        raise ValueError(f"the perturbed-modality choice must be one of {', '.join(DOMINANT_CHOICES)}, got {choice!r}")


class PerturbedModality:
    """Which modality takes the dominant one's place in M-SAM's update (an ablation of step 3).

    ``shapley``: the Shapley-dominant modality d itself; ``fixed:<m>``: always m;
    ``random``: uniform per step from a generator seeded with ``seed``;
    ``alternate``: modality 0, 1, …, M-1, 0, … step by step. The state
    (generator, position) is in ``state_dict`` so that a resumed run draws the
    same modalities.
    """

    def __init__(self, choice: str, modalities, seed: int = 0):
        check_dominant_choice(choice, modalities)
        self.kind, _, name = choice.partition(":")
        self.n = len(modalities)
        self.fixed = list(modalities).index(name) if self.kind == "fixed" else None
        self.rng = np.random.default_rng(seed)
        self.position = 0  # alternate: the next modality

    def __call__(self, dominant: int) -> int:
        if self.kind == "fixed":
            return self.fixed
        if self.kind == "random":
            return int(self.rng.integers(self.n))
        if self.kind == "alternate":
            m, self.position = self.position, (self.position + 1) % self.n
            return m
        return dominant

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.position = state["position"]


def swap_shares(share, dominant: int, chosen: int) -> np.ndarray:
    """The shares with the dominant and the chosen modality's entries exchanged.

    The chosen modality takes the dominant one's place, share included, so an
    ablation arm gets the same amount of SAM (v_d) as the Shapley arm and only
    the perturbation's target differs. Identity when chosen == dominant.
    """
    out = np.array(share, dtype=float)
    out[[dominant, chosen]] = out[[chosen, dominant]]
    return out


def dominance_switches(dominant) -> int:
    """How many times the dominant modality changes between consecutive rows
    (a sequence or a pandas Series of modality names)."""
    values = list(dominant)
    return int(sum(a != b for a, b in zip(values, values[1:])))
