"""synthetic: M-modality Gaussian class clusters with an informativeness and a speed knob per modality.

For modality m every class c has a random unit-norm mean direction mu[c, m] in
R^n_features; a sample of class y is ``speed[m] * (informativeness[m] * mu[y, m] + N(0, I))``.
So ``informativeness[m]`` is the distance of a class mean from the origin in
units of the noise std: 0 makes modality m pure noise (chance level), larger
values make it easier. Modalities are named ``m0, m1, ...``.

``speed[m]`` (default 1 for every modality) sets how fast a network learns modality m, not how much
it can learn: scaling an input by s is invertible, so the best accuracy reachable from it (and a
probe on standardised features) does not change, while plain SGD on the first layer that reads it
moves that layer's contribution about s^2 times as fast (gradient times s, effect of a weight times
s). ``speed=[0.1, 1]`` makes the weaker m1 lead early and the more informative m0 take over later.

Classes are balanced (counts differ by at most one) and the split is stratified.
Randomness: ``numpy.random.SeedSequence(seed)`` gives one stream for the split and
one child stream per modality (its means and its noise), so modality m's data do
not change when other modalities are added or re-weighted. Generation is
instant, so nothing is cached.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from msam_lab.datasets.av_digits import stratified_split
from msam_lab.datasets.base import MultimodalData, Splits

NAME = "synthetic"

OPTIONS = {
    "n_modalities": 3,
    "informativeness": None,
    "speed": None,
    "n_classes": 4,
    "n_features": 16,
    "n_samples": 1200,
    "test_fraction": 0.25,
    "seed": 0,
}
# checked by datasets.resolve_options: n_modalities=10**7 hung, n_features=2**63 failed inside numpy
# without naming the option; informativeness far above 1e6 overflowed the float32 features
OPTION_RANGES = {
    "n_modalities": (1, 64),
    "n_classes": (2, 100_000),
    "n_features": (1, 100_000),
    "n_samples": (1, 10_000_000),
    "seed": (0, None),
    "informativeness": (0.0, 1e6),
    "speed": (1e-6, 1e6),  # a scale of the features: 0 would erase the modality, not slow it
}


def default_informativeness(n_modalities: int) -> list[float]:
    """3.0, 1.5, 0.75, ... (halving): modality m0 dominates, the last is weakest."""
    return [3.0 * 0.5**m for m in range(n_modalities)]


def _int(name, value, minimum, hint=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"synthetic option {name!r} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"synthetic option {name!r} must be >= {minimum}, got {value}{hint}")
    return int(value)


def _per_modality(
    name: str, values, n_modalities: int, default: list[float], minimum: float, strict: bool
) -> list[float]:
    """None -> ``default``; a number -> that number for every modality; a list -> one per modality, each
    finite and >= ``minimum`` (> when ``strict``)."""
    if values is None:
        values = default
    elif isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values] * n_modalities  # converted and checked below
    elif isinstance(values, (list, tuple, np.ndarray)):
        values = list(values)
        if len(values) != n_modalities:
            raise ValueError(
                f"synthetic option {name!r} has {len(values)} values but "
                f"n_modalities={n_modalities}; give one per modality, a single number, or None"
            )
    else:
        raise ValueError(
            f"synthetic option {name!r} must be None, a number, or a list of {n_modalities} numbers; got {values!r}"
        )
    checked = []
    for m, v in enumerate(values):
        try:
            finite = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(float(v))
        except OverflowError:  # an int beyond float range escaped as a traceback
            finite = False
        if not finite:
            raise ValueError(f"synthetic option {name!r}[{m}] must be a finite number, got {v!r}")
        if v < minimum or strict and v == minimum:
            raise ValueError(f"synthetic option {name!r}[{m}] must be {'>' if strict else '>='} {minimum:g}, got {v}")
        checked.append(float(v))
    return checked


def _check_options(
    n_modalities, informativeness, n_classes, n_features, n_samples, test_fraction, seed, speed=None
) -> dict:
    n_modalities = _int("n_modalities", n_modalities, 1)
    n_classes = _int("n_classes", n_classes, 2)
    n_features = _int("n_features", n_features, 1)
    seed = _int("seed", seed, 0)
    n_samples = _int(
        "n_samples",
        n_samples,
        2 * n_classes,
        f" (at least 2 per class so both splits see every class; n_classes={n_classes})",
    )
    try:
        test_fraction = float(test_fraction)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        raise ValueError(
            f"synthetic option 'test_fraction' must be a number in (0, 1), got {test_fraction!r}"
        ) from None
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"synthetic option 'test_fraction' must be in (0, 1), e.g. 0.25; got {test_fraction}")

    informativeness = _per_modality(
        "informativeness", informativeness, n_modalities, default_informativeness(n_modalities), 0.0, False
    )
    speed = _per_modality("speed", speed, n_modalities, [1.0] * n_modalities, 0.0, True)

    return {
        "n_modalities": n_modalities,
        "informativeness": informativeness,
        "speed": speed,
        "n_classes": n_classes,
        "n_features": n_features,
        "n_samples": n_samples,
        "test_fraction": test_fraction,
        "seed": seed,
    }


def generate(
    n_modalities, informativeness, n_classes, n_features, n_samples, test_fraction, seed, speed=None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict]:
    """(features per modality (N, n_features) float32, labels, train_idx, test_idx, resolved options)."""
    opts = _check_options(n_modalities, informativeness, n_classes, n_features, n_samples, test_fraction, seed, speed)
    split_ss, data_ss = np.random.SeedSequence(opts["seed"]).spawn(2)
    n, d, k = opts["n_samples"], opts["n_features"], opts["n_classes"]
    labels = np.arange(n, dtype=np.int64) % k  # balanced; order is irrelevant

    features = {}
    streams = data_ss.spawn(opts["n_modalities"])
    for m, (ss, scale, speed) in enumerate(zip(streams, opts["informativeness"], opts["speed"])):
        rng = np.random.default_rng(ss)
        means = rng.standard_normal((k, d))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        x = scale * means[labels] + rng.standard_normal((n, d))
        if speed != 1.0:  # skipped at 1: the default data stay bit-identical
            x = speed * x
        features[f"m{m}"] = x.astype(np.float32)

    train, test = stratified_split(labels, opts["test_fraction"], np.random.default_rng(split_ss))
    per_class_test = np.bincount(labels[test], minlength=k)
    per_class_all = np.bincount(labels, minlength=k)
    if per_class_test.min() == 0 or (per_class_all - per_class_test).min() == 0:
        raise ValueError(
            f"synthetic option 'test_fraction'={opts['test_fraction']} leaves a class with no "
            f"{'test' if per_class_test.min() == 0 else 'train'} samples at n_samples={n}; "
            f"raise n_samples or move test_fraction towards 0.5"
        )
    return features, labels, train, test, opts


def load(cache_dir=None, **options) -> Splits:
    """The synthetic dataset as :class:`Splits` (``cache_dir`` is accepted and ignored)."""
    missing = sorted(set(OPTIONS) - set(options))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"dataset 'synthetic' has no option {unknown[0]!r}; its options are: {', '.join(OPTIONS)}")
    options = {**{m: OPTIONS[m] for m in missing}, **options}
    try:
        features, labels, train, test, opts = generate(**options)
    except MemoryError:  # e.g. n_features=10**11: numpy's MemoryError escaped as a traceback
        raise ValueError(
            f"synthetic options n_samples={options['n_samples']}, n_features="
            f"{options['n_features']}, n_modalities={options['n_modalities']} need more memory "
            "than this machine has; lower them"
        ) from None
    k = opts["n_classes"]

    def part(index):
        inputs = {m: torch.from_numpy(np.ascontiguousarray(x[index])) for m, x in features.items()}
        return MultimodalData(inputs, torch.from_numpy(labels[index]), num_classes=k)

    train_data, test_data = part(train), part(test)
    info = {
        "name": NAME,
        "description": (
            f"{opts['n_modalities']}-modality Gaussian class clusters, {k} classes, "
            f"informativeness {opts['informativeness']} (class-mean norm / noise std), speed {opts['speed']}"
        ),
        "encoders": {m: "mlp" for m in features},
        "shapes": {m: tuple(x.shape[1:]) for m, x in train_data.inputs.items()},
        "options": opts,
        "class_names": [str(c) for c in range(k)],
    }
    return Splits(train_data, test_data, info)
