"""Opening a shared run folder or a downloaded dataset runs no code; old files still open; damage is named.

* Payloads: a pickle whose ``__reduce__`` creates a marker folder is planted in every file the toolkit
  reads from a run folder (checkpoints, resume points, landscapes, sharpness.csv, the tables and JSON
  files) and in the pickled datasets (UR-Funny's humor.pkl, AVE's spectrograms). Every entry point
  that reads them -- the API, each CLI command, the widgets' loaders, sweep reuse, ``data check`` --
  must leave the marker absent and answer with one line naming the file. The checksum sidecar is
  rewritten to match the planted bytes (an attacker can do that): it is weights-only loading, not
  the checksum, that refuses them. Against the loaders of commit 913b2d0 (``weights_only=False``,
  ``pickle.load``) these tests create the marker.
* Old formats: tests/fixtures/old_runs (numpy-pickled RNG states) load and resume bitwise.
* Integrity: a flipped bit is caught by the SHA-256 sidecar; a damaged resume point falls back to the
  previous one and still ends bitwise equal to the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import msam_lab
from msam_lab.cli import commands as cli
from msam_lab.config import ConfigError
from msam_lab.datasets import load_dataset, safe_pickle
from msam_lab.runs import checkpoint_io
from msam_lab.runs.checkpoint_io import RunFileError
from msam_lab.runs.reader import load_run, read_status, read_table
from tests.datasets.test_real_datasets import _humor_split, _write_ave

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_runs"
TINY = {
    "dataset": "synthetic",
    "method": "msam",
    "epochs": 2,
    "feature_dim": 4,
    "hidden_dim": 8,
    "batch_size": 32,
    "data": {"n_samples": 160, "n_features": 6},
    "checkpoint_every": 1,
    "resume_every": 2,
    "train_eval_samples": 32,
    "deterministic": True,
    "flush_every": 0,
}
STOP_AT = 7  # the interrupted copy stops after step 7 (of 10); resume points at 6 and 4


class Payload:
    """Unpickled by a loader that runs code, it creates the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# --------------------------------------------------------------------------- fixtures


def _stop_at(step):
    def stop(row):
        if row["step"] == step:
            raise KeyboardInterrupt

    return stop


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished run (a sweep cell, with a landscape ``r1`` and sharpness.csv) and an interrupted one."""
    from msam_lab.experiments.sweep import plan_sweep, run_sweep
    from msam_lab.landscape import landscape_for_run, sharpness_for_run

    base = tmp_path_factory.mktemp("safe-runs")
    run_sweep(["msam"], [0], out=base / "sweep", config=TINY, quiet=True)
    cell = plan_sweep(["msam"], [0], out=base / "sweep", config=TINY)[0].path
    landscape_for_run(cell, dim=1, grid=3, n_samples=16, name="r1")
    sharpness_for_run(cell, n_samples=16, probes=2, max_iter=3, topk=1)
    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(TINY, out=base / "interrupted", quiet=True, on_step=_stop_at(STOP_AT))
    return {"sweep": base / "sweep", "finished": cell, "interrupted": base / "interrupted"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _rewrite_sidecar(path: Path) -> None:
    side = path.with_name(path.name + ".sha256")
    side.write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


def plant(path: Path, marker: Path, style: str = "zip") -> None:
    """Replace ``path`` with a payload: ``zip`` a torch.save archive holding one, ``pickle`` a bare
    pickle, ``npz`` an .npz with an object array; a checkpoint's sidecar is made to match."""
    if style == "zip":
        buffer = io.BytesIO()
        torch.save({"model": {}, "method": {}, "payload": Payload(marker)}, buffer)
        path.write_bytes(buffer.getvalue())
    elif style == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, coord_0=np.array([Payload(marker)], dtype=object), done=np.array([Payload(marker)]))
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(pickle.dumps({"payload": Payload(marker)}))
    if path.suffix == ".pt":
        _rewrite_sidecar(path)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, f"not one line: {text!r}"
    return lines[0]


def names(message: str, path: Path) -> bool:
    return str(path) in message or str(path.parent) in message


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_cli_names(argv, path: Path, code: int = 2) -> str:
    got, _, err = run_cli(argv)
    line = one_line(err)
    assert got == code and line.startswith("msam-lab: error: ") and names(line, path), (got, err)
    return line


