"""Property-based fuzzing (Hypothesis) of the command line's promise about bad input.

The promise (README, msam_lab/cli.py): bad input ends in ONE line on stderr,
``msam-lab: error: ...``, naming the problem and the fix, exit code 2, no
traceback, and nothing half-written on disk. Here that is checked for

* config dicts (wrong types, unknown keys, NaN/inf/negative/huge numbers, wrong
  choices, nested junk in ``data`` / ``encoders``), through ``resolve`` and, as a
  YAML file, through ``msam-lab train --config``;
* YAML config files (invalid YAML, non-mappings, bad values, binary junk, empty);
* ``--set`` strings (random keys and values, no ``=``, unknown ``data.X``);
* every real-dataset loader (av-mnist, crema-d, ave, ur-funny) on tiny valid
  fixtures (the builders of tests/datasets/test_real_datasets.py) with one corruption each:
  truncated / emptied / overwritten / deleted files, a folder in a file's place,
  wrong dtype, shape or length, bad CSV / list rows, NaN and inf values;
* damaged run folders (a finished and an interrupted copy of a tiny run: truncation, garbage,
  bit flips, deleted files, a folder or a symlink in a file's place, JSON values and table cells
  of the wrong kind) through ``load_run``, ``status``, ``compare``, ``landscape``, ``sharpness``
  and ``train --resume``: each works or answers in one line naming the damaged file (section at the end).

Per case: ``resolve`` raises nothing but ``ConfigError``; a config it rejects,
or a corrupted dataset, run through ``msam_lab.cli.commands.main(["train", ...])`` in
process returns 2, writes exactly one non-empty line starting with
``msam-lab: error:`` to stderr (a warning would be a second line, so warnings
count as failures), raises nothing, and leaves ``--out`` (and any hidden
``.partial`` folder beside it) absent. Configs that DO resolve are not trained;
they must round-trip through ``to_dict``. A corruption that is harmless by
construction (a missing trailing newline, one of several frames gone, a
truncated WAV the decoder tolerates) may load; it must then load sane data
(finite inputs, labels in range). UR-Funny's NaN/inf features load as zeros, as
its loader documents (MultiBench's cleaning).

Size (Hypothesis profiles, chosen by the environment variable MSAM_LAB_FUZZ):

* unset / ``default`` -- what ``make test`` runs: 40 examples per config test,
  20 per loader test, ``derandomize=True`` (the same examples on every run, so
  CI is reproducible), no example database, ``deadline=None``. Well under a
  minute on a 2-core machine.
* ``long`` -- 2000 examples per test, randomized, failures saved to
  ``.pytest_cache/hypothesis`` (git-ignored) and replayed first next time::

      MSAM_LAB_FUZZ=long .venv/bin/python -m pytest tests/cli/test_fuzz.py -q --hypothesis-show-statistics

* a number, e.g. ``MSAM_LAB_FUZZ=300`` -- that many examples per test, randomized.

Unreadable permissions (chmod 000) are a separate test: it is skipped when the
tests run as root, since root reads such files anyway; the "folder in a file's
place" corruption of the fuzz tests covers unreadable files there.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import pickle
import shutil
import tempfile
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings  # a dev dependency (pyproject)
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import InvalidArgument

from msam_lab import config as config_mod
from msam_lab.cli import commands as cli
from msam_lab.config import Config, ConfigError
from msam_lab.datasets import DATASETS, av_digits, cremad, dataset_options, load_dataset, synthetic
from msam_lab.methods import METHOD_NAMES, METHODS, method_class
from msam_lab.methods.options import options_class
from msam_lab.models.multimodal import ENCODERS
from msam_lab.training.setup import resolve

# the fixture builders of the loader tests: tiny valid datasets in each published layout
from tests.datasets.test_real_datasets import AVE_CLASSES, _humor_split, _write_ave, _write_avmnist, _write_cremad

# --------------------------------------------------------------------------- profiles

_common = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
)
settings.register_profile("msam-fuzz-default", max_examples=40, derandomize=True, database=None, **_common)
settings.register_profile(
    "msam-fuzz-long",
    max_examples=2000,
    print_blob=True,
    database=DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis")),
    **_common,
)
_MODE = os.environ.get("MSAM_LAB_FUZZ", "default").strip().lower() or "default"
if _MODE == "default":
    PROFILE = settings.get_profile("msam-fuzz-default")
elif _MODE == "long":
    PROFILE = settings.get_profile("msam-fuzz-long")
elif _MODE.isdigit() and int(_MODE) > 0:
    PROFILE = settings(settings.get_profile("msam-fuzz-long"), max_examples=int(_MODE))
else:
    raise RuntimeError(f"MSAM_LAB_FUZZ must be default, long or a number of examples, got {_MODE!r}")


def fuzz(default_examples: int):
    """The profile, with ``default_examples`` examples in the default (make test) profile."""
    if _MODE == "default":
        return settings(PROFILE, max_examples=default_examples)
    return PROFILE


CONFIG_EXAMPLES = 40
LOADER_EXAMPLES = 20

# --------------------------------------------------------------------------- the CLI check

ERROR_PREFIX = "msam-lab: error: "


def run_cli(argv: list[str]) -> tuple[int, str, list[str]]:
    """``(exit code, stderr, warnings)`` of ``msam_lab.cli.commands.main(argv)`` in process.

    Warnings are recorded with the filters a user's ``msam-lab`` has (Python's
    defaults, every occurrence): each would be a line on their stderr.
    """
    err = io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        code = cli.main(argv)
    return code, err.getvalue(), [f"{w.category.__name__}: {w.message}" for w in caught]


def assert_one_line_error(argv: list[str], outs: Path) -> str:
    """Run ``msam-lab train`` with ``argv`` + ``--out`` under the empty folder ``outs``; check the promise.

    Returns the message (after the prefix).
    """
    assert outs.is_dir() and not any(outs.iterdir())
    out = outs / "nested" / "run"  # a nested target: no parent may be created either
    code, err, caught = run_cli(["train", *argv, "--out", str(out), "--quiet"])
    assert not caught, f"warnings would add lines to stderr: {caught}"
    assert code == 2, f"exit code {code}, stderr {err!r}"
    assert err.endswith("\n") and len(err.splitlines()) == 1, f"not exactly one line: {err!r}"
    assert err.startswith(ERROR_PREFIX) and err[len(ERROR_PREFIX) :].strip(), err
    assert "Traceback" not in err
    left = sorted(p.name for p in outs.rglob("*")) + sorted(p.name for p in outs.parent.glob(".*partial*"))
    assert not left, f"left on disk after the error: {left}"
    return err[len(ERROR_PREFIX) :].strip()


@contextlib.contextmanager
def scratch():
    """A fresh, resolved temporary folder (Hypothesis examples cannot share pytest's tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="msam-fuzz-") as tmp:
        yield Path(tmp).resolve()


def _fresh_outs(tmp: Path) -> Path:
    outs = tmp / "outs"
    outs.mkdir()
    return outs


# --------------------------------------------------------------------------- config strategies


def _option_fields() -> dict:
    """Every built-in method's options (flat keys, as configs write them): name -> (annotation, choices)."""
    out = {}
    for cls in METHODS.values():
        if getattr(cls, "OPTIONS", None) is not None:
            for name, hint in typing.get_type_hints(cls.OPTIONS).items():
                text = config_mod._annotation_text(hint)
                literal = typing.get_origin(text) is typing.Literal
                out[name] = ("str" if literal else text, list(typing.get_args(text)) if literal else [])
    return out


METHOD_OPTIONS = _option_fields()
SHARED = {f.name: f.type for f in dataclasses.fields(Config) if f.name != config_mod.METHOD_OPTIONS}
# every key a config may hold (new fields and method options are fuzzed automatically)
FIELDS = {**SHARED, **{name: annotation for name, (annotation, _) in METHOD_OPTIONS.items()}}
OPTION_NAMES = sorted({k for d in DATASETS for k in dataset_options(d)})
MODALITIES = ["image", "audio", "visual", "text", "vision", "m0", "m1", "m2"]
STRING_CHOICES = {
    **{name: list(config_mod.choices(name)) for name in SHARED if config_mod.choices(name)},
    **{name: choices for name, (_, choices) in METHOD_OPTIONS.items() if choices},
    "dataset": list(DATASETS),
    "method": list(METHOD_NAMES),
    "device": ["auto", "cpu", "cuda", "cuda:0", "cuda:x", "cudax", "gpu", "CPU", ""],
    "modality": MODALITIES + [""],
}

HUGE_INTS = [2**31, 2**32, 2**32 - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, -(10**400)]
EDGE_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-320, 1e308, -1e308, 5e-324]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 100),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_FLOATS),
    st.text(max_size=12),
    st.sampled_from(sorted({c for cs in STRING_CHOICES.values() for c in cs})),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _numbers(base: str):
    if base == "int":
        return st.one_of(
            st.integers(-3, 100),
            st.sampled_from(HUGE_INTS),
            st.integers(),
            st.floats(allow_nan=True, allow_infinity=True),
        )
    return st.one_of(
        st.floats(-2, 10),
        st.sampled_from(EDGE_FLOATS),
        st.floats(allow_nan=True),
        st.integers(-3, 100),
        st.sampled_from(HUGE_INTS),
    )


