"""Dataset registry: a name -> a module with ``OPTIONS`` (defaults) and ``load(**options)``.

Built-in loaders are modules of this package; a plug-in's loader is registered with
:func:`register_dataset` (``msam_lab.plugins``) and stands in for such a module.

Every loader's ``load`` returns :class:`Splits` of :class:`MultimodalData`. A
loader whose data may not fit in memory also has ``load_stream(cache_dir,
**options)`` (Splits of :class:`StreamingData`) and ``estimate_bytes(**options)``
(its decoded size, cheaply); :func:`load_for_training` picks the path. Options
are validated here, once, so every loader gets complete, known keyword arguments.
"""

from __future__ import annotations

import importlib
import numbers
import reprlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from msam_lab import paths
from msam_lab.registry import Registry, check_callable, describe
from msam_lab.yaml_text import read_number

if TYPE_CHECKING:  # for the annotations; at run time the data classes load lazily (__getattr__ below)
    from msam_lab.datasets.base import Splits

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

DATASETS = tuple(_REGISTRY)  # the built-ins; dataset_names() adds the registered plug-ins


class PluginDataset:
    """A registered loader in the shape of a loader module (``OPTIONS``, ``load``, optionally
    ``load_stream`` and ``estimate_bytes``), so every path below treats both alike."""

    def __init__(
        self,
        name: str,
        loader: Callable,
        options: dict,
        stream_loader: Callable | None = None,
        estimator: Callable | None = None,
    ):
        self.name, self.loader, self.options = name, loader, dict(options)
        self.stream_loader, self.estimator = stream_loader, estimator

    def __eq__(self, other):  # the same functions (by identity) and option defaults
        return (
            isinstance(other, PluginDataset)
            and (self.name, self.options) == (other.name, other.options)
            and all(
                a is b
                for a, b in zip(
                    (self.loader, self.stream_loader, self.estimator),
                    (other.loader, other.stream_loader, other.estimator),
                )
            )
        )

    __hash__ = None

    def __repr__(self) -> str:
        return f"the plug-in loader {describe(self.loader)}"

    @property
    def OPTIONS(self) -> dict:  # noqa: N802 - the loader modules' name for it
        return dict(self.options)

    def load(self, cache_dir=None, **options) -> Splits:
        return self._checked(self.loader(cache_dir, **options), "loader")

    def __getattr__(self, attr):
        # load_stream / estimate_bytes exist only when registered (callers test with hasattr);
        # self.__dict__, not self.x: no recursion on a half-built instance (copy, pickle)
        fns = self.__dict__
        if attr == "load_stream" and fns.get("stream_loader") is not None:
            return lambda cache_dir=None, **options: self._checked(
                fns["stream_loader"](cache_dir, **options), "load_stream"
            )
        if attr == "estimate_bytes" and fns.get("estimator") is not None:
            return fns["estimator"]
        raise AttributeError(attr)

    def _checked(self, splits, what: str) -> Splits:
        from msam_lab.datasets.base import Splits  # noqa: PLC0415 - torch loads with the data, not for `data info`

        if not isinstance(splits, Splits):
            raise ValueError(
                f"dataset plug-in {self.name!r}: its {what} returned {type(splits).__name__}, "
                f"not msam_lab.datasets.Splits; return Splits(train, test, info)"
            )
        return splits


# built-in: name -> module path; plug-in: name -> PluginDataset (a name there shadows a built-in)
DATASET_REGISTRY = Registry("dataset", _REGISTRY, label=lambda name, path: f"the built-in {path}")


def dataset_names() -> tuple[str, ...]:
    """Every dataset name: the built-ins, then the registered plug-ins (installed ones loaded first)."""
    return DATASET_REGISTRY.names()


def is_plugin(name: str) -> bool:
    """Whether ``name`` is a registered plug-in dataset (not, or no longer, the built-in)."""
    return DATASET_REGISTRY.is_plugin(name)


def register_dataset(
    name: str,
    loader: Callable,
    options: dict | None = None,
    *,
    load_stream: Callable | None = None,
    estimate_bytes: Callable | None = None,
    replace: bool = False,
) -> None:
    """Make ``loader(cache_dir, **options) -> Splits`` the dataset ``name``; ``options``: its option defaults.

    Optionally ``load_stream(cache_dir, **options) -> Splits`` of StreamingData and
    ``estimate_bytes(**options) -> int`` (see :func:`load_for_training`). Registering the same
    loader and options again is a no-op; another under a taken name needs ``replace=True``.
    """
    DATASET_REGISTRY.check_name(name)
    check_callable("dataset", name, "loader", loader)
    for what, fn in (("load_stream", load_stream), ("estimate_bytes", estimate_bytes)):
        if fn is not None:
            check_callable("dataset", name, what, fn)
    options = {} if options is None else options
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(
            f"dataset {name!r}: options must be a dict of option name -> default, "
            f"e.g. {{'n_samples': 300}}; got {type(options).__name__}"
        )
    DATASET_REGISTRY.register(
        name, PluginDataset(name, loader, dict(options), load_stream, estimate_bytes), replace=replace
    )


