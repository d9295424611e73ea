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


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in one fixed order (zero-padded to 2^k, then halves added pairwise).

    Only element-wise IEEE adds, so the bits are the same on every device and BLAS: the device path and
    the host path of the Shapley values and shares agree exactly (a matmul's order is the library's)."""
    n = x.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    if size != n:
        x = torch.cat([x, x.new_zeros((*x.shape[:-1], size - n))], -1)
    while size > 1:
        size //= 2
        x = x.narrow(-1, 0, size) + x.narrow(-1, size, size)
    return x.squeeze(-1)


_weights: dict = {}  # (kind, ..., device, dtype) -> the weight matrix on that device


def _on(key, make, device, dtype) -> torch.Tensor:
    """A constant matrix cached per device and dtype: built on the host once, copied to the device once."""
    full = (*key, str(device), dtype)
    if full not in _weights:
        _weights[full] = torch.tensor(np.array(make()), dtype=dtype).to(device)
    return _weights[full]


def exact_shapley(values) -> np.ndarray | torch.Tensor:
    """Exact Shapley values of a game given on all 2^M coalitions.

    ``values`` has shape (2^M, ...): scalar games give (M,), vector-valued games (e.g. logits per
    sample) give (M, ...). A torch game stays on its device (no host sync); a numpy game is computed
    by the same torch code on the CPU, so both give the same bits (``tree_sum``).
    """
    n = len(values)
    n_modalities = n.bit_length() - 1
    if n != 1 << n_modalities:
        raise ValueError(f"a game needs 2^M coalition values, got {n}")
    W = shapley_matrix(n_modalities)
    if not isinstance(values, torch.Tensor):
        return exact_shapley(torch.tensor(np.asarray(values, dtype=float))).numpy()
    Wt = _on(("exact", n_modalities), lambda: W, values.device, values.dtype)
    if values.dim() == 1:
        return tree_sum(Wt * values)
    return torch.tensordot(Wt, values, dims=1)


@lru_cache(maxsize=64)
def _permutation_plan(n_modalities: int, n_permutations: int, seed: int):
    """The seeded permutations' distinct coalitions and the counts C (M, K) with
    phi = (C @ values) / n_permutations: each step of a permutation adds +1 at the coalition with the
    modality and -1 at the one without. Depends on no data, so it is made once, on the host."""
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(n_modalities) for _ in range(n_permutations)])
    chains = np.zeros((n_permutations, n_modalities + 1), dtype=np.int64)
    for k in range(n_modalities):
        chains[:, k + 1] = chains[:, k] | (1 << perms[:, k])
    needed = np.unique(chains)
    column = {int(mask): i for i, mask in enumerate(needed)}
    counts = np.zeros((n_modalities, len(needed)))
    for p in range(n_permutations):
        for k in range(n_modalities):
            counts[perms[p, k], column[int(chains[p, k + 1])]] += 1
            counts[perms[p, k], column[int(chains[p, k])]] -= 1
    counts.setflags(write=False)
    return needed.tolist(), counts


def sampled_shapley(
    value_fn: Callable[[list[int]], Sequence[float]], n_modalities: int, n_permutations: int = 64, seed: int = 0
) -> np.ndarray | torch.Tensor:
    """Monte-Carlo Shapley by random permutations (unbiased; seeded).

    ``value_fn`` receives the distinct masks needed, all at once, and returns their values in the
    same order, so a caller can evaluate them in one batch. Values given as a tensor give a tensor on
    its device (no host sync); as anything else, a numpy array (the same bits, as ``exact_shapley``).
    """
    needed, counts = _permutation_plan(n_modalities, n_permutations, seed)
    values = value_fn(needed)
    if not isinstance(values, torch.Tensor):
        return sampled_shapley(
            lambda _: torch.tensor(np.asarray(values, dtype=float)), n_modalities, n_permutations, seed
        ).numpy()
    C = _on(("sampled", n_modalities, n_permutations, seed), lambda: counts, values.device, values.dtype)
    return tree_sum(C * values) / n_permutations


def singleton_masks(n_modalities: int) -> list[int]:
    """The coalitions {m}, m = 0..M-1: what the ``loss`` share rule needs besides phi."""
    return [1 << m for m in range(n_modalities)]


def softmax(x, temperature: float):
    """softmax(x / T), shifted by max(x) first so that a tiny T cannot overflow (a tensor stays on its device)."""
    if not isinstance(x, torch.Tensor):
        return softmax(torch.as_tensor(np.asarray(x, dtype=float)), temperature).numpy()
    z = torch.exp((x - x.max()) / temperature)  # (x - max)/T -> -inf for a denormal T: exp gives the 0 it should
    return z / tree_sum(z)


def shares(phi, rule: str = "clip", temperature: float = 1.0, unimodal_loss=None):
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

    A float64 tensor ``phi`` gives a tensor on its device with no host sync; anything else a numpy
    array, computed by the same torch code on the CPU (the same bits).
    """
    if rule not in SHARE_RULES:
        raise ValueError(f"unknown share rule {rule!r}; choose one of: {', '.join(SHARE_RULES)}")
    if rule == "loss" and (unimodal_loss is None or len(unimodal_loss) != len(phi)):
        raise ValueError("share rule 'loss' needs unimodal_loss=[loss of coalition {m} for each m]")
    if not isinstance(phi, torch.Tensor):
        phi = torch.as_tensor(np.asarray(phi, dtype=float))
        alone = None if unimodal_loss is None else torch.as_tensor(np.asarray(unimodal_loss, dtype=float))
        return shares(phi, rule, temperature, alone).numpy()
    if rule == "softmax":
        return softmax(phi, temperature)
    if rule == "loss":
        return softmax(-torch.as_tensor(unimodal_loss, dtype=phi.dtype, device=phi.device), temperature)
    pos = phi.clamp(min=0.0) if rule == "clip" else phi - phi.min()
    total = tree_sum(pos)
    return torch.where(total > 0, pos / total, 1.0 / len(pos))


