"""Hessian of a loss without forming it: Hessian-vector products, top eigenvalues, trace, ε-sharpness.

All of it works on Hessian-vector products (double backward: the gradient is built once with
``create_graph=True`` and differentiated again against each vector), so the Hessian is never formed.

- ``HessianOperator``: v -> H·v for a loss and a list of parameters.
- ``top_eigenvalues``: the k eigenvalues of largest magnitude (sign kept, sorted by magnitude) by
  power iteration with projection deflation: after eigenvectors u_1..u_j are found, iteration
  j+1 runs on P·H·P with P = I − Σ u_i u_iᵀ.
- ``hutchinson_trace``: tr H ≈ mean over probes z (Rademacher ±1, seeded) of zᵀHz, with its
  standard error.
- ``epsilon_sharpness``: L(θ + ρ·g/‖g‖) − L(θ), the loss increase after one SAM ascent step of
  radius ρ (a first-order estimate of max_{‖δ‖≤ρ} L(θ+δ) − L(θ)).
- ``block_sharpness``: all three for the diagonal block of the Hessian that belongs to some of a
  model's parameters (one encoder, the fusion, or all of them).

Every random draw comes from a generator of its own (seeded), never from torch's global one, so a
measurement in the middle of training does not change what training draws next. This module sits
below the trainer and the analysis layer (msam_lab.landscape); both use it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab.datasets.base import in_memory

Vector = list[torch.Tensor]


def _dot(a: Vector, b: Vector) -> float:
    return float(sum(torch.sum(x.double() * y.double()) for x, y in zip(a, b)))


def _normalize(v: Vector) -> tuple[Vector, float]:
    n = math.sqrt(_dot(v, v))
    return ([x / n for x in v] if n > 0 else v), n


class HessianOperator:
    """v -> H·v for ``loss_fn()`` w.r.t. ``params``; the gradient graph is built once and reused.

    ``loss_fn`` is called once, here. ``loss`` and ``grad`` (detached) are kept.
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]):
        self.params = list(params)
        loss = loss_fn()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.loss = float(loss.detach())
        self._grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
        self._live = [i for i, g in enumerate(self._grads) if g.requires_grad]
        self.grad = [g.detach() for g in self._grads]
        self.calls = 0

    def __call__(self, v: Vector) -> Vector:
        self.calls += 1
        out = [torch.zeros_like(p) for p in self.params]
        if not self._live:
            return out
        hv = torch.autograd.grad(
            [self._grads[i] for i in self._live],
            self.params,
            grad_outputs=[v[i].to(self._grads[i]) for i in self._live],
            retain_graph=True,
            allow_unused=True,
        )
        return [h.detach() if h is not None else o for h, o in zip(hv, out)]


def _random_like(params: Sequence[torch.Tensor], gen: torch.Generator, kind: str) -> Vector:
    out = []
    for p in params:
        if kind == "rademacher":
            z = torch.randint(0, 2, tuple(p.shape), generator=gen).to(torch.float32) * 2 - 1
        else:
            z = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32)
        out.append(z.to(device=p.device, dtype=p.dtype))
    return out


def top_eigenvalues(
    hvp: Callable[[Vector], Vector],
    params: Sequence[torch.Tensor],
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
):
    """The ``k`` Hessian eigenvalues of largest magnitude and their eigenvectors.

    Power iteration from a seeded Gaussian start, stopped when the Rayleigh
    quotient changes by less than ``tol`` (relative) or after ``max_iter``
    products. Returns ``(eigenvalues, eigenvectors, iterations)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gen = torch.Generator().manual_seed(int(seed))
    values: list[float] = []
    vectors: list[Vector] = []
    iterations: list[int] = []

    def deflate(v: Vector) -> Vector:
        for u in vectors:
            c = _dot(u, v)
            v = [x - c * y for x, y in zip(v, u)]
        return v

    for _ in range(k):
        v, _ = _normalize(deflate(_random_like(params, gen, "gaussian")))
        lam = None
        it = 0
        for it in range(1, max_iter + 1):
            hv = deflate(hvp(v))
            new = _dot(v, hv)
            v, n = _normalize(hv)
            if n == 0:  # v is in the null space: eigenvalue 0
                lam = 0.0
                break
            if lam is not None and abs(new - lam) <= tol * max(abs(lam), 1e-12):
                lam = new
                break
            lam = new
        values.append(float(lam))
        vectors.append(v)
        iterations.append(it)
    return values, vectors, iterations


def hutchinson_trace(
    hvp: Callable[[Vector], Vector], params: Sequence[torch.Tensor], probes: int = 32, seed: int = 0
) -> tuple[float, float, np.ndarray]:
    """Hutchinson's estimate of tr H with ``probes`` Rademacher vectors: ``(mean, standard error, samples)``."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    gen = torch.Generator().manual_seed(int(seed))
    samples = np.array([_dot(z, hvp(z)) for z in (_random_like(params, gen, "rademacher") for _ in range(probes))])
    se = float(samples.std(ddof=1) / math.sqrt(probes)) if probes > 1 else float("nan")
    return float(samples.mean()), se, samples


