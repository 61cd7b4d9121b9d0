from diagnose.checks import activation_variance_explosion as check_module
from diagnose.severity import Severity

from .helpers import evidence, linear, only, zoo_report

ID = "activation-variance-explosion"


def test_relu_at_three_times_he_explodes():
    finding = only(zoo_report("relu-exploding"), ID)
    assert finding.severity is Severity.ERROR
    assert finding.layers[0] == "0" and finding.layers[-1] == "20"


def test_healthy_models_do_not_fire():
    for name in ("selu-lecun", "tanh-glorot", "resnet-cnn"):
        assert not [f for f in zoo_report(name).findings if f.id == ID]


def test_moderate_growth_is_a_warning():
    layers = [linear(f"l{i}", i, out_std=3.0 ** i) for i in range(6)]  # 243x
    assert only(check_module.check(evidence(layers), check_module.THRESHOLDS), ID).severity is Severity.WARNING
