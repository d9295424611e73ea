"""A decode-once cache of one split as memory-mapped ``.npy`` files.

A loader whose samples are expensive to decode (JPEG frames, WAV -> STFT,
pickles) writes each split once into::

    <cache_dir>/stream-cache/<dataset>/<split>-<sha1 of signature>[:16]/
        manifest.json            the signature, shapes, dtypes, extra facts
        <modality>.npy           (N, ...) float32, one per modality
        labels.npy               (N,) int64

The signature (options plus a cheap source fingerprint: list-file contents and
the size / mtime of every source file) names the folder, so a change of options
or sources builds a new one and never touches a cache another process may be
reading. A build fills ``open_memmap`` files in a temporary folder beside the
final one, writes the manifest last and renames the folder into place: an
interrupted build leaves only a ``.tmp-*`` folder, which is never taken for a
cache (and is removed when the build fails inside Python). Old caches are not
deleted automatically; removing a folder under ``stream-cache/`` is always safe
when nothing is reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"
LABELS = "labels"


def signature_key(signature: dict) -> str:
    """A stable SHA-1 of a JSON-able signature."""
    text = json.dumps(signature, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def file_stamp(paths) -> str:
    """SHA-1 over ``(path, size, mtime_ns)`` of each path (a missing one counts as such): a cheap change detector."""
    h = hashlib.sha1()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def cache_folder(cache_dir, dataset: str, split: str, signature: dict) -> Path:
    return Path(cache_dir) / "stream-cache" / dataset / f"{split}-{signature_key(signature)[:16]}"


def read_cache(folder: Path, signature: dict) -> dict | None:
    """The manifest of a complete cache in ``folder`` built with ``signature``, else ``None``."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("signature_sha1") != signature_key(signature)
    ):
        return None
    for name, spec in {**manifest.get("arrays", {}), LABELS: manifest.get("labels")}.items():
        if not isinstance(spec, dict):
            return None
        try:  # the header alone: shape and dtype must be what the manifest says
            arr = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
            return None
    return manifest


def open_arrays(folder: Path, manifest: dict) -> dict[str, Path]:
    """Paths of the cached ``.npy`` files by modality (plus ``labels``)."""
    return {name: folder / f"{name}.npy" for name in [*manifest["arrays"], LABELS]}


def build(
    cache_dir,
    dataset: str,
    split: str,
    signature: dict,
    n: int,
    shapes: dict[str, tuple[int, ...]],
    fill: Callable[[dict[str, np.ndarray], np.ndarray], dict | None],
) -> tuple[Path, dict]:
    """Return ``(folder, manifest)`` of the cache for ``signature``, building it first if needed.

    ``fill(arrays, labels)`` writes every sample into the float32 memmaps
    ``arrays[m]`` of shape ``(n, *shapes[m])`` and the int64 ``labels`` (n,); it
    may return a dict of extra facts stored in the manifest under ``"extra"``.
    """
    folder = cache_folder(cache_dir, dataset, split, signature)
    manifest = read_cache(folder, signature)
    if manifest is not None:
        return folder, manifest
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a cache should not be
        arrays = {
            m: np.lib.format.open_memmap(tmp / f"{m}.npy", mode="w+", dtype=np.float32, shape=(n, *shape))
            for m, shape in shapes.items()
        }
        labels = np.lib.format.open_memmap(tmp / f"{LABELS}.npy", mode="w+", dtype=np.int64, shape=(n,))
        extra = fill(arrays, labels) or {}
        for a in (*arrays.values(), labels):
            a.flush()
        manifest = {
            "format": FORMAT,
            "dataset": dataset,
            "split": split,
            "n": int(n),
            "signature_sha1": signature_key(signature),
            "signature": signature,
            "arrays": {m: {"shape": [n, *map(int, s)], "dtype": "float32"} for m, s in shapes.items()},
            "labels": {"shape": [n], "dtype": "int64"},
            "extra": extra,
        }
        del arrays, labels  # close the maps before the rename
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))  # last: marks it complete
        if folder.exists() and read_cache(folder, signature) is None:
            shutil.rmtree(folder)  # a broken cache under the same name (a manifest damaged by hand, say)
        try:
            os.replace(tmp, folder)
        except OSError:
            # another process finished the same cache first (the target is a non-empty folder)
            if read_cache(folder, signature) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, read_cache(folder, signature) or manifest
