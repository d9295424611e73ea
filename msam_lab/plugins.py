"""Register your own datasets, encoders and training methods, in code or from an installed package.

    import msam_lab
    msam_lab.register_dataset("my-data", load_my_data, {"n_samples": 500})   # loader(cache_dir, **options)
    msam_lab.register_encoder("my-enc", MyEncoder)        # factory(in_shape, out_dim, hidden, **options)
    msam_lab.register_method("my-method", MyMethod)       # a subclass of msam_lab.methods.Method
    msam_lab.train({"dataset": "my-data", "encoders": {"image": "my-enc"}, "method": "my-method"})

A package registers through the entry-point group ``msam_lab.plugins`` (msam_lab.registry),
which msam_lab loads the first time it lists or looks up a name. Each layer owns one
``msam_lab.registry.Registry`` of its names (``DATASET_REGISTRY``, ``ENCODER_REGISTRY``,
``METHOD_REGISTRY``, so no lower layer imports this one); these functions delegate to them.
Names are lower-case (letters, digits, ``_ . -``); registering the same object twice is a no-op,
a different one under a taken name (a built-in's too) needs ``replace=True``.
"""

from __future__ import annotations

from msam_lab.datasets import DATASET_REGISTRY, register_dataset
from msam_lab.methods import METHOD_REGISTRY, register_method
from msam_lab.models.multimodal import ENCODER_REGISTRY, register_encoder
from msam_lab.registry import GROUP, Registry, load_plugins

REGISTRIES: dict[str, Registry] = {r.kind: r for r in (DATASET_REGISTRY, ENCODER_REGISTRY, METHOD_REGISTRY)}


def unregister(kind: str, name: str) -> None:
    """Forget plug-in ``name`` of ``kind`` ("dataset", "encoder" or "method"); a replaced built-in comes back."""
    if kind not in REGISTRIES:
        raise ValueError(f"kind must be one of {', '.join(REGISTRIES)}, got {kind!r}")
    REGISTRIES[kind].unregister(name)


__all__ = [
    "GROUP",
    "REGISTRIES",
    "load_plugins",
    "register_dataset",
    "register_encoder",
    "register_method",
    "unregister",
]
