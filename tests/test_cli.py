"""The command line: exit codes, the one-line error edge, outputs, settings from pyproject.

Most tests replace `diagnose.api.run_check` (and the check/fix registries) with fakes, so they
test the CLI alone; the end-to-end tests at the bottom run the real pipeline on a tiny export.
"""

from __future__ import annotations

import json
import sys
import types
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import diagnose
from diagnose import cli
from diagnose.config import Settings
from diagnose.errors import DiagnoseError
from diagnose.evidence import Evidence, ModelFacts, RunInfo
from diagnose.findings import Finding
from diagnose.report import Report
from diagnose.severity import Severity
from probes.records import ActivationStats, GradientStats, LayerRecord

CONTRACT_CHECK_IDS = (
    "vanishing-gradients", "exploding-gradients", "dead-relu", "saturated-activations",
    "activation-variance-collapse", "activation-variance-explosion", "poor-initialization",
    "selu-misconfigured", "non-finite", "no-gradient", "lr-too-high", "lr-too-low",
    "loss-not-decreasing", "bad-initial-loss", "unnormalized-inputs", "bottleneck-layer",
)


def _report(*severities: Severity, source: str = "model.pt2") -> Report:
    layer = LayerRecord(name="fc", type="Linear", index=0, kind="linear",
                        activation=ActivationStats(std=1.0), gradient=GradientStats(rms=0.01))
    evidence = Evidence(
        model=ModelFacts(source=source, format="export", parameters=10, trainable_parameters=10, layers=1),
        run=RunInfo(device="cpu", seed=0, inputs="synthetic", input_shapes=((4, 2),), loss="mse",
                    steps=0, optimizer="sgd", lr=0.01),
        layers=(layer,),
    )
    ids = {Severity.ERROR: "dead-relu", Severity.WARNING: "saturated-activations", Severity.INFO: "bottleneck-layer"}
    findings = tuple(Finding(id=ids[s], severity=s, title=f"{s.value} title", message=f"{s.value} message",
                             layers=("fc",)) for s in severities)
    return Report(evidence=evidence, findings=findings, checks_run=tuple(ids.values()))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def known_ids(monkeypatch):
    monkeypatch.setattr(cli, "known_check_ids", lambda: CONTRACT_CHECK_IDS)
    monkeypatch.setattr(cli, "known_threshold_names", lambda: {"dead-relu": ("dead_fraction",)})


@pytest.fixture
def fake_run(monkeypatch, known_ids, tmp_path):
    """`fake_run(result)`: run_check returns `result` (a Report) or raises it (an exception).

    Returns the list of Settings it was called with. The working directory is an empty tmp dir,
    so no pyproject.toml above the repository leaks into the settings.
    """
    monkeypatch.chdir(tmp_path)
    calls: list[Settings] = []

    def install(result):
        def run_check(settings: Settings) -> Report:
            calls.append(settings)
            if isinstance(result, BaseException):
                raise result
            return result

        module = types.ModuleType("diagnose.api")
        module.run_check = run_check
        monkeypatch.setitem(sys.modules, "diagnose.api", module)
        monkeypatch.setattr(diagnose, "api", module, raising=False)
        return calls

    return install


# --- exit codes and fail-on -------------------------------------------------------------------


@pytest.mark.parametrize(
    "severities, fail_on, code",
    [
        ((), "error", 0),
        ((Severity.ERROR,), "error", 1),
        ((Severity.WARNING,), "error", 0),
        ((Severity.WARNING,), "warning", 1),
        ((Severity.INFO,), "warning", 0),
        ((Severity.INFO,), "info", 1),
        ((Severity.ERROR, Severity.WARNING), "never", 0),
    ],
)
def test_exit_code_follows_fail_on(runner, fake_run, severities, fail_on, code):
    fake_run(_report(*severities))
    result = runner.invoke(cli.app, ["check", "model.pt2", "--fail-on", fail_on])
    assert result.exit_code == code, result.output
    assert "status:" in result.stdout


