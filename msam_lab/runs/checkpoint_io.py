"""Checkpoints and resume points: saved with a SHA-256 beside them, loaded without running code.

A run folder is something people exchange (a colleague's results, a paper's artefacts, a cluster
job's output), so nothing read from one may execute code:

- ``load`` reads with ``torch.load(..., weights_only=True)``: tensors, numbers, strings, ``None``
  and containers only. A pickle that asks for any other global (``os.system``, a class whose
  ``__reduce__`` runs code) is refused in one line naming the file.
- RNG states are stored as plain values (``numpy_state`` below), so new files need no allowlist.
  Files of the older code pickled numpy's ``np.random.get_state()`` tuple; they load through
  ``LEGACY_NUMPY_GLOBALS``, the four numpy globals that rebuild a uint32 array and nothing else,
  and their numpy state is converted on load.
- ``save`` writes ``<file>`` and ``<file>.sha256`` (``sha256sum`` format, so ``sha256sum -c`` checks
  it too), each atomically (msam_lab.runs.atomic); ``load`` checks the bytes against it where it is
  there (files of the older code have none). A mismatch, a truncated or unreadable file, anything
  that is not a regular file: ``RunFileError``, one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from msam_lab.runs import atomic

# torch-free, in layout (msam-lab status reads JSON without torch); re-exported here under their old names
from msam_lab.runs.layout import JSON_LIMIT, RunFileError, read_json, read_regular  # noqa: F401

SIDECAR_SUFFIX = ".sha256"
_HEX = re.compile(r"[0-9a-f]{64}")

# What ``np.random.get_state()`` pickles into (numpy 2: numpy._core; numpy 1.x files name numpy.core):
# the array rebuilder, the array and dtype classes, and the uint32 dtype's class. torch's weights_only
# unpickler already allows ``_codecs.encode`` (the array's raw bytes under pickle protocol 2).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
LEGACY_NUMPY_GLOBALS = [
    _RECONSTRUCT,
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]

# What torch.load raises on bytes that are not a checkpoint (truncated, garbage, flipped bits):
# the zip reader's RuntimeError, the unpickler's UnpicklingError / EOFError, and the errors of
# rebuilding tensors or containers from inconsistent records.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    OverflowError,
    MemoryError,
    zipfile.BadZipFile,
    NotImplementedError,
)


def sidecar(path) -> Path:
    """``<file>.sha256`` beside ``path``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_digest(path) -> str | None:
    """The SHA-256 that ``<path>.sha256`` records; None where there is no sidecar (older files)."""
    side = sidecar(path)
    if not side.exists() and not side.is_symlink():
        return None
    text = read_regular(side, limit=4096).decode("ascii", errors="replace").strip()
    digest = text.split()[0].lower() if text else ""
    if not _HEX.fullmatch(digest):
        raise RunFileError(f"{side}: not a SHA-256 checksum file (expected 64 hex digits, then the file's name)")
    return digest


