"""Where things go on disk, and quick mode: each folder overridable by an environment variable.

- ``data_dir()``:    ``MSAM_LAB_DATA``, default ``<repo>/data`` (``./data`` outside a checkout);
- ``runs_root()``:   ``MSAM_LAB_RUNS``, default ``<repo>/runs/notebooks`` (``.../quick`` in quick mode);
- ``figures_dir()``: ``MSAM_LAB_FIGURES``, default ``<repo>/figures`` (``<repo>/runs/quick/figures`` in
  quick mode: quick figures come from 2-epoch synthetic runs and must never replace the publication
  ones; ``make figures`` is the one writer of ``figures/``).

Quick mode (``MSAM_LAB_QUICK=1``) is read here and only here: the notebooks, ``msam-lab figures`` and
the rivals study swap in tiny settings so each runs headless in well under a minute on 2 CPU cores.
Nothing here reads or writes a file, and importing it changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

QUICK_ENV = "MSAM_LAB_QUICK"
RUNS_ENV = "MSAM_LAB_RUNS"
FIGURES_ENV = "MSAM_LAB_FIGURES"
DATA_ENV = "MSAM_LAB_DATA"

# The quick-mode stand-in for av-digits: two Gaussian-cluster modalities (m0 strong, m1 weak).
QUICK_DATA = {"dataset": "synthetic", "data": {"n_modalities": 2, "n_samples": 600}}


def quick_mode() -> bool:
    """True when ``MSAM_LAB_QUICK`` is set to 1/true/yes/on (tiny settings for tests and CI)."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def pick(full, quick):
    """``quick`` in quick mode, else ``full`` (for a notebook's parameters cell)."""
    return quick if quick_mode() else full


def project_root() -> Path:
    """The checkout holding ``msam_lab`` (the nearest folder up from here with a pyproject.toml), else cwd."""
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "msam_lab").is_dir():
            return folder
    return Path.cwd()


def data_dir() -> Path:
    """Where datasets are generated and cached (``MSAM_LAB_DATA`` or ``<repo>/data``): the same folder
    from the repository root and from ``notebooks/``."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else project_root() / "data"


def runs_root() -> Path:
    """Where the notebooks keep their runs (``MSAM_LAB_RUNS`` or ``<repo>/runs/notebooks[/quick]``)."""
    env = os.environ.get(RUNS_ENV)
    root = Path(env) if env else project_root() / "runs" / "notebooks"
    return root / "quick" if quick_mode() and not env else root


def publication_figures_dir() -> Path:
    """``<repo>/figures``: the publication figures, written only by ``make figures`` (full settings)."""
    return project_root() / "figures"


def figures_dir() -> Path:
    """Where figures are written (``MSAM_LAB_FIGURES``, else ``<repo>/figures``, else in quick mode
    ``<repo>/runs/quick/figures``, so quick mode never touches ``figures/``); created."""
    env = os.environ.get(FIGURES_ENV)
    if env:
        path = Path(env)
    elif quick_mode():
        path = project_root() / "runs" / "quick" / "figures"
    else:
        path = publication_figures_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path
