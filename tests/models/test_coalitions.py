"""The fast coalition path against the naive one, and the logit decomposition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msam_lab import shapley
from msam_lab.models import coalitions
from msam_lab.models.multimodal import MultimodalModel, SumFusion, is_mode_invariant
from tests.conftest import make_batch, make_model


@pytest.mark.parametrize("fusion", ["late_sum", "late_concat", "early"])
@pytest.mark.parametrize("n_mod", [2, 3])
def test_fast_path_equals_naive(fusion, n_mod):
    model = make_model(n_mod, fusion=fusion).eval()
    inputs, _ = make_batch(n_mod)
    masks = shapley.all_masks(n_mod)
    with torch.no_grad():
        fast = coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), masks)
        naive = coalitions.coalition_logits_naive(model, inputs, masks)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_mod", [2, 3, 4])
def test_summed_heads_add_each_modalitys_term_in_order_for_any_mask_list(n_mod):
    """Coalition k of a summed-head model: head_m(real_m or zero_m) added over m = 0, 1, ... exactly, so a
    subset of the masks (singletons, a permutation estimator's few) gives the bits of the full list's rows."""
    model = make_model(n_mod, fusion="late_sum").eval()
    inputs, _ = make_batch(n_mod)
    with torch.no_grad():
        feats, zeros = model.encode(inputs), model.zero_features()
        terms = [(head(z), head(f)) for head, f, z in zip(model.fusion.heads, feats, zeros)]
        everything = coalitions.coalition_logits(model, feats, zeros, shapley.all_masks(n_mod))
        for k in range(1 << n_mod):
            brute = terms[0][k & 1].expand(len(feats[0]), -1)
            for m in range(1, n_mod):
                brute = brute + terms[m][k >> m & 1]
            assert torch.equal(everything[k], brute), k
        some = [(1 << n_mod) - 1, *shapley.singleton_masks(n_mod), 0]
        assert torch.equal(coalitions.coalition_logits(model, feats, zeros, some), everything[some])


def test_fast_path_equals_naive_with_batchnorm_in_eval_mode():
    torch.manual_seed(1)
    enc = {m: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()) for m in ("a", "b")}
    model = MultimodalModel(enc, SumFusion([8, 8], 3), {"a": (6,), "b": (6,)})
    inputs = {"a": torch.randn(16, 6) + 1, "b": torch.randn(16, 6) - 1}
    model.train()
    model(inputs)  # move the running statistics away from their init
    model.eval()
    assert not is_mode_invariant(model)
    with torch.no_grad():
        fast = coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), range(4))
        naive = coalitions.coalition_logits_naive(model, inputs, range(4))
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)


def test_batch_stats_use_eval_mode_and_restore_training_mode():
    torch.manual_seed(2)
    enc = {m: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()) for m in ("a", "b")}
    model = MultimodalModel(enc, SumFusion([8, 8], 3), {"a": (6,), "b": (6,)})
    inputs = {"a": torch.randn(16, 6), "b": torch.randn(16, 6)}
    labels = torch.randint(0, 3, (16,))
    model.train()
    train_feats = model.encode(inputs)  # train-mode features must NOT be reused
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = coalitions.batch_coalition_stats(model, inputs, labels, train_feats)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no running-stat update from the coalition passes
    model.eval()
    with torch.no_grad():
        ref = coalitions.coalition_logits_naive(model, inputs, range(4))
    acc = (ref.argmax(-1) == labels).float().mean(1).numpy()
    assert stats.accuracy.tolist() == pytest.approx(acc.tolist())


def test_decomposed_logits_sum_to_fused_and_match_agm_formula():
    model = make_model(2).eval()
    inputs, _ = make_batch(2)
    with torch.no_grad():
        allc = coalitions.coalition_logits_naive(model, inputs, range(4))
    out = coalitions.decomposed_logits(allc)
    torch.testing.assert_close(out.sum(0), allc[3], rtol=1e-5, atol=1e-5)
    # AGM: out_a = ½[f(a,v) − f(0,v) + f(a,0)];  mask 1 = {m0}, 2 = {m1}
    torch.testing.assert_close(out[0], 0.5 * (allc[3] - allc[2] + allc[1]), rtol=1e-5, atol=1e-5)


def test_decomposition_of_three_modalities_sums_to_fused():
    model = make_model(3, fusion="early").eval()
    inputs, _ = make_batch(3)
    with torch.no_grad():
        allc = coalitions.coalition_logits_naive(model, inputs, range(8))
    torch.testing.assert_close(coalitions.decomposed_logits(allc).sum(0), allc[7], rtol=1e-5, atol=1e-5)


def test_shapley_of_coalition_accuracy_is_efficient():
    model = make_model(3).eval()
    inputs, labels = make_batch(3)
    stats = coalitions.batch_coalition_stats(model, inputs, labels)
    phi = coalitions.modality_shapley(lambda ms: coalitions.batch_coalition_stats(model, inputs, labels, None, ms), 3)
    assert phi.sum() == pytest.approx(stats.accuracy[7] - stats.accuracy[0])


def test_evaluation_gives_each_module_its_own_mode_back():
    model = make_model(2).train()
    model.encoders["m1"].eval()  # frozen on purpose
    inputs, labels = make_batch(2)
    coalitions.batch_coalition_stats(model, inputs, labels)
    assert model.training and model.encoders["m0"].training
    assert not model.encoders["m1"].training and not any(m.training for m in model.encoders["m1"].modules())


def test_fast_path_in_double_precision():
    model = make_model(2).double().eval()
    inputs, _ = make_batch(2)
    inputs = {m: x.double() for m, x in inputs.items()}
    with torch.no_grad():
        fast = coalitions.coalition_logits(model, model.encode(inputs), model.zero_features(), range(4))
        naive = coalitions.coalition_logits_naive(model, inputs, range(4))
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, naive)


def test_shapley_batch_observes_the_first_n_samples_only():
    """shapley_batch=N gives exactly the observation of the batch's first N samples."""
    import numpy as np

    from msam_lab.methods import build_method
    from tests.conftest import make_batch, make_config, make_model

    inputs, labels = make_batch(n_mod=3, n=40, informative=(2.0, 0.3, 1.0))
    head = {m: x[:12] for m, x in inputs.items()}, labels[:12]
    model = make_model(n_mod=3)
    sub = build_method(model, make_config(method="msam", shapley_batch=12)).observe(inputs, labels)
    ref = build_method(model, make_config(method="msam")).observe(*head)
    full = build_method(model, make_config(method="msam")).observe(inputs, labels)
    assert np.array_equal(sub.phi, ref.phi) and sub.dominant == ref.dominant
    assert not np.array_equal(sub.phi, full.phi)  # the subsample really is a different game


@pytest.mark.parametrize("how", ["data", "swap", "assign"])
def test_zero_features_follow_the_model_to_another_dtype(how):
    """The zero samples are made once per device and dtype: a converted model gets new ones, in its
    dtype, equal to its encoders on zeros (``.to()`` either assigns ``.data`` or swaps the tensors;
    ``load_state_dict(assign=True)`` puts new parameter objects in place)."""
    model = make_model(2, fusion="late_sum")
    with torch.no_grad():
        assert [z.dtype for z in model.zero_features()] == [torch.float32] * 2
        if how == "assign":
            model.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, assign=True)
        else:
            old = torch.__future__.get_swap_module_params_on_conversion()
            torch.__future__.set_swap_module_params_on_conversion(how == "swap")
            try:
                model.double()
            finally:
                torch.__future__.set_swap_module_params_on_conversion(old)
        for name, z in zip(model.modalities, model.zero_features()):
            shape = (1, *model.input_shapes[name])
            assert z.dtype == torch.float64
            assert torch.equal(z, model.encoders[name](torch.zeros(shape, dtype=torch.float64)))
    assert len(list(model.named_parameters())) == len({id(p) for p in model.parameters()})  # no alias