def field_values(name: str, annotation: str):
    """Values for one field: plausible ones of its type (so some configs are valid) or junk."""
    base, _, optional = annotation.partition(" | ")
    if base in ("int", "float"):
        plausible = _numbers(base)
    elif base == "bool":
        plausible = st.booleans()
    elif base == "str" or base not in ("dict", "list") and name in STRING_CHOICES:  # Literal choices too
        plausible = st.sampled_from(STRING_CHOICES.get(name, ["", "x"])) | st.text(max_size=12)
    elif base == "dict":
        keys = st.sampled_from(OPTION_NAMES if name == "data" else MODALITIES) | st.text(max_size=8)
        vals = (st.sampled_from(list(ENCODERS)) | junk) if name == "encoders" else junk
        plausible = st.dictionaries(keys, vals, max_size=3)
    else:  # list
        plausible = st.lists(st.sampled_from(MODALITIES) | junk, max_size=3)
    if optional == "None":
        plausible = st.none() | plausible
    return st.one_of(plausible, plausible, junk)  # 2:1 for the field's own type


unknown_keys = st.dictionaries(
    st.one_of(st.text(max_size=12), st.sampled_from(["learning_rate", "Epochs", "lr ", "data.root", "", "-"])).filter(
        lambda k: k not in FIELDS
    ),
    junk,
    max_size=2,
)


@st.composite
def config_dicts(draw):
    values = draw(st.fixed_dictionaries({}, optional={n: field_values(n, a) for n, a in FIELDS.items()}))
    if draw(st.integers(0, 4)) == 0:
        values.update(draw(unknown_keys))
    return values


def _check_config_error(err: ConfigError) -> None:
    message = str(err)
    assert message.strip() and len(message.splitlines()) == 1, f"not one line: {message!r}"


def _check_resolved(cfg: Config) -> None:
    """What a config that resolves must satisfy."""
    assert isinstance(cfg, Config)
    values = {name: getattr(cfg, name) for name in SHARED}
    own = {name for name in cfg.method_options}
    assert own == set(
        options_class(method_class(cfg.method)).names() if options_class(method_class(cfg.method)) else ()
    ), (cfg.method, own)  # resolved: exactly the chosen method's options
    values.update(cfg.method_options)
    for name, annotation in FIELDS.items():
        if name not in values:
            continue
        value = values[name]
        if annotation.startswith("float") and value is not None:
            assert isinstance(value, float) and math.isfinite(value), (name, value)
        if annotation.startswith("int"):
            assert isinstance(value, int) and not isinstance(value, bool), (name, value)
    # round-trips as config.json does (compared as JSON text: NaN != NaN in a dict comparison)
    assert json.dumps(resolve(cfg.to_dict()).to_dict(), sort_keys=True) == json.dumps(cfg.to_dict(), sort_keys=True)


def _resolve_outcome(config=None, overrides=()) -> Config | ConfigError:
    """``resolve``'s result or its ConfigError; any other exception fails the test."""
    try:
        cfg = resolve(config, overrides)
    except ConfigError as err:
        _check_config_error(err)
        return err
    _check_resolved(cfg)
    return cfg


def fails_while_loading(cfg: Config) -> bool:
    """True when ``train`` must stop at loading the data (so the CLI can be run without training).

    Real datasets without an existing root always do; av-digits and synthetic when
    their option check rejects the options. The option checks must raise nothing
    but ValueError (the trainer turns that into the one-line error).
    """
    if cfg.dataset in BUILDERS:
        root = cfg.data.get("root")
        try:
            return not (isinstance(root, str) and root and Path(root).expanduser().exists())
        except (RuntimeError, ValueError):  # ~nosuchuser, embedded NUL: the loader rejects it too
            return True
    module = {"av-digits": av_digits, "synthetic": synthetic}[cfg.dataset]
    try:
        module._check_options(**cfg.data)
    except ValueError as err:
        assert len(str(err).splitlines()) == 1, str(err)
        return True
    return False


def _check_through_cli(outcome, argv: list[str]) -> None:
    if isinstance(outcome, ConfigError):
        event("rejected by resolve -> CLI checked")
    elif fails_while_loading(outcome):
        event("resolves, fails at loading -> CLI checked")
    else:
        event("valid (resolves; not trained)")
        return
    with scratch() as tmp:
        assert_one_line_error(argv, _fresh_outs(tmp))


# --------------------------------------------------------------------------- config tests


@fuzz(CONFIG_EXAMPLES)
@given(values=config_dicts())
@example(values={"lr": math.nan})  # NaN passed every range check
@example(values={"rho": math.inf})
@example(values={"lr": 10**400})  # float(int) OverflowError escaped
@example(values={"seed": -1})  # np.random.seed raised in train()
@example(values={"seed": 2**32})
@example(values={"epochs": 2**64})  # beyond int64
@example(values={"device": "cuda:x"})  # torch.device raised at train time
@example(values={"encoders": {"image": "transformer"}})  # failed only when the model was built
@example(values={"data": {"x": 1}, "dataset": "synthetic"})
@example(values={"recon_order": [[1], {"a": 2}], "method": "reconboost"})
def test_config_dicts_resolve_or_fail_in_one_line(values):
    """A dict, and the same dict as a YAML file: resolve raises only ConfigError; the CLI keeps the promise."""
    from_dict = _resolve_outcome(values)
    with scratch() as tmp:
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(values))
        from_file = _resolve_outcome(path)
        assert isinstance(from_dict, ConfigError) == isinstance(from_file, ConfigError), (from_dict, from_file)
        _check_through_cli(from_file, ["--config", str(path)])