def save(path, obj) -> Path:
    """``torch.save(obj)`` to ``path`` and its SHA-256 to ``<path>.sha256``, each atomically.

    The old sidecar goes first: a kill between the two writes leaves a file without a checksum
    (loaded unchecked, as files of the older code are), never a file beside a wrong one."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    side = sidecar(path)
    side.unlink(missing_ok=True)
    atomic.write_bytes(path, data)
    atomic.write_text(side, f"{sha256(data)}  {path.name}\n")
    return path


def rotate(path, previous) -> None:
    """Keep ``path`` (and its checksum) as ``previous`` before a new ``path`` is saved.

    Order: the old ``previous`` checksum goes, the file is renamed, then its checksum is written under
    the new name; a kill at any point leaves every file with its own checksum or none."""
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return
    try:
        digest = expected_digest(path)
    except RunFileError:
        digest = None  # an unreadable checksum is not carried over
    sidecar(previous).unlink(missing_ok=True)
    os.replace(path, previous)
    if digest is not None:
        atomic.write_text(sidecar(previous), f"{digest}  {previous.name}\n")
    sidecar(path).unlink(missing_ok=True)


def remove(path) -> None:
    """Delete ``path`` and its checksum: the file first, so a kill between leaves no file with a wrong sidecar."""
    path = Path(path)
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def intact(path) -> bool:
    """True when ``path`` is a regular file whose bytes match its sidecar (or that has none)."""
    try:
        expected = expected_digest(path)
        return expected is None or sha256(read_regular(path)) == expected
    except RunFileError:
        return False


# exact types: numpy's float64 and str_ subclass float and str, yet need numpy to be unpickled
_PLAIN = (str, bytes, int, float, bool, type(None))
_TORCH = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(obj, where: str = "value") -> None:
    """TypeError unless ``obj`` is what ``load`` reads back without an allowlist: tensors, numbers,
    strings, None and dicts / lists / tuples / sets of them (a numpy array or an object would be refused)."""
    if type(obj) in _PLAIN or isinstance(obj, _TORCH):
        return
    if type(obj) is set:  # a frozenset is refused by weights_only loading
        obj = list(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, f"{where} key")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}: a checkpoint holds tensors, numbers, strings and "
        f"dicts / lists of them (convert it, e.g. torch.as_tensor(array) or .tolist())"
    )


def _reason(err: Exception) -> str:
    """torch's multi-line message as the one clause that says what was wrong or refused."""
    text = str(err)
    glob = re.search(r"GLOBAL ([\w.]+)", text)
    if glob:
        return (
            f"it asks for {glob.group(1)}, which could run code; only tensors, numbers, strings and "
            f"containers are loaded"
        )
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (found.group(1).strip() if found else lines[0] if lines else type(err).__name__)[:200]


def _torch_load(data: bytes, map_location, legacy: bool):
    allowed = LEGACY_NUMPY_GLOBALS if legacy else []
    with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
        # a bare pickle (no torch archive) draws a protocol warning: a second line under the one-line error
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def load(path, map_location="cpu"):
    """The object saved in checkpoint ``path``, checked against its sidecar and loaded weights-only.

    RNG states of the older format (a pickled numpy tuple) are converted (``numpy_state``)."""
    path = Path(path)
    data = read_regular(path)
    expected = expected_digest(path)
    if expected is not None and sha256(data) != expected:
        raise RunFileError(
            f"{path}: damaged (its SHA-256 differs from the one in {sidecar(path).name}, written with it)"
        )
    try:
        try:
            obj = _torch_load(data, map_location, legacy=False)
        except pickle.UnpicklingError as first:
            if "GLOBAL numpy" not in str(first):
                raise
            obj = _torch_load(data, map_location, legacy=True)  # a file of the older code
    except _LOAD_ERRORS as err:
        raise RunFileError(f"{path}: not a checkpoint that can be loaded safely ({_reason(err)})") from None
    return _convert_legacy(obj)


# ---------------------------------------------------------------- RNG states as plain values


def numpy_state(state=None) -> dict:
    """numpy's global RNG state as plain values: ``bit_generator`` (str), ``key`` (an int64 tensor of
    the MT19937 key's uint32 words), ``pos``, ``has_gauss`` (ints) and ``cached_gaussian`` (float).

    ``state``: a ``np.random.get_state()`` tuple (the older files' format); default the current one."""
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True) if state is None else state
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(np.asarray(key, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_numpy_state(state) -> None:
    """Restore numpy's global RNG from ``numpy_state``'s dict (or a ``get_state()`` tuple)."""
    if isinstance(state, dict):
        key = np.asarray(state["key"].numpy() if torch.is_tensor(state["key"]) else state["key"]).astype(np.uint32)
        state = (
            state["bit_generator"],
            key,
            int(state["pos"]),
            int(state["has_gauss"]),
            float(state["cached_gaussian"]),
        )
    np.random.set_state(state)


def _convert_legacy(obj):
    """A checkpoint whose ``rng["numpy"]`` is the older pickled tuple gets ``numpy_state``'s dict."""
    rng = obj.get("rng") if isinstance(obj, dict) else None
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple) and len(rng["numpy"]) == 5:
        try:
            rng["numpy"] = numpy_state(rng["numpy"])
        except (TypeError, ValueError):
            pass  # left as it is: set_rng_state reports it, naming the file's run
    return obj