# --------------------------------------------------------------------------- payloads: the API

API_CASES = [
    ("load_model", "checkpoints/epoch_0002.pt"),
    ("load_checkpoint", "checkpoints/epoch_0001.pt"),
    ("load_landscape", "landscapes/r1/surface.npz"),
    ("load_landscape", "landscapes/r1/directions.npz"),
    ("load_landscape", "landscapes/r1/meta.json"),
    ("load_run", "steps.csv"),
    ("load_run", "epochs.csv"),
    ("load_run", "status.json"),
    ("load_run", "config.json"),
    ("load_run", "model.json"),
    ("load_run", "summary.json"),
    ("read_table", "sharpness.csv"),
]


def _api(entry: str, run_path: Path):
    if entry == "load_model":
        return load_run(run_path).load_model()
    if entry == "load_checkpoint":
        return load_run(run_path).load_checkpoint(1)
    if entry == "load_landscape":
        return load_run(run_path).load_landscape("r1")
    if entry == "read_table":
        return read_table(run_path / "sharpness.csv")
    return load_run(run_path)


def with_styles(cases):
    """Each (entry, file) with the payload kinds its loader could meet: a torch archive or a bare pickle
    for a checkpoint, an object array or a bare pickle for an .npz, pickle bytes for text files."""
    kinds = {".pt": ("zip", "pickle"), ".npz": ("npz", "pickle")}
    return [pytest.param(e, t, k, id=f"{e}-{t}-{k}") for e, t in cases for k in kinds.get(Path(t).suffix, ("pickle",))]


@pytest.mark.parametrize("entry,target,style", with_styles(API_CASES))
def test_api_never_runs_a_planted_payload(runs, tmp_path, entry, target, style):
    run = _copy(runs["finished"], tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / target, marker, style)
    with pytest.raises(ConfigError) as caught:
        _api(entry, run)
    assert not marker.exists(), f"{entry} ran the payload in {target}"
    line = one_line(str(caught.value))
    assert names(line, run / target)
    if style == "zip":  # a well-formed archive: refused for what it asks for
        assert "posix.mkdir, which could run code" in line, line


# --------------------------------------------------------------------------- payloads: the CLI


def _landscape_argv(run: Path, kind: str) -> list:
    if kind == "random":
        return ["landscape", run, "--dim", "1", "--grid", "3", "--n-samples", "16", "--quiet"]
    if kind == "pca":
        return ["landscape", run, "--dim", "1", "--grid", "3", "--n-samples", "16", "--directions", "pca", "--quiet"]
    return ["landscape", run, "--dim", "1", "--grid", "3", "--n-samples", "16", "--name", "r1", "--quiet"]


CLI_CASES = [
    ("landscape-random", "checkpoints/epoch_0002.pt"),
    ("landscape-pca", "checkpoints/epoch_0000.pt"),
    ("landscape-resume", "landscapes/r1/surface.npz"),
    ("landscape-resume", "landscapes/r1/directions.npz"),
    ("sharpness", "checkpoints/epoch_0002.pt"),
    ("sharpness", "sharpness.csv"),
    ("compare", "summary.json"),
    ("compare", "epochs.csv"),
    ("compare", "config.json"),
]


@pytest.mark.parametrize("command,target,style", with_styles(CLI_CASES))
def test_cli_never_runs_a_planted_payload(runs, tmp_path, command, target, style):
    run = _copy(runs["finished"], tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / target, marker, style)
    if command.startswith("landscape"):
        argv = _landscape_argv(run, command.split("-")[1])
    elif command == "sharpness":
        argv = ["sharpness", run, "--n-samples", "16", "--probes", "2", "--max-iter", "3", "--quiet"]
    else:
        argv = ["compare", run]
    assert_cli_names(argv, run / target)
    assert not marker.exists(), f"msam-lab {command} ran the payload in {target}"


@pytest.mark.parametrize("style", ["zip", "pickle"])
def test_resume_never_runs_a_planted_payload(runs, tmp_path, style):
    """resume.pt refused -> resume.prev.pt tried -> refused too: one line naming both, exit 2, nothing written."""
    run = _copy(runs["interrupted"], tmp_path / "run")
    marker = tmp_path / "marker"
    for name in ("resume.pt", "resume.prev.pt"):
        plant(run / "checkpoints" / name, marker, style)
    steps = (run / "steps.csv").read_bytes()
    line = assert_cli_names(["train", "--resume", run, "--quiet"], run / "checkpoints" / "resume.pt")
    assert "resume.prev.pt" in line and not marker.exists()
    assert (run / "steps.csv").read_bytes() == steps and load_run(run).state == "interrupted"


