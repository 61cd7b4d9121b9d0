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


def test_half_dead_is_a_warning():
    layers = [linear("fc", 0), activation("act", 1, dead=0.6)]
    finding = only(check_module.check(evidence(layers), check_module.THRESHOLDS), ID)
    assert finding.severity is Severity.WARNING


def test_units_dying_during_run_fire():
    layers = [linear("fc", 0), activation("act", 1, dead=0.0)]
    run_layers = [linear("fc", 0), activation("act", 1, dead=0.95)]
    finding = only(check_module.check(evidence(layers, run_layers=run_layers, steps=10), check_module.THRESHOLDS), ID)
    assert finding.evidence["died_during_run"] == 1


def test_tiny_batch_is_not_judged():
    layers = [linear("fc", 0, batch=2), activation("act", 1, dead=0.6, batch=2)]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []
