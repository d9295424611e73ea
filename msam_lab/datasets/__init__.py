"""Dataset registry: a name -> a module with ``OPTIONS`` (defaults) and ``load(**options)``.

Every loader returns :class:`Splits` of :class:`MultimodalData`. Options are
validated here, once, so every loader gets complete, known keyword arguments.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from .base import Batch, MultimodalData, Splits

# name -> module path; modules are imported lazily so a missing optional
# dependency of one real-data loader never breaks the others.
_REGISTRY = {
    "av-digits": "msam_lab.datasets.av_digits",
    "synthetic": "msam_lab.datasets.synthetic",
    "av-mnist": "msam_lab.datasets.avmnist",
    "crema-d": "msam_lab.datasets.cremad",
    "ave": "msam_lab.datasets.ave",
    "ur-funny": "msam_lab.datasets.urfunny",
}

DATASETS = tuple(_REGISTRY)


def default_cache_dir() -> Path:
    """Where generated datasets are cached: ``$MSAM_LAB_DATA`` or ``./data``."""
    return Path(os.environ.get("MSAM_LAB_DATA", "data"))


def _module(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[name])


def dataset_options(name: str) -> dict:
    """The options ``name`` accepts, with their defaults."""
    return dict(_module(name).OPTIONS)


def resolve_options(name: str, options: dict | None = None) -> dict:
    """Defaults of ``name`` updated by ``options``; unknown keys are an error."""
    defaults = dataset_options(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option {unknown[0]!r}; "
                         f"its options are: {', '.join(defaults) or '(none)'}")
    defaults.update(options)
    return defaults


def load_dataset(name: str, cache_dir: str | Path | None = None, **options) -> Splits:
    """Load (or generate and cache) dataset ``name`` with ``options`` over its defaults."""
    module = _module(name)
    resolved = resolve_options(name, options)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return module.load(cache_dir=cache, **resolved)


__all__ = ["Batch", "MultimodalData", "Splits", "DATASETS", "load_dataset",
           "dataset_options", "resolve_options", "default_cache_dir"]