def test_resume_falls_back_past_a_payload_in_the_last_point(runs, tmp_path):
    run = _copy(runs["interrupted"], tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / "checkpoints" / "resume.pt", marker)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"])
    line = one_line(err)
    assert code == 0 and "resume.pt" in line and "resume.prev.pt" in line and not marker.exists()
    assert load_run(run).finished


def test_status_never_runs_a_planted_payload(runs, tmp_path):
    run = _copy(runs["finished"], tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / "status.json", marker, "pickle")
    code, out, err = run_cli(["status", run])
    assert code == 0 and not err and not marker.exists()
    line = [ln for ln in out.splitlines() if "unreadable" in ln]
    assert len(line) == 1 and "status.json" in line[0]


# --------------------------------------------------------------------------- payloads: widgets, sweep


@pytest.mark.parametrize("target", ["steps.csv", "epochs.csv", "checkpoints/epoch_0002.pt"])
def test_widget_loaders_never_run_a_planted_payload(runs, tmp_path, target):
    from msam_lab.widgets import DominanceExplorer, LandscapeExplorer

    run = _copy(runs["finished"], tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / target, marker, "zip" if target.endswith(".pt") else "pickle")
    widget = LandscapeExplorer if target.endswith(".pt") else DominanceExplorer
    kwargs = {"grid": 3, "grid_1d": 3, "n_samples": 16} if widget is LandscapeExplorer else {}
    with pytest.raises(ConfigError) as caught:
        widget([run], **kwargs)
    assert not marker.exists() and names(one_line(str(caught.value)), run / target)


def test_notebook_sharpness_reuse_never_runs_a_planted_payload(runs, tmp_path):
    from msam_lab.notebook_utils import ensure_sharpness

    good = load_run(runs["finished"])
    run = _copy(runs["finished"], tmp_path / "run")
    marker = tmp_path / "marker"
    plant(run / "sharpness.csv", marker, "pickle")
    with pytest.raises(ConfigError) as caught:
        ensure_sharpness(load_run(run), n_samples=16, probes=2)
    assert not marker.exists() and names(one_line(str(caught.value)), run / "sharpness.csv")
    assert good.finished


@pytest.mark.parametrize("target", ["config.json", "epochs.csv", "summary.json", "status.json"])
def test_sweep_reuse_never_runs_a_planted_payload(runs, tmp_path, target):
    from msam_lab.experiments.sweep import plan_sweep, run_sweep

    sweep = _copy(runs["sweep"], tmp_path / "sweep")
    cell = plan_sweep(["msam"], [0], out=sweep, config=TINY)[0].path
    marker = tmp_path / "marker"
    plant(cell / target, marker, "pickle")
    with pytest.raises(ConfigError) as caught:
        run_sweep(["msam"], [0], out=sweep, config=TINY, quiet=True)
    assert not marker.exists() and names(one_line(str(caught.value)), cell / target)


# --------------------------------------------------------------------------- payloads: datasets


