"""Config by owner (issue 19): flat method keys route to the method's options; runs.migrate reads old formats.

The old formats are checked against files the old code wrote (tests/fixtures/old_runs, commit 48a829b),
and the config hash against values the code before the restructure gave (e0f2f77^).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from msam_lab.config import FORMAT_KEY, FORMAT_VERSION, ConfigError, field_names, parse
from msam_lab.datasets import load_dataset
from msam_lab.methods import METHODS, build_method
from msam_lab.methods.options import options_class
from msam_lab.models.multimodal import build_model, model_from_spec
from msam_lab.runs import migrate
from msam_lab.training.setup import config_hash, resolve

OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "old_runs" / "old_run"
TINY = {"dataset": "synthetic", "data": {"n_samples": 80, "n_modalities": 2}, "feature_dim": 4, "hidden_dim": 8}


def _old_config() -> dict:
    return json.loads((OLD_RUN / "config.json").read_text())


# -- flat keys, every route --------------------------------------------------------------
def test_flat_method_keys_reach_the_method_by_every_route(tmp_path):
    want = {"agm_alpha": 2.0, "agm_start_epoch": 0, "agm_end_epoch": 20, "agm_momentum": 0.0, "agm_clip": 7.0}
    path = tmp_path / "agm.yaml"
    path.write_text("dataset: synthetic\nmethod: agm\nagm_alpha: 2\n")
    routes = [
        resolve({"dataset": "synthetic", "method": "agm", "agm_alpha": 2}),
        resolve(None, ["dataset=synthetic", "method=agm", "agm_alpha=2"]),
        resolve(path),
        resolve({"dataset": "synthetic", "method": "agm", "agm_alpha": "2"}),
    ]
    for cfg in routes:
        assert cfg.method_options == want
        assert type(cfg.method_options["agm_alpha"]) is float
        flat = cfg.to_dict()
        assert flat["agm_alpha"] == 2.0 and "method_options" not in flat and flat[FORMAT_KEY] == FORMAT_VERSION
    cfg = resolve({**TINY, "method": "agm", "agm_alpha": 2})  # the method reads its own dataclass
    splits = load_dataset("synthetic", **cfg.data)
    net = build_model(splits.train.sample_shapes, splits.train.num_classes, cfg.fusion, {}, 4, 8)
    method = build_method(net, cfg)
    assert method.options.agm_alpha == 2.0 and method.options.agm_clip == 7.0


def test_every_builtin_option_keeps_its_flat_name_and_format_1_default():
    """The options dataclasses hold exactly format 1's baseline fields, with the same defaults."""
    for name, cls in METHODS.items():
        options = options_class(cls)
        assert (options.defaults() if options else {}) == migrate.FORMAT_1_OPTIONS.get(name, {}), name
    assert not set(field_names()) & {k for o in migrate.FORMAT_1_OPTIONS.values() for k in o}


def test_a_typo_is_one_line_naming_the_key_and_the_known_keys():
    for config, method in (({"method": "agm", "agm_alpah": 2}, "agm"), ({"method": "msam", "agm_alpah": 2}, "msam")):
        parse(config)  # config.py cannot know the methods: accepted there
        with pytest.raises(ConfigError) as info:
            resolve(config)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and "'agm_alpah'" in message and "lr" in message, message
        assert ("agm_alpha" in message) == (method == "agm")
    with pytest.raises(ConfigError, match="unknown config key 'lr '|unknown config key"):
        parse(None, ["bad key=1"])
    with pytest.raises(ConfigError, match="agm_alpha' must be float"):
        resolve({"method": "agm", "agm_alpha": "fast"})
    with pytest.raises(ConfigError, match="masam_mode must be one of paper, code"):
        resolve({"method": "masam", "masam_mode": "both"})


def test_another_methods_options_are_dropped_as_they_were_ignored():
    """A base config may set every rival's options (a sweep over methods): each run keeps its own."""
    base = {"dataset": "synthetic", "ogm_alpha": 0.8, "agm_alpha": 2, "modality": "m0"}
    assert resolve({**base, "method": "msam"}).method_options == {}
    ogm = resolve({**base, "method": "ogm_ge"})
    assert ogm.method_options["ogm_alpha"] == 0.8 and "agm_alpha" not in ogm.to_dict()