def epsilon_sharpness(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    rho: float = 0.05,
    grad: Vector | None = None,
    loss: float | None = None,
) -> dict:
    """L(θ + ρ·g/‖g‖) − L(θ), moving only ``params``; they are put back bit for bit afterwards.

    ``grad``/``loss`` at θ may be passed in when already known.
    """
    params = list(params)
    if grad is None or loss is None:
        value = loss_fn()
        g = torch.autograd.grad(value, params, allow_unused=True)
        grad = [x.detach() if x is not None else torch.zeros_like(p) for x, p in zip(g, params)]
        loss = float(value.detach())
    gnorm = math.sqrt(_dot(grad, grad))
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            if gnorm > 0:
                for p, g in zip(params, grad):
                    p.add_(g.to(p), alpha=rho / gnorm)
            perturbed = float(loss_fn().detach())
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return {"loss": loss, "perturbed_loss": perturbed, "eps_sharpness": perturbed - loss, "grad_norm": gnorm}


# ---------------------------------------------------------------- multimodal models


def fused_loss_fn(model, data, batch_size: int | None = None) -> Callable[[], torch.Tensor]:
    """Mean cross-entropy of the fused logits over ``data`` (one graph over all batches)."""
    data = in_memory(data)  # a StreamingData is read once, here: the loss is evaluated many times
    n = len(data)
    bs = n if not batch_size else int(batch_size)
    batches = [({m: x[s : s + bs] for m, x in data.inputs.items()}, data.labels[s : s + bs]) for s in range(0, n, bs)]

    def loss_fn() -> torch.Tensor:
        total = 0
        for inputs, labels in batches:
            total = total + F.cross_entropy(model(inputs), labels, reduction="sum")
        return total / n

    return loss_fn


def block_sharpness(
    model,
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    rho: float = 0.05,
    topk: int = 1,
    probes: int = 32,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> dict:
    """Top-k eigenvalues, Hutchinson trace and ε-sharpness of the Hessian block of ``params`` (of ``model``).

    Only ``params`` require grad while it runs (the graph then holds the block alone); every
    parameter's ``requires_grad`` is put back afterwards, and ε-sharpness puts the values back bit
    for bit. The caller chooses the mode (eval, for a deterministic loss). ``topk=0`` or
    ``probes=0`` skip the eigenvalues or the trace. Returns the row without scope or settings.
    """
    params = list(params)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with double_backward_attention():
            return _block_sharpness(model, loss_fn, params, rho, topk, probes, seed, max_iter, tol)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def double_backward_attention():
    """Attention through the math kernel: the fused CPU/flash kernels of
    ``F.scaled_dot_product_attention`` (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``)
    have no double backward, which every Hessian-vector product needs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415 - torch loads only when this runs (the rest of the module is torch-free)

    return sdpa_kernel(SDPBackend.MATH)


def _block_sharpness(model, loss_fn, params, rho, topk, probes, seed, max_iter, tol) -> dict:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    H = HessianOperator(loss_fn, params)
    row = {"n_parameters": int(sum(p.numel() for p in params)), "loss": H.loss}
    if topk:
        vals, _, its = top_eigenvalues(H, params, topk, max_iter, tol, seed)
        for i, (v, it) in enumerate(zip(vals, its), 1):
            row[f"lambda_{i}"] = v
            row[f"lambda_{i}_iterations"] = it
    if probes:
        tr, se, _ = hutchinson_trace(H, params, probes, seed)
        row["trace"], row["trace_se"] = tr, se
    eps = epsilon_sharpness(loss_fn, params, rho, grad=H.grad, loss=H.loss)
    row.update(
        rho=rho,
        eps_sharpness=eps["eps_sharpness"],
        perturbed_loss=eps["perturbed_loss"],
        grad_norm=eps["grad_norm"],
        hvp_calls=H.calls,
    )
    return row