def test_diagnose_error_is_one_line_exit_2(runner, fake_run):
    fake_run(DiagnoseError("model.pt is a pickled module; pass --trust-pickle if you trust it"))
    result = runner.invoke(cli.app, ["check", "model.pt"])
    assert result.exit_code == 2
    assert result.stderr == "error: model.pt is a pickled module; pass --trust-pickle if you trust it\n"
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(runner, fake_run):
    fake_run(DiagnoseError("broken"))
    result = runner.invoke(cli.app, ["check", "model.pt", "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.rstrip().endswith("error: broken")


def test_unexpected_exception_is_reported_as_a_bug(runner, fake_run):
    fake_run(ZeroDivisionError("division by zero"))
    result = runner.invoke(cli.app, ["check", "model.pt2"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "ZeroDivisionError: division by zero" in lines[0] and "bug" in lines[0]


def test_keyboard_interrupt_exits_130(runner, fake_run):
    fake_run(KeyboardInterrupt())
    assert runner.invoke(cli.app, ["check", "model.pt2"]).exit_code == 130


# --- option validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["--input-shape", "64,x"], "--input-shape"),
        (["--input-shape", "64,0"], "--input-shape"),
        (["--optimizer", "lion"], "--optimizer"),
        (["--device", "tpu"], "--device"),
        (["--fail-on", "fatal"], "--fail-on"),
        (["--loss", "hinge"], "--loss"),
        (["--steps", "-1"], "--steps"),
        (["--lr", "0"], "--lr"),
        (["--select", "dead-relu,no-such-check"], "no-such-check"),
        (["--ignore", "nope"], "valid ids: activation-variance-collapse"),
    ],
)
def test_bad_options_exit_2_with_one_line(runner, fake_run, args, words):
    calls = fake_run(_report())
    result = runner.invoke(cli.app, ["check", "model.pt2", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr
    assert calls == []  # nothing ran


def test_options_reach_settings(runner, fake_run):
    calls = fake_run(_report())
    result = runner.invoke(cli.app, [
        "check", "pkg.models:build", "--input-shape", "8,3,32,32", "--input-shape", "8,10",
        "--steps", "5", "--optimizer", "adam", "--lr", "0.001", "--select", "dead-relu,saturated-activations",
        "--select", "non-finite", "--ignore", "dead-relu", "--loss", "mypkg.losses:focal", "--seed", "3",
        "--device", "cpu", "--batch-size", "16", "--trust-pickle", "--try-fixes",
    ])
    assert result.exit_code == 0, result.output
    (settings,) = calls
    assert settings.model == "pkg.models:build"
    assert settings.input_shapes == ((8, 3, 32, 32), (8, 10))
    assert (settings.steps, settings.optimizer, settings.lr, settings.seed) == (5, "adam", 0.001, 3)
    assert settings.select == ("dead-relu", "saturated-activations", "non-finite")
    assert settings.ignore == ("dead-relu",)
    assert settings.loss == "mypkg.losses:focal"
    assert settings.trust_pickle and settings.try_fixes
    assert (settings.device, settings.batch_size) == ("cpu", 16)


# --- outputs ----------------------------------------------------------------------------------


def test_json_to_stdout_moves_the_human_report_to_stderr(runner, fake_run):
    fake_run(_report(Severity.ERROR))
    result = runner.invoke(cli.app, ["check", "model.pt2", "--json", "-"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["summary"]["status"] == "error"
    assert "status: error" in result.stderr


def test_report_files_are_written(runner, fake_run, tmp_path):
    fake_run(_report(Severity.WARNING))
    result = runner.invoke(cli.app, [
        "check", "model.pt2", "--json", "r.json", "--markdown", "r.md", "--junit", "r.xml", "--fail-on", "warning",
    ])
    assert result.exit_code == 1, result.output
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["warnings"] == 1
    assert "saturated-activations" in (tmp_path / "r.md").read_text()
    junit = ET.parse(tmp_path / "r.xml").getroot()
    assert junit.get("failures") == "1"  # the junit file follows --fail-on too


def test_missing_output_directory_exits_2_before_running(runner, fake_run):
    calls = fake_run(_report())
    result = runner.invoke(cli.app, ["check", "model.pt2", "--junit", "no/such/dir/r.xml"])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and result.stderr.count("\n") == 1
    assert calls == []


def test_output_is_plain_text_when_not_a_terminal(runner, fake_run):
    fake_run(_report(Severity.ERROR))
    result = runner.invoke(cli.app, ["check", "model.pt2"])
    assert "\x1b[" not in result.stdout


# --- pyproject settings -----------------------------------------------------------------------

PYPROJECT = """
[project]
name = "someone-elses-model"

[tool.diagnose]
steps = 7
optimizer = "adam"
fail_on = "warning"
input-shape = [[16, 784]]
ignore = ["bottleneck-layer"]
weights = "weights/w.pt"

[tool.diagnose.thresholds.dead-relu]
dead_fraction = 0.6

[tool.diagnose.per-layer-ignores]
"encoder.*" = ["dead-relu", "saturated-activations"]
"""


def test_pyproject_settings_are_merged(runner, fake_run, tmp_path, monkeypatch):
    calls = fake_run(_report(Severity.WARNING))
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # found from a subdirectory: the nearest pyproject.toml upward
    result = runner.invoke(cli.app, ["check", "model.pt2"])
    assert result.exit_code == 1, result.output  # fail_on = "warning" came from the file
    (settings,) = calls
    assert (settings.steps, settings.optimizer, settings.fail_on) == (7, "adam", "warning")
    assert settings.input_shapes == ((16, 784),)
    assert settings.ignore == ("bottleneck-layer",)
    assert settings.thresholds == {"dead-relu": {"dead_fraction": 0.6}}
    assert settings.per_layer_ignores == {"encoder.*": ("dead-relu", "saturated-activations")}
    assert settings.weights == str(tmp_path / "weights" / "w.pt")  # relative to the file


def test_flags_win_over_pyproject(runner, fake_run, tmp_path):
    calls = fake_run(_report(Severity.WARNING))
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    result = runner.invoke(cli.app, ["check", "model.pt2", "--steps", "0", "--fail-on", "error", "--optimizer", "sgd"])
    assert result.exit_code == 0, result.output
    (settings,) = calls
    assert (settings.steps, settings.fail_on, settings.optimizer) == (0, "error", "sgd")
    assert settings.ignore == ("bottleneck-layer",)  # untouched by flags: still from the file


def test_explicit_config_path(runner, fake_run, tmp_path):
    calls = fake_run(_report())
    config = tmp_path / "ci" / "diagnose.toml"
    config.parent.mkdir()
    config.write_text('[tool.diagnose]\nseed = 42\n')
    result = runner.invoke(cli.app, ["check", "model.pt2", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert calls[0].seed == 42


@pytest.mark.parametrize(
    "body, words",
    [
        ("[tool.diagnose]\nsteps = -3\n", "--steps"),
        ("[tool.diagnose]\nsteps = true\n", "steps must be an integer"),
        ("[tool.diagnose]\nstep = 3\n", "unknown key 'step'"),
        ("[tool.diagnose]\ntrust-pickle = true\n", "--trust-pickle on the command line"),
        ("[tool.diagnose]\nselect = ['dead-relu', 'bogus']\n", "bogus"),
        ('[tool.diagnose.per-layer-ignores]\n"fc" = ["bogus"]\n', "per-layer-ignores"),
        ("[tool.diagnose.thresholds.dead-relu]\ndead_fraktion = 0.6\n", "valid names: dead_fraction"),
        ("[tool.diagnose.thresholds.bogus]\nx = 1\n", "bogus"),
        ("[tool.diagnose.thresholds.dead-relu]\ndead_fraction = 'high'\n", "must be a number"),
        ("[tool.diagnose\n", "not valid TOML"),
    ],
)
def test_bad_pyproject_exits_2(runner, fake_run, tmp_path, body, words):
    calls = fake_run(_report())
    (tmp_path / "pyproject.toml").write_text(body)
    result = runner.invoke(cli.app, ["check", "model.pt2"])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and result.stderr.count("\n") == 1
    assert calls == []


def test_per_layer_ignore_of_every_check(runner, fake_run, tmp_path):
    calls = fake_run(_report())
    (tmp_path / "pyproject.toml").write_text('[tool.diagnose.per-layer-ignores]\n"head.*" = ["*"]\n')
    result = runner.invoke(cli.app, ["check", "model.pt2"])
    assert result.exit_code == 0, result.output
    assert calls[0].per_layer_ignores == {"head.*": ("*",)}


def test_missing_config_file_exits_2(runner, fake_run, tmp_path):
    fake_run(_report())
    result = runner.invoke(cli.app, ["check", "model.pt2", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_lr_find_does_not_check_the_report_paths_pyproject_gives_check(runner, known_ids, tmp_path, monkeypatch):
    # html and plot in [tool.diagnose] name check's report, not lr-find's: a missing directory there
    # must not stop lr-find, which writes only its own --json
    pytest.importorskip("torch")
    from diagnose import range_test

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.diagnose]\njunit = "no/dir/r.xml"\nhtml = "no/dir/r.html"\nplot = "no/dir/figures"\n')
    seen = []

    def run_lr_find(settings, **sweep):
        seen.append(settings)
        raise DiagnoseError("stopped after the checks of the options")

    monkeypatch.setattr(range_test, "run_lr_find", run_lr_find)
    result = runner.invoke(cli.app, ["lr-find", "model.pt2", "--verify-steps", "3"])
    assert result.exit_code == 2 and "stopped after the checks of the options" in result.stderr, result.output
    assert seen[0].steps == 3  # --verify-steps is check's short run


# --- version, list, explain -------------------------------------------------------------------


def test_version(runner):
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"diagnose {diagnose.__version__}"


@dataclass(frozen=True)
class _FakeCheck:
    id: str
    severity: Severity
    summary: str


@dataclass(frozen=True)
class _FakeFix:
    id: str
    title: str
    summary: str


@pytest.fixture
def fake_registry(monkeypatch):
    checks = types.ModuleType("diagnose.checks")
    checks.CHECKS = (_FakeCheck("dead-relu", Severity.ERROR, "ReLU units that never fire"),
                     _FakeCheck("bottleneck-layer", Severity.INFO, "a layer much narrower than its neighbours"))
    fixes = types.ModuleType("diagnose.fixes")
    fixes.FIXES = {"he-init": _FakeFix("he-init", "He initialization", "for ReLU-like layers")}
    explain = types.ModuleType("diagnose.explain")

    def render(rule_id: str) -> str:
        if rule_id == "dead-relu":
            return "# dead-relu\n\n## What it detects\n..."
        raise DiagnoseError(f"unknown check or fix id {rule_id!r}")  # as the real one does

    explain.render = render
    for name, module in (("checks", checks), ("fixes", fixes), ("explain", explain)):
        monkeypatch.setitem(sys.modules, f"diagnose.{name}", module)
        monkeypatch.setattr(diagnose, name, module, raising=False)


def test_list_shows_checks_and_fixes(runner, fake_registry):
    result = runner.invoke(cli.app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["dead-relu", "error"] and "never fire" in line for line in lines)
    assert any(line.split()[:2] == ["bottleneck-layer", "info"] for line in lines)
    assert any(line.split()[:1] == ["he-init"] and "for ReLU-like layers" in line for line in lines)


def test_explain_known_and_unknown(runner, fake_registry):
    result = runner.invoke(cli.app, ["explain", "dead-relu"])
    assert result.exit_code == 0 and result.stdout.startswith("# dead-relu")
    result = runner.invoke(cli.app, ["explain", "no-such-id"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown check or fix id 'no-such-id'") and result.stderr.count("\n") == 1


def _real_registry():
    try:
        from diagnose.checks import CHECKS
        from diagnose.fixes import FIXES
    except ImportError as exc:  # the registries are written by another engineer
        pytest.skip(f"check/fix registry not importable yet: {exc}")
    return CHECKS, FIXES


def test_list_against_the_real_registry(runner):
    checks, fixes = _real_registry()
    result = runner.invoke(cli.app, ["list"])
    assert result.exit_code == 0, result.output
    for entry in checks:
        assert entry.id in result.stdout
    for fix_id in fixes:
        assert fix_id in result.stdout
    assert set(CONTRACT_CHECK_IDS) <= {entry.id for entry in checks}


def test_unknown_select_id_against_the_real_registry(runner, tmp_path, monkeypatch):
    _real_registry()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["check", "model.pt2", "--select", "dead-relu,not-a-check"])
    assert result.exit_code == 2
    assert "not-a-check" in result.stderr and "dead-relu" in result.stderr  # lists the valid ids


# --- end to end on a real model file ------------------------------------------------------------


@pytest.fixture
def tiny_export(tmp_path) -> Path:
    try:
        import diagnose.api  # noqa: F401
        import torch
        from torch import nn
    except ImportError as exc:
        pytest.skip(f"diagnose.api not importable yet: {exc}")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    program = torch.export.export(model, (torch.randn(8, 6),))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, path)
    return path


def test_end_to_end_json_markdown_junit(runner, tiny_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, [
        "check", str(tiny_export), "--steps", "0", "--json", "-", "--markdown", "r.md", "--junit", "r.xml",
        "--fail-on", "never",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"]["format"] == "export"
    assert [layer["type"] for layer in data["layers"]][:3] == ["Linear", "ReLU", "Linear"]
    root = ET.parse(tmp_path / "r.xml").getroot()
    assert int(root.get("tests")) == len(data["run"]["checks"]) > 0
    assert (tmp_path / "r.md").read_text().startswith("## diagnose:")
    assert "status:" in result.stderr


def test_end_to_end_same_seed_same_report(runner, tiny_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = []
    for _ in range(2):
        result = runner.invoke(cli.app, ["check", str(tiny_export), "--steps", "3", "--json", "-", "--fail-on", "never"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        data["run"].pop("elapsed_s", None)
        outputs.append(data)
    assert outputs[0] == outputs[1]


def test_end_to_end_missing_model_file(runner, tiny_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["check", str(tmp_path / "missing.pt2")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


class _FakeStream:
    def __init__(self, *, tty: bool, encoding: str = "utf-8") -> None:
        self._tty = tty
        self.encoding = encoding

    def isatty(self) -> bool:
        return self._tty

    def fileno(self) -> int:
        raise OSError("not a real terminal")


@pytest.mark.parametrize(
    "tty, no_color, encoding, ansi, ascii_only",
    [
        (True, None, "utf-8", True, False),
        (True, "1", "utf-8", False, False),
        (False, None, "utf-8", False, False),
        (False, None, "ascii", False, True),
    ],
)
def test_terminal_colour_and_charset_follow_the_stream(monkeypatch, tty, no_color, encoding, ansi, ascii_only):
    from diagnose.render import render_terminal

    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    text = cli._terminal_text(_report(Severity.ERROR), _FakeStream(tty=tty, encoding=encoding), render_terminal)
    assert ("\x1b[" in text) is ansi
    if ascii_only:
        text.encode("ascii")
    else:
        assert "█" in text