YAML_SCALARS = [
    "",
    "~",
    "null",
    "0",
    "-1",
    "1",
    "2",
    "-0",
    "007",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "190:20:30",
    "1.5",
    "-2.5",
    ".5",
    "1e3",
    "1.0e+3",
    "1.0e+400",
    "-1.0e+400",
    ".nan",
    ".NaN",
    ".inf",
    "-.inf",
    "nan",
    "inf",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "2001-12-14",
    "2001-13-01",
    "2001-02-30",
    "2001-12-14t21:59:43.10-05:00",
    "2001-01-01T99:00:00",
    "!!int abc",
    "!!float abc",
    "!!binary aGVsbG8=",
    "!!binary ---",
    "!!set {a, b}",
    "!!omap [a]",
    "!!python/object/apply:os.system [echo]",
    "!!str 5",
    "!!timestamp 2001-01-01 10:00:00 +99:00",
    "[1, 2]",
    "[a, [b, [c]]]",
    "{a: 1}",
    "{}",
    "[]",
    "[",
    "]",
    "{",
    "'unterminated",
    '"\\x00"',
    "&a [*a]",
    "&b {k: *b}",
    "*undefined",
    "joint",
    "msam",
    "sam",
    "unimodal",
    "reconboost",
    "late_sum",
    "early",
    "cnn",
    "mlp",
    "linear",
    "auto",
    "cpu",
    "cuda",
    "cuda:0",
    "cuda:x",
    "av-digits",
    "synthetic",
    "av-mnist",
    "ur-funny",
    "1" * 400,
    "9" * 5000,
    "[" * 1000,
    "[" * 200 + "]" * 200,
    "\t",
    "a: b",
    "- x",
    "| block",
    "> folded",
    "%YAML 1.1",
    "---",
    "...",
    "\x00",
    "\x85",
    "\u2028",
    "\x0b",
    "é",
    "#c",
]
yaml_scalar_text = st.sampled_from(YAML_SCALARS) | st.text(max_size=20)
yaml_keys = st.sampled_from(list(FIELDS)) | st.text(max_size=10)


@st.composite
def yaml_documents(draw) -> bytes:
    kind = draw(st.sampled_from(["lines", "lines", "nested", "dump", "non-mapping", "text", "binary", "empty"]))
    if kind == "lines":  # key: value lines, mostly real field names with tricky scalars
        lines = draw(st.lists(st.tuples(yaml_keys, yaml_scalar_text), min_size=1, max_size=5))
        text = "".join(f"{k}: {v}\n" for k, v in lines)
    elif kind == "nested":  # junk under data: / encoders:
        head = draw(st.sampled_from(["data", "encoders"]))
        keys = st.sampled_from(OPTION_NAMES + MODALITIES) | st.text(max_size=8)
        lines = draw(st.lists(st.tuples(keys, yaml_scalar_text), min_size=1, max_size=4))
        text = f"dataset: {draw(st.sampled_from(list(DATASETS)))}\n{head}:\n" + "".join(
            f"  {k}: {v}\n" for k, v in lines
        )
    elif kind == "dump":  # a well-formed document of a generated config dict
        text = yaml.safe_dump(draw(config_dicts()))
    elif kind == "non-mapping":
        text = yaml.safe_dump(draw(st.one_of(scalars, st.lists(junk, max_size=3))))
    elif kind == "text":
        text = draw(st.text(max_size=60))
    elif kind == "binary":
        return draw(
            st.binary(max_size=60)
            | st.sampled_from([b"\xff\xfe\x00\x00", b"\xef\xbb\xbf", b"\xfe\xffepochs: 1", b"\x80abc", b"epochs: \xff"])
        )
    else:
        text = draw(st.sampled_from(["", "\n", "   \n\t\n", "# only a comment\n", "---\n", "...\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16"]))
    return text.encode(encoding, errors="replace")


@fuzz(CONFIG_EXAMPLES)
@given(document=yaml_documents())
@example(document=b"epochs: \xff\xfe")  # read_text() raised UnicodeDecodeError
@example(document=b"lr: 2001-13-01\n")  # yaml's date constructor raised ValueError
@example(document=b"lr: !!int abc\n")
@example(document=b"[" * 1000)  # RecursionError
@example(document=b"1: 2\nfoo: 3\n")  # mixed key types: sorted() raised TypeError
@example(document=b"data: {1: 2, a: 3}\n")
@example(document=b"recon_order: &a [*a]\n")  # self-referencing list broke config.json
@example(document=b"data: !!set {a}\n")
@example(document=b"lr: .nan\n")
@example(document=b"epochs: 1.0e+400\n")
@example(document=b"- 1\n- 2\n")
@example(document=b"")
def test_yaml_config_files_resolve_or_fail_in_one_line(document):
    with scratch() as tmp:
        path = tmp / "config.yaml"
        path.write_bytes(document)
        _check_through_cli(_resolve_outcome(path), ["--config", str(path)])


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_config_file_is_one_line(tmp_path, what):
    path = tmp_path / "config.yaml"
    if what == "directory":
        path.mkdir()
    outcome = _resolve_outcome(path)
    assert isinstance(outcome, ConfigError) and str(path) in str(outcome)
    outs = tmp_path / "outs"
    outs.mkdir()
    assert str(path) in assert_one_line_error(["--config", str(path)], outs)


set_keys = st.one_of(
    st.sampled_from(list(FIELDS)),
    st.sampled_from(OPTION_NAMES).map(lambda k: f"data.{k}"),
    st.text(max_size=8).map(lambda k: f"data.{k}"),
    st.sampled_from(MODALITIES).map(lambda m: f"encoders.{m}"),
    st.sampled_from(["data", "encoders", "data.", ".lr", "lr.x", "encoders.image.x", " lr", "LR"]),
    st.text(max_size=10),
)
set_items = st.one_of(
    st.tuples(set_keys, yaml_scalar_text).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=15).filter(lambda s: "=" not in s),  # no "="
    yaml_scalar_text.map(lambda v: f"={v}"),  # no key
    st.text(max_size=25),
)


@fuzz(CONFIG_EXAMPLES)
@given(items=st.lists(set_items, min_size=1, max_size=3))
@example(items=["epochs=2001-13-01"])  # ValueError out of yaml escaped parse_value
@example(items=["data.image_noise=" + "[" * 1000])  # RecursionError
@example(items=["data=5", "data.x=1"])  # int[...] = ... raised TypeError
@example(items=["dataset=av-mnist", "data.root=123"])  # Path(123) raised TypeError in the loader
@example(items=["data.audio_snr_db=" + "9" * 400])  # float() OverflowError in the av-digits check
@example(items=["dataset=synthetic", "data.informativeness=" + "9" * 400])
@example(items=["lr=.inf"])
@example(items=["nokey"])
@example(items=["-x=1"])
def test_set_overrides_resolve_or_fail_in_one_line(items):
    # "--set=ITEM": an item starting with "-" must reach --set, not argparse's option parsing
    _check_through_cli(_resolve_outcome(None, items), [f"--set={item}" for item in items])


