"""Named av-digits scenarios and the synthetic speed knob: defaults unchanged, knobs that do what they say,
and the takeover scenario's switch of dominance in training (slow: 3 seeds)."""

from __future__ import annotations

import numpy as np
import pytest

import msam_lab
from msam_lab.datasets import av_digits, load_dataset, resolve_options
from msam_lab.training.setup import resolve
from msam_lab.viz.dominance import smoothed_dominant, switch_points

SMOOTH = 10  # the notebooks' window: "the smoothed dominant modality"


def _arrays(splits) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "test"):
        data = getattr(splits, split)
        out[f"{split}_labels"] = data.labels.numpy()
        out.update({f"{split}_{m}": x.numpy() for m, x in data.inputs.items()})
    return out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- av-digits scenarios


def test_default_scenario_is_the_imbalanced_data(tmp_path):
    """No scenario given = `imbalanced` = the knobs as they were before scenarios (0 noise, -12 dB), the
    same cache file and the same arrays, bit for bit."""
    assert resolve_options("av-digits")["scenario"] == "imbalanced"
    assert av_digits.SCENARIOS["imbalanced"] == {"image_noise": 0.0, "audio_snr_db": -12.0}
    default = load_dataset("av-digits", cache_dir=tmp_path)
    explicit = av_digits.load(None, image_noise=0.0, audio_snr_db=-12.0, test_fraction=0.2, seed=0)
    assert _equal(_arrays(default), _arrays(explicit))
    assert default.info["knobs"] == {"image_noise": 0.0, "audio_snr_db": -12.0, "test_fraction": 0.2, "seed": 0}
    # the file name hashes the knob values only, as before scenarios existed
    assert av_digits.cache_path(tmp_path, None, None, 0.2, 0) == av_digits.cache_path(tmp_path, 0, -12, 0.2, 0)
    assert [p.name for p in (tmp_path / "av-digits").glob("*.npz")] == [
        av_digits.cache_path(tmp_path, 0, -12, 0.2, 0).name
    ]


def test_takeover_sets_its_knobs_and_a_given_knob_wins(tmp_path):
    take = av_digits.SCENARIOS["takeover"]
    base = av_digits.SCENARIOS["imbalanced"]
    assert take["audio_snr_db"] > base["audio_snr_db"]  # audio more informative than in `imbalanced`
    assert take["image_noise"] > base["image_noise"]  # the image capped below its clean accuracy
    splits = load_dataset("av-digits", cache_dir=tmp_path, scenario="takeover")
    assert splits.info["scenario"] == "takeover"
    assert {k: splits.info["knobs"][k] for k in take} == take
    spelled = av_digits.load(None, test_fraction=0.2, seed=0, **take)
    assert _equal(_arrays(splits), _arrays(spelled))
    # a number given for a knob overrides the scenario's value
    mixed = load_dataset("av-digits", cache_dir=tmp_path, scenario="takeover", audio_snr_db=-12.0)
    assert mixed.info["knobs"]["audio_snr_db"] == -12.0
    assert mixed.info["knobs"]["image_noise"] == take["image_noise"]
    # the split and the labels do not depend on the scenario
    default = load_dataset("av-digits", cache_dir=tmp_path)
    assert np.array_equal(default.train.labels.numpy(), splits.train.labels.numpy())


def test_bad_scenario_names_the_choices():
    with pytest.raises(ValueError, match=r"one of imbalanced, takeover; did you mean 'takeover'\?"):
        av_digits.load(None, None, None, 0.2, 0, scenario="takover")
    with pytest.raises(ValueError, match="scenario"):
        av_digits.load(None, None, None, 0.2, 0, scenario=3)


def test_scenario_from_the_command_line_syntax():
    """`--set data.scenario=takeover` resolves to the takeover scenario's options."""
    cfg = resolve({"dataset": "av-digits"}, ["data.scenario=takeover"])
    assert cfg.data["scenario"] == "takeover"
    assert av_digits.knobs(**cfg.data) == {**av_digits.SCENARIOS["takeover"], "test_fraction": 0.2, "seed": 0}


# ---------------------------------------------------------------- synthetic speed


def test_synthetic_defaults_unchanged_and_speed_one_is_identity():
    default = load_dataset("synthetic", n_modalities=2, n_samples=400)
    ones = load_dataset("synthetic", n_modalities=2, n_samples=400, speed=[1.0, 1.0])
    assert _equal(_arrays(default), _arrays(ones))
    assert default.info["options"]["speed"] == [1.0, 1.0]


