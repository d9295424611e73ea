"""The settings of a surface and of a sharpness measurement, validated once, shared by the API and the CLI.

    from msam_lab.landscape import LandscapeOptions, landscape_for_run
    opts = LandscapeOptions(dim=1, grid=31, n_samples=256)
    landscape_for_run("runs/a", opts)
    landscape_for_run("runs/b", opts, seed=1)        # keywords override fields (and are validated again)
    landscape_for_run("runs/c", dim=1, grid=31)      # keywords alone build the options

Each check raises ``OptionError`` (a ``ConfigError``), one line naming the argument
(``dim must be 1 or 2, got 3``); other arguments a message mentions are written ``name=``.
``OptionError.argument`` says which argument is wrong, so the command line can name its flag
instead (msam_lab/cli/landscape.py). Imports nothing heavy: no torch, no numpy.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

from msam_lab.errors import ConfigError

DIRECTION_KINDS = ("random", "pca", "between")
SPLITS = ("train", "test")
NAME = re.compile(r"[A-Za-z0-9_.+=-]+")


class OptionError(ConfigError):
    """A ConfigError about one argument, named by ``argument`` (its message starts with it)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument

    def __reduce__(self):  # picklable (errors cross process and rank boundaries)
        return type(self), (self.argument, str(self))


# ---------------------------------------------------------------- checks, one per kind of value