# --------------------------------------------------------------------------- dataset fixtures


def _build_avmnist(root: Path) -> None:
    _write_avmnist(root, n_train=6, n_test=4)


def _build_cremad(root: Path) -> None:
    _write_cremad(
        root,
        [("1001_DFA_ANG_XX", "ANG"), ("1001_DFA_HAP_XX", "HAP")],
        [("1002_DFA_SAD_XX", "SAD")],
        np.random.default_rng(7),
    )


def _build_ave(root: Path) -> None:
    _write_ave(
        root,
        {"train": [("Cat", "v1"), ("Male speech, man speaking", "v2")], "test": [("Bus", "v3")]},
        np.random.default_rng(8),
        frames=2,
    )


def _build_urfunny(root: Path) -> None:
    rng = np.random.default_rng(9)
    root.mkdir(parents=True)
    data = {"train": _humor_split(rng, 4), "valid": _humor_split(rng, 2), "test": _humor_split(rng, 3)}
    with open(root / "humor.pkl", "wb") as f:
        pickle.dump(data, f)


BUILDERS = {"av-mnist": _build_avmnist, "crema-d": _build_cremad, "ave": _build_ave, "ur-funny": _build_urfunny}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One valid fixture per real dataset, built once; each example corrupts a copy."""
    base = tmp_path_factory.mktemp("fuzz-datasets").resolve()
    roots = {}
    for name, build in BUILDERS.items():
        build(base / name)
        load_dataset(name, root=str(base / name))  # the fixture itself must load
        roots[name] = base / name
    return roots


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- corruptions


@dataclasses.dataclass
class Corruption:
    """One change to one file of a fixture; ``must_fail``: no valid dataset can result."""

    kind: str
    target: str  # path relative to the root
    must_fail: bool
    params: dict = dataclasses.field(default_factory=dict)
    # what the error may name besides the target (relative paths; a folder covers its files):
    # a list row naming a clip whose WAV is then missing, a shape mismatch across a folder
    also_named: tuple = ()

    def apply(self, root: Path) -> Path:
        path = root / self.target
        p = self.params
        if self.kind.startswith("wav-"):
            _write_wav_corruption(self, path)
        elif self.kind == "delete":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif self.kind == "folder":  # a folder in the file's place: unreadable as a file
            path.unlink()
            path.mkdir()
            (path / "x").write_bytes(b"x")
        elif self.kind == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: int(p["fraction"] * len(data))])
        elif self.kind == "garbage":
            path.write_bytes(p["bytes"])
        elif self.kind == "flip":
            data = bytearray(path.read_bytes())
            for pos, value in p["flips"]:
                data[int(pos * (len(data) - 1))] ^= value
            path.write_bytes(bytes(data))
        elif self.kind == "append":
            with open(path, "ab") as f:
                f.write(p["bytes"])
        elif self.kind == "npy":
            np.save(path, p["array"], allow_pickle=False)
        elif self.kind == "pickle":
            with open(path, "wb") as f:
                pickle.dump(p["obj"], f)
        elif self.kind == "humor":
            with open(path, "rb") as f:
                data = pickle.load(f)
            p["edit"](data)
            with open(path, "wb") as f:
                pickle.dump(data, f)
        elif self.kind == "chmod":
            path.chmod(0)
        else:
            raise AssertionError(self.kind)
        return path


def _generic(draw, root_files: list[str], also_named: tuple = ()) -> Corruption:
    """A file-level corruption of any one file of the fixture."""
    target = draw(st.sampled_from(root_files))
    kind = draw(st.sampled_from(["delete", "folder", "truncate", "garbage", "flip", "empty"]))
    params = {}
    if kind == "truncate":
        params["fraction"] = draw(st.floats(0, 0.999))
    elif kind == "garbage":
        params["bytes"] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "flip":
        params["flips"] = draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8))
    elif kind == "empty":
        kind, params["bytes"] = "garbage", b""
    suffix = Path(target).suffix
    listed = also_named if suffix in (".csv", ".txt") else ()
    return Corruption(kind, target, _must_fail(kind, suffix, params), params, listed)


def _must_fail(kind: str, suffix: str, params: dict) -> bool:
    """Whether the corruption leaves no valid dataset, by construction."""
    if suffix == ".jpg":
        return False  # one frame of several gone, empty or broken: another frame may be used
    if kind in ("delete", "folder"):
        return True
    if kind == "garbage" and not params["bytes"]:
        return True  # an empty npy / pkl / WAV / list file is never valid
    if kind in ("truncate", "garbage"):
        # npy / pkl lose their end or magic; a list cut at a row end or a WAV cut short still loads
        return suffix in (".npy", ".pkl")
    return False  # flipped bytes may land in sample data


NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def avmnist_corruptions(draw, files: list[str]):
    kind = draw(
        st.sampled_from(["generic", "generic", "nonfinite", "beyond-float32", "dtype", "shape", "length", "labels"])
    )
    if kind == "generic":
        return _generic(draw, files)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    split = draw(st.sampled_from(["train", "test"]))
    n = 6 if split == "train" else 4
    feature = draw(st.sampled_from(["image", "audio"]))
    target = f"{feature}/{split}_data.npy"
    per_sample = (784,) if feature == "image" else (112, 112)
    if kind == "nonfinite":
        x = rng.normal(0, 50, (n, *per_sample)).astype(draw(st.sampled_from([np.float32, np.float64])))
        x.reshape(n, -1)[draw(st.integers(0, n - 1)), draw(st.integers(0, 783))] = draw(NONFINITE)
        return Corruption("npy", target, True, {"array": x})
    if kind == "beyond-float32":  # finite float64, inf once read as float32
        x = rng.normal(0, 50, (n, *per_sample))
        x.reshape(n, -1)[draw(st.integers(0, n - 1)), draw(st.integers(0, 783))] = draw(
            st.sampled_from([1e300, -1e39, 3.5e38])
        )
        return Corruption("npy", target, True, {"array": x})
    if kind == "dtype":
        bad = draw(st.sampled_from(["U3", "S2", "complex64", "datetime64[s]", "timedelta64[s]", "V4", "i4,i4"]))
        x = np.zeros((n, *per_sample), dtype=bad)
        return Corruption("npy", target, True, {"array": x})
    if kind == "shape":
        shape = draw(
            st.sampled_from(
                [
                    (n,),
                    (),
                    (n, 783),
                    (n, 785),
                    (n, 28, 27),
                    (n, 112, 111),
                    (n, 0),
                    (n, 28, 28),
                    (n, 784, 1),
                    (n, 112 * 112),
                    (n, 1, 112, 112),
                ]
            )
        )
        size = int(np.prod(shape[1:])) if len(shape) > 1 else (1 if shape else 0)
        must_fail = size != int(np.prod(per_sample)) or shape == ()
        return Corruption("npy", target, must_fail, {"array": rng.integers(0, 256, shape).astype(np.float32)})
    if kind == "length":  # N disagrees between the split's three arrays
        which = draw(st.sampled_from(["image", "audio", "labels"]))
        m = draw(st.integers(0, 12).filter(lambda k: k != n))
        if which == "labels":
            return Corruption("npy", f"{split}_labels.npy", True, {"array": (np.arange(m) % 10).astype(np.uint8)})
        return Corruption(
            "npy",
            f"{which}/{split}_data.npy",
            True,
            {"array": np.zeros((m, *((784,) if which == "image" else (112, 112))), np.float32)},
        )
    labels = (np.arange(n) % 10).astype(np.float64)  # kind == "labels": out of 0..9 or not integral
    labels[draw(st.integers(0, n - 1))] = draw(st.sampled_from([10, -1, 3.5, 255, math.nan, math.inf, 1e30]))
    return Corruption("npy", f"{split}_labels.npy", True, {"array": labels})


def _csv_bad_rows():
    clip = st.text(
        st.characters(blacklist_characters=',\r\n"\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029', blacklist_categories=("Cs",)),
        min_size=1,
        max_size=12,
    )
    return st.one_of(
        clip.filter(lambda c: c.strip()).map(lambda c: f"{c}\n"),  # no emotion
        st.tuples(clip, clip.filter(lambda e: e.strip().strip('"') not in cremad.EMOTIONS)).map(
            lambda t: f"{t[0]},{t[1]}\n"
        ),  # bad code
        st.sampled_from(cremad.EMOTIONS).map(lambda e: f",{e}\n"),  # no clip id
        st.tuples(
            clip.filter(
                lambda c: (
                    c.strip() and c.strip().strip('"') not in ("1001_DFA_ANG_XX", "1001_DFA_HAP_XX", "1002_DFA_SAD_XX")
                )
            ),
            st.sampled_from(cremad.EMOTIONS),
        ).map(lambda t: f"{t[0]},{t[1]}\n"),  # no such clip
        st.sampled_from([b"\xff\xfe,NEU\n", b"\x80\n"]),  # not UTF-8
        # ids that are paths: "/x" made <root>/AudioWAV/<clip>.wav absolute (found by the long profile)
        st.sampled_from([b"/,NEU\n", b"/etc/hostname,NEU\n", b"../AudioWAV/1001_DFA_ANG_XX,ANG\n", b"..,SAD\n"]),
    )


@st.composite
def cremad_corruptions(draw, files: list[str]):
    kind = draw(st.sampled_from(["generic", "generic", "row", "wav", "folder-of-frames"]))
    media = ("AudioWAV", "Image-01-FPS")  # a changed row names a clip whose files are then missing
    if kind == "generic":
        return _generic(draw, files, media)
    if kind == "row":
        row = draw(_csv_bad_rows())
        row = row if isinstance(row, bytes) else row.encode()
        return Corruption("append", draw(st.sampled_from(["train.csv", "test.csv"])), True, {"bytes": row}, media)
    if kind == "folder-of-frames":  # a clip's frame folder gone or emptied of JPEGs
        clip = draw(st.sampled_from(["1001_DFA_ANG_XX", "1002_DFA_SAD_XX"]))
        return Corruption("delete", f"Image-01-FPS/{clip}", True)
    # kind == "wav": a float WAV with NaN/inf samples, or a header rate of 0 or absurd
    wav = draw(st.sampled_from([f for f in files if f.endswith(".wav")]))
    problem = draw(st.sampled_from(["nonfinite", "rate"]))
    return Corruption(
        "wav-" + problem, wav, True, {"value": draw(NONFINITE), "rate": draw(st.sampled_from([0, 10**8, 2**31 - 1]))}
    )


def _write_wav_corruption(c: Corruption, path: Path) -> None:
    from scipy.io import wavfile

    x = (0.1 * np.sin(np.arange(4000) / 5.0)).astype(np.float32)
    if c.kind == "wav-nonfinite":
        x[len(x) // 2] = c.params["value"]
        wavfile.write(path, 16000, x)
    else:  # scipy refuses to write a rate of 0: patch the header's rate field (bytes 24..27)
        wavfile.write(path, 16000, x)
        data = bytearray(path.read_bytes())
        data[24:28] = int(c.params["rate"]).to_bytes(4, "little")
        path.write_bytes(bytes(data))


def _spec(rng, shape=(257, 1004), dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def ave_corruptions(draw, files: list[str]):
    kind = draw(st.sampled_from(["generic", "generic", "spec", "row", "stat", "frames"]))
    listed = ("audio_spec", "visual", "my_train.txt", "my_test.txt")  # rows name videos; stat.txt the rows
    if kind == "generic":
        return _generic(draw, files, listed)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "spec":
        target = f"audio_spec/{draw(st.sampled_from(['v1', 'v2', 'v3']))}.pkl"
        problem = draw(st.sampled_from(["nonfinite", "beyond-float32", "shape", "dtype", "object"]))
        if problem in ("nonfinite", "beyond-float32"):  # NaN/inf, or a finite float64 that is inf as float32
            x = _spec(
                rng,
                dtype=np.float64 if problem == "beyond-float32" else draw(st.sampled_from([np.float32, np.float64])),
            )
            x[draw(st.integers(0, 256)), draw(st.integers(0, 1003))] = draw(
                NONFINITE if problem == "nonfinite" else st.sampled_from([1e300, -1e39])
            )
            return Corruption("pickle", target, True, {"obj": x})
        if problem == "shape":
            shape = draw(st.sampled_from([(257,), (257, 900), (256, 1004), (257, 1004, 1), (0, 1004), (257, 0), ()]))
            return Corruption("pickle", target, True, {"obj": rng.standard_normal(shape).astype(np.float32)})
        if problem == "dtype":
            bad = draw(st.sampled_from(["U3", "complex64", "datetime64[s]"]))
            return Corruption("pickle", target, True, {"obj": np.zeros((257, 1004), dtype=bad)})
        obj = draw(st.sampled_from([None, "spectrogram", {"a": 1}, [[1, 2], [3]], [["a"]], 3.5, b"\x00"]))
        return Corruption("pickle", target, True, {"obj": obj})
    if kind == "row":
        row = draw(
            st.one_of(
                st.text(
                    st.characters(
                        blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", blacklist_categories=("Cs",)
                    ),
                    min_size=1,
                    max_size=20,
                ).filter(
                    lambda r: (
                        r.strip()
                        and not any(r.strip().startswith(c + ",") for c in AVE_CLASSES)
                        and not r.strip().startswith('"')
                    )
                ),  # no known class
                st.sampled_from(AVE_CLASSES).map(lambda c: f"{c},"),  # no video id
                st.sampled_from(AVE_CLASSES).map(lambda c: f"{c},nosuchvideo,good,0,10"),  # no such video
                st.sampled_from(
                    ['"Cat', '"Dog",v1', '"Cat",', "Dog, barking,v1", "Cat,/v1", "Cat,../visual/v1", "Bus,..", "Cat,/"]
                ),  # ids that are paths
            )
        )
        return Corruption(
            "append",
            draw(st.sampled_from(["my_train.txt", "my_test.txt"])),
            True,
            {"bytes": ("\n" + row + "\n").encode()},
            listed,
        )
    if kind == "stat":  # a duplicate class, or a class of the rows gone
        problem = draw(st.sampled_from(["duplicate", "missing-class"]))
        if problem == "duplicate":
            text = "\n".join(AVE_CLASSES + [draw(st.sampled_from(AVE_CLASSES))])
        else:  # Cat is in my_train.txt, Bus in my_test.txt
            gone = draw(st.sampled_from(["Cat", "Bus"]))
            text = "\n".join(c for c in AVE_CLASSES if c != gone)
        return Corruption("garbage", "stat.txt", True, {"bytes": text.encode()}, listed)
    return Corruption("delete", f"visual/{draw(st.sampled_from(['v1', 'v2', 'v3']))}", True)  # frames


def _set_in(split, key, value):
    def edit(data):
        data[split][key] = value

    return edit


@st.composite
def urfunny_corruptions(draw, files: list[str]):
    kind = draw(st.sampled_from(["generic", "structure", "structure", "values", "nonfinite"]))
    if kind == "generic":
        return _generic(draw, files)
    split = draw(st.sampled_from(["train", "test"]))
    n = 4 if split == "train" else 3
    key = draw(st.sampled_from(["text", "audio", "vision", "labels"]))
    feature_dims = {"text": 300, "audio": 81, "vision": 371}
    if kind == "structure":
        problem = draw(
            st.sampled_from(
                [
                    "no-split",
                    "split-not-dict",
                    "no-key",
                    "length",
                    "ndim",
                    "empty-dim",
                    "feature-mismatch",
                    "top-not-dict",
                    "labels-scalar",
                    "labels-2col",
                    "text-all-zero",
                ]
            )
        )
        if problem == "top-not-dict":
            return Corruption("pickle", "humor.pkl", True, {"obj": draw(st.sampled_from([[], "humor", None, 3]))})

        zero_steps = draw(st.booleans())  # (N, 0, F) instead of (N, 50, 0)

        def edit(data, problem=problem, split=split, key=key, zero_steps=zero_steps):
            part = data[split]
            if problem == "no-split":
                del data[split]
            elif problem == "split-not-dict":
                data[split] = [part]
            elif problem == "no-key":
                del part[key]
            elif problem == "length":
                part[key] = part[key][:-1]
            elif problem == "ndim":
                part["text" if key == "labels" else key] = part["text" if key == "labels" else key][:, 0]
            elif problem == "empty-dim":
                m = "text" if key == "labels" else key
                part[m] = part[m][:, :0] if zero_steps else part[m][:, :, :0]
            elif problem == "feature-mismatch":
                m = "text" if key == "labels" else key
                part[m] = part[m][:, :, :-1]
            elif problem == "labels-scalar":
                part["labels"] = np.float32(1)
            elif problem == "labels-2col":
                part["labels"] = np.zeros((len(part["labels"]), 2), np.float32)
            elif problem == "text-all-zero":
                part["text"] = np.zeros_like(part["text"])

        # only one split is edited, so a feature-size change makes train and test disagree
        return Corruption("humor", "humor.pkl", True, {"edit": edit, "problem": problem, "split": split, "key": key})
    if kind == "values":
        if key == "labels":
            bad = np.zeros((n, 1), np.float32)
            bad[draw(st.integers(0, n - 1))] = draw(st.sampled_from([2, -1, 0.5, math.nan, math.inf]))
            return Corruption("humor", "humor.pkl", True, {"edit": _set_in(split, "labels", bad)})
        value = draw(st.sampled_from(["strings", "complex", "object", "ragged", "dict"]))
        shape = (n, 50, feature_dims[key])
        bad = {
            "strings": np.full(shape, "x"),
            "complex": np.zeros(shape, np.complex64) + 1,
            "object": np.array([None] * n, dtype=object),
            "ragged": [[1.0], [1.0, 2.0]],
            "dict": {"a": 1},
        }[value]
        return Corruption("humor", "humor.pkl", True, {"edit": _set_in(split, key, bad)})
    # NaN / inf in a feature: documented to load, as 0 (MultiBench's cleaning)
    m = draw(st.sampled_from(["text", "audio", "vision"]))
    where = (draw(st.integers(0, n - 1)), draw(st.integers(10, 49)), draw(st.integers(0, feature_dims[m] - 1)))
    value = draw(NONFINITE)

    def put(data, split=split, m=m, where=where, value=value):
        data[split][m] = np.array(data[split][m], copy=True)
        data[split][m][where] = value

    return Corruption("humor", "humor.pkl", False, {"edit": put, "nonfinite": (split, m, where, value)})


CORRUPTIONS = {
    "av-mnist": avmnist_corruptions,
    "crema-d": cremad_corruptions,
    "ave": ave_corruptions,
    "ur-funny": urfunny_corruptions,
}


# --------------------------------------------------------------------------- loader tests


def _check_loaded_sane(splits, corruption: Corruption) -> None:
    """A corrupted copy that loaded must still be usable data."""
    import torch

    for part in (splits.train, splits.test):
        assert len(part) > 0
        for m, x in part.inputs.items():
            assert x.dtype == torch.float32 and torch.isfinite(x).all(), f"{m} not finite after {corruption}"
            assert tuple(x.shape[1:]) == tuple(splits.info["shapes"][m])
        assert int(part.labels.min()) >= 0 and int(part.labels.max()) < splits.num_classes


def check_corrupted_dataset(dataset: str, pristine_root: Path, corruption: Corruption) -> None:
    with scratch() as tmp:
        root = tmp / "data"
        shutil.copytree(pristine_root, root)
        target = corruption.apply(root)
        try:
            splits = load_dataset(dataset, root=str(root))
        except (ValueError, OSError) as err:  # what the trainer turns into the one-line error
            event(f"{dataset} {corruption.kind}: rejected")
            message = str(err)
            assert len(message.splitlines()) == 1, message
            named = [
                target,
                target.parent if target.parent != root else target,
                *(root / p for p in corruption.also_named),
            ]
            assert any(str(p) in message for p in named), f"the error names none of {named}: {message}"
        else:
            event(f"{dataset} {corruption.kind}: loaded (harmless by construction)")
            assert not corruption.must_fail, f"{corruption} loaded without an error"
            _check_loaded_sane(splits, corruption)
            return
        message = assert_one_line_error(
            ["--dataset", dataset, f"--set=data.root={root}", "--epochs", "1"], _fresh_outs(tmp)
        )
        assert "expected" in message, f"the error does not give the expected layout: {message}"


@pytest.mark.parametrize("dataset", list(BUILDERS))
@fuzz(LOADER_EXAMPLES)
@given(data=st.data())
def test_corrupted_real_datasets_fail_in_one_line(dataset, pristine, data):
    corruption = data.draw(CORRUPTIONS[dataset](_files(pristine[dataset])), label="corruption")
    check_corrupted_dataset(dataset, pristine[dataset], corruption)


@pytest.mark.parametrize("dataset", list(BUILDERS))
def test_unreadable_file_chmod_000(dataset, pristine):
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: chmod 000 does not stop root from reading a file; the fuzz tests' "
            "'folder in the file's place' corruption covers unreadable files instead"
        )
    for target in _files(pristine[dataset])[:3] + [_files(pristine[dataset])[-1]]:
        check_corrupted_dataset(dataset, pristine[dataset], Corruption("chmod", target, True))


# --------------------------------------------------------------------------- loader options

_UNSAFE_SIZES = {"190:20:30", "1_000", "1" * 400, "9" * 5000}  # mid-size: slow or GBs, not an error
_SAFE_SCALARS = [t for t in YAML_SCALARS if t not in _UNSAFE_SIZES]
# Extremes that must fail before anything big is allocated or read (the other option >= 1):
_EXTREMES = {
    "n_frames": ["1000000000000"],
    "image_size": ["10000000"],
    "audio_size": ["113", "100000"],
    "fps": ["1000000", "1" * 400],
    "audio_time_pool": ["100000", "1" * 400],
    "max_samples": ["1" * 400],
    "use_valid_as": ["both", "DROP"],
}


_PLAUSIBLE = {
    "use_valid_as": ["drop", "train", "test"],
    "normalize": ["true", "false"],
    "skip_missing": ["true", "false"],
    "max_samples": ["null", "1", "2", "3"],
}


def option_texts(name: str):
    small = st.integers(-2, 40 if name in ("image_size", "audio_size") else 4).map(str)
    plausible = st.sampled_from(_PLAUSIBLE[name]) if name in _PLAUSIBLE else small
    return (
        plausible
        | plausible
        | st.sampled_from(_EXTREMES.get(name, ["yes"]))
        | st.sampled_from(_SAFE_SCALARS)
        | st.text(max_size=8)
    )


@pytest.mark.parametrize("dataset", list(BUILDERS))
@fuzz(LOADER_EXAMPLES)
@given(data=st.data())
def test_real_dataset_options_load_or_fail_in_one_line(dataset, pristine, data):
    """Valid files, random options (--set data.NAME=...): they load sane data or fail in one line."""
    names = sorted(set(dataset_options(dataset)) - {"root"})
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True), label="options")
    items = [f"dataset={dataset}", f"data.root={pristine[dataset]}"] + [
        f"data.{k}={data.draw(option_texts(k), label=k)}" for k in chosen
    ]
    outcome = _resolve_outcome(None, items)
    if isinstance(outcome, Config):
        try:
            splits = load_dataset(outcome.dataset, **outcome.data)
        except (ValueError, OSError) as err:
            assert len(str(err).splitlines()) == 1, str(err)
            event(f"{dataset}: options rejected while loading")
        else:
            event(f"{dataset}: options load")
            _check_loaded_sane(splits, items)
            return
    else:
        event(f"{dataset}: options rejected by resolve")
    with scratch() as tmp:
        assert_one_line_error([f"--set={item}" for item in items], _fresh_outs(tmp))


@pytest.mark.parametrize("option", ["n_features=100000000000", "n_samples=100000000000"])
def test_synthetic_data_too_large_for_memory_is_one_line(tmp_path, option):
    """numpy's MemoryError (an immediate refusal: terabytes) must not escape as a traceback."""
    outs = tmp_path / "outs"
    outs.mkdir()
    message = assert_one_line_error(["--dataset", "synthetic", f"--set=data.{option}", "--epochs", "1"], outs)
    assert option.split("=")[0] in message