def unregister_dataset(name: str) -> None:
    """Forget the plug-in ``name`` (a built-in it replaced comes back); unknown names are ignored."""
    DATASET_REGISTRY.unregister(name)


def default_cache_dir() -> Path:
    """Where generated datasets are cached: ``$MSAM_LAB_DATA`` or ``<repo>/data`` (msam_lab.paths)."""
    return paths.data_dir()


def _module(name: str):
    """The loader module of ``name`` (imported now), or its PluginDataset."""
    entry = DATASET_REGISTRY.get(name)
    return entry if isinstance(entry, PluginDataset) else importlib.import_module(entry)


def dataset_options(name: str) -> dict:
    """The options ``name`` accepts, with their defaults."""
    return dict(_module(name).OPTIONS)


def resolve_options(name: str, options: dict | None = None) -> dict:
    """Defaults of ``name`` updated by ``options``; unknown keys are an error.

    A built-in loader's options are also checked here, before anything is read or allocated
    (:func:`_check_builtin_options`); a plug-in's loader gets the values as given.
    """
    module = _module(name)
    defaults = dict(module.OPTIONS)
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"dataset {name!r} has no option {unknown[0]!r}; its options are: {', '.join(defaults) or '(none)'}"
        )
    defaults.update(options)
    if not isinstance(module, PluginDataset):
        _check_builtin_options(name, defaults, module.OPTIONS, getattr(module, "OPTION_RANGES", {}))
    return defaults


def _check_builtin_options(name: str, options: dict, declared: dict, ranges: dict) -> None:
    """Numbers as written (``"1e-5"``, ``"64"`` from a dict or a quoted YAML value) become numbers for
    numeric options; booleans stay booleans (``bool("false")`` is True); a number outside the loader's
    ``OPTION_RANGES`` (``(low, high)``, high None: unbounded; int bounds: an integer option) is refused
    naming the option and its range: ``image_size=10**7`` overflowed numpy's size arithmetic (a
    RuntimeWarning per product, then "[Errno 22] Invalid argument" from a memory-mapped cache)."""
    for key, value in options.items():
        default = declared[key]
        numeric = key in ranges or isinstance(default, numbers.Real) and not isinstance(default, bool)
        if numeric and isinstance(value, str) and read_number(value) is not None:
            options[key] = value = read_number(value)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{name}: option {key} must be true or false, got {reprlib.repr(value)}")
        if key in ranges:
            items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
            for i, v in items:
                _check_range(name, key if i is None else f"{key}[{i}]", v, *ranges[key])


def _check_range(name: str, key: str, value, low, high) -> None:
    """Numbers only (the loader names any other type); NaN fails every comparison, so the loader sees it."""
    if (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (value < low or high is not None and value > high)
    ):
        kind, shown = ("an integer", str) if isinstance(low, int) else ("a number", "{:g}".format)
        allowed = f"in {shown(low)}..{shown(high)}" if high is not None else f">= {shown(low)}"
        raise ValueError(f"{name}: option {key} must be {kind} {allowed}, got {reprlib.repr(value)}")


def load_dataset(name: str, cache_dir: str | Path | None = None, **options) -> Splits:
    """Load (or generate and cache) dataset ``name`` with ``options`` over its defaults."""
    module = _module(name)
    resolved = resolve_options(name, options)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return module.load(cache_dir=cache, **resolved)


DATA_PATHS = ("auto", "memory", "stream")


def estimate_bytes(name: str, options: dict | None = None) -> int | None:
    """Decoded size of dataset ``name`` in bytes (cheap: file counts and headers), or None if its loader cannot say."""
    module = _module(name)
    if not hasattr(module, "estimate_bytes"):
        return None
    return int(module.estimate_bytes(**resolve_options(name, options)))


def choose_data_path(
    name: str, options: dict | None = None, data_path: str = "auto", stream_above_mb: float = 1024.0
) -> str:
    """``"memory"`` or ``"stream"``: what :func:`load_for_training` does for these arguments."""
    if data_path not in DATA_PATHS:
        raise ValueError(f"data_path must be one of {', '.join(DATA_PATHS)}, got {data_path!r}")
    if data_path != "auto":
        return data_path
    module = _module(name)
    if not hasattr(module, "load_stream") or not hasattr(module, "estimate_bytes"):
        return "memory"
    size = estimate_bytes(name, options)
    return "stream" if size is not None and size > float(stream_above_mb) * 2**20 else "memory"


