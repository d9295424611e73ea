"""Numbers as people write them, the YAML size and alias limits, the nan_policy=skip limit, and dataset
options out of range (issue 18, items 3 and 8).

Every route a number takes into a Config -- a dict, ``--set``, a YAML file, a CLI flag -- must read a
text as Python's ``float()`` / ``int()`` reads it; bad values stay one-line errors.
"""

from __future__ import annotations

import contextlib
import io
import math
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import msam_lab
from msam_lab import yaml_text
from msam_lab.cli import commands as cli
from msam_lab.config import ConfigError, apply_overrides
from msam_lab.datasets import MultimodalData, load_dataset, resolve_options
from msam_lab.runs import migrate
from msam_lab.runs.reader import load_run
from msam_lab.training.guards import MIN_BATCHES, SkippedBatchesWarning, StepGuard, TooManySkippedError
from msam_lab.training.loop import TrainingError
from msam_lab.training.setup import resolve
from tests.datasets.test_real_datasets import _write_ave, _write_cremad

ROOT = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- renderings


def _underscores(text: str, cuts: list[int]) -> str:
    """``text`` with an underscore after the digit at each position in ``cuts`` that a digit follows
    (Python's rule: single underscores between digits)."""
    out = []
    for i, ch in enumerate(text):
        out.append(ch)
        if i in cuts and ch.isdigit() and i + 1 < len(text) and text[i + 1].isdigit():
            out.append("_")
    return "".join(out)


@st.composite
def written_floats(draw, low: float, high: float):
    """``(value, text)``: a float and one way a person writes it."""
    x = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
    form = draw(st.sampled_from(["repr", "%e", "%E", "%.17g", "%.3e", "upper", "lead-dot", "trail-dot", "int-exp"]))
    if form == "repr":
        text = repr(x)
    elif form in ("%e", "%E", "%.17g", "%.3e"):
        text = form % x
    elif form == "upper":
        text = repr(x).upper()
    elif form == "lead-dot":  # .5, -.25
        text = "%.12f" % x
        text = text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text
    elif form == "trail-dot":  # 5., -3.
        text = f"{int(x)}."
    else:  # 25e-1, 3E2: an exponent without a point
        mantissa = draw(st.integers(0, 10**6))
        exponent = draw(st.integers(-12, 3))
        text = f"{mantissa}{draw(st.sampled_from('eE'))}{exponent:+d}"[:]
        if not low <= float(text) <= high:
            text = f"{int(x)}"
    if not text.startswith("-") and draw(st.booleans()):
        text = "+" + text
    text = _underscores(text, draw(st.lists(st.integers(0, 30), max_size=3)))
    return float(text), text


@st.composite
def written_ints(draw, low: int, high: int):
    n = draw(st.integers(low, high))
    text = str(n)
    if draw(st.booleans()):
        text = "0" * draw(st.integers(1, 2)) + text  # 007: decimal, as int() reads it
    if draw(st.booleans()):
        text = "+" + text
    text = _underscores(text, draw(st.lists(st.integers(0, 12), max_size=3)))
    return int(text), text


