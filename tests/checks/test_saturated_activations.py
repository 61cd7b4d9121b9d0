from diagnose.checks import saturated_activations as check_module
from diagnose.severity import Severity

from .helpers import activation, evidence, linear, only, zoo_report

ID = "saturated-activations"


def test_tanh_with_unit_normal_weights_saturates():
    finding = only(zoo_report("tanh-normal-init"), ID)
    assert finding.severity in (Severity.WARNING, Severity.ERROR)
    assert finding.layers[0] == "1"
    assert finding.fixes[0].id == "glorot-init"


def test_glorot_tanh_does_not_fire():
    assert not [f for f in zoo_report("tanh-glorot").findings if f.id == ID]


def test_tanh_inside_an_activation_module_is_not_judged():
    layers = [
        linear("fc", 0, followed_by="gelu"),
        activation("act", 1, "gelu"),
        activation("act.tanh()", 2, "tanh", saturated=0.8, source="function", owner="act"),
    ]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []


def test_almost_all_saturated_is_an_error():
    layers = [linear("fc", 0, followed_by="sigmoid"), activation("sig", 1, "sigmoid", saturated=0.95)]
    assert only(check_module.check(evidence(layers), check_module.THRESHOLDS), ID).severity is Severity.ERROR
