"""Options declared once (issue 13): each field of `Settings` declared with `option(...)` is, with
nothing else written, a flag of `diagnose check`, a keyword of `diagnose.check` and a key of
`[tool.diagnose]`, as its declaration says, with its conversion and validation on every surface."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

import diagnose
from diagnose import cli
from diagnose.config import (
    OPTIONS,
    Settings,
    build_settings,
    settings_from_keywords,
    settings_from_table,
)
from diagnose.errors import DiagnoseError

# A value each surface accepts, by option; the rest get one by their type.
SAMPLES = {
    "input_shapes": "8,16",
    "loss": "mse",
    "select": "dead-relu",
    "ignore": "dead-relu",
    "device": "cpu",
    "optimizer": "adam",
    "fail_on": "warning",
    "thresholds": {"dead-relu": {"dead_fraction": 0.6}},
    "per_layer_ignores": {"encoder.*": ["dead-relu"]},
}
BY_KIND = {str: "x.pt", int: 3, float: 0.5, bool: True}


def _sample(declared):
    return SAMPLES[declared.name] if declared.name in SAMPLES else BY_KIND[declared.kind]


def _help(command: str) -> str:
    result = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_field_of_settings_is_a_declared_option():
    assert [o.name for o in OPTIONS] == [f.name for f in fields(Settings)]
    assert set(SAMPLES) <= {o.name for o in OPTIONS}


@pytest.mark.parametrize("declared", [o for o in OPTIONS if o.flag], ids=lambda o: o.name)
def test_a_declared_flag_is_in_check_help_with_its_text(declared):
    text = _help("check")
    line = next((line for line in text.splitlines() if re.search(rf"(^|[\s,]){re.escape(declared.flag)}\b", line)), None)
    assert line is not None, f"{declared.flag} missing from `diagnose check --help`"
    assert declared.help.split()[0] in line
    if declared.short:
        assert declared.short in line


@pytest.mark.parametrize("declared", [o for o in OPTIONS if o.api], ids=lambda o: o.name)
def test_a_declared_keyword_is_in_the_python_signature_and_reaches_settings(declared):
    from diagnose.api import check as api_check

    for function in (diagnose.check, api_check):
        parameter = inspect.signature(function).parameters[declared.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    settings = settings_from_keywords({declared.name: _sample(declared)})
    assert getattr(settings, declared.name) != declared.keyword_default


@pytest.mark.parametrize("declared", [o for o in OPTIONS if o.file], ids=lambda o: o.name)
def test_a_declared_file_key_is_read_from_the_pyproject(declared, tmp_path):
    for key in (declared.file_key, declared.file_key.replace("-", "_"), *declared.file_aliases):
        values = settings_from_table({key: _sample(declared)}, tmp_path, "pyproject.toml [tool.diagnose]")
        assert list(values) == [declared.name]
        assert Settings(**values) != Settings()


def test_what_each_surface_leaves_out_is_declared():
    assert {o.name for o in OPTIONS if not o.file} == {"model", "trust_pickle", "config_path", "debug"}
    assert {o.name for o in OPTIONS if not o.flag} == {"model", "thresholds", "per_layer_ignores"}
    assert [o.name for o in OPTIONS if o.argument] == ["model"]
    # report files, the exit-code policy and the terminal's display are the command line's business
    assert {o.name for o in OPTIONS if not o.api} == {
        "model", "inputs_path", "targets_path", "json_path", "markdown_path", "junit_path", "html_path", "plot_dir",
        "fail_on", "config_path", "verbose", "quiet", "debug",
    }


def test_the_file_cannot_switch_on_trust_pickle_and_says_why(tmp_path):
    with pytest.raises(DiagnoseError, match="--trust-pickle on the command line"):
        settings_from_table({"trust_pickle": True}, tmp_path, "here")
    with pytest.raises(DiagnoseError, match="unknown key 'debug'"):
        settings_from_table({"debug": True}, tmp_path, "here")


def test_the_python_api_keeps_its_contract_defaults_and_python_errors():
    signature = inspect.signature(diagnose.check)
    assert list(signature.parameters)[:3] == ["model", "inputs", "targets"]
    assert {name: signature.parameters[name].default for name in ("loss", "steps", "optimizer", "lr", "seed")} == {
        "loss": "auto", "steps": 0, "optimizer": "sgd", "lr": 0.01, "seed": 0,
    }
    assert settings_from_keywords({}).steps == 0 and Settings().steps == 20  # the command line's short run
    with pytest.raises(TypeError, match="unexpected keyword argument 'fail_on'"):
        settings_from_keywords({"fail_on": "never"})


@pytest.mark.parametrize("keywords, words", [
    ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
    ({"steps": -1}, "steps must be 0 or more"),
    ({"steps": True}, "steps must be an integer"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"input_shapes": [(8, 0)]}, "--input-shape"),
    ({"select": 3}, "select must be a list of check ids"),
])
def test_a_python_keyword_is_checked_as_declared_and_named_as_the_caller_spelled_it(keywords, words):
    with pytest.raises(DiagnoseError, match=re.escape(words)):
        settings_from_keywords(keywords)


def test_python_values_are_converted_as_the_file_and_flags_are():
    import numpy as np

    settings = settings_from_keywords({
        "input_shapes": (8, 16), "select": "dead-relu,non-finite", "steps": np.int64(3), "lr": np.float32(0.5),
        "per_layer_ignores": {"fc": "dead-relu"}, "loss": len,
    })
    assert settings.input_shapes == ((8, 16),)
    assert settings.select == ("dead-relu", "non-finite")
    assert (settings.steps, settings.lr) == (3, 0.5) and type(settings.steps) is int
    assert settings.per_layer_ignores == {"fc": ("dead-relu",)}
    assert settings.loss is len  # a loss function from Python


def test_flags_are_converted_and_the_config_file_read_is_recorded(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.diagnose]\nseed = 4\n')
    settings = build_settings({"input_shapes": ["8,16", "8,4"], "select": ["a,b", "c"]}, search_from=tmp_path)
    assert settings.input_shapes == ((8, 16), (8, 4)) and settings.select == ("a", "b", "c")
    assert settings.seed == 4 and settings.config_path == str(tmp_path / "pyproject.toml")


def test_lr_find_takes_the_shared_options_from_the_same_declarations():
    text = _help("lr-find")
    shared = [o for o in OPTIONS if o.name in cli.LR_FIND_LAYOUT]
    assert {o.name for o in shared} >= {"model", "input_shapes", "loss", "optimizer", "lr", "seed", "device"}
    for declared in shared:
        if declared.flag:
            assert declared.flag in text
        if declared.name != "lr":  # lr-find's --lr is the current rate, said in its own words
            assert " ".join(declared.help.split()[:4]) in " ".join(text.split())


def test_check_help_is_built_without_the_command_listing_its_options():
    parameters = inspect.signature(cli.check).parameters
    assert list(parameters) == [o.name for o in OPTIONS if o.flag or o.argument]
    assert Path(cli.__file__).read_text().count('"--input-shape"') == 0