def dominant_index(share: torch.Tensor, tie: str = "lowest", previous=None) -> torch.Tensor:
    """``dominant`` on the device: the index as a 0-d int64 tensor, no host sync (``previous``: an int,
    a 0-d tensor or None)."""
    if tie not in TIE_RULES:
        raise ValueError(f"unknown tie rule {tie!r}; choose one of: {', '.join(TIE_RULES)}")
    tied = share == share.max()
    first = tied.to(torch.uint8).argmax()  # argmax returns the first of equal maxima
    if tie == "lowest" or previous is None:
        return first
    previous = torch.as_tensor(previous, dtype=torch.int64, device=share.device).reshape(1)
    return torch.where(tied.gather(0, previous)[0], previous[0], first)


def dominant(share, tie: str = "lowest", previous: int | None = None) -> int:
    """Index of the largest share.

    Ties: ``lowest`` takes the lowest modality index; ``previous`` keeps the
    previous dominant modality when it is among the tied, else the lowest.
    (On the host: an int; ``dominant_index`` is the same rule on the device.)
    """
    if not isinstance(share, torch.Tensor):
        share = torch.as_tensor(np.asarray(share, dtype=float))
    return int(dominant_index(share, tie, previous))


class Pick:
    """A name chosen on the device, ``names[index]`` with ``index`` a 0-d tensor: what a step row holds for
    the dominant modality until the row is copied to the host (``str``: that copy, one sync)."""

    __slots__ = ("index", "names")

    def __init__(self, index: torch.Tensor, names):
        self.index, self.names = index, tuple(names)

    def __str__(self) -> str:
        return self.names[int(self.index)]

    __repr__ = __str__

    def __eq__(self, other) -> bool:  # row["dominant"] == "audio" reads as it did when rows held names
        return str(self) == (str(other) if isinstance(other, Pick) else other)

    def __hash__(self) -> int:
        return hash(str(self))


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


def rows_on_host(rows: list[dict]) -> list[dict]:
    """Step rows with their device values read: 0-d tensors become floats (ints for integer and bool
    tensors), a ``Pick`` its name. Every device value of the rows crosses in ONE host copy (per
    device), so a flush of many steps costs one sync, not one per step or per cell."""
    cells = [
        (i, key, value)
        for i, row in enumerate(rows)
        for key, value in row.items()
        if torch.is_tensor(value) or isinstance(value, Pick)
    ]
    if not cells:
        return rows
    by_device: dict = {}
    for cell in cells:
        t = cell[2].index if isinstance(cell[2], Pick) else cell[2]
        by_device.setdefault(t.device, []).append((cell, t))
    out = [dict(row) for row in rows]
    for group in by_device.values():
        tensors = [t.detach().reshape(()) for _, t in group]
        by_dtype: dict = {}  # one stack per dtype, then one float64 vector: exact for float32/64 and indices
        for k, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(k)
        order = [k for ks in by_dtype.values() for k in ks]
        values = torch.cat([torch.stack([tensors[k] for k in ks]).double() for ks in by_dtype.values()]).tolist()
        for k, value in zip(order, values):
            (i, key, cell), t = group[k]
            if isinstance(cell, Pick):
                out[i][key] = cell.names[int(value)]
            else:
                out[i][key] = value if t.is_floating_point() else int(value)
    return out


def swap_shares(share, dominant, chosen):
    """The shares with the dominant and the chosen modality's entries exchanged.

    The chosen modality takes the dominant one's place, share included, so an
    ablation arm gets the same amount of SAM (v_d) as the Shapley arm and only
    the perturbation's target differs. Identity when chosen == dominant.
    A tensor stays on its device (``dominant`` / ``chosen``: ints or 0-d tensors).
    """
    if isinstance(share, torch.Tensor):
        pair = torch.stack([torch.as_tensor(i, device=share.device) for i in (dominant, chosen)]).long()
        return share.scatter(0, pair, share.gather(0, pair.flip(0)))
    out = np.array(share, dtype=float)
    out[[dominant, chosen]] = out[[chosen, dominant]]
    return out


def dominance_switches(dominant) -> int:
    """How many times the dominant modality changes between consecutive rows
    (a sequence or a pandas Series of modality names)."""
    values = list(dominant)
    return int(sum(a != b for a, b in zip(values, values[1:])))