# Found by fuzzing: building the model from a config that resolved and data that loaded can still
# fail (an encoder that does not fit its inputs, weights too large to allocate); it must be one line.
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(["--dataset", "synthetic", "--set=encoders.m0=cnn"], id="cnn-on-1d-modality"),
        pytest.param(["--dataset", "synthetic", "--set=feature_dim=10000000000"], id="model-too-large"),
        pytest.param(
            ["--dataset", "av-mnist", "--set=data.root={av-mnist}", "--set=data.audio_size=2"], id="cnn-input-below-4x4"
        ),
    ],
)
def test_model_that_cannot_be_built_is_one_line(tmp_path, pristine, case):
    outs = tmp_path / "outs"
    outs.mkdir()
    assert_one_line_error([a.replace("{av-mnist}", str(pristine["av-mnist"])) for a in case] + ["--epochs", "1"], outs)


@pytest.mark.parametrize(
    "value", [{1, 2}, b"bytes", datetime.date(2020, 1, 1), object()], ids=["set", "bytes", "date", "object"]
)
def test_a_config_dict_with_non_plain_values_is_a_config_error(value):
    """The Python API can pass values no YAML file or --set string can hold; still a ConfigError."""
    with pytest.raises(ConfigError, match="plain values"):
        resolve({"data": {"x": value}})
    loop = []
    loop.append(loop)
    with pytest.raises(ConfigError, match="plain values"):
        resolve({"recon_order": loop})


