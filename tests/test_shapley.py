"""Shapley values against the axioms and against brute force over all orderings."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from msam_lab import shapley


def brute_force(values, n):
    """Average marginal contribution over all n! orderings (the definition)."""
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        mask = 0
        for m in order:
            phi[m] += values[mask | 1 << m] - values[mask]
            mask |= 1 << m
    return phi / math.factorial(n)


def random_game(n, seed):
    return np.random.default_rng(seed).uniform(0, 1, 1 << n)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_exact_matches_brute_force(n):
    for seed in range(3):
        v = random_game(n, seed)
        np.testing.assert_allclose(shapley.exact_shapley(v), brute_force(v, n), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_efficiency(n):
    v = random_game(n, 1)
    assert shapley.exact_shapley(v).sum() == pytest.approx(v[-1] - v[0], abs=1e-12)


def test_symmetry_and_null_player():
    n = 3
    # players 0 and 1 interchangeable, player 2 adds nothing anywhere
    base = {0: 0.1, 1: 0.4, 2: 0.4, 3: 0.9}
    v = np.array([base[mask & 3] for mask in range(1 << n)])
    phi = shapley.exact_shapley(v)
    assert phi[0] == pytest.approx(phi[1], abs=1e-12)
    assert phi[2] == pytest.approx(0.0, abs=1e-12)


def test_additive_game_gives_each_players_weight():
    w = np.array([0.3, -0.2, 0.5, 0.05])
    v = np.array([sum(w[m] for m in range(4) if mask >> m & 1) for mask in range(16)])
    np.testing.assert_allclose(shapley.exact_shapley(v), w, atol=1e-12)


def test_additivity_of_games():
    a, b = random_game(4, 2), random_game(4, 3)
    np.testing.assert_allclose(shapley.exact_shapley(a + b),
                               shapley.exact_shapley(a) + shapley.exact_shapley(b), atol=1e-12)


def test_vector_game_torch_matches_numpy_per_component():
    v = torch.randn(8, 5, 3, dtype=torch.float64)
    phi = shapley.exact_shapley(v)
    assert phi.shape == (3, 5, 3)
    ref = brute_force(v[:, 2, 1].numpy(), 3)
    np.testing.assert_allclose(phi[:, 2, 1].numpy(), ref, atol=1e-12)


def test_sampled_is_exact_on_additive_games_with_many_players():
    n = 12     # beyond exact range: every ordering gives the same marginals in an additive game
    w = np.random.default_rng(0).normal(size=n)
    calls = []

    def value_fn(masks):
        calls.append(len(masks))
        return [sum(w[m] for m in range(n) if mask >> m & 1) for mask in masks]

    phi = shapley.sampled_shapley(value_fn, n, n_permutations=5, seed=0)
    np.testing.assert_allclose(phi, w, atol=1e-12)
    assert len(calls) == 1        # all coalitions asked for in one batch


def test_sampled_converges_to_exact():
    v = random_game(4, 7)
    phi = shapley.sampled_shapley(lambda ms: v[np.asarray(ms)], 4, n_permutations=4000, seed=1)
    np.testing.assert_allclose(phi, shapley.exact_shapley(v), atol=0.03)


def test_sampled_is_seeded():
    v = random_game(5, 3)
    a = shapley.sampled_shapley(lambda ms: v[np.asarray(ms)], 5, 16, seed=4)
    b = shapley.sampled_shapley(lambda ms: v[np.asarray(ms)], 5, 16, seed=4)
    np.testing.assert_array_equal(a, b)


def test_exact_refuses_too_many_players():
    with pytest.raises(ValueError, match="sampled"):
        shapley.shapley_matrix(11)


def test_clip_shares():
    np.testing.assert_allclose(shapley.shares([0.3, 0.1, -0.2]), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(shapley.shares([-0.1, 0.0]), [0.5, 0.5])      # nothing positive: uniform


def test_shift_shares():
    np.testing.assert_allclose(shapley.shares([0.3, 0.1, -0.1], "shift"), [0.4 / 0.6, 0.2 / 0.6, 0.0])
    np.testing.assert_allclose(shapley.shares([0.2, 0.2], "shift"), [0.5, 0.5])


def test_tie_rules():
    assert shapley.dominant([0.4, 0.4, 0.2]) == 0
    assert shapley.dominant([0.2, 0.4, 0.4]) == 1
    assert shapley.dominant([0.2, 0.4, 0.4], "previous", previous=2) == 2
    assert shapley.dominant([0.2, 0.4, 0.4], "previous", previous=0) == 1
    assert shapley.dominant([0.1, 0.9], "previous", previous=0) == 1
    with pytest.raises(ValueError, match="tie rule"):
        shapley.dominant([0.5, 0.5], "random")
