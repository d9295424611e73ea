"""The in-memory multimodal dataset every loader returns.

Most datasets in this field are small, so they live as tensors on the training
device and are batched by indexing: no DataLoader, no worker processes (the
fast path). One that does not fit is read per batch instead by
:class:`~msam_lab.datasets.streaming.StreamingData`, which has the same
duck-typed interface (``modalities``, ``num_classes``, ``labels``, ``len``,
``device``, ``to``, ``batches``, ``subset``, ``sample_shapes``) and yields the
same batches for the same generator state.
A batch is ``(inputs, labels)`` with ``inputs`` a dict modality -> tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

Batch = dict[str, torch.Tensor]


@dataclass
class MultimodalData:
    """Aligned per-modality tensors ``inputs[m]`` of shape (N, ...) and labels (N,)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("MultimodalData needs at least one modality")
        n = len(self.labels)
        for name, x in self.inputs.items():
            if len(x) != n:
                raise ValueError(f"modality {name!r} has {len(x)} samples but there are {n} labels")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    @property
    def device(self) -> torch.device:
        return self.labels.device

    @property
    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of each modality (what a model's input layer is built for)."""
        return {m: tuple(x.shape[1:]) for m, x in self.inputs.items()}

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "MultimodalData":
        return MultimodalData(
            {m: x.to(device) for m, x in self.inputs.items()}, self.labels.to(device), self.num_classes
        )

    def subset(self, index) -> "MultimodalData":
        index = torch.as_tensor(index, device=self.device)
        return MultimodalData({m: x[index] for m, x in self.inputs.items()}, self.labels[index], self.num_classes)

    def select(self, index) -> "MultimodalData":
        """The samples ``index`` on the same path: here ``subset`` (``StreamingData.select`` stays streamed)."""
        return self.subset(index)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        start_batch: int = 0,
        shard=None,
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """Yield ``(inputs, labels)`` mini-batches by index.

        The permutation is drawn on the CPU from ``generator`` so that a seed
        gives the same batches on every device. ``start_batch`` skips that many
        batches of the permutation (a run resumed inside an epoch). ``shard``: only
        that part of every batch (a data-parallel rank's, ``distributed.shard_of``).
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(start_batch * batch_size, stop, batch_size):
            idx = order[start : start + batch_size]
            if shard is not None:
                idx = idx[shard_slice(shard, len(idx))]
                if not len(idx):  # a batch smaller than the world: nothing for this rank
                    continue
            yield {m: x[idx] for m, x in self.inputs.items()}, self.labels[idx]


def shard_slice(shard, n: int) -> slice:
    """``shard`` for a batch of ``n``: a slice, or a callable ``n -> slice`` (``distributed.shard_of``)."""
    return shard(n) if callable(shard) else shard


@dataclass
class Splits:
    """A dataset's train, test and (where it has one) validation parts plus a few facts about it."""

    train: MultimodalData  # or a StreamingData: the same interface, read per batch
    test: MultimodalData
    info: dict = field(default_factory=dict)
    val: MultimodalData | None = None  # the dataset's own validation split, or a hold-out of train

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.train.modalities

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def to(self, device) -> "Splits":
        return Splits(
            self.train.to(device),
            self.test.to(device),
            dict(self.info),
            None if self.val is None else self.val.to(device),
        )


def in_memory(data) -> MultimodalData:
    """``data`` itself if it is a :class:`MultimodalData`, else all of it materialised by ``subset``.

    For code that needs ``data.inputs`` (a small evaluation subset, say) whichever
    path the data came from.
    """
    if isinstance(data, MultimodalData):
        return data
    return data.subset(torch.arange(len(data)))