def load_for_training(
    name: str,
    options: dict | None,
    device,
    data_path: str = "auto",
    stream_above_mb: float = 1024.0,
    num_workers: int = 2,
    cache_dir: str | Path | None = None,
) -> Splits:
    """Dataset ``name`` with ``options`` (over its defaults), every split ready on ``device``.

    ``data_path`` chooses how the samples reach the device:

    * ``"memory"``: ``load_dataset(...)`` moved to ``device`` -- every split a
      :class:`MultimodalData` of device tensors, batched by indexing (fast path);
    * ``"stream"``: every split a :class:`StreamingData` delivering batches on
      ``device`` through a DataLoader with ``num_workers`` workers (pinned memory
      and non-blocking copies on CUDA). From the loader's ``load_stream`` if it
      has one (memory-mapped files, decoded once into ``<cache_dir>/stream-cache``
      where decoding is costly), else ``StreamingData.from_memory`` of the
      in-memory splits (same numbers, the DataLoader machinery exercised);
    * ``"auto"`` (default): ``"stream"`` when the loader has ``load_stream`` and
      its ``estimate_bytes`` exceeds ``stream_above_mb`` MiB, else ``"memory"``.

    Either way ``splits.train``, ``splits.test`` and ``splits.val`` (the dataset's
    own validation split, None when it has none) offer ``modalities``,
    ``num_classes``, ``labels``, ``len()``, ``device``, ``sample_shapes``,
    ``batches(batch_size, shuffle, generator, drop_last, start_batch)`` and
    ``subset(index)`` (always an in-memory MultimodalData on ``device``: for small
    seeded subsets) and ``select(index)`` (the same samples on the same path: for
    a hold-out of train, which must stay streamed), and for
    the same generator state ``batches`` yields the same samples in the same
    order on both paths. ``splits.info["data_path"]`` records the path taken.
    Raises the loader's one-line ``ValueError`` for bad options or files.
    """
    resolved = resolve_options(name, options)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    path = choose_data_path(name, resolved, data_path, stream_above_mb)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    module = _module(name)
    if path == "memory":
        splits = module.load(cache_dir=cache, **resolved).to(device)
    else:
        if hasattr(module, "load_stream"):
            splits = module.load_stream(cache_dir=cache, **resolved)
        else:
            splits = _stream_from_memory(module.load(cache_dir=cache, **resolved))
        splits = _configure(splits, device, num_workers)
    splits.info = {**splits.info, "data_path": path}
    return splits


def _stream_from_memory(splits: Splits) -> Splits:
    from msam_lab.datasets.base import Splits  # noqa: PLC0415 - torch loads with the data, not for `data info`
    from msam_lab.datasets.streaming import StreamingData  # noqa: PLC0415 - as above

    wrap = StreamingData.from_memory
    return Splits(
        wrap(splits.train), wrap(splits.test), dict(splits.info), None if splits.val is None else wrap(splits.val)
    )


def _configure(splits: Splits, device, num_workers: int) -> Splits:
    from msam_lab.datasets.base import Splits  # noqa: PLC0415 - torch loads with the data, not for `data info`

    def one(d):
        return None if d is None else d.to(device).with_workers(num_workers)

    return Splits(one(splits.train), one(splits.test), dict(splits.info), one(splits.val))


# The data classes load on first use (PEP 562): they import torch, which `msam-lab data info` and the
# registry functions above do without.
_DATA_CLASSES = {
    "Batch": "msam_lab.datasets.base",
    "MultimodalData": "msam_lab.datasets.base",
    "Splits": "msam_lab.datasets.base",
    "in_memory": "msam_lab.datasets.base",
    "StreamingData": "msam_lab.datasets.streaming",
}


def __getattr__(name: str):
    if name in _DATA_CLASSES:
        value = getattr(importlib.import_module(_DATA_CLASSES[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'msam_lab.datasets' has no attribute {name!r}")


__all__ = [
    "Batch",
    "MultimodalData",
    "Splits",
    "StreamingData",
    "DATASETS",
    "DATA_PATHS",
    "load_dataset",
    "load_for_training",
    "choose_data_path",
    "estimate_bytes",
    "in_memory",
    "dataset_options",
    "resolve_options",
    "default_cache_dir",
    "dataset_names",
    "is_plugin",
    "register_dataset",
    "unregister_dataset",
    "PluginDataset",
    "DATASET_REGISTRY",
]
