"""Shapley values against the axioms and against brute force over all orderings."""

from __future__ import annotations

import copy
import itertools
import math
import re

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
    np.testing.assert_allclose(
        shapley.exact_shapley(a + b), shapley.exact_shapley(a) + shapley.exact_shapley(b), atol=1e-12
    )


def test_vector_game_torch_matches_numpy_per_component():
    v = torch.randn(8, 5, 3, dtype=torch.float64)
    phi = shapley.exact_shapley(v)
    assert phi.shape == (3, 5, 3)
    ref = brute_force(v[:, 2, 1].numpy(), 3)
    np.testing.assert_allclose(phi[:, 2, 1].numpy(), ref, atol=1e-12)


def test_sampled_is_exact_on_additive_games_with_many_players():
    n = 12  # beyond exact range: every ordering gives the same marginals in an additive game
    w = np.random.default_rng(0).normal(size=n)
    calls = []

    def value_fn(masks):
        calls.append(len(masks))
        return [sum(w[m] for m in range(n) if mask >> m & 1) for mask in masks]

    phi = shapley.sampled_shapley(value_fn, n, n_permutations=5, seed=0)
    np.testing.assert_allclose(phi, w, atol=1e-12)
    assert len(calls) == 1  # all coalitions asked for in one batch


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
    np.testing.assert_allclose(shapley.shares([-0.1, 0.0]), [0.5, 0.5])  # nothing positive: uniform


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


def test_clip_and_shift_are_still_their_formulas_bit_for_bit():
    phi = np.array([0.3, 0.1, -0.2, 0.05])
    pos = np.maximum(phi, 0.0)
    assert np.array_equal(shapley.shares(phi, "clip"), pos / pos.sum())
    shifted = phi - phi.min()
    assert np.array_equal(shapley.shares(phi, "shift", temperature=7.0), shifted / shifted.sum())


def test_softmax_shares_are_softmax_of_phi_over_t():
    phi, t = [0.3, 0.1, -0.2], 0.5
    e = [math.exp(0.6), math.exp(0.2), math.exp(-0.4)]
    np.testing.assert_allclose(shapley.shares(phi, "softmax", t), [x / sum(e) for x in e], rtol=1e-14)
    np.testing.assert_allclose(
        shapley.shares(phi, "softmax"), shapley.shares(np.add(phi, 5.0), "softmax"), rtol=1e-14
    )  # only differences of phi matter


def test_softmax_limits_are_the_argmax_and_the_uniform_shares():
    assert list(shapley.shares([0.1, 0.4, 0.2], "softmax", 1e-6)) == [0.0, 1.0, 0.0]
    assert list(shapley.shares([0.4, 0.4, 0.1], "softmax", 1e-300)) == [0.5, 0.5, 0.0]  # ties share
    assert list(shapley.shares([0.1, -0.9], "softmax", 5e-324)) == [1.0, 0.0]  # no overflow
    np.testing.assert_allclose(shapley.shares([0.9, -0.5, 0.0], "softmax", 1e12), [1 / 3] * 3, atol=1e-12)
    # in between, a higher temperature flattens the shares
    sharp, flat = shapley.shares([0.3, 0.1], "softmax", 0.05), shapley.shares([0.3, 0.1], "softmax", 2.0)
    assert sharp[0] > flat[0] > 0.5


def test_loss_shares_are_softmax_of_minus_the_unimodal_losses():
    # a known game: modality 0 alone has CE 0.5, modality 1 alone 1.2; phi plays no part
    e0, e1 = math.exp(-0.5 / 0.8), math.exp(-1.2 / 0.8)
    v = shapley.shares([-1.0, 1.0], "loss", 0.8, unimodal_loss=[0.5, 1.2])
    np.testing.assert_allclose(v, [e0 / (e0 + e1), e1 / (e0 + e1)], rtol=1e-14)
    assert list(shapley.shares([0.0, 0.0, 0.0], "loss", 1e-9, unimodal_loss=[2.0, 0.3, 0.4])) == [0, 1, 0]
    with pytest.raises(ValueError, match="unimodal_loss"):
        shapley.shares([0.1, 0.2], "loss")


def test_perturbed_modality_choices():
    mods = ("a", "b", "c")
    assert [shapley.PerturbedModality("shapley", mods)(d) for d in (2, 0, 1)] == [2, 0, 1]
    assert [shapley.PerturbedModality("fixed:b", mods)(d) for d in (2, 0, 1)] == [1, 1, 1]
    alt = shapley.PerturbedModality("alternate", mods)
    assert [alt(0) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    draws = [shapley.PerturbedModality("random", mods, seed=3) for _ in range(2)]
    seqs = [[p(0) for _ in range(300)] for p in draws]
    assert seqs[0] == seqs[1]  # seeded
    assert all(80 < seqs[0].count(m) < 120 for m in range(3))  # uniform: 100 expected, sd 8
    assert seqs[0] != [shapley.PerturbedModality("random", mods, seed=4)(0) for _ in range(300)]


def test_perturbed_modality_state_dict_resumes_the_sequence():
    for choice in ("random", "alternate"):
        p = shapley.PerturbedModality(choice, ("a", "b", "c"), seed=1)
        [p(0) for _ in range(5)]
        q = shapley.PerturbedModality(choice, ("a", "b", "c"), seed=99)
        q.load_state_dict(copy.deepcopy(p.state_dict()))
        assert [p(0) for _ in range(20)] == [q(0) for _ in range(20)], choice


def test_bad_perturbed_choices_name_the_fix():
    for bad, words in [
        ("fixed:z", "fixed:<one of a, b>"),
        ("fixed:", "names no modality"),
        ("dominant", "shapley, fixed:<modality>, random, alternate"),
        ("random:a", "random"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            shapley.PerturbedModality(bad, ("a", "b"))


def test_swap_shares_exchanges_the_two_entries():
    assert list(shapley.swap_shares([0.6, 0.3, 0.1], 0, 2)) == [0.1, 0.3, 0.6]
    assert list(shapley.swap_shares([0.6, 0.3, 0.1], 1, 1)) == [0.6, 0.3, 0.1]
