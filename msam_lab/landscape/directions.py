"""Directions in parameter space: plain dicts ``parameter name -> tensor``.

Li et al. (NeurIPS 2018), "Visualizing the Loss Landscape of Neural Nets":

- a random direction is Gaussian, then *filter-normalised*: each filter (the
  slice along dim 0 of a weight with >= 2 dims: an output unit's row of a
  Linear weight, an output channel of a Conv weight) is rescaled to the norm
  of the same filter of θ;
- 1-D parameters (biases, norm affine) get a zero direction by default
  (``include_1d=True`` gives them a Gaussian direction rescaled, as one
  filter, to the norm of the parameter);
- the direction between two checkpoints is θ_B − θ_A;
- PCA directions are the top principal components of the trajectory
  {θ_e − θ_final}, and the trajectory is drawn as its projection on them.

Randomness is seeded *per parameter name*: the generator of parameter
``name`` in direction ``index`` is seeded from a stable hash (CRC-32) of
``(seed, index, name)``. The same seed therefore gives the same direction for
the same architecture whatever order the parameters are registered in, and on
every device (numbers are drawn on the CPU in float32, then cast and moved).

A direction covers only the parameters of its *scope*: ``"model"`` (all),
``"fusion"``, a modality name (that modality's encoder), or any submodule
path of the model. Parameters outside the scope are not in the dict and are
never moved.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

Direction = dict[str, torch.Tensor]

EPS = 1e-10


# ---------------------------------------------------------------- scopes


def scope_prefix(model: nn.Module, scope: str = "model") -> str:
    """The parameter-name prefix of ``scope`` ('' for the whole model). Raises ValueError."""
    if scope in ("model", "all", ""):
        return ""
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, nn.ModuleDict) and scope in encoders:
        return f"encoders.{scope}."
    try:
        model.get_submodule(scope)
    except AttributeError:
        choices = ["model"]
        if isinstance(encoders, nn.ModuleDict):
            choices += list(encoders)
        if hasattr(model, "fusion"):
            choices.append("fusion")
        raise ValueError(
            f"unknown scope {scope!r}; choose one of: {', '.join(choices)} "
            "(or a submodule path such as encoders.<modality>)"
        ) from None
    return scope.rstrip(".") + "."


def scope_parameters(model: nn.Module, scope: str = "model") -> dict[str, nn.Parameter]:
    """Name -> parameter for the parameters inside ``scope``, in registration order."""
    prefix = scope_prefix(model, scope)
    params = {n: p for n, p in model.named_parameters() if n.startswith(prefix)}
    if not params:
        raise ValueError(f"scope {scope!r} holds no parameters")
    return params


def _float_tensors(state: Mapping[str, torch.Tensor] | nn.Module, names=None) -> dict[str, torch.Tensor]:
    if isinstance(state, nn.Module):
        state = dict(state.named_parameters())
    return {n: t.detach() for n, t in state.items() if (names is None or n in names) and torch.is_floating_point(t)}


# ---------------------------------------------------------------- vector algebra on dicts


def dot(a: Direction, b: Direction) -> float:
    """Σ_name <a[name], b[name]> over the names of ``a`` (in float64)."""
    return float(sum(torch.sum(a[n].double() * b[n].double()) for n in a))


def norm(a: Direction) -> float:
    return dot(a, a) ** 0.5


def flatten(d: Direction, names: Iterable[str] | None = None) -> np.ndarray:
    names = list(d) if names is None else list(names)
    return np.concatenate([d[n].detach().cpu().double().reshape(-1).numpy() for n in names]) if names else np.zeros(0)


def unflatten(vector: np.ndarray, like: Mapping[str, torch.Tensor]) -> Direction:
    out, start = {}, 0
    for n, t in like.items():
        k = t.numel()
        out[n] = torch.as_tensor(vector[start : start + k]).reshape(t.shape).to(t.dtype)
        start += k
    if start != len(vector):
        raise ValueError(f"vector of length {len(vector)} does not fit parameters of total size {start}")
    return out


def check_compatible(direction: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise ValueError unless every entry of ``direction`` names a parameter of ``model`` with its shape."""
    params = dict(model.named_parameters())
    for n, d in direction.items():
        if n not in params:
            raise ValueError(f"direction entry {n!r} names no parameter of the model (different architecture?)")
        if tuple(d.shape) != tuple(params[n].shape):
            raise ValueError(
                f"direction entry {n!r} has shape {tuple(d.shape)} but the model's parameter "
                f"has {tuple(params[n].shape)} (different architecture?)"
            )


