"""A loss surface on disk: the ``Surface`` result and its folder of files (written and read here).

Computing one is ``msam_lab.landscape``'s job; this module is the file format alone, so the run reader
(``Run.landscapes``) opens surfaces without importing the landscape code. Files, in the surface's folder
(``<run>/landscapes/<name>/``)::

    meta.json        settings and provenance (seed, grid, split, subset, run, epoch, scope, ...)
    surface.npz      coord_0[, coord_1], done (bool grid), value:<metric> grids (NaN = not yet computed),
                     subset_index
    directions.npz   <k>:<parameter> name -> direction k's tensor

Every file is data only: JSON, and numpy arrays read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from msam_lab.runs import atomic
from msam_lab.runs.checkpoint_io import RunFileError, read_json, read_regular

FORMAT_VERSION = 1
META, VALUES, DIRECTIONS = "meta.json", "surface.npz", "directions.npz"
LANDSCAPES = "landscapes"  # a run's surfaces: <run>/landscapes/<name>/
Direction = dict[str, torch.Tensor]


@dataclass
class Surface:
    """A computed (or partly computed) surface.

    ``coords``: one array per direction; ``values[metric]`` and ``done`` have
    shape ``tuple(len(c) for c in coords)`` (row i = coords[0][i]);
    ``directions``: the directions (dicts name -> tensor); ``meta``: settings
    and provenance.
    """

    coords: list[np.ndarray]
    values: dict[str, np.ndarray]
    done: np.ndarray
    directions: list[Direction]
    meta: dict = field(default_factory=dict)
    subset_index: np.ndarray | None = None
    path: Path | None = None

    @property
    def dim(self) -> int:
        return len(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    def __getitem__(self, metric: str) -> np.ndarray:
        try:
            return self.values[metric]
        except KeyError:
            raise KeyError(f"surface has no metric {metric!r}; it has: {', '.join(self.values)}") from None

    def center(self) -> dict[str, float]:
        """Every metric at the origin (θ₀), when 0 is on the grid."""
        idx = []
        for c in self.coords:
            hit = np.flatnonzero(c == 0)
            if not len(hit):
                raise ValueError("0 is not on this surface's grid")
            idx.append(int(hit[0]))
        return {k: float(v[tuple(idx)]) for k, v in self.values.items()}

    def points(self) -> np.ndarray:
        """All grid points (n_points, dim), in the flat (C) order of ``values``."""
        mesh = np.meshgrid(*self.coords, indexing="ij")
        return np.stack([m.reshape(-1) for m in mesh], axis=1)

    # -------- files
    def save(self, path=None) -> Path:
        """Write ``meta.json``, ``surface.npz`` and ``directions.npz`` into folder ``path`` (atomically per
        file, under the folder's flock), replacing what is there."""
        path = Path(path if path is not None else self.path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic.locked(write_lock(path)):
            if not (path / DIRECTIONS).exists() or self.path != path:
                arrays = {
                    f"{k}:{n}": t.detach().cpu().numpy() for k, d in enumerate(self.directions) for n, t in d.items()
                }
                _atomic_npz(path / DIRECTIONS, arrays)
            self._write_values(path, merge=False)
        self.path = path
        return path

    def save_values(self, path=None) -> None:
        """Flush the value grids and meta (the directions are written once by ``save``).

        Several processes may compute one surface at once (the same landscape started twice): under
        the folder's flock, the points another one saved meanwhile for the same model, directions,
        grid and settings are merged in first, so no flush undoes another's."""
        path = Path(path if path is not None else self.path)
        with atomic.locked(write_lock(path)):
            self._write_values(path, merge=True)

    def _write_values(self, path: Path, merge: bool) -> None:
        if merge:
            self._merge_saved(path)
        arrays = {f"coord_{k}": np.asarray(c, dtype=float) for k, c in enumerate(self.coords)}
        arrays["done"] = self.done
        arrays.update({f"value:{k}": v for k, v in self.values.items()})
        if self.subset_index is not None:
            arrays["subset_index"] = np.asarray(self.subset_index)
        _atomic_npz(path / VALUES, arrays)
        self.meta.update(n_done=self.n_done, complete=self.complete)
        atomic.write_text(path / META, json.dumps(self.meta, indent=2, default=_json_default) + "\n")

    def _merge_saved(self, path: Path) -> None:
        """Copy in the points done in the surface saved at ``path`` but not here (same settings only)."""
        try:
            saved_meta = json.loads((path / META).read_text())
            with np.load(path / VALUES, allow_pickle=False) as z:
                done = z["done"].astype(bool)
                coords = [z[f"coord_{k}"] for k in range(self.dim)]
                extra = done & ~self.done if done.shape == self.done.shape else None
                saved = {k: z[f"value:{k}"] for k in self.values} if extra is not None and extra.any() else {}
        # nothing there yet, or a file damaged or of another shape: ours replaces it
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return
        if (
            not saved
            or any(saved_meta.get(k) != self.meta.get(k) for k in RESUME_KEYS)
            or any(not np.array_equal(a, b) for a, b in zip(coords, self.coords))
        ):
            return
        for k, v in saved.items():
            self.values[k][extra] = v[extra]
        self.done |= extra

    @classmethod
    def load(cls, path) -> "Surface":
        """The surface saved in folder ``path``. Its files are data only (JSON and numpy arrays read
        with ``allow_pickle=False``); a damaged one is a RunFileError naming it."""
        path = Path(path)
        if not (path / META).exists():
            raise FileNotFoundError(
                f"{path} is not a saved surface (no {META}); compute one with `msam-lab landscape RUN`"
            )
        for name in (VALUES, DIRECTIONS):
            if not (path / name).exists() and not (path / name).is_symlink():
                raise RunFileError(
                    f"{path / name}: missing (the surface is incomplete; compute it again with --overwrite)"
                )
        meta = read_json(path / META)
        arrays = _read_npz(path / VALUES)
        n_dims = sum(k.startswith("coord_") for k in arrays)
        coords = [arrays.get(f"coord_{k}") for k in range(n_dims)]
        if not 1 <= n_dims <= 2 or any(
            c is None or c.ndim != 1 or not len(c) or c.dtype.kind not in "fiu" or not np.isfinite(c).all()
            for c in coords
        ):
            raise RunFileError(f"{path / VALUES}: its coordinates are not 1 or 2 finite 1-D arrays (damaged)")
        shape = tuple(len(c) for c in coords)
        done = arrays.get("done")
        if done is None or done.shape != shape or done.dtype.kind not in "biu":
            raise RunFileError(f"{path / VALUES}: its 'done' grid is missing or not of shape {shape} (damaged)")
        values = {k[len("value:") :]: v for k, v in arrays.items() if k.startswith("value:")}
        bad = [k for k, v in values.items() if v.shape != shape or v.dtype.kind not in "fiu"]
        if bad or not values:
            raise RunFileError(
                f"{path / VALUES}: value grid {bad[0] if bad else '(none)'!r} is not a "
                f"numeric grid of shape {shape} (damaged)"
            )
        subset = arrays.get("subset_index")
        if subset is not None and (subset.ndim != 1 or subset.dtype.kind not in "iu"):
            raise RunFileError(f"{path / VALUES}: subset_index is not a 1-D array of indices (damaged)")
        order = meta.get("metrics", list(values))
        if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
            raise RunFileError(f"{path / META}: metrics must be a list of names (damaged)")
        values = {k: values[k] for k in order if k in values}
        directions: list[Direction] = [{} for _ in range(n_dims)]
        for key, array in _read_npz(path / DIRECTIONS).items():
            k, _, name = key.partition(":")
            if not (k.isdigit() and int(k) < n_dims and name) or array.dtype.kind not in "fiu":
                raise RunFileError(
                    f"{path / DIRECTIONS}: entry {key!r} is not <direction>:<parameter> with a "
                    f"numeric array, for {n_dims} direction(s) (damaged)"
                )
            directions[int(k)][name] = torch.from_numpy(array.copy())
        if not all(directions):
            raise RunFileError(f"{path / DIRECTIONS}: holds no tensors for some of the {n_dims} direction(s) (damaged)")
        return cls(coords, values, done.astype(bool), directions, meta, subset, path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without unpickling (``allow_pickle=False``: an object
    array is refused); RunFileError naming the file when it is not such a file."""
    data = read_regular(path)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with archive as z:
            return {k: z[k] for k in z.keys()}
    # np.load: ValueError (pickled data, bad header), the zip reader's BadZipFile (CRC, truncation),
    # EOFError / OSError / zlib.error on a cut or garbled member
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise RunFileError(f"{path}: not a numpy .npz archive that can be read safely ({first}; damaged)") from None


def write_lock(folder: Path) -> Path:
    """The file flocked while a process writes a surface's folder: beside it (``.<name>.lock``), so the
    folder holds the surface's three files only."""
    return folder.with_name(f".{folder.name}.lock")


def _atomic_npz(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())  # a temporary name of its own: writers never share one


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


def generalization_gap(train: Surface, test: Surface, metric: str = "loss") -> np.ndarray:
    """test − train of ``metric`` on two surfaces of the same directions and grid."""
    if train.meta.get("directions_sha1") != test.meta.get("directions_sha1") or any(
        not np.array_equal(a, b) for a, b in zip(train.coords, test.coords)
    ):
        raise ValueError("the two surfaces were computed on different directions or grids")
    return test[metric] - train[metric]


# ---------------------------------------------------------------- computing (with resume)

# settings that must agree for a saved surface to be resumed
RESUME_KEYS = (
    "model_sha1",
    "directions_sha1",
    "metrics",
    "n_samples",
    "subset_seed",
    "split",
    "autocast_dtype",
    "batches_sha1",
)


def list_landscapes(run_path) -> dict[str, Path]:
    """Saved surfaces of a run: name -> folder (those with a meta.json, even a damaged one: loading it
    then says what is wrong), sorted by name."""
    root = Path(run_path) / LANDSCAPES
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / META).exists() or (p / META).is_symlink()}


def load_landscape(run_path, name: str) -> Surface:
    """The surface ``name`` of a run (see ``list_landscapes``)."""
    found = list_landscapes(run_path)
    if name not in found:
        raise FileNotFoundError(f"run {run_path} has no landscape {name!r}; it has: {', '.join(found) or '(none)'}")
    return Surface.load(found[name])