def _integer(argument: str, value, low: int | None = None, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(argument, f"{argument} must be an integer{' or None' if none else ''}, got {value!r}")
    if low is not None and value < low:
        raise OptionError(argument, f"{argument} must be >= {low}, got {value}")


def _real(argument: str, value, *, above: float | None = None, at_least: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(argument, f"{argument} must be a number, got {value!r}")
    if above is not None and not value > above:  # NaN fails too
        raise OptionError(argument, f"{argument} must be > {above:g}, got {value}")
    if at_least is not None and not value >= at_least:
        raise OptionError(argument, f"{argument} must be >= {at_least:g}, got {value}")


def _choice(argument: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        allowed = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
        raise OptionError(argument, f"{argument} must be {allowed}, got {value!r}")


def _flag(argument: str, value) -> None:
    if not isinstance(value, bool):
        raise OptionError(argument, f"{argument} must be True or False, got {value!r}")


def check_name(name) -> str:
    """A surface's folder name: plain, so it stays one folder under ``<run>/landscapes/``."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name.startswith("."):
        raise OptionError("name", f"name {name!r} must be a plain folder name (letters, digits, _ . + = -)")
    return name


def _check_evaluation(o) -> None:
    """The fields a surface's evaluation shares with ``compute_surface`` (SurfaceOptions, LandscapeOptions)."""
    _flag("per_modality", o.per_modality)
    _integer("n_samples", o.n_samples, 1, none=True)
    _integer("subset_seed", o.subset_seed)
    _integer("batch_size", o.batch_size, 1, none=True)
    _integer("flush_every", o.flush_every, 1)
    _integer("workers", o.workers, 1)
    _integer("threads", o.threads, 1, none=True)
    _flag("overwrite", o.overwrite)


class _Options:
    """``build(options, **overrides)``: the options object a function was given, with its keywords applied."""

    @classmethod
    def build(cls, options=None, **overrides):
        if options is None:
            return cls(**overrides)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
        return dataclasses.replace(options, **overrides) if overrides else options

    def _set(self, name: str, value: Any) -> None:  # normalise a field of a frozen dataclass
        object.__setattr__(self, name, value)


# ---------------------------------------------------------------- the options


@dataclass(frozen=True)
class SurfaceOptions(_Options):
    """How ``compute_surface`` evaluates its grid (the grid and directions are its arguments).

    ``n_samples``: a seeded subset (``subset_seed``) of the data, None: all of it. ``per_modality``: also
    the metrics with each modality alone and without it. ``batch_size``: None, one batch. ``channels_last``:
    True, False or "auto" (convolutional models). ``flush_every``: points between saves. ``workers`` > 1:
    that many processes, one thread each, or ``devices`` (e.g. ``("cuda:0", "cuda:1")``, ``"cuda"``: all).
    ``threads``: torch threads in this process (default torch's). ``autocast_dtype``: e.g. ``torch.bfloat16``
    for the forward passes. ``overwrite``: replace a saved surface computed with other settings.
    """

    per_modality: bool = True
    n_samples: int | None = 512
    subset_seed: int = 0
    batch_size: int | None = 32
    channels_last: bool | str = "auto"
    flush_every: int = 32
    workers: int = 1
    devices: Any = None
    threads: int | None = None
    autocast_dtype: Any = None
    overwrite: bool = False

    def __post_init__(self):
        _check_evaluation(self)
        if self.channels_last not in (True, False, "auto"):
            raise OptionError(
                "channels_last", f"channels_last must be True, False or 'auto', got {self.channels_last!r}"
            )
        if isinstance(self.devices, (list, tuple)):
            self._set("devices", tuple(str(d) for d in self.devices) or None)
        elif self.devices not in (None, "cpu", "cuda"):
            raise OptionError(
                "devices",
                f"devices must be None, 'cpu', 'cuda' or a list such as ['cuda:0', 'cuda:1'], got {self.devices!r}",
            )


@dataclass(frozen=True)
class LandscapeOptions(_Options):
    """A surface of a saved run (``landscape_for_run``): its directions, grid and evaluation.

    ``directions``: ``random`` (filter-normalised, seeded by ``seed``), ``pca`` (of the run's checkpoints
    up to ``epoch``; the grid spans ``span`` times the trajectory's extent), ``between`` (towards the run
    ``to`` at ``to_epoch``; a second, random direction when ``dim=2``). ``reuse``: a saved surface
    folder whose directions and grid are used instead. ``epoch``: the checkpoint at the centre (None:
    the last). ``scope``: the parameters that move (``model``, ``fusion``, a modality).
    ``include_1d``: move biases and norm weights too; ``orthogonal``: Gram-Schmidt the second direction.
    ``name``: the folder under ``<run>/landscapes/`` (None: made of the settings). ``bf16``: forward
    passes under bfloat16 autocast. The evaluation fields are ``SurfaceOptions``'.
    """

    dim: int = 2
    grid: int = 21
    span: float = 1.0
    directions: str = "random"
    to: Any = None
    to_epoch: int | None = None
    split: str = "test"
    epoch: int | None = None
    seed: int = 0
    scope: str = "model"
    include_1d: bool = False
    orthogonal: bool = False
    reuse: Any = None
    name: str | None = None
    per_modality: bool = True
    n_samples: int | None = 512
    subset_seed: int = 0
    batch_size: int | None = 32
    flush_every: int = 32
    workers: int = 1
    threads: int | None = None
    overwrite: bool = False
    bf16: bool = False

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, numbers.Integral) or self.dim not in (1, 2):
            raise OptionError("dim", f"dim must be 1 or 2, got {self.dim!r}")
        _integer("grid", self.grid)
        if self.grid < 3 or self.grid % 2 == 0:
            raise OptionError(
                "grid", f"grid must be an odd integer >= 3 so 0 is on the grid, got {self.grid} (e.g. 21)"
            )
        _real("span", self.span, above=0)
        _choice("directions", self.directions, DIRECTION_KINDS)
        _integer("to_epoch", self.to_epoch, 0, none=True)
        _choice("split", self.split, SPLITS)
        _integer("epoch", self.epoch, 0, none=True)
        _integer("seed", self.seed)
        if not isinstance(self.scope, str) or not self.scope:
            raise OptionError(
                "scope", f"scope must be model, fusion, a modality or a submodule path, got {self.scope!r}"
            )
        _flag("include_1d", self.include_1d)
        _flag("orthogonal", self.orthogonal)
        if self.name is not None:
            check_name(self.name)
        _check_evaluation(self)
        _flag("bf16", self.bf16)
        if self.directions == "between" and self.to is None and self.reuse is None:
            raise OptionError("to", "to= is needed with directions='between' (the run to interpolate towards)")


@dataclass(frozen=True)
class SharpnessOptions(_Options):
    """Sharpness of a saved run (``sharpness_for_run``) at ``epochs`` for each of ``scopes``.

    ``epochs``: None (the last checkpoint), an epoch, a list of them, or ``"all"``. ``scopes``: None (the
    whole model, then each modality's encoder), or names (``model``, ``fusion``, a modality, a submodule
    path). ``rho``: the ε-sharpness radius; ``topk``: Hessian eigenvalues (power iteration, ``max_iter``
    steps each, relative tolerance ``tol``); ``probes``: Hutchinson trace probes, seeded by ``seed``;
    0 skips either. ``split``: ``train`` is the train split without the run's validation hold-out.
    ``n_samples``: a subset seeded by ``subset_seed`` (None: the whole split).
    """

    epochs: Any = None
    rho: float = 0.05
    topk: int = 1
    probes: int = 32
    split: str = "test"
    n_samples: int | None = 512
    subset_seed: int = 0
    seed: int = 0
    scopes: Sequence[str] | None = None
    max_iter: int = 100
    tol: float = 1e-3

    def __post_init__(self):
        epochs = self.epochs
        if isinstance(epochs, (list, tuple, range)) and all(
            isinstance(e, numbers.Integral) and not isinstance(e, bool) and e >= 0 for e in epochs
        ):
            self._set("epochs", tuple(int(e) for e in epochs))
        elif not (
            epochs is None
            or epochs == "all"
            or (isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool) and epochs >= 0)
        ):
            raise OptionError(
                "epochs", f"epochs must be None (the last), an epoch, a list of epochs or 'all', got {epochs!r}"
            )
        _real("rho", self.rho, at_least=0)
        _integer("topk", self.topk, 0)
        _integer("probes", self.probes, 0)
        _choice("split", self.split, SPLITS)
        _integer("n_samples", self.n_samples, 1, none=True)
        _integer("subset_seed", self.subset_seed)
        _integer("seed", self.seed)
        scopes = (self.scopes,) if isinstance(self.scopes, str) else self.scopes
        if scopes is not None:
            if isinstance(scopes, (list, tuple)) and all(isinstance(s, str) and s for s in scopes):
                self._set("scopes", tuple(scopes))
            else:
                raise OptionError(
                    "scopes", f"scopes must be None or a list of names (model, fusion, a modality), got {self.scopes!r}"
                )
        _integer("max_iter", self.max_iter, 1)
        _real("tol", self.tol, above=0)


@dataclass(frozen=True)
class TimelineOptions(_Options):
    """``timeline_for_run``: the rows ``sharpness_every`` writes during training, after the fact.

    Each field left None takes the run's setting (``sharpness_samples``, ``sharpness_probes``) or the
    training-time one (msam_lab.analysis.sharpness_timeline); one given replaces it, checked as
    ``SharpnessOptions`` checks it. ``epochs``: as ``SharpnessOptions`` (default every checkpoint).
    """

    epochs: Any = "all"
    n_samples: int | None = None
    probes: int | None = None
    split: str | None = None
    topk: int | None = None
    rho: float | None = None
    seed: int | None = None
    max_iter: int | None = None

    def __post_init__(self):
        given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        self._set("epochs", SharpnessOptions(**given).epochs)