# --------------------------------------------------------------------------- damaged run folders
#
# A corpus of damaged copies of a tiny run, finished (with a landscape and sharpness.csv) and
# interrupted: one file truncated, replaced by garbage or emptied, bits flipped, deleted, a folder or
# a symlink (to /dev/zero, a FIFO, nowhere, another file of the run) in its place, a JSON value of
# the wrong type, a table cell of the wrong kind. Fed to load_run (and every checkpoint and landscape
# it lists), ``msam-lab status``, ``compare``, ``landscape``, ``sharpness`` and ``train --resume``:
# each works (harmless damage) or answers with one line naming the damaged file, exit 2, no traceback.

RUN_EXAMPLES = 6
RUN_CONFIG = {
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
    "flush_every": 0,
}
LANDSCAPE_ARGS = ["--dim", "1", "--grid", "3", "--n-samples", "16", "--epoch", "2"]  # the settings of the saved r1
JSON_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10),
    st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
CELL_JUNK = ["abc", "", "nan", "inf", "-1", "1.5", "1e400", "x,y", "'", "é", " "]


@pytest.fixture(scope="module")
def pristine_runs(tmp_path_factory) -> dict[str, Path]:
    """The finished and the interrupted run every example damages a copy of (built once)."""
    import msam_lab
    from msam_lab.landscape import landscape_for_run, sharpness_for_run

    base = tmp_path_factory.mktemp("fuzz-runs").resolve()
    msam_lab.train(RUN_CONFIG, out=base / "finished", quiet=True)
    landscape_for_run(base / "finished", dim=1, grid=3, n_samples=16, name="r1")
    sharpness_for_run(base / "finished", n_samples=16, probes=2, max_iter=3)

    def stop(row):
        if row["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        msam_lab.train(RUN_CONFIG, out=base / "interrupted", quiet=True, on_step=stop)
    return {"finished": base / "finished", "interrupted": base / "interrupted"}


@dataclasses.dataclass
class RunDamage:
    kind: str
    target: str  # path relative to the run folder
    params: dict = dataclasses.field(default_factory=dict)

    def apply(self, run: Path) -> Path:
        path, p = run / self.target, self.params
        if self.kind == "truncate":
            path.write_bytes(path.read_bytes()[: int(p["fraction"] * path.stat().st_size)])
        elif self.kind == "garbage":
            path.write_bytes(p["bytes"])
        elif self.kind == "flip":
            data = bytearray(path.read_bytes())
            for pos, value in p["flips"]:
                data[int(pos * (len(data) - 1))] ^= value
            path.write_bytes(bytes(data))
        elif self.kind == "delete":
            path.unlink()
        elif self.kind == "folder":
            path.unlink()
            path.mkdir()
        elif self.kind == "symlink":
            to = p["to"]
            if to == "fifo":
                os.mkfifo(run.parent / "fifo")
                to = run.parent / "fifo"
            elif to.startswith("run:"):
                to = run / to[4:]
            path.unlink()
            os.symlink(to, path)
        elif self.kind == "json":
            doc = json.loads(path.read_text())
            doc = p["value"] if p["key"] is None else {**doc, p["key"]: p["value"]}
            path.write_text(json.dumps(doc))
        elif self.kind == "cell":
            rows = list(csv.reader(io.StringIO(path.read_text())))
            r = min(p["row"], len(rows) - 1)
            rows[r][p["column"] % len(rows[r])] = p["text"]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            path.write_text(buf.getvalue())
        else:
            raise AssertionError(self.kind)
        return path


def _run_files(root: Path) -> list[str]:
    # not the lock or the writers' hidden lock files (.sharpness.csv.lock): those belong to the writing side
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size and p.name != "lock" and not p.name.startswith(".")
    )