def _via_yaml_file(line: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(line + "\n")
        return resolve(path)


def _via_cli_parse(argv: list[str]):
    """What ``msam-lab train`` resolves for ``argv``: its parser, its override list, resolve."""
    args = cli.build_parser().parse_args(["train", *argv])
    return resolve(args.config, cli._overrides(args))


def run_cli(argv: list[str]) -> tuple[int, str, list[str]]:
    """``(exit code, stderr, warnings)`` of ``cli.main(argv)`` in process."""
    err = io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("always")
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return code, err.getvalue(), [f"{w.category.__name__}: {w.message}" for w in caught]


def _one_line(err: str) -> str:
    assert err.endswith("\n") and len(err.splitlines()) == 1 and "Traceback" not in err, repr(err)
    return err.strip()


# --------------------------------------------------------------------------- numbers: every route


@FAST
@given(pair=written_floats(0.0, 1e300))
@example(pair=(1e-5, "1e-5"))
@example(pair=(1e-5, "1E-5"))
@example(pair=(0.5, ".5"))
@example(pair=(5.0, "5."))
@example(pair=(1000.0, "1_000"))
@example(pair=(1.5, "+1.5"))
@example(pair=(1e-05, "0.00001"))
@example(pair=(1500.0, "1.5e3"))
def test_a_float_field_reads_every_written_form_as_float_does(pair):
    value, text = pair
    assert float(text) == value
    routes = {
        "dict": resolve({"lr": text}).lr,
        "--set": resolve(None, [f"lr={text}"]).lr,
        # unvalidated: the parsed value itself, an int where the text is one
        "apply_overrides": float(apply_overrides(msam_lab.Config(), [f"lr={text}"]).lr),
        "yaml": _via_yaml_file(f"lr: {text}").lr,
        "quoted yaml": _via_yaml_file(f"lr: '{text}'").lr,
        "--lr": _via_cli_parse([f"--lr={text}"]).lr,
    }
    for route, got in routes.items():
        assert isinstance(got, float) and got == value, (route, text, got)
    # the whole command line up to validation: refused for the bad option only, not for the lr
    code, err, caught = run_cli(["train", f"--lr={text}", "--set", "data.no_such_option=1", "--quiet"])
    assert code == 2 and "no_such_option" in _one_line(err) and "'lr'" not in err and not caught


@FAST
@given(pair=written_floats(-100.0, 100.0))
@example(pair=(-2000.0 / 100, "-2e1"))
@example(pair=(-0.5, "-.5"))
def test_a_float_dataset_option_reads_signed_forms_as_float_does(pair):
    value, text = pair
    routes = {
        "dict": resolve({"data": {"audio_snr_db": text}}).data["audio_snr_db"],
        "--set": resolve(None, [f"data.audio_snr_db={text}"]).data["audio_snr_db"],
        "yaml": _via_yaml_file(f"data: {{audio_snr_db: {text}}}").data["audio_snr_db"],
        "resolve_options": resolve_options("av-digits", {"audio_snr_db": text})["audio_snr_db"],
    }
    for route, got in routes.items():
        assert float(got) == value and not isinstance(got, (str, bool)), (route, text, got)


@FAST
@given(pair=written_ints(1, 10**9))
@example(pair=(1000, "1_000"))
@example(pair=(10, "010"))  # YAML 1.1 read octal 8
@example(pair=(9, "09"))  # YAML 1.1 read the string '09'
def test_an_int_field_reads_written_ints_as_int_does(pair):
    value, text = pair
    assert int(text) == value
    routes = {
        "dict": resolve({"epochs": text}).epochs,
        "--set": resolve(None, [f"epochs={text}"]).epochs,
        "yaml": _via_yaml_file(f"epochs: {text}").epochs,
        "quoted yaml": _via_yaml_file(f"epochs: '{text}'").epochs,
        "--epochs": _via_cli_parse([f"--epochs={text}"]).epochs,
        "--seed": _via_cli_parse([f"--seed={text}"]).seed if value < 2**32 else value,
    }
    for route, got in routes.items():
        assert type(got) is int and got == value, (route, text, got)


@pytest.mark.parametrize("text", ["1e3", "1.0", "5.", "2.5"])
def test_an_int_field_takes_only_integers_written_as_such(text):
    for attempt in (
        lambda: resolve({"epochs": text}),
        lambda: resolve(None, [f"epochs={text}"]),
        lambda: _via_yaml_file(f"epochs: {text}"),
    ):
        with pytest.raises(ConfigError, match="'epochs' must be int"):
            attempt()


@pytest.mark.parametrize("text", ["1e400", "-1e400", "nan", ".nan", "inf", ".inf", "true", "yes", "abc", ""])
def test_non_numbers_and_overflow_stay_refused_in_one_line(text):
    for attempt in (
        lambda: resolve({"lr": text}),
        lambda: resolve(None, [f"lr={text}"]),
        lambda: _via_yaml_file(f"lr: {text}"),
    ):
        with pytest.raises(ConfigError, match="'lr' must be") as info:
            attempt()
        assert len(str(info.value).splitlines()) == 1
    code, err, _ = run_cli(["train", f"--lr={text}", "--quiet"])
    assert code == 2 and "--lr" in _one_line(err)


def test_strings_and_booleans_stay_what_they_are(tmp_path):
    cfg = _via_yaml_file(
        "dataset: synthetic\nmethod: msam\nmsam_variant: unimodal\nmsam_dominant: fixed:m0\n"
        "adaptive: true\n"
        "data: {n_modalities: 2}"
    )
    assert (cfg.dataset, cfg.msam_dominant, cfg.adaptive) == ("synthetic", "fixed:m0", True)
    assert (
        resolve(
            None,
            [
                "dataset=synthetic",
                "method=msam",
                "msam_variant=unimodal",
                "msam_dominant=fixed:m1",
                "data.n_modalities=2",
            ],
        ).msam_dominant
        == "fixed:m1"
    )
    for bad in ({"adaptive": "true"}, {"adaptive": 1}, {"lr": True}, {"epochs": False}):
        with pytest.raises(ConfigError):
            resolve(bad)
    with pytest.raises(ConfigError, match="unknown dataset '1e5'"):
        resolve({"dataset": "1e5"})


def test_the_global_safe_loader_still_reads_yaml_1_1():
    """The config loader is a subclass: other users of yaml.safe_load see no change."""
    assert yaml.safe_load("1e-5") == "1e-5" and yaml.safe_load("010") == 8
    assert yaml.load("1e-5", Loader=yaml_text.NumberLoader) == 1e-5


@FAST
@given(text=st.text(alphabet="0123456789_.+-eE:xXbBaAfFinINnN ", max_size=10) | st.text(max_size=8))
def test_read_number_agrees_with_the_yaml_loader_on_any_text(text):
    """A dict's string and the same text written plainly in a YAML file are one number, or neither is."""
    number = yaml_text.read_number(text)
    try:
        loaded = yaml.load(text, Loader=yaml_text.NumberLoader)
    except (yaml.YAMLError, ValueError):
        loaded = None
    if number is not None:
        assert type(loaded) is type(number) and (loaded == number or math.isnan(number)), (text, loaded)
    elif text.strip() == text and all(c.isalnum() or c in "_.+-:" for c in text):
        # a plain one-word scalar: YAML reads a number only where read_number does
        assert not isinstance(loaded, (int, float)) or isinstance(loaded, bool), (text, loaded)


# --------------------------------------------------------------------------- YAML limits


def _bomb_document() -> str:
    """The billion laughs under a real field: 9 levels of 9 references, about 600 bytes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "data:\n" + "".join(f"  {line}\n" for line in lines)


def test_an_alias_bomb_config_file_is_refused_fast_in_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb_document())
    assert len(path.read_bytes()) < 700
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as info:
            resolve(path)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message and f"{yaml_text.MAX_VALUES:,}" in message and len(message.splitlines()) == 1
    assert elapsed < 1.0 and peak < 8 * 2**20, (elapsed, peak)
    code, err, _ = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and str(path) in _one_line(err) and not (tmp_path / "r").exists()


def test_an_alias_bomb_in_set_and_in_a_python_dict_is_refused_fast():
    started = time.perf_counter()
    shared = ["x"] * 9
    for _ in range(8):  # a Python value built the same way: 9 ** 9 leaves
        shared = [shared] * 9
    for attempt in (
        lambda: resolve({"data": {"image_noise": shared}}),
        lambda: resolve({"recon_order": shared}),
        lambda: apply_overrides(msam_lab.Config(), ["data.x=" + _flow_bomb()]),
    ):
        with pytest.raises(ConfigError, match="100,000 values") as info:
            attempt()
        assert len(str(info.value).splitlines()) == 1
    assert time.perf_counter() - started < 2.0


def _flow_bomb() -> str:
    """A one-line YAML alias bomb for --set: 9 levels of 9 references to the level below."""
    parts = ["&b0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        parts.append(f"&b{i} [{', '.join([f'*b{i - 1}'] * 9)}]")
    return "[" + ", ".join(parts) + "]"


def test_set_alias_bomb_through_the_cli_is_one_line(tmp_path):
    code, err, _ = run_cli(["train", f"--set=data.x={_flow_bomb()}", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "--set value of data.x" in _one_line(err) and "100,000" in err


def test_a_config_file_over_the_size_limit_is_refused_and_one_under_it_loads(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"epochs: 3\n" + b"#" * yaml_text.MAX_BYTES + b"\n")
    with pytest.raises(ConfigError) as info:
        resolve(big)
    assert str(big) in str(info.value) and "1 MiB" in str(info.value)
    ok = tmp_path / "ok.yaml"
    ok.write_bytes(b"epochs: 3\n#" + b"x" * (yaml_text.MAX_BYTES - 20) + b"\n")
    assert len(ok.read_bytes()) <= yaml_text.MAX_BYTES and resolve(ok).epochs == 3
    with pytest.raises(ConfigError, match="1 MiB"):
        resolve(None, ["modality=" + "x" * (yaml_text.MAX_BYTES + 1)])


def _brute_size(value) -> int:
    """Values as json.dumps writes them, counted the slow way (every reference expanded)."""
    if isinstance(value, dict):
        return 1 + sum(1 + _brute_size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_brute_size(v) for v in value)
    return 1


@FAST
@given(data=st.data())
def test_expanded_size_equals_the_brute_force_count_on_shared_structures(data):
    pool = [data.draw(st.sampled_from([1, "x", None, 2.5]))]
    for _ in range(data.draw(st.integers(1, 7))):  # each new container reuses earlier ones
        picks = data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=4))
        if data.draw(st.booleans()):
            pool.append([pool[i] for i in picks])
        else:
            pool.append({f"k{j}": pool[i] for j, i in enumerate(picks)})
    root = pool[-1]
    expected = _brute_size(root)
    assert yaml_text.expanded_size(root, limit=10**9) == expected
    if expected > 3:
        assert yaml_text.expanded_size(root, limit=expected - 1) > expected - 1
    text = yaml.safe_dump(root)  # and through YAML nodes (aliases for shared parts)
    assert (
        yaml_text.expanded_size(yaml_text.NumberLoader(text).get_single_node(), 10**9, yaml_text._node_children)
        == expected
    )


def test_a_self_referencing_value_still_names_plain_values():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ConfigError, match="plain values"):
        resolve({"recon_order": loop})
    with pytest.raises(ConfigError, match="plain values"):
        resolve(None, ["recon_order=&a [*a]"])


# --------------------------------------------------------------------------- nan_policy=skip


class _ScriptedMethod:
    """A method whose loss is NaN at the steps listed (the model is a single parameter)."""

    def __init__(self, bad_steps, limit=None):
        self.bad, self.n = set(bad_steps), 0
        self.config = msam_lab.Config() if limit is None else msam_lab.Config(max_skipped_fraction=limit)

    def train_step(self, inputs, labels):
        self.n += 1
        return {"loss": math.nan if self.n - 1 in self.bad else 0.5}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _guard(bad_steps, limit=None, **kw):
    return StepGuard("skip", torch.nn.Linear(1, 1), _ScriptedMethod(bad_steps, limit), **kw)


def test_the_guard_stops_above_the_limit_only_after_min_batches():
    guard = _guard(range(100))  # every batch bad
    for _ in range(MIN_BATCHES - 1):
        assert guard.step(None, None)["skipped"] == 1  # the first bad batches do not stop a run
    with pytest.raises(TooManySkippedError) as info:
        guard.step(None, None)
    err = info.value
    assert (err.skipped, err.seen, err.limit) == (MIN_BATCHES, MIN_BATCHES, 0.5)
    assert "skipped 10 of 10 batches (100%)" in err.headline() and "max_skipped_fraction" in err.fix


def test_the_limit_is_strict_and_the_warning_comes_once():
    # 5 of 10 skipped is exactly 0.5: no stop; the 6th of 11 is above
    guard = _guard({0, 2, 4, 6, 8, 10}, limit=0.5)
    with pytest.warns(SkippedBatchesWarning) as caught:
        for _ in range(10):
            guard.step(None, None)
        assert guard.skipped == 5
        with pytest.raises(TooManySkippedError):
            guard.step(None, None)
    assert len(caught) == 1 and "skipped 5 of 10 batches" in str(caught[0].message)
    # the warning as Python prints it: one line
    assert (
        len(
            warnings.formatwarning(
                caught[0].message, caught[0].category, caught[0].filename, caught[0].lineno
            ).splitlines()
        )
        == 1
    )


def test_below_a_quarter_of_the_limit_there_is_no_warning():
    guard = _guard({3}, limit=0.5)  # 1 of 10 = 0.1 < 0.125
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(10):
            guard.step(None, None)
    assert guard.skipped == 1 and not guard.warned


def test_the_limit_comes_from_the_method_config_and_start_from_counts_on():
    assert _guard([], limit=0.2).max_skipped_fraction == 0.2
    assert _guard([], limit=0.2, max_skipped_fraction=0.9).max_skipped_fraction == 0.9
    guard = _guard(range(5))
    guard.start_from(seen=20, skipped=10)  # a resumed run: 10 of 20 skipped before
    with pytest.raises(TooManySkippedError) as info:
        guard.step(None, None)
    assert (info.value.skipped, info.value.seen) == (11, 21)


def test_max_skipped_fraction_is_validated_and_old_runs_had_no_limit():
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="max_skipped_fraction must be in"):
            resolve({"max_skipped_fraction": bad})
    assert resolve({}).max_skipped_fraction == 0.5
    assert migrate.STORED_DEFAULTS["max_skipped_fraction"] == 1.0
    assert migrate.stored_config({}).max_skipped_fraction == 1.0  # a format-1 config.json without the field


SYN = {
    "dataset": "synthetic",
    "data": {"n_samples": 300, "n_modalities": 2},
    "batch_size": 32,
    "epochs": 3,
    "train_eval_samples": 100,
    "method": "joint",
    "nan_policy": "skip",
}  # 7 steps per epoch: 21 batches


def _poison(monkeypatch, bad: set[int]):
    """Training batches number ``bad`` (in the order drawn) carry an inf input."""
    real = MultimodalData.batches
    count = {"n": 0}

    def batches(self, batch_size, shuffle=False, **kw):
        for inputs, labels in real(self, batch_size, shuffle=shuffle, **kw):
            if shuffle:
                if count["n"] in bad:
                    inputs = {m: x.clone().fill_(float("inf")) for m, x in inputs.items()}
                count["n"] += 1
            yield inputs, labels

    monkeypatch.setattr(MultimodalData, "batches", batches)


def test_a_run_skipping_20_of_21_batches_now_fails(tmp_path, monkeypatch):
    """The issue's case: it finished with exit 0 and no warning."""
    _poison(monkeypatch, set(range(1, 21)))
    with pytest.raises(TrainingError) as info:
        msam_lab.train(SYN, out=tmp_path / "r", quiet=True)
    msg = str(info.value)
    assert "nan_policy=skip skipped 9 of 10 batches (90%)" in msg and "max_skipped_fraction=0.5" in msg
    assert "lower lr, or raise max_skipped_fraction" in msg and len(msg.splitlines()) == 1
    run = load_run(tmp_path / "r")
    assert run.state == "failed" and run.status["error"] == msg and not (tmp_path / "r" / "lock").exists()


def test_a_higher_limit_lets_the_same_run_finish_with_one_warning(tmp_path, monkeypatch):
    _poison(monkeypatch, set(range(1, 21)))
    with pytest.warns(SkippedBatchesWarning) as caught:
        run = msam_lab.train({**SYN, "max_skipped_fraction": 1.0}, out=tmp_path / "r", quiet=True)
    assert run.finished and run.summary["skipped_batches"] == 20
    assert len([w for w in caught if w.category is SkippedBatchesWarning]) == 1


_CHILD = """
import sys
from msam_lab.cli import commands as cli
from msam_lab.datasets import MultimodalData
bad = set(map(int, sys.argv[1].split(",")))
real = MultimodalData.batches
count = {"n": 0}
def batches(self, batch_size, shuffle=False, **kw):
    for inputs, labels in real(self, batch_size, shuffle=shuffle, **kw):
        if shuffle:
            if count["n"] in bad:
                inputs = {m: x.clone().fill_(float("inf")) for m, x in inputs.items()}
            count["n"] += 1
        yield inputs, labels
MultimodalData.batches = batches
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "bad, code, words",
    [
        ("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20", 1, "nan_policy=skip skipped 9 of 10 batches"),
        ("2,9,15", 0, "nan_policy=skip has skipped 2 of 10 batches (20%)"),  # 0.2 > 0.5 / 4: warned
    ],
    ids=["stops", "warns"],
)
@pytest.mark.slow
def test_the_cli_prints_one_line_for_a_skip_event(tmp_path, bad, code, words):
    args = [
        "train",
        "--dataset",
        "synthetic",
        "--method",
        "joint",
        "--epochs",
        "3",
        "--set",
        "data.n_samples=300",
        "--set",
        "data.n_modalities=2",
        "--set",
        "batch_size=32",
        "--set",
        "nan_policy=skip",
        "--set",
        "train_eval_samples=100",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    ]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, bad, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == code, done.stderr
    assert words in _one_line(done.stderr)
    assert load_run(tmp_path / "r").state == ("failed" if code else "finished")


# --------------------------------------------------------------------------- dataset options out of range


def _ranged():
    from msam_lab.datasets import DATASETS, _module

    return [
        (name, key, low, high)
        for name in DATASETS
        for key, (low, high) in getattr(_module(name), "OPTION_RANGES", {}).items()
    ]


@pytest.mark.parametrize("name, key, low, high", _ranged())
def test_every_ranged_option_is_refused_outside_its_range_naming_it(name, key, low, high):
    too_big = [high + 1, high * 10**6, 2**63, 10**400, 1e300] if high is not None else []
    for value in [low - 1, *too_big]:
        with pytest.raises(ConfigError) as info:
            resolve({"dataset": name, "data": {key: value}})
        message = str(info.value)
        shown = str if isinstance(low, int) else "{:g}".format
        allowed = f"in {shown(low)}..{shown(high)}" if high is not None else f">= {shown(low)}"
        assert f"option {key} must be" in message and allowed in message and len(message.splitlines()) == 1, message
    good = high if high is not None else low
    assert resolve_options(name, {key: good})[key] == good


@pytest.fixture(scope="module")
def real_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("roots").resolve()
    _write_cremad(
        base / "crema-d",
        [("1001_DFA_ANG_XX", "ANG"), ("1001_DFA_HAP_XX", "HAP")],
        [("1002_DFA_SAD_XX", "SAD")],
        np.random.default_rng(7),
    )
    _write_ave(
        base / "ave",
        {"train": [("Cat", "v1"), ("Bus", "v2")], "test": [("Bus", "v3")]},
        np.random.default_rng(8),
        frames=2,
    )
    return {"crema-d": base / "crema-d", "ave": base / "ave"}


@pytest.mark.parametrize(
    "dataset, option",
    [
        ("crema-d", "image_size=1e7"),
        ("crema-d", "image_size=10000000"),
        ("crema-d", "n_frames=1000000000000"),
        ("ave", "n_frames=1e12"),
        ("ave", "n_frames=1000000000000"),
        ("ave", "image_size=2147483648"),
        ("crema-d", "fps=" + "1" * 400),
        ("ave", "audio_time_pool=" + "1" * 400),
    ],
)
def test_overflowing_options_are_one_line_naming_the_option_without_numpy_warnings(
    tmp_path, real_roots, dataset, option
):
    key = option.split("=")[0]
    code, err, caught = run_cli(
        [
            "train",
            "--dataset",
            dataset,
            f"--set=data.root={real_roots[dataset]}",
            f"--set=data.{option}",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    line = _one_line(err)
    assert code == 2 and f"option {key}" in line and ".." in line and not caught, (line, caught)
    assert not (tmp_path / "r").exists()


def test_the_same_options_in_range_still_load(real_roots, tmp_path):
    splits = load_dataset("crema-d", cache_dir=tmp_path, root=str(real_roots["crema-d"]), image_size="12", n_frames=2)
    assert tuple(splits.train.inputs["visual"].shape[1:]) == (6, 12, 12)


@pytest.mark.parametrize("value", ["false", "no", 0, 1, "1e7"])
def test_a_boolean_option_takes_only_booleans(value):
    """bool("false") is True: skip_missing="false" silently skipped missing files."""
    with pytest.raises(ValueError, match="option skip_missing must be true or false"):
        resolve_options("crema-d", {"skip_missing": value})
    assert resolve_options("crema-d", {"skip_missing": False})["skip_missing"] is False