# ---------------------------------------------------------------- random, filter-normalised


def stable_seed(seed: int, name: str, index: int = 0) -> int:
    """A generator seed from (seed, direction index, parameter name); stable across runs and platforms."""
    return zlib.crc32(f"{int(seed)}|{int(index)}|{name}".encode())


def gaussian(params: Mapping[str, torch.Tensor], seed: int = 0, index: int = 0) -> Direction:
    """N(0, 1) entries, one generator per parameter name (see module doc)."""
    out = {}
    for name, p in params.items():
        g = torch.Generator().manual_seed(stable_seed(seed, name, index))
        out[name] = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
    return out


def filter_normalize(
    direction: Direction, reference: Mapping[str, torch.Tensor], include_1d: bool = False
) -> Direction:
    """Rescale each filter of ``direction`` to the norm of the same filter of ``reference``.

    Parameters with fewer than 2 dims are zeroed, or with ``include_1d``
    rescaled as one filter to the norm of the reference parameter.
    """
    out = {}
    for name, d in direction.items():
        w = reference[name].detach().to(d.dtype)
        if d.dim() <= 1:
            out[name] = d * (w.norm() / (d.norm() + EPS)) if include_1d else torch.zeros_like(d)
            continue
        d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
        w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
        scale = (w_norm / (d_norm + EPS)).reshape(-1, *([1] * (d.dim() - 1)))
        out[name] = d * scale
    return out


def orthogonalize(d2: Direction, d1: Direction, keep_norm: bool = True) -> Direction:
    """Gram-Schmidt: ``d2`` minus its projection on ``d1`` (rescaled to ``d2``'s norm by default)."""
    coeff = dot(d2, d1) / max(dot(d1, d1), EPS)
    out = {n: d2[n] - coeff * d1[n] for n in d2}
    if keep_norm:
        scale = norm(d2) / max(norm(out), EPS)
        out = {n: t * scale for n, t in out.items()}
    return out


def random_direction(
    model: nn.Module,
    seed: int = 0,
    index: int = 0,
    scope: str = "model",
    include_1d: bool = False,
    normalization: str | None = "filter",
) -> Direction:
    """One random direction over ``scope``; ``normalization='filter'`` (Li et al.) or None (raw Gaussian)."""
    params = scope_parameters(model, scope)
    d = gaussian(params, seed, index)
    if normalization == "filter":
        return filter_normalize(d, params, include_1d)
    if normalization is None:
        return d if include_1d else {n: (t if t.dim() > 1 else torch.zeros_like(t)) for n, t in d.items()}
    raise ValueError(f"unknown normalization {normalization!r}; choose 'filter' or None")


def random_directions(
    model: nn.Module,
    n: int = 2,
    seed: int = 0,
    scope: str = "model",
    include_1d: bool = False,
    orthogonal: bool = False,
    normalization: str | None = "filter",
) -> list[Direction]:
    """``n`` random directions (indices 0..n−1); ``orthogonal`` Gram-Schmidts the later ones."""
    dirs = [random_direction(model, seed, k, scope, include_1d, normalization) for k in range(n)]
    if orthogonal:
        for k in range(1, n):
            for j in range(k):
                dirs[k] = orthogonalize(dirs[k], dirs[j])
    return dirs


# ---------------------------------------------------------------- between two points


