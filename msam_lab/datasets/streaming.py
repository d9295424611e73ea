"""Data that does not fit in memory: per-batch reads through a ``torch.utils.data.DataLoader``.

:class:`StreamingData` has the duck-typed interface the rest of the code uses
from :class:`~msam_lab.datasets.base.MultimodalData` (``modalities``,
``num_classes``, ``labels``, ``len``, ``device``, ``to``, ``batches``,
``subset``, ``sample_shapes``), but keeps its samples in row-indexable sources
on disk (memory-mapped ``.npy`` files) or in CPU memory, and reads one batch at
a time in ``num_workers`` worker processes, into pinned memory when the target
device is CUDA, copied to the device with ``non_blocking=True``.

Same batches as the in-memory path: ``batches(shuffle=True, generator=g)``
draws ``torch.randperm(n, generator=g)`` on the CPU exactly as
``MultimodalData.batches`` does (lazily, when iteration starts), cuts it into
the same batches (``drop_last``, ``start_batch``) and hands them to the
DataLoader as its batch sampler, so a seed gives the same samples in the same
order, and training on either path the same weights. The DataLoader gets a
private generator, so it never draws from torch's global RNG either.

Each modality may have a ``transform``: a function of a batch of source rows
(a numpy array (B, ...)) returning float32 (B, ...). The loaders use the same
function to build their in-memory arrays, so the two paths cannot drift.

``subset(index)`` returns an in-memory ``MultimodalData`` on the device: the
subsets the code takes (the train-evaluation subset, the landscape and
sharpness subsets) are small, seeded and evaluated many times, so reading them
once beats streaming them every pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from msam_lab.datasets.base import Batch, MultimodalData, shard_slice
from msam_lab.datasets.memmap_cache import LABELS

Transform = Callable[[np.ndarray], np.ndarray]


class NpyArray:
    """A ``.npy`` file opened memory-mapped on first use, in whichever process uses it.

    Pickles as its path (a worker started with ``spawn`` opens its own map
    instead of receiving a copy of the data).
    """

    def __init__(self, path, shape=None, dtype=None):
        self.path = str(path)
        self._array = None
        if shape is None or dtype is None:
            a = self.array
            shape, dtype = a.shape, a.dtype
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return self.array[index]

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "dtype": self.dtype.str}

    def __setstate__(self, state):
        self.path, self.shape, self.dtype = state["path"], tuple(state["shape"]), np.dtype(state["dtype"])
        self._array = None


def _as_float_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class _BatchDataset(Dataset):
    """``dataset[list of sample indices]`` -> ``(inputs, labels)``: a whole batch per fetch.

    One fancy-indexed read per modality and batch is far cheaper from a memmap
    than one read per sample plus collation.
    """

    def __init__(self, data: "StreamingData"):
        self.sources, self.transforms = data.sources, data.transforms
        self.rows, self.labels = data.rows, data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> tuple[Batch, torch.Tensor]:
        index = np.asarray(index, dtype=np.int64)
        return read_batch(self.sources, self.transforms, self.rows, index), self.labels[torch.from_numpy(index)]


def read_batch(sources, transforms, rows, index: np.ndarray) -> Batch:
    """The samples ``index`` (logical positions) of every modality as float32 CPU tensors."""
    src = index if rows is None else rows[index]
    out = {}
    for m, source in sources.items():
        if isinstance(source, torch.Tensor):
            x = source[torch.from_numpy(src)]
        else:
            x = source[src]
        transform = transforms.get(m)
        out[m] = _as_float_tensor(transform(np.asarray(x)) if transform is not None else x)
    return out


def _worker_message(err: Exception) -> str:
    """A loader's one-line error raised inside a worker, without the traceback the DataLoader wraps it in."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


