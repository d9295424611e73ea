"""A command line that helps: "did you mean …" for a mistyped key, choice, name or flag (one line, exit 2),
and ``--help`` that lists the methods and datasets, plug-ins included."""

from __future__ import annotations

import pytest

from msam_lab import config as config_mod
from msam_lab.cli import names
from msam_lab.cli.commands import build_parser, main
from msam_lab.config import ConfigError
from msam_lab.training.setup import resolve


def one_line_error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "suggestion"),
    [
        (["rh0=0.1"], "did you mean 'rho'?"),  # a shared field's typo (it reads as a method option)
        (["batch_sise=8"], "did you mean 'batch_size'?"),
        (["dat.root=x"], "did you mean 'data.root'?"),
        (["data.audio_snr=-3"], "did you mean 'audio_snr_db'?"),  # a dataset option
        (["method=agm", "agm_alpah=1"], "did you mean 'agm_alpha'?"),  # the chosen method's option
        (["fusion=late-sum"], "did you mean 'late_sum'?"),  # a Literal choice
        (["optimizer=SGD"], "did you mean 'sgd'?"),  # ... differing only in case
        (["dataset=av-digit"], "did you mean 'av-digits'?"),
        (["method=msma"], "did you mean 'msam'?"),
        (["encoders.image=mpl"], "did you mean 'mlp'?"),
    ],
)
def test_a_typo_gets_the_closest_name(overrides, suggestion):
    message = one_line_error(lambda: resolve(None, overrides))
    assert message.count("did you mean") == 1 and suggestion in message, message


def test_a_config_file_key_gets_the_closest_name():
    assert "did you mean 'batch_size'?" in one_line_error(lambda: config_mod.parse({"batch-size": 8}))


def test_a_word_close_to_nothing_gets_the_list_not_a_guess():
    message = one_line_error(lambda: resolve(None, ["zzqqx=1"]))
    assert "did you mean" not in message and "known keys: dataset, " in message and "rho" in message
    message = one_line_error(lambda: resolve(None, ["method=zzqqx"]))
    assert "did you mean" not in message and "choose one of: joint, sam, msam" in message


def test_closest_is_difflib_with_a_case_fallback():
    assert config_mod.closest("rh0", ["rho", "lr", "seed"]) == "rho"
    assert config_mod.closest("LR", ["rho", "lr"]) == "lr"
    assert config_mod.closest("xyz", ["rho", "lr"]) is None
    assert config_mod.did_you_mean(3, ["rho"]) == ""  # a YAML key may be a number


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["tran"], "did you mean 'train'?"),
        (["train", "--rh0", "0.1"], "did you mean '--rho'?"),
        (["landscape", "RUN", "--directions", "pcb"], "did you mean 'pca'?"),
        (["data", "info", "--colour"], None),  # nothing close: no guess
        (["train", "--set", "rh0=0.1"], "did you mean 'rho'?"),
        (["train", "--method", "msma"], "did you mean 'msam'?"),
    ],
)
def test_the_command_line_says_it_in_one_line(argv, suggestion, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's errors exit from the parser
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (suggestion in err) if suggestion else ("did you mean" not in err and "unrecognized" in err), err
    assert not (tmp_path / "runs").exists()


def test_unknown_flags_are_matched_against_their_own_command(capsys):
    """``--grid`` is a landscape flag: ``train --gird`` gets no suggestion from another command."""
    with pytest.raises(SystemExit):
        main(["train", "--gird", "3"])
    err = capsys.readouterr().err
    assert err.startswith("msam-lab train: error: unrecognized arguments: --gird 3") and "--grid" not in err


def test_the_builtin_method_names_copy_is_current():
    from msam_lab.methods import METHOD_NAMES

    assert names.BUILTIN_METHODS == METHOD_NAMES


def option_help(parser, command: str, flag: str) -> str:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings).help


def test_help_lists_the_methods_and_datasets_plugins_included():
    import msam_lab
    from msam_lab.datasets import dataset_names
    from msam_lab.methods import Joint, method_names

    class Halved(Joint):
        pass

    msam_lab.register_method("my-halved", Halved)
    msam_lab.register_dataset("my-blobs", lambda cache_dir, **options: None, {})
    try:
        parser = build_parser()
        top = parser.format_help()
        for name in (*method_names(), *dataset_names()):
            assert name in top, name
        assert "my-halved" in top and "my-blobs" in top
        assert "my-halved" in option_help(parser, "train", "--method")
        assert "my-blobs" in option_help(parser, "train", "--dataset")
        for name in ("joint", "msam", "unimodal"):
            assert name in option_help(parser, "demo", "--method") and name in option_help(parser, "sweep", "--methods")
        assert "av-digits" in option_help(parser, "sweep", "--dataset")
    finally:
        msam_lab.plugins.unregister("method", "my-halved")
        msam_lab.plugins.unregister("dataset", "my-blobs")
    assert "my-halved" not in build_parser().format_help()