@st.composite
def run_damages(draw, root: Path):
    files = _run_files(root)
    kind = draw(
        st.sampled_from(
            ["truncate", "garbage", "empty", "flip", "flip", "delete", "folder", "symlink", "json", "json", "cell"]
        )
    )
    if kind == "json":
        target = draw(st.sampled_from([f for f in files if f.endswith(".json")]))
        keys = sorted(json.loads((root / target).read_text()))
        key = draw(st.none() | st.sampled_from(keys)) if keys else None
        return RunDamage("json", target, {"key": key, "value": draw(JSON_JUNK)})
    if kind == "cell":
        target = draw(st.sampled_from([f for f in files if f.endswith(".csv")]))
        return RunDamage(
            "cell",
            target,
            {
                "row": draw(st.integers(0, 12)),
                "column": draw(st.integers(0, 60)),
                "text": draw(st.sampled_from(CELL_JUNK)),
            },
        )
    target = draw(st.sampled_from(files))
    if kind == "truncate":
        return RunDamage(kind, target, {"fraction": draw(st.floats(0, 0.999))})
    if kind in ("garbage", "empty"):
        return RunDamage(
            "garbage", target, {"bytes": b"" if kind == "empty" else draw(st.binary(min_size=1, max_size=64))}
        )
    if kind == "flip":
        return RunDamage(
            kind,
            target,
            {"flips": draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8))},
        )
    if kind == "symlink":
        return RunDamage(
            kind,
            target,
            {
                "to": draw(
                    st.sampled_from(["/dev/zero", "fifo", "nowhere", "/"] + [f"run:{f}" for f in files if f != target])
                )
            },
        )
    return RunDamage(kind, target)