def between(
    start: nn.Module | Mapping[str, torch.Tensor],
    end: nn.Module | Mapping[str, torch.Tensor],
    names: Iterable[str] | None = None,
    include_1d: bool = True,
) -> Direction:
    """θ_end − θ_start over ``names`` (default: every floating parameter of ``start``).

    ``start``/``end`` are models or state dicts of the same architecture.
    ``include_1d=False`` zeroes the 1-D entries, as for random directions.
    """
    names = None if names is None else list(names)
    if names is None and not isinstance(start, nn.Module):
        raise ValueError("between() of state dicts needs the parameter names (state dicts also hold buffers)")
    a = _float_tensors(start, names)
    b = _float_tensors(end, set(a))
    missing = [n for n in a if n not in b]
    if missing:
        raise ValueError(f"the end point has no parameter {missing[0]!r} (different architecture?)")
    for n in a:
        if a[n].shape != b[n].shape:
            raise ValueError(
                f"parameter {n!r} has shape {tuple(a[n].shape)} at the start but "
                f"{tuple(b[n].shape)} at the end (different architecture?)"
            )
    out = {n: (b[n].to(a[n]) - a[n]) for n in a}
    if not include_1d:
        out = {n: (t if t.dim() > 1 else torch.zeros_like(t)) for n, t in out.items()}
    return out


# ---------------------------------------------------------------- PCA of a trajectory


@dataclass
class PCADirections:
    """Top principal directions of a trajectory and the trajectory projected on them.

    ``directions[k]`` is unit-norm (over the flattened scope parameters).
    ``projection[e, k] = <θ_e − θ_final, directions[k]>`` for each checkpoint
    ``epochs[e]`` (the final one included, at the origin).
    """

    directions: list[Direction]
    explained_variance_ratio: np.ndarray
    projection: np.ndarray
    epochs: list[int]


def pca_directions(
    states: Mapping[int, Mapping[str, torch.Tensor]],
    names: Iterable[str],
    n_components: int = 2,
    final: int | None = None,
    include_1d: bool = False,
) -> PCADirections:
    """PCA (scikit-learn, centred) of the rows flatten(θ_e − θ_final), e ≠ final.

    ``states``: epoch -> state dict (e.g. every checkpoint of a run);
    ``names``: the parameters to use (a scope); ``final``: the reference
    epoch (default the last). 1-D parameters are left out (zero in the
    directions) unless ``include_1d``.
    """
    from sklearn.decomposition import PCA  # noqa: PLC0415 - scikit-learn loads only when it is used

    epochs = sorted(states)
    final = epochs[-1] if final is None else final
    if final not in states:
        raise ValueError(f"no checkpoint for the final epoch {final}; saved: {epochs}")
    ref = _float_tensors(states[final], set(names))
    names = [n for n in names if n in ref]
    used = [n for n in names if include_1d or ref[n].dim() > 1]
    others = [e for e in epochs if e != final]
    if len(others) < n_components:
        raise ValueError(
            f"{n_components} PCA directions need at least {n_components + 1} checkpoints, "
            f"found {len(epochs)}; train with --set checkpoint_every=1"
        )
    ref_flat = flatten(ref, used)
    rows = np.stack([flatten(_float_tensors(states[e], set(used)), used) - ref_flat for e in others])
    pca = PCA(n_components=n_components, svd_solver="full").fit(rows)
    like_used = {n: ref[n] for n in used}
    dirs = []
    for comp in pca.components_:
        d = unflatten(comp, like_used)
        dirs.append({n: d[n] if n in d else torch.zeros_like(ref[n]) for n in names})
    all_rows = np.stack([flatten(_float_tensors(states[e], set(used)), used) - ref_flat for e in epochs])
    projection = all_rows @ pca.components_.T
    return PCADirections(dirs, np.asarray(pca.explained_variance_ratio_, dtype=float), projection, epochs)


def project(
    points: Iterable[Mapping[str, torch.Tensor]], origin: Mapping[str, torch.Tensor], directions: list[Direction]
) -> np.ndarray:
    """Coordinates of ``points`` in the plane ``origin + span(directions)`` (least squares)."""
    names = list(directions[0])
    D = np.stack([flatten(d, names) for d in directions], axis=1)  # (P, k)
    o = flatten(_float_tensors(origin, set(names)), names)
    X = np.stack([flatten(_float_tensors(p, set(names)), names) - o for p in points], axis=1)
    coef, *_ = np.linalg.lstsq(D, X, rcond=None)
    return coef.T
