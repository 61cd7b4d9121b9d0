from dataclasses import replace

import pytest

from diagnose.checks import dead_relu as check_module
from diagnose.severity import Severity

from .helpers import activation, evidence, linear, only, zoo_report

ID = "dead-relu"


def test_negative_biases_kill_every_unit():
    finding = only(zoo_report("relu-negative-bias"), ID)
    assert finding.severity is Severity.ERROR
    assert finding.layers == ("1", "3", "5")
    assert finding.evidence["feeding_bias_mean"] < -5


def test_negative_bias_recommends_fix_bias_init_first():
    finding = only(zoo_report("relu-negative-bias"), ID)
    assert finding.fixes[0].id == "fix-bias-init"
    assert "'0'" in finding.fixes[0].snippet


def test_healthy_relu_net_does_not_fire():
    assert not [f for f in zoo_report("relu-mlp-default").findings if f.id == ID]


def test_most_units_dead_is_a_warning():
    layers = [linear("fc", 0), activation("act", 1, dead=0.7)]
    finding = only(check_module.check(evidence(layers), check_module.THRESHOLDS), ID)
    assert finding.severity is Severity.WARNING


@pytest.mark.parametrize(("units", "dead", "fires"), [
    (8, 0.625, False),  # 5 of 8: a fair coin gives this one time in three (RegNet's SE fc1)
    (8, 1.0, True),  # all of 8: one time in 256
    (64, 0.6, False),  # within 2.5 sigma of 1/2
    (64, 0.7, True),
    (4096, 0.55, True),  # 6 sigma above 1/2: more than structure explains
    (4096, 0.44, False),  # VGG-11's classifier at init: coherent inputs, half the units off
])
def test_half_the_units_off_is_structure_not_death(units, dead, fires):
    layers = [linear("fc", 0, fan_out=units), activation("act", 1, dead=dead, units=units)]
    found = check_module.check(evidence(layers), check_module.THRESHOLDS)
    assert bool(found) is fires


def test_dead_bar_is_half_plus_binomial_margin():
    assert check_module.dead_bar(0.5, 4096) == pytest.approx(0.5 + 2.5 * 0.5 / 64)
    assert check_module.dead_bar(0.5, None) == 0.5
    assert check_module.dead_bar(0.8, 4096) == 0.8  # never below the user's threshold


def test_a_share_that_only_wobbles_during_the_run_did_not_die():
    # 44 % off at init, 55 % in the last step: a coherent layer's step-to-step noise, not deaths
    layers = [linear("fc", 0, fan_out=4096), activation("act", 1, dead=0.44, units=4096)]
    run_layers = [linear("fc", 0, fan_out=4096), activation("act", 1, dead=0.30, units=4096)]
    run_layers[1] = replace(run_layers[1], activation=replace(run_layers[1].activation, dead_fraction_last=0.55))
    assert check_module.check(evidence(layers, run_layers=run_layers, steps=10), check_module.THRESHOLDS) == []


def test_units_dying_during_run_fire():
    layers = [linear("fc", 0), activation("act", 1, dead=0.0)]
    run_layers = [linear("fc", 0), activation("act", 1, dead=0.95)]
    finding = only(check_module.check(evidence(layers, run_layers=run_layers, steps=10), check_module.THRESHOLDS), ID)
    assert finding.evidence["died_during_run"] == 1


def test_tiny_batch_is_not_judged():
    layers = [linear("fc", 0, batch=2), activation("act", 1, dead=0.6, batch=2)]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []
