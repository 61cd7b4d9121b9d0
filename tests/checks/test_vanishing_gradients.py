from diagnose.checks import vanishing_gradients as check_module
from diagnose.severity import Severity

from .helpers import evidence, linear, only, relu_stack, zoo_report

ID = "vanishing-gradients"


def test_deep_sigmoid_with_standard_init_fires():
    finding = only(zoo_report("deep-sigmoid-standard"), ID)
    assert finding.severity is Severity.ERROR
    assert finding.layers[0] == "0" and finding.layers[-1] == "12"
    assert finding.evidence["ratio_first_last"] < 1e-3


def test_relu30_with_xavier_fires():
    finding = only(zoo_report("relu30-xavier"), ID)
    assert len(finding.layers) == 31


def test_healthy_models_do_not_fire():
    for name in ("tanh-glorot", "resnet-cnn", "gpt-block"):
        assert not [f for f in zoo_report(name).findings if f.id == ID]


def test_trend_not_one_layer_decides():
    # One odd layer in the middle (a tiny gradient) does not make a trend.
    layers = relu_stack(5)
    layers[4] = linear("net.4", 4, grad_out_rms=1e-9)
    found = check_module.check(evidence(layers), check_module.THRESHOLDS)
    assert found == []


def test_missing_gradients_are_unknown_not_healthy_or_sick():
    layers = [linear(f"l{i}", i, grad_out_rms=None) for i in range(5)]
    assert check_module.check(evidence(layers), check_module.THRESHOLDS) == []