def _note(text: str) -> None:
    """``event`` for Hypothesis' statistics; the named cases run outside Hypothesis."""
    with contextlib.suppress(InvalidArgument):
        event(text)


def _names(message: str, run: Path, target: Path) -> bool:
    """The message names the damaged file (its path, its folder, or its name beside the run's path)."""
    return str(target) in message or str(target.parent) in message or (target.name in message and str(run) in message)


def _check_api(run: Path, target: Path) -> None:
    from msam_lab.runs.reader import load_run

    try:
        loaded = load_run(run)
        for epoch in loaded.checkpoints:
            loaded.load_model(epoch)
        for name in loaded.landscapes:
            loaded.load_landscape(name)
    except (ConfigError, FileNotFoundError) as err:
        message = str(err)
        assert len(message.splitlines()) == 1 and _names(message, run, target), message
        _note("load_run: one line")
    else:
        _note("load_run: works")


def _check_command(argv: list, run: Path, target: Path, fallback_ok: bool = False) -> int:
    code, err, caught = run_cli([str(a) for a in argv])
    assert not caught, f"warnings would add lines to stderr: {caught}"
    assert "Traceback" not in err
    if code == 0:
        # a resume that fell back to the previous point says so, in one line naming the damaged file
        assert not err or (
            fallback_ok and len(err.splitlines()) == 1 and "previous resume point" in err and _names(err, run, target)
        ), err
        _note(f"{argv[0]}: works")
        return code
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(ERROR_PREFIX), (code, err)
    assert _names(err, run, target), f"the error names neither {target} nor its folder: {err}"
    _note(f"{argv[0]}: one line")
    return code


def _check_status(run: Path, target: Path) -> None:
    code, err, caught = run_cli(["status", str(run)])
    assert code == 0 and not err and not caught, (code, err, caught)


def check_damaged_run(which: str, pristine: Path, damage: RunDamage) -> None:
    with scratch() as tmp:
        run = tmp / which
        shutil.copytree(pristine, run, symlinks=True)
        target = damage.apply(run)
        _check_api(run, target)
        _check_status(run, target)
        if which == "finished":
            _check_command(["compare", run], run, target)
            _check_command(["landscape", run, *LANDSCAPE_ARGS, "--name", "r1", "--quiet"], run, target)
            _check_command(
                ["sharpness", run, "--n-samples", "16", "--probes", "2", "--max-iter", "3", "--quiet"], run, target
            )
        else:
            _check_command(["train", "--resume", run, "--quiet"], run, target, fallback_ok=True)


@pytest.mark.parametrize("which", ["finished", "interrupted"])
@fuzz(RUN_EXAMPLES)
@given(data=st.data())
def test_damaged_run_folders_work_or_fail_in_one_line(which, pristine_runs, data):
    damage = data.draw(run_damages(pristine_runs[which]), label="damage")
    check_damaged_run(which, pristine_runs[which], damage)


# the cases, each named: a status.json of [], a bit flip in a checkpoint, a corrupted config.json
# trusted by --resume, a truncated resume point, a symlink to /dev/zero
@pytest.mark.parametrize(
    "which,damage",
    [
        ("finished", RunDamage("json", "status.json", {"key": None, "value": []})),
        ("finished", RunDamage("flip", "checkpoints/epoch_0002.pt", {"flips": [(0.7, 4)]})),
        ("finished", RunDamage("symlink", "epochs.csv", {"to": "/dev/zero"})),
        ("finished", RunDamage("symlink", "landscapes/r1/surface.npz", {"to": "fifo"})),
        ("finished", RunDamage("json", "model.json", {"key": "input_shapes", "value": {"m0": [7]}})),
        ("interrupted", RunDamage("json", "config.json", {"key": "lr", "value": -1})),
        ("interrupted", RunDamage("truncate", "checkpoints/resume.pt", {"fraction": 0.5})),
        ("interrupted", RunDamage("garbage", "checkpoints/resume.pt.sha256", {"bytes": b"0" * 64})),
        ("interrupted", RunDamage("cell", "epochs.csv", {"row": 1, "column": 0, "text": "abc"})),
    ],
    ids=[
        "status-list",
        "checkpoint-bit",
        "table-dev-zero",
        "surface-fifo",
        "model-json-shape",
        "config-lr",
        "resume-truncated",
        "resume-sidecar",
        "epochs-cell",
    ],
)
def test_named_run_damage(pristine_runs, which, damage):
    check_damaged_run(which, pristine_runs[which], damage)
