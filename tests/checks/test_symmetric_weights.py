"""symmetric-weights: constant weights in and out make a layer's units identical forever."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import diagnose
from diagnose.checks import symmetric_weights as check_module

from .helpers import activation, evidence, findings_of, linear, module_record, only

ID = "symmetric-weights"


def _constant(record, value: float = 0.0, std: float = 0.0):
    return replace(record, weight=replace(record.weight, std=std, mean=value))


def _chain(first_value=0.0, second_value=0.0, *, first_std=0.0, second_std=0.0, between=("relu",)):
    """net.0 -> [between] -> net.2, traced: the probes saw each layer read the previous one."""
    layers = [replace(_constant(linear("net.0", 0), first_value, first_std), input_from="")]
    previous = "net.0"
    for i, kind in enumerate(between, start=1):
        if kind == "norm":
            record = module_record(f"mid.{i}", i, "norm", "BatchNorm1d")
        else:
            record = activation(f"mid.{i}", i, kind)
        layers.append(replace(record, input_from=previous))
        previous = record.name
    second = _constant(linear("net.2", len(between) + 1, followed_by="none"), second_value, second_std)
    layers.append(replace(second, input_from=previous))
    return layers


def _fired(layers) -> list:
    return check_module.check(evidence(layers), check_module.THRESHOLDS)


def test_two_zero_layers_in_a_chain_fire_on_the_first():
    findings = _fired(_chain())
    assert len(findings) == 1 and findings[0].layers == ("net.0",)
    assert findings[0].evidence["read_by"] == "net.2"


def test_a_constant_pair_fires_through_a_norm_layer_too():
    assert _fired(_chain(0.05, 0.05, first_std=1e-4, second_std=1e-4, between=("norm", "relu")))


@pytest.mark.parametrize("second_std", [0.05, 1e-3])
def test_a_zero_layer_read_by_random_weights_is_a_healthy_zero_gate(second_std):
    # a zero head / LoRA B / zero gate: the next layer's weights differ, so units get different gradients
    assert _fired(_chain(second_value=0.0, second_std=second_std)) == []


def test_random_weights_read_by_a_zero_head_are_healthy():
    assert _fired(_chain(first_value=0.0, first_std=0.05)) == []


def test_a_pair_the_probes_could_not_trace_is_not_judged():
    layers = [replace(r, input_from=None) for r in _chain()]
    assert _fired(layers) == []


def test_a_pair_joined_by_an_unprobed_op_is_not_a_chain():
    # e.g. a zero-initialised branch end and a zero head with a residual add between them (Fixup)
    layers = _chain(between=())
    layers[-1] = replace(layers[-1], input_from="")
    assert _fired(layers) == []


def test_frozen_layers_are_not_judged():
    layers = _chain()
    layers[0] = replace(layers[0], weight=replace(layers[0].weight, frozen=True))
    assert _fired(layers) == []


def test_the_constant_bound_is_relative_to_the_mean():
    # float32 sqrt(E[w^2] - E[w]^2) leaves ~0.4 % of the mean for a constant tensor: still constant
    assert _fired(_chain(0.05, 0.05, first_std=2e-4, second_std=2e-4))
    # a mean-shifted but drawn init (std 20 % of the mean) is not constant
    assert _fired(_chain(0.05, 0.05, first_std=0.01, second_std=0.01)) == []


def _mlp(init) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                init(layer)
    return model


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(64, 32, generator=generator), torch.randint(0, 10, (64,), generator=generator)


@pytest.mark.parametrize("value", [0.0, 0.05])
def test_real_constant_init_mlps_fire_with_the_measured_std(value):
    x, y = _inputs()
    report = diagnose.check(_mlp(lambda layer: (layer.weight.fill_(value), layer.bias.zero_())), x, targets=y)
    finding = only(report, ID)
    assert finding.layers == ("0", "2")  # the head may stay constant: its rows get different gradients
    assert report.findings[0].id == ID  # named first: the cause of what else fires


def test_a_zero_head_on_a_random_mlp_is_healthy():
    x, y = _inputs()
    model = _mlp(lambda layer: None)
    with torch.no_grad():
        model[4].weight.zero_()
    assert findings_of(diagnose.check(model, x, targets=y), ID) == []


def test_he_init_is_the_verified_fix():
    x, y = _inputs()
    model = _mlp(lambda layer: (layer.weight.zero_(), layer.bias.zero_()))
    report = diagnose.check(model, x, targets=y, steps=20, try_fixes=True)
    fix = only(report, ID).fixes[0]
    assert fix.id == "he-init"
    assert fix.verified.resolved and fix.verified.after == 0.0 and fix.verified.before == 2.0
    assert fix.verified.loss_after < fix.verified.loss_before


def test_chained_zero_layers_are_not_called_a_deliberate_gate():
    """no-gradient's "zero-initialised gate" info is for zero heads and gains, not for symmetric pairs."""
    x, y = _inputs()
    model = _mlp(lambda layer: (layer.weight.zero_(), layer.bias.zero_()))
    report = diagnose.check(model, x, targets=y, steps=20)
    assert not [f for f in findings_of(report, "no-gradient") if "deliberate" in f.message]
    zero_head = _mlp(lambda layer: None)
    with torch.no_grad():
        zero_head[4].weight.zero_()
    gates = [f for f in findings_of(diagnose.check(zero_head, x, targets=y, steps=20), "no-gradient")]
    assert all(f.severity.value == "info" for f in gates)
