"""configs/paper/: one YAML per dataset and fusion, each value sourced, each one trains end to end.

The end-to-end runs use tiny fixtures in the real layouts and shrink only sizes (samples, image
size, transformer width, epochs, batch): optimizer, schedule, fusion, trunk, heads and clipping rule
stay the paper's, so a config whose pieces do not fit together fails here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import msam_lab
from msam_lab.models.multimodal import model_from_spec
from msam_lab.training import setup
from tests.datasets.test_real_datasets import _humor_split, _write_ave, _write_avmnist, _write_cremad

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
NAMES = ["avmnist-late", "avmnist-early", "cremad-late", "cremad-early", "urfunny-late", "urfunny-early", "ave-late"]


def test_the_seven_paper_configs_exist():
    assert sorted(p.stem for p in PAPER.glob("*.yaml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_value_names_its_source(name):
    """Each `key: value` line carries a comment (the value's source, or why it is ours); the rows of
    an ``encoder_options`` mapping share the comment on its key."""
    lines = (PAPER / f"{name}.yaml").read_text().splitlines()
    bare = [
        line
        for line in lines
        if re.match(r"^\s*[a-z_]+:\s*\S", line) and "#" not in line and not re.match(r"^\s+[a-z]+: \{dim:", line)
    ]
    assert not bare, f"{name}: values without a source comment: {bare}"


@pytest.mark.parametrize("name", NAMES)
def test_the_protocol_values(name):
    cfg = setup.resolve(PAPER / f"{name}.yaml", ["data.root=/nowhere"])
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == ("sgd", 0.9, 1e-4)
    assert (cfg.lr_schedule, cfg.lr_step, cfg.lr_gamma) == ("step", 70, 0.1)
    assert (cfg.batch_size, cfg.epochs) == (64, 100)
    assert cfg.fusion == ("early" if name.endswith("early") else cfg.fusion)
    if cfg.fusion == "early":
        assert cfg.fusion_trunk == "maxout" and cfg.head_hidden == [128] and cfg.grad_clip_rule == "agm"


def test_the_urfunny_transformers_are_the_papers_size():
    """dim 768, 4 heads, 8 layers per modality, counted on the meta device (nothing allocated)."""
    cfg = setup.resolve(PAPER / "urfunny-late.yaml", ["data.root=/nowhere"])
    spec = {
        "input_shapes": {"text": [50, 300], "audio": [50, 81], "vision": [50, 371]},
        "num_classes": 2,
        "fusion": cfg.fusion,
        "encoders": cfg.encoders,
        "feature_dim": cfg.feature_dim,
        "hidden_dim": cfg.hidden_dim,
        "encoder_options": cfg.encoder_options,
        "fusion_trunk": cfg.fusion_trunk,
        "head_hidden": cfg.head_hidden,
    }
    with torch.device("meta"):
        model = model_from_spec(spec)
    layers = [m for m in model.encoders["text"].modules() if isinstance(m, torch.nn.TransformerEncoderLayer)]
    assert len(layers) == 8 and layers[0].self_attn.embed_dim == 768 and layers[0].self_attn.num_heads == 4


# -- each config trains on a tiny fixture of its dataset ------------------------------------------
def _avmnist(root):
    _write_avmnist(root, n_train=24, n_test=8)
    return ["data.max_samples=24", "data.audio_size=28"]


def _cremad(root):
    rng = np.random.default_rng(0)
    emos = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    _write_cremad(
        root,
        [(f"10{i:02d}_IEO_{emos[i % 6]}_HI", emos[i % 6]) for i in range(12)],
        [(f"11{i:02d}_TAI_{emos[i % 6]}_XX", emos[i % 6]) for i in range(4)],
        rng,
    )
    return ["data.image_size=32"]


def _ave(root):
    rng = np.random.default_rng(0)
    from tests.datasets.test_real_datasets import AVE_CLASSES

    rows = {
        "train": [(AVE_CLASSES[i % len(AVE_CLASSES)], f"v{i}") for i in range(12)],
        "test": [(AVE_CLASSES[i % len(AVE_CLASSES)], f"t{i}") for i in range(4)],
    }
    _write_ave(root, rows, rng, frames=3)
    return ["data.image_size=32", "data.audio_time_pool=8"]


def _urfunny(root):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    with open(root / "humor.pkl", "wb") as f:
        pickle.dump({"train": _humor_split(rng, 16), "valid": _humor_split(rng, 6), "test": _humor_split(rng, 6)}, f)
    small = "{dim: 16, heads: 4, layers: 2}"
    return [f"encoder_options={{text: {small}, audio: {small}, vision: {small}}}", "feature_dim=16"]


FIXTURES = {"avmnist": _avmnist, "cremad": _cremad, "ave": _ave, "urfunny": _urfunny}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_paper_config_trains_end_to_end(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MSAM_LAB_DATA", str(tmp_path / "cache"))
    root = tmp_path / "data"
    extra = FIXTURES[name.split("-")[0]](root)
    overrides = [
        f"data.root={root}",
        "epochs=2",
        "batch_size=4",
        "lr_step=1",
        "device=cpu",
        "method=msam",
        "train_eval_samples=8",
        *extra,
    ]
    run = msam_lab.train(PAPER / f"{name}.yaml", out=tmp_path / "run", quiet=True, overrides=overrides)
    assert run.finished
    assert list(run.epochs["lr"]) == pytest.approx([1e-3, 1e-3, 1e-4])  # StepLR(70 -> 1 here, 0.1)
    assert "val_acc" in run.epochs.columns and run.summary["best_epoch"] in (1, 2)
    model = run.load_model(run.summary["best_epoch"])  # the selected model loads
    assert sum(p.numel() for p in model.parameters()) == run.summary["n_parameters"]