def _humor(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    with open(root / "humor.pkl", "wb") as f:
        pickle.dump({"train": _humor_split(rng, 4), "valid": _humor_split(rng, 2), "test": _humor_split(rng, 3)}, f)
    return root / "humor.pkl"


@pytest.mark.parametrize("how", ["whole", "inside"])
def test_urfunny_pickle_payload_is_refused_by_check_and_load(tmp_path, how):
    path = _humor(tmp_path / "urfunny")
    marker = tmp_path / "marker"
    if how == "whole":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:  # a valid file with one payload among the arrays
        data = safe_pickle.load(path)
        data["train"]["id"] = Payload(marker)
        path.write_bytes(pickle.dumps(data))
    code, out, err = run_cli(["data", "check", "ur-funny", "--root", path.parent])
    assert code == 2 and not marker.exists()
    assert one_line(out).startswith("humor.pkl: cannot unpickle") and "refused" in out
    with pytest.raises(ValueError) as caught:
        load_dataset("ur-funny", root=str(path.parent))
    assert not marker.exists() and str(path) in one_line(str(caught.value))


def test_ave_spectrogram_payload_is_refused_by_check_and_load(tmp_path):
    root = tmp_path / "ave"
    _write_ave(root, {"train": [("Cat", "v1")], "test": [("Bus", "v2")]}, np.random.default_rng(1), frames=2)
    marker = tmp_path / "marker"
    spec = root / "audio_spec" / "v1.pkl"
    spec.write_bytes(pickle.dumps(Payload(marker)))
    code, out, _ = run_cli(["data", "check", "ave", "--root", root])
    assert code == 2 and not marker.exists()
    assert [ln for ln in out.splitlines() if ln.startswith("audio_spec/v1.pkl") and "refused" in ln]
    with pytest.raises(ValueError) as caught:
        load_dataset("ave", root=str(root))
    assert not marker.exists() and str(spec) in one_line(str(caught.value))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_reads_numpy_data_of_every_protocol(tmp_path, protocol):
    data = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "s": np.float64(2.5),
        "ids": np.array(["a", "bc"]),
        "objects": np.array([b"x", None], dtype=object),
        "set": {1, 2},
        "c": 1 + 2j,
        "b": b"\x00\xff",
    }
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = safe_pickle.load(path)
    for k, v in data.items():
        assert (np.array_equal(got[k], v) and got[k].dtype == v.dtype) if isinstance(v, np.ndarray) else got[k] == v


def test_restricted_unpickler_reads_python2_latin1_pickles(tmp_path):
    """What Python 2 with numpy 1.x wrote for {'x': np.array([1., 2.], float32)}: the array's bytes as a
    str (not ASCII: read as latin-1), numpy.core's module names (numpy 2 calls it numpy._core)."""
    array = np.array([1.0, 2.0], np.float32)
    path = tmp_path / "py2.pkl"
    path.write_bytes(
        b"\x80\x02}q\x00U\x01xq\x01cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
        b"K\x00\x85q\x02U\x01b\x87q\x03Rq\x04(K\x01K\x02\x85cnumpy\ndtype\nq\x05"
        b"U\x02f4K\x00K\x01\x87Rq\x06"
        b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbI00\nU\x08" + array.tobytes() + b"tbs."
    )
    got = safe_pickle.load(path)["x"]
    assert got.dtype == np.float32 and np.array_equal(got, array)


@pytest.mark.parametrize(
    "reduce",
    [(os.system, ("true",)), (eval, ("1",)), (getattr, ("", "join")), (pd.read_pickle, ("x",)), (np.load, ("x",))],
    ids=["os.system", "eval", "getattr", "pandas.read_pickle", "numpy.load"],
)
def test_restricted_unpickler_refuses_every_other_global(tmp_path, reduce):
    class Evil:
        def __reduce__(self):
            return reduce

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([np.zeros(2), Evil()]))
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        safe_pickle.load(path)


# --------------------------------------------------------------------------- the old formats


def test_old_run_loads_models_landscapes_and_sharpness():
    run = load_run(FIXTURES / "old_run")
    assert run.finished and sorted(run.checkpoints) == [0, 1, 2]
    for epoch, path in run.checkpoints.items():
        trusted = torch.load(path, weights_only=False)  # the fixture is ours: a reference, never a run's way
        model = run.load_model(epoch)
        assert all(torch.equal(v, trusted["model"][k]) for k, v in model.state_dict().items())
        ckpt = run.load_checkpoint(epoch)
        assert isinstance(ckpt["rng"]["numpy"], dict)  # converted from the pickled tuple
        checkpoint_io.set_numpy_state(ckpt["rng"]["numpy"])
        now, then = np.random.get_state(), trusted["rng"]["numpy"]
        assert now[0] == then[0] and np.array_equal(now[1], then[1]) and now[2:] == then[2:]
    for name, shape in (("r2", (3, 3)), ("p1", (5,))):
        surface = run.load_landscape(name)
        with np.load(run.path / "landscapes" / name / "surface.npz", allow_pickle=False) as z:
            assert np.array_equal(surface["loss"], z["value:loss"], equal_nan=True)
        assert surface.shape == shape and surface.complete and np.isfinite(surface["loss"]).all()
    table = read_table(run.path / "sharpness.csv")
    pd.testing.assert_frame_equal(table, pd.read_csv(run.path / "sharpness.csv"))
    assert set(table["epoch"]) == {0, 1, 2}


