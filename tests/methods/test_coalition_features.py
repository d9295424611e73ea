"""``coalition_features``: eval (one more eval-mode encoder pass) against batch (the clean pass's features).

Without BatchNorm the two are the same computation, so training is bit for bit the same; with BatchNorm
``batch`` must use the training pass's train-mode features for the present modalities, the eval-mode
zero feature for the absent ones, and never run the encoders on the batch again: checked against the
coalition logits and Shapley values computed here by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from msam_lab import config as config_mod
from msam_lab.errors import ConfigError
from msam_lab.methods import build_method
from msam_lab.models import coalitions
from msam_lab.models.multimodal import ConcatFusion, MultimodalModel, is_mode_invariant
from tests.conftest import make_batch, make_config, make_model


def as_array(values) -> np.ndarray:
    return np.array([float(v) for v in values])


def test_coalition_features_is_a_checked_choice():
    assert config_mod.Config().coalition_features == "eval"
    assert config_mod.choices("coalition_features") == ("eval", "batch")
    assert config_mod.parse(overrides=["coalition_features=batch"]).coalition_features == "batch"
    with pytest.raises(ConfigError, match="coalition_features must be one of eval, batch"):
        config_mod.parse(overrides=["coalition_features=train"])


@pytest.mark.parametrize("fusion", ["late_sum", "late_concat", "early"])
def test_batch_equals_eval_exactly_without_batchnorm(fusion):
    """A mode-invariant model: the same observations and, over a few M-SAM steps, the same weights bit for bit."""
    inputs, labels = make_batch(n_mod=3, n=24)
    runs = {}
    for source in ("eval", "batch"):
        model = make_model(n_mod=3, fusion=fusion, seed=3)
        assert is_mode_invariant(model)
        method = build_method(model, make_config(method="msam", coalition_features=source))
        rows = [method.train_step(inputs, labels) for _ in range(3)]
        runs[source] = rows, [p.detach().clone() for p in model.parameters()]
    (rows_e, params_e), (rows_b, params_b) = runs["eval"], runs["batch"]
    assert rows_e == rows_b
    assert all(torch.equal(a, b) for a, b in zip(params_e, params_b))


def bn_model(seed=0) -> MultimodalModel:
    torch.manual_seed(seed)
    enc = {m: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()) for m in ("m0", "m1")}
    return MultimodalModel(enc, ConcatFusion([8, 8], 3), {"m0": (6,), "m1": (6,)})


def hand_features(encoder: nn.Sequential, x: torch.Tensor, batch_stats: bool) -> torch.Tensor:
    """Linear -> BatchNorm1d -> ReLU written out: the batch's own statistics or the running ones."""
    lin, bn = encoder[0], encoder[1]
    z = x @ lin.weight.T + lin.bias
    mean, var = (z.mean(0), z.var(0, unbiased=False)) if batch_stats else (bn.running_mean, bn.running_var)
    return torch.relu((z - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)


def test_batch_uses_the_clean_pass_features_with_batchnorm():
    model = bn_model()
    inputs, labels = make_batch(n_mod=2, n=40, informative=(1.5, 0.8))
    model.train()
    with torch.no_grad():
        for shift in (1.0, -2.0, 3.0):  # running statistics far from this batch's, so eval != batch
            model({m: x + shift for m, x in inputs.items()})
    assert not is_mode_invariant(model)
    features = model.encode(inputs)  # the clean training pass (train mode)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    calls = []  # the batch sizes every encoder sees from here on
    hooks = [
        e.register_forward_hook(lambda mod, args, out: calls.append(len(args[0]))) for e in model.encoders.values()
    ]
    masks = range(4)
    got = coalitions.model_coalition_logits(model, inputs, masks, features, source="batch")
    assert calls == [1, 1]  # only each modality's one zero sample: no encoder pass over the batch
    evald = coalitions.model_coalition_logits(model, inputs, masks, features, source="eval")
    assert sorted(calls) == [1, 1, 1, 1, 40, 40]
    for h in hooks:
        h.remove()
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    with torch.no_grad():
        names = model.modalities
        train = [hand_features(model.encoders[m], inputs[m], batch_stats=True) for m in names]
        zero = [hand_features(model.encoders[m], torch.zeros(1, 6), batch_stats=False) for m in names]
        head = model.fusion.head
        want = torch.stack(
            [
                torch.cat([train[m] if k >> m & 1 else zero[m].expand_as(train[m]) for m in range(2)], 1)
                @ head.weight.T
                + head.bias
                for k in masks
            ]
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[1:], evald[1:], atol=1e-3)  # the eval source is another game here

    # the method's observation: Shapley values of the coalition accuracies of those logits, by brute force
    acc = (want.argmax(-1) == labels).double().mean(1).numpy()
    phi = np.array([(acc[1] - acc[0] + acc[3] - acc[2]) / 2, (acc[2] - acc[0] + acc[3] - acc[1]) / 2])
    for source in ("batch", "eval"):
        obs = build_method(model, make_config(method="msam", coalition_features=source)).observe(
            inputs, labels, features
        )
        if source == "batch":
            np.testing.assert_allclose(as_array(obs.phi), phi, atol=1e-12)
            clipped = np.maximum(phi, 0)
            np.testing.assert_allclose(as_array(obs.share), clipped / clipped.sum(), atol=1e-12)
            assert obs.dominant == int(np.argmax(clipped))  # phi differ here: no tie to break
            assert phi[0] != phi[1]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_batch_without_the_clean_features_observes_as_eval():
    """A caller with no training pass (MIE's observe(inputs, labels)) gets the eval-mode observation."""
    model = bn_model(seed=1)
    inputs, labels = make_batch(n_mod=2, n=32)
    model.train()
    with torch.no_grad():
        model({m: x + 2 for m, x in inputs.items()})
    obs = {
        s: build_method(model, make_config(method="msam", coalition_features=s)).observe(inputs, labels)
        for s in ("eval", "batch")
    }
    assert np.array_equal(as_array(obs["eval"].phi), as_array(obs["batch"].phi))
    assert obs["eval"].dominant == obs["batch"].dominant


def test_unknown_feature_source_is_refused():
    model = bn_model()
    inputs, _ = make_batch(n_mod=2)
    with pytest.raises(ValueError, match="one of eval, batch"):
        coalitions.model_coalition_logits(model, inputs, range(4), None, source="train")
