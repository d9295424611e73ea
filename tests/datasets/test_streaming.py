"""The streaming data path: same batches, same training, same metrics as the in-memory path.

Also the memory-mapped decode-once cache (built once, rebuilt on a change,
never half-built), the loaders' ``load_stream`` on tiny fixtures in their real
layouts, the ``auto`` path choice and the landscape / sharpness subsets.
"""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msam_lab import datasets
from msam_lab.analysis.metrics import evaluate, train_eval_subset
from msam_lab.datasets import (
    MultimodalData,
    StreamingData,
    ave,
    avmnist,
    cremad,
    load_for_training,
    memmap_cache,
    urfunny,
)
from msam_lab.landscape import compute_surface, eval_subset, random_directions, sharpness
from msam_lab.landscape.points import grid
from msam_lab.models.multimodal import build_model

from .test_real_datasets import _humor_split, _write_ave, _write_avmnist, _write_cremad

SYN = {"n_samples": 150, "n_modalities": 2, "n_features": 6}


def _mem(n=75):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    return MultimodalData({"a": torch.randn(n, 5, generator=g), "b": torch.randn(n, 2, 3, generator=g)}, labels, 3)


def _same(batches_a, batches_b):
    batches_a, batches_b = list(batches_a), list(batches_b)
    assert len(batches_a) == len(batches_b)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        assert torch.equal(ya, yb) and ya.dtype == yb.dtype
        assert xa.keys() == xb.keys()
        for m in xa:
            assert xa[m].dtype == xb[m].dtype and torch.equal(xa[m], xb[m]), m


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"shuffle": True},
        {"shuffle": True, "drop_last": True},
        {"shuffle": True, "start_batch": 3},
        {"drop_last": True, "start_batch": 1},
    ],
)
def test_stream_batches_equal_memory_batches(workers, kw):
    mem = _mem()
    stream = StreamingData.from_memory(mem, num_workers=workers)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    _same(mem.batches(16, generator=g1, **kw), stream.batches(16, generator=g2, **kw))
    assert torch.equal(g1.get_state(), g2.get_state())  # one randperm each, nothing more
    assert torch.equal(torch.get_rng_state(), before)  # the DataLoader left the global RNG alone


def test_stream_interface_matches_memory():
    mem = _mem()
    stream = StreamingData.from_memory(mem)
    assert stream.modalities == mem.modalities and stream.num_classes == 3 and len(stream) == len(mem)
    assert stream.sample_shapes == mem.sample_shapes == {"a": (5,), "b": (2, 3)}
    assert torch.equal(stream.labels, mem.labels) and stream.device == mem.device
    sub = stream.subset(torch.tensor([7, 2, 40]))
    assert isinstance(sub, MultimodalData)
    _same(sub.batches(8), mem.subset(torch.tensor([7, 2, 40])).batches(8))
    assert stream.to("cpu").device.type == "cpu"
    with pytest.raises(AttributeError, match="subset"):
        stream.inputs  # noqa: B018
    held = stream.select(torch.tensor([9, 4, 60, 61]))
    assert isinstance(held, StreamingData) and held.labels.tolist() == mem.labels[[9, 4, 60, 61]].tolist()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    _same(
        mem.select(torch.tensor([9, 4, 60, 61])).batches(3, shuffle=True, generator=g1),
        held.select(torch.tensor([0, 1, 2, 3])).batches(3, shuffle=True, generator=g2),
    )
    a, b = train_eval_subset(mem, 20, 3), train_eval_subset(stream, 20, 3)
    _same(a.batches(64), b.batches(64))