def test_old_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path):
    run_dir = _copy(FIXTURES / "old_interrupted", tmp_path / "old_interrupted")
    assert not (run_dir / "checkpoints" / "resume.pt.sha256").exists()  # an old file: no sidecar
    run = msam_lab.train(resume=run_dir, quiet=True)
    expected = torch.load(FIXTURES / "old_interrupted_expected_final.pt", weights_only=True)
    got = run.load_checkpoint(3)["model"]
    # The fixture was computed on another CPU: float sums may differ there in the last bit (3e-8 seen), while a
    # wrong restore (RNG, batch position, optimizer state) moves weights by orders of magnitude more.
    assert got.keys() == expected.keys()
    assert all(torch.allclose(got[k], expected[k], rtol=0, atol=1e-6) for k in expected)
    assert list(run.steps["step"]) == list(range(len(run.steps)))


def test_the_legacy_allowlist_is_narrow(tmp_path):
    """An old-format file loads; one that needs any numpy global beyond the four is refused."""
    state = {"rng": {"numpy": np.random.get_state(legacy=True)}}
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert isinstance(checkpoint_io.load(old)["rng"]["numpy"], dict)
    for extra in (np.float64(1.0), np.random.default_rng(0)):
        path = tmp_path / "more.pt"
        torch.save({**state, "extra": extra}, path)
        with pytest.raises(RunFileError, match="could run code"):
            checkpoint_io.load(path)


def test_new_checkpoints_load_weights_only_without_any_allowlist(runs):
    files = sorted((runs["finished"] / "checkpoints").glob("*.pt"))
    assert {f.name for f in files} >= {"epoch_0000.pt", "epoch_0002.pt", "resume.pt", "resume.prev.pt"}
    for f in files:
        state = torch.load(f, weights_only=True)  # no safe_globals: plain values and tensors only
        assert isinstance(state["rng"]["numpy"], dict) and torch.is_tensor(state["rng"]["numpy"]["key"])
        digest, name = (f.parent / (f.name + ".sha256")).read_text().split()
        assert name == f.name and digest == hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["joint", "sam", "agm", "cggm", "reconboost", "ogm_ge", "masam", "mie"])
def test_every_methods_resume_point_is_plain(tmp_path, method):
    cfg = {**TINY, "method": method, "epochs": 1}
    run = msam_lab.train(cfg, out=tmp_path / "run", quiet=True)
    torch.load(run.path / "checkpoints" / "resume.pt", weights_only=True)
    torch.load(run.path / "checkpoints" / "epoch_0001.pt", weights_only=True)


def test_numpy_state_round_trips():
    np.random.seed(3)
    np.random.standard_normal(3)  # a cached gaussian: has_gauss = 1
    saved = checkpoint_io.numpy_state()
    expected = np.random.standard_normal(5)
    np.random.seed(99)
    checkpoint_io.set_numpy_state(saved)
    assert np.array_equal(np.random.standard_normal(5), expected)


# --------------------------------------------------------------------------- integrity and fallback


def _flip(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(at * (len(data) - 1))] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_is_named(runs, tmp_path):
    run = _copy(runs["finished"], tmp_path / "run")
    target = run / "checkpoints" / "epoch_0002.pt"
    _flip(target)
    with pytest.raises(RunFileError) as caught:
        load_run(run).load_model()
    line = one_line(str(caught.value))
    assert str(target) in line and "SHA-256" in line
    (target.parent / "epoch_0002.pt.sha256").write_text("not a checksum\n")
    with pytest.raises(RunFileError, match="epoch_0002.pt.sha256: not a SHA-256"):
        load_run(run).load_model()


def test_a_file_without_sidecar_loads_like_an_old_one(runs, tmp_path):
    run = _copy(runs["finished"], tmp_path / "run")
    (run / "checkpoints" / "epoch_0002.pt.sha256").unlink()
    assert load_run(run).load_model() is not None


