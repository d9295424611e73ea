"""Plug-ins: datasets, encoders and methods registered in code or by an installed package's entry point.

The in-process tests register a tiny plug-in defined here; a fixture forgets everything a test
registered, so other test files see only the built-ins. The installed-package test builds a real
package with its own pyproject.toml, pip-installs it into a folder and runs ``python -m msam_lab``
with that folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import msam_lab
from msam_lab import datasets, methods
from msam_lab.cli import commands as cli
from msam_lab.config import ConfigError
from msam_lab.datasets import MultimodalData, Splits
from msam_lab.experiments.sweep import run_sweep
from msam_lab.methods.joint import Joint
from msam_lab.models import multimodal as models
from msam_lab.plugins import REGISTRIES, unregister
from msam_lab.training.setup import resolve

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "feature_dim": 8,
    "hidden_dim": 16,
    "epochs": 1,
    "batch_size": 32,
    "checkpoint_every": 0,
    "train_eval_samples": 64,
    "flush_every": 0,
    "val_fraction": 0.0,
}


# -- the plug-in under test ----------------------------------------------------------------------

CALLS: list[dict] = []  # what the loader was called with


def load_tiny(cache_dir, n_samples=200, shift=2.0, seed=0) -> Splits:
    """Two modalities: ``left`` (6,) and ``right`` (4, 4), 3 classes, 3/4 train."""
    CALLS.append({"n_samples": n_samples, "shift": shift, "seed": seed})
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % 3
    left = rng.standard_normal((n_samples, 6)) + shift * np.eye(3, 6)[y]
    right = rng.standard_normal((n_samples, 4, 4)) + shift * np.eye(3, 16)[y].reshape(-1, 4, 4)
    order = rng.permutation(n_samples)
    cut = n_samples * 3 // 4

    def part(index):
        inputs = {
            "left": torch.tensor(left[index], dtype=torch.float32),
            "right": torch.tensor(right[index], dtype=torch.float32),
        }
        return MultimodalData(inputs, torch.from_numpy(y[index]), num_classes=3)

    return Splits(part(order[:cut]), part(order[cut:]), {"name": "tiny", "encoders": {"right": "tiny-enc"}})


TINY_OPTIONS = {"n_samples": 200, "shift": 2.0, "seed": 0}


class TinyEncoder(nn.Module):
    """Flatten, one hidden layer of ``width`` units (an encoder option), project to ``out_dim``."""

    def __init__(self, in_shape, out_dim, hidden, width=5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(int(np.prod(in_shape)), width), nn.ReLU(), nn.Linear(width, out_dim)
        )

    def forward(self, x):
        return self.net(x)


class CountingJoint(Joint):
    """Joint training that numbers its steps in an extra step-table column."""

    name = "counting"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.calls = 0

    def step(self, inputs, labels):
        self.calls += 1
        return {**super().step(inputs, labels), "plugin_step": self.calls}


@pytest.fixture(autouse=True)
def clean_registries():
    """Forget every plug-in a test registered (and bring back any built-in it replaced)."""
    before = {kind: set(reg.plugin_names()) for kind, reg in REGISTRIES.items()}
    CALLS.clear()
    yield
    for kind, reg in REGISTRIES.items():
        for name in set(reg.plugin_names()) - before[kind]:
            unregister(kind, name)


def register_tiny():
    msam_lab.register_dataset("tiny", load_tiny, TINY_OPTIONS)
    msam_lab.register_encoder("tiny-enc", TinyEncoder)
    msam_lab.register_method("counting", CountingJoint)


# -- in process ----------------------------------------------------------------------------------


def test_registered_plugin_trains_records_and_reloads(tmp_path):
    register_tiny()
    run = msam_lab.train(
        {
            **TINY,
            "dataset": "tiny",
            "method": "counting",
            "data": {"n_samples": 160},
            "encoder_options": {"right": {"width": 7}},
        },
        out=tmp_path / "run",
        quiet=True,
    )
    assert CALLS and CALLS[-1] == {"n_samples": 160, "shift": 2.0, "seed": 0}  # option over the defaults
    config = json.loads((run.path / "config.json").read_text())
    assert (config["dataset"], config["method"], config["data"]) == (
        "tiny",
        "counting",
        {**TINY_OPTIONS, "n_samples": 160},
    )
    spec = json.loads((run.path / "model.json").read_text())
    assert spec["encoders"] == {"right": "tiny-enc"}  # the loader's info names the plug-in encoder
    assert spec["encoder_options"] == {"right": {"width": 7}}
    assert spec["input_shapes"] == {"left": [6], "right": [4, 4]}
    # 120 train samples in batches of 32: 4 steps, each numbered by the plug-in method
    assert run.steps["plugin_step"].tolist() == [1, 2, 3, 4]

    model = run.load_model()
    assert isinstance(model.encoders["right"], TinyEncoder)
    assert model.encoders["right"].net[1].out_features == 7
    assert not isinstance(model.encoders["left"], TinyEncoder)  # the default mlp
    test = run.load_data().test
    with torch.no_grad():
        acc = float((model(test.inputs).argmax(1) == test.labels).float().mean())
    assert acc == pytest.approx(run.epochs["test_acc"].iloc[-1], abs=1e-6)  # the trained weights, reloaded


def test_plugin_encoder_named_in_config_and_factory_checked(tmp_path):
    register_tiny()
    run = msam_lab.train(
        {
            **TINY,
            "dataset": "synthetic",
            "method": "joint",
            "data": {"n_modalities": 2, "n_samples": 120},
            "encoders": {"m1": "tiny-enc"},
        },
        out=tmp_path / "run",
        quiet=True,
    )
    assert json.loads((run.path / "model.json").read_text())["encoders"] == {"m0": "mlp", "m1": "tiny-enc"}
    assert isinstance(run.load_model().encoders["m1"], TinyEncoder)

    # an option the factory does not take, and a factory giving the wrong feature size: one line each
    with pytest.raises(ConfigError, match=r"unknown option 'depth'; the tiny-enc encoder takes width") as err:
        msam_lab.train(
            {**TINY, "dataset": "tiny", "encoder_options": {"right": {"depth": 2}}}, out=tmp_path / "bad", quiet=True
        )
    assert "\n" not in str(err.value)
    msam_lab.register_encoder(
        "too-wide",
        lambda in_shape, out_dim, hidden: nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), out_dim + 1)),
    )
    with pytest.raises(ConfigError, match=r"encoder plug-in 'too-wide' maps .* to \(2, 9\); it must give .*\(2, 8\)"):
        msam_lab.train({**TINY, "dataset": "tiny", "encoders": {"left": "too-wide"}}, out=tmp_path / "bad2", quiet=True)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_config_errors_list_the_plugins():
    register_tiny()
    cases = {
        "dataset=nope": "unknown dataset 'nope'; choose one of: av-digits, .*, tiny",
        "method=nope": "unknown method 'nope'; choose one of: joint, .*, counting",
        "encoders.left=nope": "encoders.left must be one of mlp, .*, tiny-enc",
        "data.bogus=1": "dataset 'tiny' has no option 'bogus'; its options are: n_samples, shift, seed",
    }
    for override, message in cases.items():
        base = [] if override.startswith("dataset") else ["dataset=tiny"]
        with pytest.raises(ConfigError, match=message) as err:
            resolve(None, base + [override])
        assert "\n" not in str(err.value)
    cfg = resolve(None, ["dataset=tiny", "method=counting", "data.shift=0.5"])
    assert cfg.data == {**TINY_OPTIONS, "shift": 0.5}


def test_sweep_and_compare_with_plugins(tmp_path):
    register_tiny()
    table = run_sweep(
        ["counting", "joint"],
        seeds=[0],
        dataset="tiny",
        out=tmp_path / "sweep",
        quiet=True,
        overrides=[f"{k}={v}" for k, v in TINY.items()],
    )
    assert sorted(table["method"]) == ["counting", "joint"]
    assert (tmp_path / "sweep" / "counting" / "seed0" / "summary.json").exists()
    with pytest.raises(ConfigError, match="unknown method 'nope' in the sweep; choose from: .*counting"):
        run_sweep(["nope"], seeds=[0], dataset="tiny", out=tmp_path / "sweep2")
    assert (
        cli.main(
            ["compare", str(tmp_path / "sweep" / "counting" / "seed0"), str(tmp_path / "sweep" / "joint" / "seed0")]
        )
        == 0
    )


def test_listing_catalogue_and_unregister(capsys):
    assert "tiny" not in datasets.dataset_names()
    register_tiny()
    assert datasets.dataset_names()[-1] == "tiny" and datasets.dataset_names()[:-1] == datasets.DATASETS
    assert models.encoder_names()[-1] == "tiny-enc" and methods.method_names()[-1] == "counting"
    assert datasets.DATASETS == ("av-digits", "synthetic", "av-mnist", "crema-d", "ave", "ur-funny")

    assert cli.main(["data", "info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: a plug-in dataset (the plug-in loader tests.test_plugins.load_tiny)")
    assert "options (data.NAME): n_samples=200, shift=2.0, seed=0" in out
    assert cli.main(["data", "check", "tiny", "--root", "."]) == 2
    err = capsys.readouterr().err
    assert "tiny is a plug-in dataset" in err and err.count("\n") == 1
    assert cli.main(["data", "info"]) == 0
    assert "tiny: a plug-in dataset" in capsys.readouterr().out

    from msam_lab.widgets import lab_methods

    assert lab_methods() == ("msam", "joint", "sam", "counting")

    unregister("dataset", "tiny")
    assert "tiny" not in datasets.dataset_names()
    with pytest.raises(ValueError, match="unknown dataset 'tiny'"):
        datasets.load_dataset("tiny")


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_registrations_are_one_line_errors():
    for bad in ("", "Tiny", "my data", "-x", 3, None):
        assert "name must be a lower-case string" in _one_line_error(msam_lab.register_dataset, bad, load_tiny, {})
    assert "the loader must be callable" in _one_line_error(msam_lab.register_dataset, "tiny", "load_tiny", {})
    assert "options must be a dict" in _one_line_error(msam_lab.register_dataset, "tiny", load_tiny, [1, 2])
    assert "the factory must be callable" in _one_line_error(msam_lab.register_encoder, "enc", nn.Linear(2, 2).weight)
    assert "subclass of msam_lab.methods.Method" in _one_line_error(msam_lab.register_method, "m", lambda: None)
    assert "subclass of msam_lab.methods.Method" in _one_line_error(msam_lab.register_method, "m", dict)
    assert "subclass of msam_lab.methods.Method" in _one_line_error(msam_lab.register_method, "m", nn.Module)

    # taken names: a built-in, or another object, need replace=True; the same object again is a no-op
    assert "replace=True" in _one_line_error(msam_lab.register_dataset, "synthetic", load_tiny, {})
    assert "replace=True" in _one_line_error(msam_lab.register_encoder, "mlp", TinyEncoder)
    assert "already registered to msam_lab.methods.joint.Joint" in _one_line_error(
        msam_lab.register_method, "joint", CountingJoint
    )
    msam_lab.register_method("joint", Joint)  # the built-in itself: a no-op
    register_tiny()
    register_tiny()  # an entry point loaded twice: harmless
    message = _one_line_error(msam_lab.register_dataset, "tiny", load_tiny, {"n_samples": 10})
    assert "dataset 'tiny' is already registered to the plug-in loader tests.test_plugins.load_tiny" in message
    assert "tests.test_plugins.CountingJoint" in _one_line_error(msam_lab.register_method, "counting", Joint)

    # replace=True swaps the entry; unregistering a replacement brings the built-in back
    msam_lab.register_method("counting", Joint, replace=True)
    assert methods.method_class("counting") is Joint
    msam_lab.register_dataset("synthetic", load_tiny, TINY_OPTIONS, replace=True)
    assert datasets.dataset_options("synthetic") == TINY_OPTIONS
    assert datasets.dataset_names().count("synthetic") == 1
    unregister("dataset", "synthetic")
    assert "n_modalities" in datasets.dataset_options("synthetic")

    # a loader that returns something else than Splits says so when loaded
    msam_lab.register_dataset("not-splits", lambda cache_dir: {"train": None})
    assert "its loader returned dict, not msam_lab.datasets.Splits" in _one_line_error(
        datasets.load_dataset, "not-splits"
    )


# -- an installed package --------------------------------------------------------------------------

DEMO = '''
"""A demo msam_lab plug-in: a two-modality blob dataset and a joint method with a halved lr."""
import numpy as np
import torch


def load_blobs(cache_dir, n_samples=160, seed=0):
    from msam_lab.datasets import MultimodalData, Splits
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % 2
    a = rng.standard_normal((n_samples, 3)) + 2.0 * y[:, None]
    b = rng.standard_normal((n_samples, 5)) + 0.5 * y[:, None]
    def part(i):
        return MultimodalData({"a": torch.tensor(a[i], dtype=torch.float32),
                               "b": torch.tensor(b[i], dtype=torch.float32)}, torch.from_numpy(y[i]), num_classes=2)
    return Splits(part(np.arange(0, n_samples, 2)), part(np.arange(1, n_samples, 2)), {"name": "demo-blobs"})


def register():
    import msam_lab
    from msam_lab.methods.joint import Joint

    class HalfLR(Joint):
        def set_lr_factor(self, factor):
            return super().set_lr_factor(factor / 2)

    msam_lab.register_dataset("demo-blobs", load_blobs, {"n_samples": 160, "seed": 0})
    msam_lab.register_method("demo-half", HalfLR)
'''

DEMO_ENCODERS = '''
"""Importing this module is the registration (an entry point naming a module, not a function)."""
from torch import nn

import msam_lab


def make(in_shape, out_dim, hidden):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0], out_dim), nn.Tanh())


msam_lab.register_encoder("demo-tanh", make)
'''


def _package(root: Path, name: str, files: dict[str, str], entry_points: dict[str, str]) -> Path:
    pkg = root / name
    (pkg / name).mkdir(parents=True)
    for filename, text in files.items():
        (pkg / name / filename).write_text(textwrap.dedent(text))
    eps = "\n".join(f'{k} = "{v}"' for k, v in entry_points.items())
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(f'''\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name.replace("_", "-")}"
        version = "0.1"

        [tool.setuptools]
        packages = ["{name}"]

        [project.entry-points."msam_lab.plugins"]
        ''')
        + eps
        + "\n"
    )
    return pkg


def _install(packages: dict[Path, dict[str, str]], site: Path) -> None:
    """pip-install the package folders (-> their entry points) into ``site``, offline."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            *map(str, packages),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode == 0:
        return
    # pip could not build offline here (no setuptools?): write what it would have, the package and its
    # <name>.dist-info with METADATA and entry_points.txt, which is all importlib.metadata reads.
    for pkg, entry_points in packages.items():
        name = pkg.name
        shutil.copytree(pkg / name, site / name, dirs_exist_ok=True)
        info = site / f"{name}-0.1.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[msam_lab.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        )