def test_synthetic_speed_scales_without_changing_information():
    """speed s multiplies modality m's features by s (an invertible map: the same information); the
    other modality, the labels and the split stay bit-identical."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - heavy, only this test

    base = _arrays(load_dataset("synthetic", n_modalities=2, n_samples=600))
    slow = _arrays(load_dataset("synthetic", n_modalities=2, n_samples=600, speed=[0.2, 1.0]))
    for split in ("train", "test"):
        assert np.array_equal(base[f"{split}_labels"], slow[f"{split}_labels"])
        assert np.array_equal(base[f"{split}_m1"], slow[f"{split}_m1"])
        np.testing.assert_allclose(slow[f"{split}_m0"], 0.2 * base[f"{split}_m0"], rtol=1e-6, atol=1e-7)
        assert np.abs(slow[f"{split}_m0"]).mean() < 0.25 * np.abs(base[f"{split}_m0"]).mean()

    def probe(a):  # on standardised features: invariant to a scale, so the same accuracy
        mean, std = a["train_m0"].mean(0), a["train_m0"].std(0)
        clf = LogisticRegression(max_iter=2000).fit((a["train_m0"] - mean) / std, a["train_labels"])
        return clf.score((a["test_m0"] - mean) / std, a["test_labels"])

    assert abs(probe(base) - probe(slow)) <= 1 / len(base["test_labels"])


@pytest.mark.parametrize("bad", [0.0, -1.0, [1.0], "fast", float("nan")])
def test_synthetic_speed_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="speed"):
        load_dataset("synthetic", n_modalities=2, n_samples=400, speed=bad)


def _early_dominant(speed, out) -> str:
    """The modality that dominates a joint run's first epoch (smoothed shares)."""
    data = {"n_modalities": 2, "n_samples": 1200, **({} if speed is None else {"speed": speed})}
    cfg = {"dataset": "synthetic", "data": data, "method": "joint", "epochs": 1, "checkpoint_every": 0}
    run = msam_lab.train({**cfg, "eval_every": 1, "train_eval_samples": 64}, out=out, quiet=True)
    dom = smoothed_dominant(run.steps, list(run.modalities), SMOOTH)
    return dom.value_counts().idxmax()


@pytest.mark.slow
def test_synthetic_speed_changes_who_leads_early(tmp_path):
    """m0 (informativeness 3) leads a joint run's first epoch by default; slowed to speed 0.2 it gives the
    lead to m1 (informativeness 1.5), whose information did not change."""
    assert _early_dominant(None, tmp_path / "default") == "m0"
    assert _early_dominant([0.2, 1.0], tmp_path / "slow") == "m1"


# ---------------------------------------------------------------- the takeover, in training


def switch_stats(run, smooth: int = SMOOTH) -> dict:
    """Switches of the smoothed dominant modality of a run's step table, and the last epoch's share of audio."""
    steps = run.steps
    dom = smoothed_dominant(steps, list(run.modalities), smooth)
    sw = switch_points(steps, dom)
    first_epoch_end = int(steps.loc[steps["epoch"] == steps["epoch"].min(), "step"].max())
    last = steps["epoch"] == steps["epoch"].max()
    return {
        "first_dominant": dom.iloc[0],
        "switches": len(sw),
        "first_switch": int(sw["step"].iloc[0]) if len(sw) else None,
        "last_switch": int(sw["step"].iloc[-1]) if len(sw) else None,
        "switches_after_epoch_1": int((sw["step"] > first_epoch_end).sum()),
        "last_epoch_audio": float((dom[last] == "audio").mean()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_takeover_switches_to_audio(tmp_path, seed):
    """The takeover scenario's defaults: in a joint run the smoothed dominant modality changes after the
    first epoch and is audio for most of the last epoch (the imbalanced default never gets there)."""
    cfg = {**TAKEOVER_RUN, "seed": seed}
    run = msam_lab.train(cfg, out=tmp_path / "run", quiet=True)
    stats = switch_stats(run)
    assert stats["switches_after_epoch_1"] >= 1, stats
    assert stats["last_epoch_audio"] > 0.5, stats


TAKEOVER_RUN = {
    "dataset": "av-digits",
    "data": {"scenario": "takeover"},
    "method": "joint",
    "epochs": 5,
    "checkpoint_every": 0,
}
