"""Shapley values, shares and the dominant modality as torch ops on the device (issue 23).

Checked against brute force over orderings, the Shapley axioms, independent numpy formulas (the
code before issue 23) and the host path, which must give the same bits. Runs on the CPU, and on a GPU
too when one is present.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from msam_lab import shapley

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_force(values: np.ndarray, n: int) -> np.ndarray:
    """Average marginal contribution over all n! orderings (the definition)."""
    phi = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        mask = 0
        for m in order:
            phi[m] += values[mask | 1 << m] - values[mask]
            mask |= 1 << m
    return phi / len(orders)


def game(n: int, seed: int, batch: int = 64) -> np.ndarray:
    """A coalition-accuracy game: counts / batch rounded to float32, as the observation's."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, batch + 1, size=1 << n) / batch).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_exact_on_device_equals_brute_force_and_the_host_bits(device, n):
    for seed in range(5):
        v = game(n, seed)
        phi = shapley.exact_shapley(torch.tensor(v, device=device))
        assert phi.device.type == device and phi.dtype == torch.float64
        np.testing.assert_allclose(phi.cpu().numpy(), brute_force(v, n), rtol=0, atol=1e-14)
        # the host path is the same code on the CPU: the same bits
        assert np.array_equal(shapley.exact_shapley(v), phi.cpu().numpy())


def test_exact_matches_the_old_matrix_product():
    """Before issue 23 phi was np.tensordot(W, v) (BLAS order): equal bits at M = 2 (every sum exact),
    within an ulp or two above."""
    for n in range(1, 8):
        W = shapley.shapley_matrix(n)
        for seed in range(20):
            v = game(n, seed)
            old, new = np.tensordot(W, v, axes=1), shapley.exact_shapley(v)
            if n <= 2:
                assert np.array_equal(old, new)
            np.testing.assert_allclose(new, old, rtol=0, atol=4e-16 * max(1, n))


@pytest.mark.parametrize("device", DEVICES)
def test_axioms_on_device(device):
    n = 4
    rng = np.random.default_rng(1)
    v = rng.normal(size=1 << n)
    v[0] = 0.3
    phi = shapley.exact_shapley(torch.tensor(v, device=device)).cpu().numpy()
    assert math.isclose(phi.sum(), v[-1] - v[0], abs_tol=1e-12)  # efficiency
    # null player: modality 3 adds nothing to any coalition
    null = v.copy()
    for mask in range(1 << n):
        if mask >> 3 & 1:
            null[mask] = null[mask & ~(1 << 3)]
    assert abs(shapley.exact_shapley(torch.tensor(null, device=device))[3].item()) < 1e-15
    # symmetry: a game that depends on coalition size only gives equal values
    sym = np.array([[0.0, 0.1, 0.5, 0.6, 1.0][bin(mask).count("1")] for mask in range(1 << n)])
    phi_sym = shapley.exact_shapley(torch.tensor(sym, device=device)).cpu().numpy()
    np.testing.assert_allclose(phi_sym, phi_sym[0], rtol=0, atol=1e-15)  # equal up to rounding


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_is_the_mean_over_its_seeded_permutations(device):
    n, n_perm, seed = 5, 16, 3
    v = game(n, 7)
    rng = np.random.default_rng(seed)  # the permutations the estimator draws, re-drawn here
    perms = [rng.permutation(n) for _ in range(n_perm)]
    expected = np.zeros(n)
    for order in perms:
        mask = 0
        for m in order:
            expected[m] += v[mask | 1 << m] - v[mask]
            mask |= 1 << m
    expected /= n_perm
    seen = []

    def values(masks):
        seen.append(list(masks))
        return torch.tensor(v[masks], device=device)

    phi = shapley.sampled_shapley(values, n, n_perm, seed)
    assert phi.device.type == device and len(seen) == 1 and len(set(seen[0])) == len(seen[0])
    np.testing.assert_allclose(phi.cpu().numpy(), expected, rtol=0, atol=1e-14)
    assert np.array_equal(shapley.sampled_shapley(lambda m: v[m], n, n_perm, seed), phi.cpu().numpy())
    # every ordering drawn many times: close to the exact values
    many = shapley.sampled_shapley(lambda m: torch.tensor(v[m], device=device), n, 4000, 0)
    np.testing.assert_allclose(many.cpu().numpy(), brute_force(v, n), atol=0.02)


def old_shares(phi, rule, temperature=1.0, alone=None):
    """The numpy formulas of the shares before issue 23 (the reference)."""
    phi = np.asarray(phi, dtype=float)
    if rule in ("softmax", "loss"):
        x = phi if rule == "softmax" else -np.asarray(alone, dtype=float)
        with np.errstate(over="ignore"):
            z = np.exp((x - x.max()) / temperature)
        return z / z.sum()
    pos = np.maximum(phi, 0.0) if rule == "clip" else phi - phi.min()
    return np.full(len(phi), 1 / len(phi)) if pos.sum() <= 0 else pos / pos.sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", shapley.SHARE_RULES)
def test_shares_on_device_match_the_formulas_and_the_host_bits(device, rule):
    rng = np.random.default_rng(2)
    cases = [rng.normal(size=m) * 0.3 for m in (1, 2, 3, 4, 7)] + [np.array([-0.2, -0.1]), np.array([0.2, 0.2])]
    for phi in cases:
        alone = rng.random(len(phi)) * 2
        for t in (1.0, 0.05, 1e-300):
            want = old_shares(phi, rule, t, alone)
            alone_t = torch.tensor(alone, device=device)
            got = shapley.shares(torch.tensor(phi, device=device), rule, t, alone_t)
            assert got.device.type == device
            np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-14, atol=1e-300)
            assert math.isclose(got.sum().item(), 1.0, abs_tol=1e-12)
            host = shapley.shares(phi, rule, t, alone)
            assert isinstance(host, np.ndarray)
            if device == "cpu":
                assert np.array_equal(host, got.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_dominant_index_and_tie_rules_on_device(device):
    rng = np.random.default_rng(3)
    for _ in range(200):
        share = rng.integers(0, 3, size=4).astype(float)  # many ties
        previous = int(rng.integers(4))
        tied = np.flatnonzero(share == share.max())
        t = torch.tensor(share, device=device)
        got = shapley.dominant_index(t, "lowest")
        assert got.dim() == 0 and got.device.type == device and got.item() == tied[0]
        keep = previous if previous in tied else tied[0]
        assert shapley.dominant_index(t, "previous", previous).item() == keep
        prev_t = torch.tensor(previous, device=device)
        assert shapley.dominant_index(t, "previous", prev_t).item() == keep
        assert shapley.dominant(share, "previous", previous) == keep
    with pytest.raises(ValueError, match="tie rule"):
        shapley.dominant_index(torch.zeros(2), "highest")


@pytest.mark.parametrize("device", DEVICES)
def test_swap_shares_on_device(device):
    share = torch.tensor([0.1, 0.2, 0.7], device=device, dtype=torch.float64)
    out = shapley.swap_shares(share, torch.tensor(2, device=device), 0)
    assert out.tolist() == [0.7, 0.2, 0.1] and share.tolist() == [0.1, 0.2, 0.7]
    assert shapley.swap_shares(share, 1, 1).tolist() == share.tolist()


def test_pick_reads_the_name_on_str():
    pick = shapley.Pick(torch.tensor(1), ("image", "audio"))
    assert str(pick) == "audio" and pick.names == ("image", "audio")