def test_training_on_either_path_gives_bitwise_equal_weights():
    splits = datasets.load_dataset("synthetic", **SYN)
    mem, stream = splits.train, StreamingData.from_memory(splits.train, num_workers=2)

    def train(data):
        torch.manual_seed(0)
        model = build_model(data.sample_shapes, data.num_classes, feature_dim=8, hidden_dim=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        for epoch in range(2):
            for inputs, labels in data.batches(32, shuffle=True, generator=gen, start_batch=epoch):
                opt.zero_grad()
                F.cross_entropy(model(inputs), labels).backward()
                opt.step()
        return model

    a, b = train(mem), train(stream)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    kw = dict(batch_size=64)
    assert evaluate(a, splits.test, **kw) == evaluate(a, StreamingData.from_memory(splits.test), **kw)


# ---------------------------------------------------------------- the memmap cache


def _count(monkeypatch, module):
    calls = []
    real = module._fill
    monkeypatch.setattr(module, "_fill", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


def _crema(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "crema"
    train = [(f"10{i:02d}_IEO_{emo}_HI", emo) for i, emo in enumerate(cremad.EMOTIONS)]
    _write_cremad(root, train, [("1091_TAI_ANG_XX", "ANG"), ("1091_TAI_NEU_XX", "NEU")], rng)
    return root


def _opts(module, root, **kw):
    return {**module.OPTIONS, "root": str(root), **kw}


def test_cremad_stream_equals_memory_and_cache_is_built_once(tmp_path, monkeypatch):
    root, cache = _crema(tmp_path), tmp_path / "cache"
    calls = _count(monkeypatch, cremad)
    mem = cremad.load(cache, **_opts(cremad, root, image_size=16))
    assert len(calls) == 2
    stream = cremad.load_stream(cache, **_opts(cremad, root, image_size=16))
    assert len(calls) == 4  # built: one decode per split
    for split in ("train", "test"):
        m, s = getattr(mem, split), getattr(stream, split)
        assert isinstance(s, StreamingData) and s.sample_shapes == m.sample_shapes
        _same(m.batches(4), s.batches(4, num_workers=0))
    assert stream.info == mem.info
    again = cremad.load_stream(cache, **_opts(cremad, root, image_size=16))
    assert len(calls) == 4  # second load: read the cache only
    _same(again.train.batches(3), mem.train.batches(3))
    cremad.load_stream(cache, **_opts(cremad, root, image_size=8))
    assert len(calls) == 6  # a changed option builds a new cache
    (root / "train.csv").write_bytes((root / "train.csv").read_bytes()[:-22])  # drop the last row
    cremad.load_stream(cache, **_opts(cremad, root, image_size=16))
    assert len(calls) == 7  # changed rows: train rebuilt, test not


def test_interrupted_build_leaves_no_valid_cache(tmp_path):
    sig = {"x": 1}

    def fill(arrays, labels):
        arrays["a"][:2] = 1.0
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        memmap_cache.build(tmp_path, "d", "train", sig, 4, {"a": (3,)}, fill)
    folder = memmap_cache.cache_folder(tmp_path, "d", "train", sig)
    assert memmap_cache.read_cache(folder, sig) is None
    assert not any(folder.parent.iterdir())  # the temporary folder was removed
    # a build killed outright leaves a .tmp folder: never taken for the cache
    (folder.parent / f".{folder.name}.tmp-x").mkdir()
    assert memmap_cache.read_cache(folder, sig) is None
    built = []

    def good(arrays, labels):
        built.append(1)
        arrays["a"][:] = np.arange(12, dtype=np.float32).reshape(4, 3)
        labels[:] = [0, 1, 0, 1]

    folder2, manifest = memmap_cache.build(tmp_path, "d", "train", sig, 4, {"a": (3,)}, good)
    assert folder2 == folder and manifest["n"] == 4 and built == [1]
    memmap_cache.build(tmp_path, "d", "train", sig, 4, {"a": (3,)}, good)
    assert built == [1]
    np.save(folder / "a.npy", np.zeros((3, 3), dtype=np.float32))  # damaged by hand: not valid
    assert memmap_cache.read_cache(folder, sig) is None
    memmap_cache.build(tmp_path, "d", "train", sig, 4, {"a": (3,)}, good)
    assert built == [1, 1]


def test_ave_stream_equals_memory_with_val_split(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "ave"
    _write_ave(
        root,
        {
            "train": [("Cat", "v1"), ("Bus", "v2"), ("Bus, truck", "v3")],
            "test": [("Church bell", "v4"), ("Cat", "v5")],
            "val": [("Bus", "v6")],
        },
        rng,
    )
    opts = _opts(ave, root, image_size=8, audio_time_pool=4, n_frames=2)
    mem, stream = ave.load(tmp_path / "c", **opts), ave.load_stream(tmp_path / "c", **opts)
    assert mem.val is not None and mem.val.labels.tolist() == [2]
    assert stream.info == mem.info and stream.info["skipped"] == {"train": 0, "test": 0, "val": 0}
    for split in ("train", "test", "val"):
        _same(getattr(mem, split).batches(2), getattr(stream, split).batches(2, num_workers=0))
    assert ave.estimate_bytes(**opts) == 6 * (4 * (257 * 251 + 6 * 8 * 8) + 8)
    (root / "my_val.txt").unlink()
    assert ave.load(tmp_path / "c", **opts).val is None  # optional


def test_avmnist_stream_reads_the_npy_files_directly(tmp_path):
    root = tmp_path / "avm"
    _write_avmnist(root, n_train=9, n_test=5)
    opts = _opts(avmnist, root, audio_size=56, max_samples=7)
    mem, stream = avmnist.load(None, **opts), avmnist.load_stream(None, **opts)
    assert stream.train.sample_shapes == mem.train.sample_shapes == {"image": (28, 28), "audio": (56, 56)}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    _same(
        mem.train.batches(3, shuffle=True, generator=g1),
        stream.train.batches(3, shuffle=True, generator=g2, num_workers=2),
    )
    _same(mem.test.batches(8), stream.test.batches(8))
    assert avmnist.estimate_bytes(**opts) == (7 + 5) * (4 * (784 + 56 * 56) + 8)
    assert not (tmp_path / "stream-cache").exists()


def _humor(tmp_path):
    rng = np.random.default_rng(5)
    data = {
        "train": _humor_split(rng, 6, zero_text=(2,)),
        "valid": _humor_split(rng, 4, zero_text=(1,)),
        "test": _humor_split(rng, 4),
    }
    data["train"]["audio"][0, 20, :5] = -np.inf
    path = tmp_path / "humor.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_urfunny_val_split_on_both_paths_and_cached_once(tmp_path, monkeypatch):
    path, cache = _humor(tmp_path), tmp_path / "cache"
    mem = urfunny.load(cache, **_opts(urfunny, path))
    assert len(mem.train) == 5 and len(mem.val) == 3 and len(mem.test) == 4
    assert mem.info["dropped"] == {"train": 1, "valid": 1, "test": 0}
    reads = []
    real = urfunny._read_pickle
    monkeypatch.setattr(urfunny, "_read_pickle", lambda p: (reads.append(1), real(p))[1])
    stream = urfunny.load_stream(cache, **_opts(urfunny, path))
    again = urfunny.load_stream(cache, **_opts(urfunny, path))
    assert reads == [1]  # unpickled once, then the memmaps only
    for s in (stream, again):
        assert s.info == mem.info
        for split in ("train", "val", "test"):
            _same(getattr(mem, split).batches(2), getattr(s, split).batches(2, num_workers=0))
    as_train = urfunny.load_stream(cache, **_opts(urfunny, path, use_valid_as="train"))
    assert as_train.val is None and len(as_train.train) == 8 and reads == [1, 1]


# ---------------------------------------------------------------- the path choice


def test_load_for_training_path_choice(tmp_path, monkeypatch):
    root = _crema(tmp_path)
    opts = {"root": str(root), "image_size": 8}
    size = cremad.estimate_bytes(**_opts(cremad, root, image_size=8))
    assert size == 8 * (4 * (257 * 188 + 3 * 64) + 8)
    kw = dict(cache_dir=tmp_path / "cache", num_workers=0)
    small = load_for_training("crema-d", opts, "cpu", stream_above_mb=size / 2**20 * 2, **kw)
    big = load_for_training("crema-d", opts, "cpu", stream_above_mb=size / 2**20 / 2, **kw)
    assert isinstance(small.train, MultimodalData) and small.info["data_path"] == "memory"
    assert isinstance(big.train, StreamingData) and big.info["data_path"] == "stream"
    assert big.train.num_workers == 0
    _same(small.train.batches(5), big.train.batches(5))
    # no load_stream: auto is memory; stream wraps the in-memory splits
    syn = load_for_training("synthetic", SYN, "cpu", stream_above_mb=0.0)
    forced = load_for_training("synthetic", SYN, "cpu", data_path="stream", num_workers=1)
    assert isinstance(syn.train, MultimodalData) and isinstance(forced.test, StreamingData)
    assert forced.train.num_workers == 1 and forced.info["data_path"] == "stream"
    _same(syn.test.batches(50), forced.test.batches(50))
    monkeypatch.setattr(cremad, "estimate_bytes", lambda **o: 2 * 2**30)
    assert datasets.choose_data_path("crema-d", opts) == "stream"
    assert datasets.choose_data_path("crema-d", opts, stream_above_mb=4096) == "memory"
    with pytest.raises(ValueError, match="data_path"):
        load_for_training("synthetic", SYN, "cpu", data_path="disk")


# ---------------------------------------------------------------- landscapes and sharpness


def test_landscape_and_sharpness_on_streaming_data_equal_memory():
    splits = datasets.load_dataset("synthetic", **SYN)
    mem, stream = splits.test, StreamingData.from_memory(splits.test)
    torch.manual_seed(0)
    model = build_model(mem.sample_shapes, mem.num_classes, feature_dim=6, hidden_dim=8)
    d = random_directions(model, 1, seed=0)
    a = compute_surface(model, mem, d, [grid(3)], n_samples=40, subset_seed=2)
    b = compute_surface(model, stream, d, [grid(3)], n_samples=40, subset_seed=2)
    assert np.array_equal(a.subset_index, b.subset_index)
    for k in a.values:
        assert np.array_equal(a[k], b[k]), k
    sub_m, _ = eval_subset(mem, 40, 2)
    sub_s, _ = eval_subset(stream, 40, 2)
    sa = sharpness(model, sub_m, probes=2, max_iter=5)
    assert sa == sharpness(model, sub_s, probes=2, max_iter=5)
    assert sa == sharpness(model, stream, probes=2, max_iter=5, n_samples=40, subset_seed=2)


def test_stream_throughput_is_measurable():
    """Not a speed requirement: both paths run the same epoch; the numbers go in the report."""
    mem = _mem(2000)
    stream = StreamingData.from_memory(mem, num_workers=0)
    for data in (mem, stream):
        t = time.perf_counter()
        n = sum(len(y) for _, y in data.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0)))
        assert n == 2000 and time.perf_counter() - t < 10


# -- the trainer on both paths -----------------------------------------------------------------
def _train(tmp_path, name, on_step=None, **kw):
    import msam_lab

    cfg = {
        "dataset": "synthetic",
        "data": {"n_samples": 240, "n_modalities": 2},
        "epochs": 2,
        "batch_size": 32,
        "method": "msam",
        "device": "cpu",
        "num_workers": 0,
        "resume_every": 2,
        **kw,
    }
    return msam_lab.train(cfg, out=tmp_path / name, quiet=True, on_step=on_step)


def test_training_on_the_stream_path_equals_the_memory_path(tmp_path):
    """Same batches, same evaluation: the whole run (tables and weights) is the same on both paths."""
    memory, stream = _train(tmp_path, "memory", data_path="memory"), _train(tmp_path, "stream", data_path="stream")
    assert stream.summary["n_parameters"] == memory.summary["n_parameters"]
    cols = [c for c in memory.steps.columns if c != "wall_time"]
    assert memory.steps[cols].equals(stream.steps[cols])
    ecols = [c for c in memory.epochs.columns if c != "wall_time"]
    assert memory.epochs[ecols].equals(stream.epochs[ecols])
    for a, b in zip(memory.load_model(2).parameters(), stream.load_model(2).parameters()):
        assert torch.equal(a, b)


def test_a_streamed_run_resumes_inside_an_epoch(tmp_path):
    import msam_lab

    whole = _train(tmp_path, "whole", data_path="stream")

    def stop(row):
        if row["step"] == 8:  # epoch 2, batch 2 of 7
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "cut", data_path="stream", on_step=stop)
    resumed = msam_lab.train(resume=tmp_path / "cut", quiet=True)
    assert list(resumed.steps["step"]) == list(whole.steps["step"])
    for a, b in zip(whole.load_model(2).parameters(), resumed.load_model(2).parameters()):
        assert torch.equal(a, b)