def test_damaged_resume_point_falls_back_and_ends_bitwise_equal(runs, tmp_path):
    ref = load_run(runs["finished"])
    run = _copy(runs["interrupted"], tmp_path / "run")
    point = read_status(run)["resume_point"]
    previous = checkpoint_io.load(run / "checkpoints" / "resume.prev.pt")["position"]
    assert previous["step"] < point["step"] <= STOP_AT + 1
    _flip(run / "checkpoints" / "resume.pt")
    code, _, err = run_cli(["train", "--resume", run, "--quiet"])
    line = one_line(err)
    assert code == 0 and "resume.pt: damaged" in line and f"step {previous['step']}" in line
    done = load_run(run)
    assert done.finished and list(done.steps["step"]) == list(range(len(ref.steps)))
    pd.testing.assert_frame_equal(ref.steps, done.steps)
    a, b = ref.load_checkpoint(2), done.load_checkpoint(2)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(
        torch.equal(x, y)
        for x, y in zip(a["method"]["optimizer"]["state"][0].values(), b["method"]["optimizer"]["state"][0].values())
    )


def test_no_good_resume_point_left_is_one_line_and_nothing_is_touched(runs, tmp_path):
    run = _copy(runs["interrupted"], tmp_path / "run")
    (run / "checkpoints" / "resume.prev.pt").unlink()
    _flip(run / "checkpoints" / "resume.pt")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    line = assert_cli_names(["train", "--resume", run, "--quiet"], run / "checkpoints" / "resume.pt")
    assert "no earlier resume point" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_the_rotation_keeps_the_previous_point_once_a_fallback_happened(runs, tmp_path):
    """After falling back, the damaged resume.pt is not rotated over the good previous point."""
    run = _copy(runs["interrupted"], tmp_path / "run")
    prev = (run / "checkpoints" / "resume.prev.pt").read_bytes()
    _flip(run / "checkpoints" / "resume.pt")
    from msam_lab.runs.writer import RunWriter

    writer = RunWriter(run, resume=True)
    try:
        writer.save_resume({"position": {"step": 1, "epoch": 0}, "x": torch.zeros(1)})
        assert (run / "checkpoints" / "resume.prev.pt").read_bytes() == prev
        writer.save_resume({"position": {"step": 2, "epoch": 0}, "x": torch.ones(1)})
        assert checkpoint_io.load(run / "checkpoints" / "resume.prev.pt")["position"]["step"] == 1
    finally:
        writer.interrupt()


@pytest.mark.parametrize("edit", [{"lr": -1.0}, {"epochs": "three"}, {"method": "nosuch"}, {"unknown_key": 1}])
def test_resume_validates_the_stored_config(runs, tmp_path, edit):
    run = _copy(runs["interrupted"], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **edit}))
    line = assert_cli_names(["train", "--resume", run, "--quiet"], run / "config.json")
    assert next(iter(edit)) in line


@pytest.mark.parametrize(
    "content",
    [
        b"[]",
        b"{",
        b"\x80\x04garbage",
        b'{"state": "running", "pid": "x"}',
        b'{"state": 3}',
        b'{"state": "finished", "last_step": [1]}',
        b"",
    ],
)
def test_a_damaged_status_json_is_named(runs, tmp_path, content):
    run = _copy(runs["finished"], tmp_path / "run")
    (run / "status.json").write_bytes(content)
    with pytest.raises(RunFileError) as caught:
        read_status(run)
    assert str(run / "status.json") in one_line(str(caught.value))
    code, out, err = run_cli(["status", run])
    assert code == 0 and not err and "status.json" in out


def test_run_logger_checkpoints_hold_only_what_loads_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    with msam_lab.RunLogger(tmp_path / "run", modalities=("a", "b")) as log:
        for extra in (np.zeros(2), np.float64(1.0), {"k": [object()]}):
            with pytest.raises(TypeError, match="a checkpoint holds tensors"):
                log.checkpoint(0, model, note=extra)
        log.checkpoint(0, model, note={"scale": torch.ones(2), "names": ["a", "b"], "step": 3})
        log.log_epoch(0, {"test_acc": 0.5})
    saved = tmp_path / "run" / "checkpoints" / "epoch_0000.pt"
    assert (
        saved.with_name("epoch_0000.pt.sha256").read_text().split()[0] == hashlib.sha256(saved.read_bytes()).hexdigest()
    )
    state = torch.load(saved, weights_only=True)
    assert state["note"]["names"] == ["a", "b"] and torch.equal(state["note"]["scale"], torch.ones(2))
