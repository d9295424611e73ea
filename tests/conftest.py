"""Shared fixtures: seeded tiny models and batches, so every test starts from the same state."""

from __future__ import annotations

import pytest
import torch

from msam_lab import config as config_mod
from msam_lab.config import Config
from msam_lab.models.multimodal import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_batch(n_mod=2, n=32, dim=6, n_classes=3, seed=0, informative=(2.0, 0.3, 1.0, 0.5)):
    """Inputs where modality m carries the label with strength informative[m]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    means = torch.randn(n_classes, dim, generator=g)
    inputs = {f"m{m}": informative[m] * means[labels] + torch.randn(n, dim, generator=g) for m in range(n_mod)}
    return inputs, labels


def make_model(n_mod=2, dim=6, n_classes=3, fusion="late_sum", seed=0):
    torch.manual_seed(seed)
    return build_model({f"m{m}": (dim,) for m in range(n_mod)}, n_classes, fusion, feature_dim=8, hidden_dim=16)


def make_config(**kw) -> Config:
    """A Config of shared fields and method options (flat keys, as in a config file), not resolved."""
    base = dict(dataset="synthetic", lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.1)
    base.update(kw)
    return config_mod.from_dict(base)


@pytest.fixture
def batch():
    return make_batch()
