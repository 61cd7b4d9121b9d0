"""residual-stream-growth: un-normalised residual branches that add up, and their healthy twins."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import diagnose
from diagnose.checks import CHECKS
from diagnose.checks import residual_stream_growth as check_module
from diagnose.severity import Severity

from .helpers import evidence, findings_of, linear, module_record, only

ID = "residual-stream-growth"
WIDTH = 64


class Block(nn.Module):
    """x + fc2(relu(fc1(norm(x)))), He-initialised; `prenorm` adds a LayerNorm, `zero_branch` zeroes fc2."""

    def __init__(self, prenorm: bool = False, zero_branch: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH) if prenorm else nn.Identity()
        self.fc1 = nn.Linear(WIDTH, WIDTH)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        for layer in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        if zero_branch:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    def __init__(self, depth: int = 12, zero_head: bool = False, **block):
        super().__init__()
        self.blocks = nn.ModuleList([Block(**block) for _ in range(depth)])
        self.head = nn.Linear(WIDTH, 10)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _build(**options) -> nn.Module:
    torch.manual_seed(0)
    return ResidualMLP(**options)


def _inputs() -> torch.Tensor:
    return torch.randn(32, WIDTH, generator=torch.Generator().manual_seed(0))


def _check(model, **options):
    return diagnose.check(model, _inputs(), **options)


def _output_stds(model: nn.Module) -> dict[str, float]:
    """Each Linear's output std on the test batch, measured here with plain forward hooks."""
    stds: dict[str, float] = {}

    def record(name):
        def hook(module, args, output):
            stds.setdefault(name, float(output.detach().std(correction=0)))  # population std, as the probes
        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules() if isinstance(module, nn.Linear)
    ]
    with torch.no_grad():
        model(_inputs())
    for hook in hooks:
        hook.remove()
    return stds


# --- real models ------------------------------------------------------------------------------


def test_unnormalised_residual_mlp_fires_and_names_the_growth():
    model = _build()
    finding = only(_check(model), ID)
    reference = _output_stds(model)
    names = list(reference)
    assert finding.layers == tuple(names)  # every Linear, input side first, head last
    assert finding.evidence["first_std"] == pytest.approx(reference["blocks.0.fc1"], rel=1e-3)
    assert finding.evidence["last_std"] == pytest.approx(reference["head"], rel=1e-3)
    # the fitted change: a least-squares line through log10(std) over the layers, first to last
    logs = np.log10([reference[n] for n in names])
    slope = np.polyfit(np.arange(len(logs)), logs, 1)[0]
    assert finding.evidence["fitted_ratio"] == pytest.approx(10 ** (slope * (len(logs) - 1)), rel=1e-3)
    assert finding.evidence["fitted_ratio"] >= check_module.RATIO
    assert "grows" in finding.message
    assert "blocks.0.fc1" in finding.message and "head" in finding.message
    assert f"{len(names)} layers" in finding.message


def test_without_a_run_the_severity_is_the_table_default():
    finding = only(_check(_build()), ID)
    default = next(spec.severity for spec in CHECKS if spec.id == ID)
    assert finding.severity is default is Severity.ERROR
    assert finding.evidence["short_run_trained"] is None


def test_a_short_run_that_blows_up_makes_it_an_error():
    report = _check(_build(), steps=5)
    history = report.evidence.loss.history
    assert not all(math.isfinite(v) for v in history) or min(history[1:]) > 0.9 * history[0]
    finding = only(report, ID)
    assert finding.severity is Severity.ERROR
    assert finding.evidence["short_run_trained"] is False
    assert "did not train" in finding.message


def test_a_short_run_that_still_trains_makes_it_a_warning():
    # A zero head starts at chance and a small Adam step trains it: the stream still grows ~70x.
    report = _check(_build(zero_head=True), steps=5, optimizer="adam", lr=1e-4)
    history = report.evidence.loss.history
    assert min(history[1:]) < 0.9 * history[0] and min(history[1:]) < math.log(10)  # trained, by hand
    finding = only(report, ID)
    assert finding.severity is Severity.WARNING
    assert finding.evidence["short_run_trained"] is True
    assert "still trained" in finding.message


def test_pre_norm_blocks_do_not_fire():
    report = _check(_build(prenorm=True))
    assert findings_of(report, ID) == []
    assert findings_of(report, "activation-variance-explosion") == []


def test_zero_initialised_branches_do_not_fire():
    model = _build(zero_branch=True)
    stds = _output_stds(model)
    assert stds["head"] / stds["blocks.0.fc1"] < 3  # the stream starts as the identity
    assert findings_of(_check(model), ID) == []


