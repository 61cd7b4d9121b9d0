"""Progress: the library says where it is; the CLI draws it only on a terminal."""

from __future__ import annotations

import io

import torch
from torch import nn
from typer.testing import CliRunner

import diagnose
from diagnose import progress
from diagnose.cli import app
from diagnose.render.progress_display import ProgressDisplay


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage(self, description, total):
        self.events.append(("stage", description, total))

    def advance(self, amount):
        self.events.append(("advance", amount))

    def announce(self, text):
        self.events.append(("announce", text))


def _stages(events):
    """stage description -> (total, passes advanced while it was current)."""
    out, current = {}, None
    for event in events:
        if event[0] == "stage":
            current = event[1]
            out[current] = [event[2], 0]
        elif event[0] == "advance" and current is not None:
            out[current][1] += event[1]
    return out


def _sigmoid_stack() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(8):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    for layer in layers[::2]:
        nn.init.normal_(layer.weight, std=0.05)
    return nn.Sequential(*layers, nn.Linear(16, 4))


def test_every_pass_of_the_probe_run_is_counted():
    recorder = _Recorder()
    with progress.listening(recorder):
        diagnose.check(_sigmoid_stack(), torch.randn(16, 16), steps=7)
    stages = _stages(recorder.events)
    # one pass at initialisation and one per training step, against a total said up front
    assert stages["probing, then a short run"] == [8, 8]
    assert any(e[0] == "announce" and "16x16" in e[1] for e in recorder.events)


def test_each_fix_tried_is_a_stage_of_its_own():
    recorder = _Recorder()
    with progress.listening(recorder):
        report = diagnose.check(_sigmoid_stack(), torch.randn(16, 16), steps=5, try_fixes=True)
    tried = {fix.id for finding in report.findings for fix in finding.fixes}
    fix_stages = {d: v for d, v in _stages(recorder.events).items() if d.startswith("trying fix")}
    assert tried and len(fix_stages) == len(tried)
    for total, done in fix_stages.values():
        assert done <= total  # a fix that breaks the run stops early, never overshoots


def test_without_a_listener_nothing_is_said():
    progress.stage("x", 3)  # no listener: a no-op, not an error
    progress.advance()
    progress.announce("y")


def test_the_display_draws_on_a_terminal_and_keeps_the_plan():
    stream = io.StringIO()
    display = ProgressDisplay(stream)
    display._console.force_terminal = True  # what a real terminal gets
    with display:
        display.announce("synthetic batch 8x3x224x224")
        display.stage("probing", 3)
        display.advance(3)
    assert "synthetic batch 8x3x224x224" in stream.getvalue()


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n")
    result = CliRunner().invoke(app, ["check", f"{model}:build", "--input-shape", "8,4", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "diagnose:" not in result.stderr and "\r" not in result.stderr