@pytest.mark.slow
def test_installed_plugin_package_works_from_the_cli(tmp_path):
    site = tmp_path / "site"
    demo_eps = {"demo": "msam_demo_plugin:register", "demo_encoders": "msam_demo_plugin.encoders"}
    broken_eps = {"broken": "msam_broken_plugin:register"}
    demo = _package(tmp_path / "src", "msam_demo_plugin", {"__init__.py": DEMO, "encoders.py": DEMO_ENCODERS}, demo_eps)
    broken = _package(
        tmp_path / "src",
        "msam_broken_plugin",
        {"__init__.py": "def register():\n    raise RuntimeError('boom: no licence file')\n"},
        broken_eps,
    )
    _install({demo: demo_eps, broken: broken_eps}, site)
    assert any(site.glob("msam_demo_plugin*.dist-info/entry_points.txt"))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "MSAM_LAB_DATA": str(tmp_path / "data")}
    out = tmp_path / "run"
    sets = [
        "dataset=demo-blobs",
        "method=demo-half",
        "encoders.b=demo-tanh",
        "lr=0.1",
        *[f"{k}={v}" for k, v in TINY.items()],
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "msam_lab",
            "train",
            "--quiet",
            "--out",
            str(out),
            *[a for s in sets for a in ("--set", s)],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert f"run written to {out}" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["method"], config["data"]) == (
        "demo-blobs",
        "demo-half",
        {"n_samples": 160, "seed": 0},
    )
    assert json.loads((out / "model.json").read_text())["encoders"] == {"b": "demo-tanh"}
    assert pd.read_csv(out / "epochs.csv")["lr"].iloc[-1] == pytest.approx(0.05)  # the plug-in halved it
    # the broken plug-in only warned, once, naming its entry point and error
    assert done.stderr.count("msam_lab plug-in 'broken'") == 1
    assert "RuntimeError: boom: no licence file" in done.stderr

    # the installed names are choices in errors and have a catalogue line (one process for both)
    script = (
        "from msam_lab import cli; print('rc', cli.main(['train', '--set', 'dataset=nope']), flush=True); "
        "print('rc', cli.main(['data', 'info', 'demo-blobs']))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "rc 2" and lines[1].startswith("demo-blobs: a plug-in dataset") and lines[-1] == "rc 0"
    assert "unknown dataset 'nope'; choose one of: av-digits" in done.stderr and "demo-blobs" in done.stderr
    assert not (tmp_path / "runs").exists()