def test_a_plain_growing_stack_is_left_to_variance_explosion():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layer = nn.Linear(WIDTH, WIDTH)
        nn.init.normal_(layer.weight, std=2 * math.sqrt(2 / WIDTH))  # twice He: x2 per layer
        layers += [layer, nn.ReLU()]
    plain = nn.Sequential(*layers, nn.Linear(WIDTH, 10))
    stds = _output_stds(plain)
    assert stds["24"] / stds["0"] > check_module.RATIO  # it does grow, far past the bar
    report = _check(plain)
    assert findings_of(report, ID) == []
    assert findings_of(report, "activation-variance-explosion")


# --- hand-built evidence: the thresholds ------------------------------------------------------


def _stream(count: int, growth: float, *, chained: bool = False, **overrides):
    """`count` linear layers whose output std grows geometrically by `growth` first to last.

    Unchained, each reads the stream (an un-recorded add), so no two form a plain stack.
    """
    records = []
    for i in range(count):
        std = growth ** (i / (count - 1))
        record = linear(f"b{i}.fc", i, out_std=std, **overrides)
        records.append(record if chained else replace(record, input_from="stream"))
    return records


def _run(layers, **options):
    return check_module.check(evidence(layers, **options), check_module.THRESHOLDS)


def test_hand_built_stream_fires_with_the_exact_ratio():
    finding = only(_run(_stream(12, 100.0)), ID)
    assert finding.evidence["fitted_ratio"] == pytest.approx(100.0, rel=1e-9)
    assert finding.evidence["layers"] == 12
    assert finding.evidence["log10_growth_per_layer"] == pytest.approx(2 / 11, rel=1e-9)


# 12 layers: the quarter ratio compares the medians of layers 0-2 and 9-11, i.e. growth ** (9 / 11);
# it, not the fitted change (= growth), is the binding bar for a geometric stream.
QUARTER_EDGE = check_module.RATIO ** (11 / 9)


@pytest.mark.parametrize(("growth", "fires"), [
    (8.0, False), (0.98 * QUARTER_EDGE, False), (1.02 * QUARTER_EDGE, True), (1000.0, True),
])
def test_ratio_bar(growth, fires):
    found = _run(_stream(12, growth))
    assert bool(found) is fires
    if fires:
        assert found[0].evidence["quarter_ratio"] == pytest.approx(growth ** (9 / 11), rel=1e-9)


@pytest.mark.parametrize(("count", "fires"), [(7, False), (8, True)])
def test_min_layers(count, fires):
    assert bool(_run(_stream(count, 1000.0))) is fires


def test_ratio_is_configurable():
    thresholds = {**check_module.THRESHOLDS, "ratio": 200.0}
    assert check_module.check(evidence(_stream(12, 100.0)), thresholds) == []


def test_one_plain_chain_is_not_a_stream():
    assert _run(_stream(12, 1000.0, chained=True)) == []


def test_shrinking_stream_does_not_fire():
    assert _run(_stream(12, 1 / 1000.0)) == []


def test_layers_feeding_a_norm_are_left_out():
    # the same growth, but every layer's output is normalised next: nothing left to judge
    layers = _stream(12, 1000.0, normalized=True)
    assert check_module.stream_layers(layers) == []
    assert _run(layers) == []


def test_norm_records_do_not_count_as_stream_layers():
    layers = _stream(8, 1000.0)
    layers.insert(4, module_record("ln", 100, "norm", "LayerNorm"))
    assert [r.name for r in check_module.stream_layers(layers)] == [f"b{i}.fc" for i in range(8)]


@pytest.mark.parametrize(("history", "nonfinite", "severity"), [
    ((2.3, 1.8, 1.2, 0.9), None, Severity.WARNING),  # trains: falls below chance, keeps its gain
    ((2.3, 2.29, 2.3, 2.29), None, Severity.ERROR),  # does not fall
    ((2.3, 40.0, float("nan")), 2, Severity.ERROR),  # blows up
])
def test_short_run_sets_the_severity(history, nonfinite, severity):
    ev = evidence(_stream(12, 100.0), steps=len(history), history=history, initial=history[0],
                  nonfinite_loss_step=nonfinite)
    finding = only(check_module.check(ev, check_module.THRESHOLDS), ID)
    assert finding.severity is severity
    assert finding.evidence["short_run_trained"] is (severity is Severity.WARNING)