def test_to_dict_round_trips_for_every_method():
    for name in METHODS:
        extra = {"modality": "m0"} if name == "unimodal" else {}
        cfg = resolve({"dataset": "synthetic", "method": name, **extra})
        again = resolve(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and again.to_dict() == cfg.to_dict()
        assert migrate.stored_config(cfg.to_dict()) == cfg


# -- format 1 (config.json written before issue 19) ---------------------------------------
def test_the_old_runs_config_reads_and_writes_back_unchanged():
    """old -> today -> format 1 again is the identity on a config.json the old code wrote."""
    old = _old_config()
    assert FORMAT_KEY not in old and migrate.stored_version(old) == 1
    today = migrate.config_values(old)
    assert today[FORMAT_KEY] == FORMAT_VERSION and "agm_alpha" not in today and "modality" not in today
    cfg = resolve(today)  # what resume does
    assert cfg.method == "msam" and cfg.method_options == {} and cfg.msam_variant == "params"
    assert "max_skipped_fraction" not in old  # written before the field: it ran without a limit
    back = migrate.as_format_1(cfg.to_dict())
    # every value the old file held comes back as it was (fields and dataset options added since are extra)
    assert {k: back[k] for k in old if k != "data"} == {k: v for k, v in old.items() if k != "data"}
    assert {k: back["data"][k] for k in old["data"]} == old["data"]
    assert back["max_skipped_fraction"] == 1.0


def test_a_format_1_baseline_run_keeps_its_own_options_only():
    old = {**_old_config(), "method": "agm", "agm_alpha": 2.5, "ogm_alpha": 0.9}
    cfg = migrate.stored_config(old)
    assert cfg.method_options == {k: old[k] for k in migrate.FORMAT_1_OPTIONS["agm"]}
    back = migrate.as_format_1(resolve(migrate.config_values(old)).to_dict())
    expected = {**old, "ogm_alpha": 0.1, "max_skipped_fraction": 1.0}  # another method's option: its default
    assert {k: back[k] for k in expected if k != "data"} == {k: v for k, v in expected.items() if k != "data"}


def test_fields_added_during_format_1_read_as_those_runs_ran():
    old = _old_config()
    for key in ("val_fraction", "max_skipped_fraction", "cggm_guard"):
        old.pop(key, None)
    assert migrate.stored_config(old).val_fraction == 0.0
    assert migrate.stored_config(old).max_skipped_fraction == 1.0
    assert migrate.stored_config({**old, "method": "cggm"}).method_options["cggm_guard"] is False
    # a format-2 file always holds them: nothing is filled in there
    new = resolve({"dataset": "synthetic", "val_fraction": 0.2}).to_dict()
    assert migrate.config_values(new) == new


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, True, "2", None])
def test_an_unknown_format_is_a_config_error(version):
    with pytest.raises(ConfigError, match="format_version"):
        migrate.config_values({**_old_config(), FORMAT_KEY: version})
    with pytest.raises(ConfigError, match="format_version"):
        parse({FORMAT_KEY: version})


def test_config_hash_sees_every_choice_and_no_default():
    """A run folder's name changes with any setting, and not when a setting is written at its default or when
    a field or dataset option is added later at its default (hashing the non-default values only)."""
    base = {"dataset": "synthetic", "method": "agm"}
    h = config_hash(base)
    assert config_hash({**base, "agm_alpha": 1.0}) == h  # AGMOptions' default, written out
    assert config_hash({**base, "lr": 0.05, "loggers": []}) == h  # shared defaults, written out
    assert config_hash({**base, "data": {"n_modalities": 3}}) == h  # synthetic's default
    assert (
        len(
            {
                h,
                config_hash({**base, "agm_alpha": 2}),
                config_hash({**base, "lr": 0.1}),
                config_hash({**base, "data": {"n_modalities": 2}}),
                config_hash({**base, "method": "joint"}),
                config_hash({**base, "seed": 1}),
            }
        )
        == 6
    )
    # a field added after this hash was defined, at its default, leaves it alone
    cfg = resolve(base)
    later = cfg.to_dict()
    later.pop("coalition_features", None)  # as if coalition_features did not exist yet
    assert config_hash(later) == h


# -- model.json and sweep tables ------------------------------------------------------------
def test_an_old_model_spec_reads_as_the_model_it_was():
    spec = json.loads((OLD_RUN / "model.json").read_text())
    assert migrate.model_spec(spec) == spec  # written with the three keys: nothing to do
    old = {k: v for k, v in spec.items() if k not in migrate.NEW_SPEC_KEYS}
    for fusion in ("late_sum", "early"):
        before = {**old, "fusion": fusion}
        after = migrate.model_spec(before)
        assert set(migrate.NEW_SPEC_KEYS) <= set(after) and before == {**old, "fusion": fusion}
        assert after["encoder_options"] == {} and after["fusion_trunk"] == "mlp" and after["head_hidden"] == []
        # early fusion ignored `encoders` then: every modality got the linear stem
        assert after["encoders"] == ({} if fusion == "early" else old["encoders"])
        model_from_spec(after)  # builds (tests/models/test_models_paper.py compares the weights)


def test_sweep_tables_from_before_model_selection_are_labelled():
    runs = pd.DataFrame({"method": ["joint"], "acc": [0.9], "acc_m0": [0.5], "tau": [0.1], "seed": [0]})
    up = migrate.sweep_runs(runs)
    assert list(up.columns) == ["method", "acc_last", "acc_m0_last", "tau_last", "seed"]
    assert migrate.sweep_runs(up) is up
    table = pd.DataFrame({"method": ["joint"], "acc_mean": [0.9], "acc_std": [0.0], "n_seeds": [1]})
    assert list(migrate.sweep_summary(table).columns) == ["method", "acc_last_mean", "acc_last_std", "n_seeds"]