class StreamingData:
    """Samples read per batch from ``sources`` (modality -> row-indexable array) through a DataLoader.

    ``labels``: (N,) int64 CPU tensor (small, so kept whole). ``rows``: the
    source row of each of the N samples (None: row i is sample i) -- how a
    loader's ``max_samples`` selects rows without copying. ``transforms``:
    per-modality batch transforms (see the module doc). ``device``: where
    batches are delivered. ``num_workers``: DataLoader worker processes (0:
    read in the main process).
    """

    def __init__(
        self,
        sources: Mapping[str, object],
        labels,
        num_classes: int,
        transforms: Mapping[str, Transform] | None = None,
        rows=None,
        device="cpu",
        num_workers: int = 2,
        sample_shapes: Mapping[str, tuple] | None = None,
    ):
        if not sources:
            raise ValueError("StreamingData needs at least one modality")
        self.sources = dict(sources)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        self.num_classes = int(num_classes)
        self.transforms = dict(transforms or {})
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = len(self.labels)
        if self.rows is not None and len(self.rows) != n:
            raise ValueError(f"{len(self.rows)} source rows given for {n} labels")
        for name, source in self.sources.items():
            if self.rows is None and len(source) != n:
                raise ValueError(f"modality {name!r} has {len(source)} samples but there are {n} labels")
            if self.rows is not None and n and not 0 <= int(self.rows.min()) <= int(self.rows.max()) < len(source):
                raise ValueError(f"modality {name!r} has {len(source)} rows; the rows asked for lie outside")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        self._device = torch.device(device)
        self._shapes = None if sample_shapes is None else {m: tuple(map(int, s)) for m, s in sample_shapes.items()}

    # ---------------------------------------------------------------- the MultimodalData interface
    @classmethod
    def from_memory(cls, data: MultimodalData, num_workers: int = 2) -> "StreamingData":
        """Stream an in-memory ``MultimodalData`` (its tensors kept on the CPU, batches on its device)."""
        cpu = data.to("cpu")
        return cls(
            dict(cpu.inputs),
            cpu.labels,
            data.num_classes,
            device=data.device,
            num_workers=num_workers,
            sample_shapes=data.sample_shapes,
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.sources)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def inputs(self):
        raise AttributeError("StreamingData holds no whole tensors; iterate batches() or take subset(index)")

    @property
    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each modality (read from one sample when the loader did not say)."""
        if self._shapes is None:
            first = read_batch(self.sources, self.transforms, self.rows, np.zeros(1, dtype=np.int64))
            self._shapes = {m: tuple(x.shape[1:]) for m, x in first.items()}
        return dict(self._shapes)

    def __len__(self) -> int:
        return len(self.labels)

    def _copy(self, **changes) -> "StreamingData":
        kw = dict(
            sources=self.sources,
            labels=self.labels,
            num_classes=self.num_classes,
            transforms=self.transforms,
            rows=self.rows,
            device=self._device,
            num_workers=self.num_workers,
            sample_shapes=self._shapes,
        )
        kw.update(changes)
        return StreamingData(**kw)

    def to(self, device) -> "StreamingData":
        """The same data, batches delivered on ``device``."""
        return self._copy(device=device)

    def with_workers(self, num_workers: int) -> "StreamingData":
        """The same data read by ``num_workers`` DataLoader workers."""
        return self._copy(num_workers=num_workers)

    def subset(self, index) -> MultimodalData:
        """The samples ``index`` (in that order) read now, as an in-memory ``MultimodalData`` on the device."""
        index = torch.as_tensor(index).to("cpu", torch.int64).reshape(-1)
        inputs = read_batch(self.sources, self.transforms, self.rows, index.numpy())
        return MultimodalData(inputs, self.labels[index].clone(), self.num_classes).to(self.device)

    def select(self, index) -> "StreamingData":
        """The samples ``index`` (in that order) as StreamingData: still read per batch (a train/val hold-out)."""
        index = torch.as_tensor(index).to("cpu", torch.int64).reshape(-1)
        rows = index.numpy() if self.rows is None else self.rows[index.numpy()]
        return self._copy(labels=self.labels[index].clone(), rows=rows)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        start_batch: int = 0,
        num_workers: int | None = None,
        shard=None,
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Yield ``(inputs, labels)`` mini-batches on ``self.device``, exactly those of ``MultimodalData.batches``.

        The permutation is drawn from ``generator`` on the CPU when iteration
        starts, as there; ``start_batch`` skips that many of its batches.
        ``num_workers`` overrides ``self.num_workers`` for this pass. ``shard``: read
        only that part of every batch, as there (a data-parallel rank's).
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        plan = [order[s : s + batch_size] for s in range(start_batch * batch_size, stop, batch_size)]
        if shard is not None:
            plan = [part for part in (idx[shard_slice(shard, len(idx))] for idx in plan) if len(part)]
        plan = [idx.tolist() for idx in plan]
        if not plan:
            return
        workers = self.num_workers if num_workers is None else int(num_workers)
        cuda = self._device.type == "cuda"
        loader = DataLoader(
            _BatchDataset(self),
            batch_size=None,
            sampler=plan,
            num_workers=min(workers, len(plan)),
            pin_memory=cuda,
            # a private generator: the DataLoader seeds its workers from it, and with None it would
            # draw from torch's global RNG and change what training draws after it
            generator=torch.Generator().manual_seed(0),
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        try:
            for inputs, labels in loader:
                if self._device.type != "cpu":
                    inputs = {m: x.to(self._device, non_blocking=cuda) for m, x in inputs.items()}
                    labels = labels.to(self._device, non_blocking=cuda)
                yield inputs, labels
        except ValueError as err:  # a loader's one-line file error, raised in a worker
            raise ValueError(_worker_message(err)) from None

    def __repr__(self) -> str:
        return (
            f"StreamingData({len(self)} samples, modalities {list(self.modalities)}, "
            f"device {self._device}, num_workers {self.num_workers})"
        )


def cached_split(folder, manifest: dict, num_classes: int, num_workers: int = 2) -> StreamingData:
    """A split of a ``memmap_cache`` folder as StreamingData (labels read whole: they are small)."""

    folder = Path(folder)
    sources = {m: NpyArray(folder / f"{m}.npy", spec["shape"], spec["dtype"]) for m, spec in manifest["arrays"].items()}
    labels = torch.from_numpy(np.load(folder / f"{LABELS}.npy", allow_pickle=False).astype(np.int64))
    shapes = {m: tuple(spec["shape"][1:]) for m, spec in manifest["arrays"].items()}
    return StreamingData(sources, labels, num_classes, num_workers=num_workers, sample_shapes=shapes)


def is_streaming(data) -> bool:
    return isinstance(data, StreamingData)
