"""Unpickling dataset files without running code: numpy arrays, dtypes, scalars and builtin containers only.

Some published datasets are pickles (MultiBench's UR-Funny ``humor.pkl``, AVE's ``audio_spec/*.pkl``),
and people run ``msam-lab data check`` on what they just downloaded. ``pickle.load`` would call any
function a file names; ``load`` here resolves only the globals that rebuild numpy data (under
numpy 1.x's and 2.x's module names, pickle protocols 0-5, Python 2 files) and builtin containers.
Anything else -- ``os.system``, a class whose ``__reduce__`` runs code -- stops the load with
``pickle.UnpicklingError`` naming the global, before it is called.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import pickle
from pathlib import Path

import numpy as np

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.{_core,core}.multiarray._reconstruct
_SCALAR = np.float32(0).__reduce__()[0]  # numpy.{_core,core}.multiarray.scalar
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.{_core,core}.numeric._frombuffer


def _encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as pickle protocol 2 uses it (bytes as latin-1 text): text codecs only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return codecs.encode(text, encoding, errors)


_CONTAINERS = ("set", "frozenset", "complex", "bytes", "bytearray", "list", "dict", "tuple")

ALLOWED = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _SCALAR for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FROMBUFFER for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(module, name): getattr(builtins, name) for module in ("builtins", "__builtin__") for name in _CONTAINERS},
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` knows only ``ALLOWED``."""

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only numpy arrays, dtypes, scalars "
                f"and builtin containers are unpickled (the file could run code)"
            ) from None


def load(path):
    """The object pickled in ``path``, through ``RestrictedUnpickler``; a Python 2 pickle (whose
    byte strings are not UTF-8) is read as latin-1, as numpy's own loaders do."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except UnicodeDecodeError:
            f.seek(0)
            return RestrictedUnpickler(f, encoding="latin1").load()
